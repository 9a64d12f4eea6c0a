"""Merging a LoRA adapter into its base model, on request only (``tokenclean merge``).

Training never writes a merged copy (a full model per run is GBs; the adapter is MBs). When a merged model
is needed (serving, export), this writes one in the base model's own dtype (or the one asked for), with
the tokenizer, atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tokenclean.config import DEFAULT_DEVICE
from tokenclean.errors import ConfigError, ModelError
from tokenclean.models.loader import DTYPES, ModelSpec, load_model, load_tokenizer, resolve_model
from tokenclean.outputs import check_target, guarded
from tokenclean.utils import RESULT, atomic_dir, get_logger, package_versions, sha256_tree, write_json_atomic

log = get_logger("training")

MERGE_DTYPES = ("model", *(d for d in DTYPES if d != "auto"))


def model_dtype(spec: ModelSpec) -> str:
    """The dtype the base model's config declares (``fp32`` when it declares none)."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    cfg = AutoConfig.from_pretrained(spec.path, **kwargs)
    dt = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    name = str(dt).removeprefix("torch.")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(name, "fp32")


@guarded("merge", inputs=("model", "adapter"))
def merge(
    model: str, adapter: str | None, out: str | Path, dtype: str = "model", device: str = DEFAULT_DEVICE
) -> dict[str, Any]:
    """Load ``model`` + ``adapter``, ``merge_and_unload()`` and save the merged model and tokenizer to ``out``.

    ``dtype``: ``model`` (the base's own dtype, default), ``fp32``, ``bf16`` or ``fp16``. Returns the
    manifest written to OUT/merge.json. ``out`` follows :mod:`tokenclean.outputs`: an existing directory is
    replaced only when it is an earlier merge (``merge.json``); one equal to, inside or holding the model or
    the adapter is refused, before anything is loaded.
    """
    if dtype not in MERGE_DTYPES:
        raise ConfigError(f"merge.dtype: expected one of {', '.join(MERGE_DTYPES)}, got {dtype!r}")
    spec = resolve_model(model, adapter)
    check_target(out, "merge", [spec.path, spec.gguf_file, spec.adapter])  # an alias resolved to a path
    if spec.adapter is None:
        raise ConfigError("merge.adapter: no adapter given (pass --adapter DIR)")
    if not (Path(spec.adapter) / "adapter_config.json").exists():
        raise ModelError(f"{spec.adapter} is not a PEFT adapter directory (no adapter_config.json)")
    dt = model_dtype(spec) if dtype == "model" else dtype
    t0 = time.time()
    net = load_model(spec, dtype=dt, device=device, adapter=spec.adapter)
    merged = net.merge_and_unload()
    tok = load_tokenizer(ModelSpec(spec.name, spec.path, spec.gguf_file, None))
    manifest: dict[str, Any] = {
        "stage": "merge",
        "base": spec.name,
        "adapter": str(Path(spec.adapter).resolve()),
        "adapter_sha256": sha256_tree(spec.adapter),
        "dtype": dt,
        "versions": package_versions(),
    }
    with atomic_dir(out) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        manifest["seconds"] = round(time.time() - t0, 3)
        write_json_atomic(tmp / "merge.json", manifest)
    log.info("merged %s into %s (%s) -> %s", spec.adapter, spec.name, dt, out, extra=RESULT)
    return manifest
