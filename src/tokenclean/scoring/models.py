"""The base and reference models of a scoring run, and their per-batch losses.

Three arrangements, chosen from what the user names (:func:`load_pair`):

- ``one_model``: the reference is a PEFT adapter on the base (``--reference ADAPTER_DIR`` whose base is
  ``--base``, or ``adapter=``). ONE model is loaded; the base pass runs inside ``disable_adapter()``, the
  reference pass with the adapter on. No merged copy is built. In fp32, the reference phase (after every
  base pass is done) first merges the adapter into the loaded weights *in place* (PEFT ``merge_adapter``):
  the unmerged LoRA branch costs ~40% more CPU time per pass, and the merged weights are exactly those of
  the merged reference checkpoint (tested bit-equal), within 1e-5 of the unmerged adapter. In bf16/fp16
  the adapter stays unmerged (merging into bf16 weights would round most of a small LoRA update away).
- ``two_models``: the reference is another model (or an adapter on another base): loaded separately, after
  checking it shares the base's tokenizer.
- ``base_only``: no reference (scorers such as ``base_loss``); ``ref_loss`` is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenclean.errors import ConfigError, ModelError
from tokenclean.models.loader import (
    ModelSpec,
    adapter_disabled,
    check_same_tokenizer,
    load_model,
    load_tokenizer,
    model_identity,
    resolve_model,
    same_model_source,
    tokenizer_identity,
    torch_dtype,
)
from tokenclean.scoring.engine import PADDED, Packing, Sample, SampleLosses, batch_token_losses
from tokenclean.utils import get_logger

log = get_logger("scoring")


@dataclass
class ModelPair:
    """Loaded models of a scoring run (see the module docstring for ``mode``)."""

    mode: str  # "one_model" | "two_models" | "base_only"
    model: Any  # the base (a PeftModel in one_model mode)
    ref_model: Any  # the separate reference (two_models), else None
    base_spec: ModelSpec
    ref_spec: ModelSpec | None
    tokenizer: Any
    merge_reference: bool = False  # one_model fp32: merge the adapter in place for the reference phase
    merged: bool = False

    def identities(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Manifest entries ``base`` and ``reference`` (name, content hash, adapter)."""
        return pair_identities(self.mode, self.base_spec, self.ref_spec, self.model, self.ref_model)

    def base_losses(
        self, samples: Sequence[Sample], pad_id: int, packing: Packing = PADDED
    ) -> list[SampleLosses]:
        """Base-model losses of one batch (adapter disabled in one_model mode)."""
        if self.mode != "one_model":
            return batch_token_losses(self.model, samples, pad_id, packing=packing)
        if self.merged:
            raise RuntimeError("the adapter is merged into the weights: the base pass must come first")
        with adapter_disabled(self.model):
            return batch_token_losses(self.model, samples, pad_id, packing=packing)

    def ref_losses(
        self, samples: Sequence[Sample], pad_id: int, packing: Packing = PADDED
    ) -> list[SampleLosses] | None:
        """Reference losses of one batch (None without a reference). In one_model fp32 mode the first call
        merges the adapter in place, for good: call it only after every base pass."""
        if self.mode == "base_only":
            return None
        if self.mode == "two_models":
            return batch_token_losses(self.ref_model, samples, pad_id, packing=packing)
        if self.merge_reference and not self.merged:
            self.model.merge_adapter()
            self.merged = True
        return batch_token_losses(self.model, samples, pad_id, packing=packing)

    def losses(
        self, samples: Sequence[Sample], pad_id: int
    ) -> tuple[list[SampleLosses], list[SampleLosses] | None]:
        """Both losses of one batch with the adapter toggled per batch (never merges)."""
        merge, self.merge_reference = self.merge_reference, False
        try:
            return self.base_losses(samples, pad_id), self.ref_losses(samples, pad_id)
        finally:
            self.merge_reference = merge


def pair_identities(
    mode: str, base_spec: ModelSpec, ref_spec: ModelSpec | None, model: Any = None, ref_model: Any = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(base, reference)`` identities (content hashes; no weights are loaded for local models)."""
    plain = ModelSpec(base_spec.name, base_spec.path, base_spec.gguf_file, None)
    base = model_identity(plain, model)
    if ref_spec is None:
        return base, None
    ref = model_identity(ref_spec, ref_model or model)
    return base, dict(ref, one_model=mode == "one_model")


def resolve_pair(
    base: str, reference: str | None, adapter: str | None
) -> tuple[str, ModelSpec, ModelSpec | None]:
    """Decide the arrangement without loading weights: ``(mode, base_spec, ref_spec)``."""
    if reference and adapter:
        raise ConfigError("reference: give either a reference model/adapter or adapter=, not both")
    base_spec = resolve_model(base)
    if base_spec.adapter:
        raise ConfigError(
            f"base: '{base}' is a PEFT adapter; pass its base model as --base and the adapter as --reference"
        )
    if adapter:
        return "one_model", base_spec, ModelSpec(adapter, base_spec.path, base_spec.gguf_file, adapter)
    if reference is None:
        return "base_only", base_spec, None
    ref_spec = resolve_model(reference)
    if ref_spec.adapter and same_model_source(ref_spec, base_spec):
        return "one_model", base_spec, ref_spec
    return "two_models", base_spec, ref_spec


def check_prepared_tokenizer(tok: Any, prepared_tok: dict[str, Any], base: str) -> None:
    """Stop when the base model's tokenizer is not the one the prepared data was made with."""
    want = prepared_tok.get("hash")
    got = tokenizer_identity(tok)["hash"]
    if want and want != got:
        raise ModelError(
            f"the prepared data was tokenised with '{prepared_tok.get('source') or prepared_tok.get('name')}' "
            f"(tokenizer hash {want[:12]}), but base model '{base}' has a different tokenizer "
            f"({got[:12]}); prepare the data with the base model's tokenizer"
        )


def load_pair(
    base: str,
    reference: str | None = None,
    adapter: str | None = None,
    dtype: str = "fp32",
    device: str = "cpu",
    prepared_tokenizer: dict[str, Any] | None = None,
    merge_reference: bool = True,
) -> ModelPair:
    """Load the models of a scoring run (one model whenever the reference is an adapter on the base).
    ``merge_reference=False`` keeps the adapter unmerged in fp32 too."""
    mode, base_spec, ref_spec = resolve_pair(base, reference, adapter)
    tok = load_tokenizer(base_spec)
    if prepared_tokenizer:
        check_prepared_tokenizer(tok, prepared_tokenizer, base)
    ref_model = None
    if mode == "one_model":
        assert ref_spec is not None
        log.info("reference = base + adapter %s: one model, adapter toggled per pass", ref_spec.adapter)
        model = load_model(base_spec, dtype, device, adapter=ref_spec.adapter)
    else:
        model = load_model(base_spec, dtype, device)
    if mode == "two_models":
        assert ref_spec is not None
        check_same_tokenizer(tok, load_tokenizer(ref_spec), f"base '{base}' and reference '{reference}'")
        ref_model = load_model(ref_spec, dtype, device)
    merge = mode == "one_model" and merge_reference and str(torch_dtype(dtype)) == "torch.float32"
    return ModelPair(mode, model, ref_model, base_spec, ref_spec, tok, merge_reference=merge)


def resolve_packing(pair: ModelPair, choice: str, batch_tokens: int) -> Packing:
    """The batch layout of a scoring run: packed padding-free batches when ``choice`` is ``on``, or ``auto``
    and the attention is a varlen kernel (flash_attention_2: no padding and no masked-out attention work);
    padded length-sorted batches otherwise. Packing is used only when every model of the pair keeps packed
    samples apart (:func:`tokenclean.packing.packing_works`); ``on`` fails when one does not."""
    from tokenclean.packing import packing_works, row_tokens_for
    from tokenclean.signals import VARLEN_ATTENTION

    if choice not in ("auto", "on", "off"):
        raise ConfigError(f"scoring.packing: expected auto, on or off, got {choice!r}")
    impl = getattr(pair.model.config, "_attn_implementation", None)
    if choice == "off" or (choice == "auto" and impl not in VARLEN_ATTENTION):
        return PADDED
    models = [pair.model] + ([pair.ref_model] if pair.ref_model is not None else [])
    broken = [type(m).__name__ for m in models if not packing_works(m)]
    if broken:
        why = f"{', '.join(broken)} with attention {impl} mixes packed samples (position_ids are not read)"
        if choice == "on":
            raise ModelError(f"scoring.packing on: {why}; use packing auto or off")
        log.warning("padded batches: %s", why)
        return PADDED
    return Packing(True, row_tokens_for(impl, batch_tokens))
