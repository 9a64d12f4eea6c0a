"""tokenclean's token policies as a TRL ``SFTTrainer`` loss plug-in: cleaned labels and soft weights that
survive packing, padding-free batches, gradient accumulation, data parallelism and evaluation.

    from trl import SFTConfig
    from tokenclean.interop import sft_trainer

    args = SFTConfig(output_dir="out", packing=True, padding_free=True, max_length=2048)
    trainer = sft_trainer(model, args, "runs/clean", token_policy="dft", processing_class=tok)
    trainer.train()

or ``class MyTrainer(TokenPolicyMixin, SFTTrainer)`` with the same keyword arguments. What the mixin does:

- **Data**: the training (and evaluation) data, a tokenclean dataset directory or a ``datasets.Dataset``
  with ``input_ids``/``labels`` (``weights``), goes through :func:`~tokenclean.interop.trl_data.token_dataset`
  (packed by TRL's own ``pack_dataset`` when ``packing=True``) and :func:`~tokenclean.interop.trl_data.
  token_collator` (padding-free when ``padding_free`` or ``packing``). TRL's own packing keeps only
  ``input_ids``/``labels`` and its collator drops other keys, so the mixin does this layout itself and hands
  TRL a prepared dataset (``packing``/``padding_free`` off for TRL, ``skip_prepare_dataset``).
- **Loss** (the rule of :mod:`tokenclean.training.loss`): ``sum_j w_j * m_j * -log P(x_j | x_<j) / W``
  where ``w`` is the policy's weight of each candidate token (``labels != -100``, not a sample's first
  token), ``m`` its in-forward multiplier (DFT's ``sg(p)``) and ``W`` the sum of ``w`` over the whole
  accumulation window on all devices (``get_batch_samples``; DDP's gradient mean is undone by the
  number of processes, like ``Trainer``). At evaluation (``num_items_in_batch`` None) ``W`` is the
  batch's own sum. The forward runs through the model's ``forward`` (so DDP sees it) with no logits
  asked; the LM head runs only on the counted tokens (:func:`tokenclean.signals.forward_token_signals`).
- **Policies**: any registered policy that decides from the data and the gradient pass alone
  (``labels``, ``weights``, ``dft``, ...: :func:`tokenclean.training.policies.build_policy`). A policy that
  reads the model in a no-grad pass before the gradient pass (rho1, profit, sstoken) is refused with a
  clear error: train it with ``tokenclean train``.
- **Refused configurations** (a ``ConfigError`` at construction instead of a silently wrong loss): Liger
  kernels, TRL's ``loss_type`` other than ``nll``, ``compute_loss_func``, label smoothing, packing
  strategies that cut samples (``wrapped``, ``bfd_split``), FSDP/DeepSpeed, and several processes without
  ``average_tokens_across_devices``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.errors import ConfigError, DataError
from tokenclean.interop.trl_data import TOKEN_WEIGHTS, token_collator, token_dataset
from tokenclean.training.policies import Policy, StepView, build_policy

COUNTED = "tokenclean_counted"  # batch key: the policy's weight per position (B, T), set per window


class _ModelRead(Exception):
    pass


class _NoModel:
    """The ``StepView.model`` of the plug-in: a policy that touches it needs a pass TRL does not run."""

    def __getattr__(self, name: str) -> Any:
        raise _ModelRead(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _ModelRead("__call__")


def check_args(args: Any) -> None:
    """Refuse TRL settings that would bypass or change the token loss."""
    why = {
        "use_liger_kernel": "Liger's fused linear cross-entropy computes its own token mean and takes no "
        "per-token weights, so tokenclean's labels/weights would be dropped; set use_liger_kernel=False (the "
        "tokenclean loss already runs the LM head on counted tokens only)",
        "loss_type": f"TRL's loss_type={getattr(args, 'loss_type', None)!r} is its own loss; keep 'nll' and "
        "choose token_policy='dft' for DFT",
        "label_smoothing_factor": "label smoothing changes the per-token loss; set it to 0",
    }
    if getattr(args, "use_liger_kernel", False):
        raise ConfigError(f"args.use_liger_kernel: {why['use_liger_kernel']}")
    if getattr(args, "loss_type", "nll") != "nll":
        raise ConfigError(f"args.loss_type: {why['loss_type']}")
    if getattr(args, "label_smoothing_factor", 0.0):
        raise ConfigError(f"args.label_smoothing_factor: {why['label_smoothing_factor']}")
    if getattr(args, "packing", False) and getattr(args, "packing_strategy", "bfd") != "bfd":
        raise ConfigError(
            f"args.packing_strategy: {args.packing_strategy!r} cuts samples across rows (a cut-off part would "
            "train without its context); use 'bfd'"
        )


def check_trainer(trainer: Any) -> None:
    """Refuse a built trainer whose loss or parallelism would bypass the plug-in's loss."""
    if getattr(trainer, "compute_loss_func", None) is not None:
        raise ConfigError("compute_loss_func: the tokenclean plug-in is the loss; do not pass another one")
    acc, args = trainer.accelerator, trainer.args
    kind = str(acc.distributed_type).split(".")[-1]
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ConfigError(
            f"accelerate distributed type {kind}: the plug-in runs the LM head outside the sharded forward; "
            "use one process or DDP (tokenclean train supports FSDP)"
        )
    if acc.num_processes > 1 and not args.average_tokens_across_devices:
        raise ConfigError(
            "args.average_tokens_across_devices: must be True with several processes (the loss is normalised "
            "over the counted tokens of the whole window on all devices)"
        )
    fwd = type(acc.unwrap_model(trainer.model)).forward
    if "liger" in (getattr(fwd, "__module__", "") or ""):
        raise ConfigError(
            "model: its forward is patched by Liger (fused linear cross-entropy), which ignores per-token "
            "weights; load the model without Liger's patches"
        )


def _micro_batch(inputs: dict[str, Any]) -> Any:
    """The candidates of one TRL batch as a :class:`tokenclean.training.collate.MicroBatch`."""
    import torch

    from tokenclean.signals import TokenBatch
    from tokenclean.training.collate import MicroBatch

    labels = inputs["labels"]  # (B, T)
    cand = labels != IGNORE_INDEX
    cand[:, 0] = False  # position 0 has no preceding logits
    if inputs.get("position_ids") is not None:
        cand &= inputs["position_ids"] != 0  # every packed sample's first token
    rows, pos = cand.nonzero(as_tuple=True)  # (N,), (N,)
    tw = inputs.get(TOKEN_WEIGHTS)
    data_w = tw[rows, pos].float() if tw is not None else torch.ones(len(rows))
    r, p = rows.cpu().numpy(), pos.cpu().numpy()
    tb = TokenBatch(
        inputs["input_ids"], inputs.get("attention_mask"), rows, pos, position_ids=inputs.get("position_ids")
    )
    return MicroBatch(
        tb,
        data_w.detach().cpu().numpy().astype(np.float32),
        np.arange(labels.shape[0], dtype=np.int64),
        [p[r == i] for i in range(labels.shape[0])],
        np.stack([r, p], 1).astype(np.int64).reshape(-1, 2),
        n_tokens=int(
            labels.numel() if inputs.get("attention_mask") is None else inputs["attention_mask"].sum()
        ),
    )


class TokenPolicyMixin:
    """Put first in the bases of ``trl.SFTTrainer`` (see the module doc). Extra keyword arguments:
    ``token_policy`` (a registered policy name or a built :class:`~tokenclean.training.policies.Policy`;
    default ``weights`` when the data has a ``weights`` column, else ``labels``) and ``policy_settings``."""

    loss_is_scaled_for_ga = True  # normalised over the whole accumulation window (get_batch_samples)

    def __init__(self, *args: Any, token_policy: str | Policy | None = None, policy_settings: Any = None,
                 **kwargs: Any) -> None:  # fmt: skip
        targs = kwargs.get("args")
        if targs is None:
            raise ConfigError("args: pass args=SFTConfig(...) by keyword")
        check_args(targs)
        kwargs = _layout(kwargs)
        has_w = "weights" in kwargs["train_dataset"].column_names
        name = token_policy or ("weights" if has_w else "labels")
        self.token_policy = name if isinstance(name, Policy) else build_policy(name, policy_settings, None)
        if self.token_policy.uses_data_weights and not has_w:
            raise DataError(
                "train_dataset", f"policy {self.token_policy.name!r} needs a weights column", "weights"
            )
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        check_trainer(self)

    def _policy_weights(self, batches: list[dict[str, Any]]) -> list[Any]:
        """The policy's weight per position (B, T) of every batch of one window (or one evaluation batch)."""
        import torch

        from tokenclean.training.distributed import StepDist

        acc = self.accelerator  # type: ignore[attr-defined]
        mbs = [_micro_batch(b) for b in batches]
        dist = StepDist(acc if acc.num_processes > 1 else None)
        step = int(self.state.global_step)  # type: ignore[attr-defined]
        view = StepView(_NoModel(), mbs, step, dist.rank, dist.gather, contextlib.nullcontext)
        try:
            ws = self.token_policy.weights(view)
        except _ModelRead:
            raise ConfigError(
                f"token_policy: {self.token_policy.name!r} reads the model in a no-grad pass before the gradient "
                "pass; the TRL plug-in takes single-forward policies only (labels, weights, dft, ...): train this "
                "one with `tokenclean train`"
            ) from None
        out = []
        for b, mb, w in zip(batches, mbs, ws):
            full = torch.zeros(b["labels"].shape, dtype=torch.float32, device=b["labels"].device)  # (B, T)
            full[mb.batch.rows, mb.batch.pos] = torch.as_tensor(w, dtype=torch.float32).to(full.device)
            out.append(full)
        return out

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        import torch

        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)  # type: ignore[misc]
        if not batches:
            return batches, None
        for b, w in zip(batches, self._policy_weights(batches)):
            b[COUNTED] = w
        total = sum(b[COUNTED][:, 1:].sum().double() for b in batches).to(device)  # type: ignore[union-attr]
        args = self.args  # type: ignore[attr-defined]
        if args.average_tokens_across_devices and args.world_size > 1:
            total = self.accelerator.gather(total).sum()  # type: ignore[attr-defined]
        return batches, torch.as_tensor(total, dtype=torch.float32)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The token loss of one batch (module doc); ``num_items_in_batch`` is the window's weight sum."""
        from tokenclean.signals import TokenBatch, forward_token_signals

        w = inputs.pop(COUNTED, None)
        if w is None:  # evaluation, or a batch that did not come through get_batch_samples
            w = self._policy_weights([inputs])[0]
        inputs.pop(TOKEN_WEIGHTS, None)
        rows, pos = (w > 0).nonzero(as_tuple=True)  # (N,), (N,) the counted tokens only
        wt = w[rows, pos]
        if len(rows) == 0:  # nothing counts here: one token with weight 0 keeps the graph (and DDP) whole
            rows, pos = rows.new_zeros(1), rows.new_ones(1)
            wt = w.new_zeros(1)
        policy = self.token_policy
        tb = TokenBatch(
            inputs["input_ids"],
            inputs.get("attention_mask"),
            rows,
            pos,
            position_ids=inputs.get("position_ids"),
        )
        sig = forward_token_signals(model, tb, ("loss", *policy.forward_signals))
        m = policy.multiplier(sig)
        contrib = (wt * sig["loss"] * (1.0 if m is None else m)).sum()
        norm = num_items_in_batch if num_items_in_batch is not None else w[:, 1:].sum()
        loss = (
            contrib / norm.clamp_min(1e-12)
            if hasattr(norm, "clamp_min")
            else contrib / max(float(norm), 1e-12)
        )
        args = self.args  # type: ignore[attr-defined]
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # type: ignore[attr-defined]  # DDP averages grads
        if not return_outputs:
            return loss
        import torch

        with torch.no_grad():  # logits only when asked (compute_metrics): one more forward
            keys = ("input_ids", "attention_mask", "position_ids")
            outputs = model(**{k: inputs[k] for k in keys if inputs.get(k) is not None})
        return loss, outputs


def _layout(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Datasets and collator laid out by tokenclean (module doc); TRL gets them prepared."""
    args = kwargs["args"]
    packing = bool(getattr(args, "packing", False))
    flat = packing or bool(getattr(args, "padding_free", False))
    max_length = getattr(args, "max_length", None)
    if packing and not max_length:
        raise ConfigError("args.max_length: packing needs a row length")
    length = int(max_length or 1 << 30)
    kwargs["train_dataset"] = token_dataset(kwargs["train_dataset"], length, packing)
    ev = kwargs.get("eval_dataset")
    if ev is not None:
        eval_packing = packing if getattr(args, "eval_packing", None) is None else bool(args.eval_packing)
        conv = lambda d: token_dataset(d, length, eval_packing)  # noqa: E731
        kwargs["eval_dataset"] = {k: conv(v) for k, v in ev.items()} if isinstance(ev, dict) else conv(ev)
    if kwargs.get("data_collator") is None:
        pad = getattr(kwargs.get("processing_class"), "pad_token_id", None)
        kwargs["data_collator"] = token_collator(int(pad or 0), flat)
    dk = dict(getattr(args, "dataset_kwargs", None) or {}, skip_prepare_dataset=True)
    changes: dict[str, Any] = {"remove_unused_columns": False, "dataset_kwargs": dk}
    changes |= {k: False for k in ("packing", "padding_free", "eval_packing") if hasattr(args, k)}
    kwargs["args"] = dataclasses.replace(args, **changes)
    return kwargs


def sft_trainer(model: Any, args: Any, train_dataset: Any, **kwargs: Any) -> Any:
    """A ``trl.SFTTrainer`` with :class:`TokenPolicyMixin` (keywords: ``token_policy``, ``policy_settings``,
    ``eval_dataset``, ``processing_class`` and any other ``SFTTrainer`` argument)."""
    from trl import SFTTrainer

    cls = type("TokencleanSFTTrainer", (TokenPolicyMixin, SFTTrainer), {})
    return cls(model=model, args=args, train_dataset=train_dataset, **kwargs)


__all__ = ["COUNTED", "TokenPolicyMixin", "check_args", "check_trainer", "sft_trainer"]
