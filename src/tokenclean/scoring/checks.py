"""Checks on a finished score store that catch a reference equal to the base: every score exactly 0
(e.g. a warm-up adapter whose every step ran at learning rate 0) or an adapter whose LoRA weights are
all zero. Such scores carry no information, and a selection from them is decided by the tie rule alone
(whole samples in dataset order), so ``score`` says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenclean.utils import get_logger

log = get_logger("scoring")


def zero_adapter(adapter: str | Path) -> str | None:
    """What makes a LoRA adapter a no-op (every ``lora_B`` or every ``lora_A`` tensor all zero), else None."""
    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    try:
        weights = load_file(str(path))
    except Exception:  # a bf16 file numpy cannot hold, or a damaged one: other checks report those
        return None
    for part in ("lora_B", "lora_A"):
        ts = [v for k, v in weights.items() if part in k]
        if ts and all(not np.any(t) for t in ts):
            return f"all {len(ts)} {part} tensors are zero"
    return None


def store_scores(out: str | Path) -> np.ndarray:
    """Every scored position's score of a finished store, flat: (n_scored,) float32."""
    import datasets
    import pyarrow.compute as pc

    col = datasets.load_from_disk(str(out)).with_format("arrow")[:]["score"]
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat[~np.isnan(flat)]


def reference_warnings(out: str | Path, mode: str, adapter: str | None) -> list[str]:
    """Warnings when the reference of store ``out`` is, in effect, the base."""
    if mode == "base_only":
        return []
    msgs = []
    scores = store_scores(out)
    if scores.size and not np.any(scores):
        msgs.append(
            f"every one of the {scores.size} scores in {out} is exactly 0: the reference gives the base's "
            "losses, so the scores carry no information and a selection from them keeps whole samples in "
            "dataset order (the tie rule). Was the reference trained? (a warm-up whose every step ran at "
            "learning rate 0 leaves the adapter at its initialisation)"
        )
    zero = zero_adapter(adapter) if adapter and Path(adapter).is_dir() else None
    if zero:
        msgs.append(f"the reference adapter {adapter} changes nothing: {zero}")
    return msgs


def warn_if_reference_is_base(out: str | Path, mode: str, adapter: str | None) -> list[str]:
    """Log :func:`reference_warnings`; return them."""
    msgs = reference_warnings(out, mode, adapter)
    for m in msgs:
        log.warning("%s", m)
    return msgs
