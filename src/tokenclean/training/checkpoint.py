"""Resumable checkpoints: OUT/checkpoint/ holds the last one, written atomically.

Contents: ``adapter/`` (the LoRA weights in PEFT format, usable on their own), ``optimizer.pt``,
``scheduler.pt``, ``rng.pt`` (torch CPU and CUDA generators, Python's and NumPy's global state of every
rank) and ``state.json`` (optimizer step = data position, token counters, elapsed seconds, the run
identity). Restoring them and continuing gives the same adapter as an uninterrupted run.

Sharded parameters (FSDP): ``sharded/`` replaces ``adapter/`` and ``optimizer.pt``: a
``torch.distributed.checkpoint`` of the trainable (LoRA) parameters and their optimizer state only, each
rank writing its own shards (``__RANK_0.distcp``; rank 0 adds ``.metadata``). The frozen base weights are
neither gathered nor written; they come from the base model on resume.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenclean.errors import ConfigError
from tokenclean.outputs import StaleOutputError
from tokenclean.utils import atomic_dir, read_json, write_json_atomic

CHECKPOINT = "checkpoint"


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np_state,
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    random.setstate(s["python"])
    np_state = s["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)


def is_sharded(acc: Any, model: Any = None) -> bool:
    """Whether parameters are sharded across ranks (FSDP / DeepSpeed, or a ``model`` whose parameters are
    FSDP2 ``DTensor`` shards): saving needs every rank."""
    if str(acc.distributed_type).split(".")[-1] in ("FSDP", "DEEPSPEED"):
        return True
    return model is not None and any(type(p).__name__ == "DTensor" for p in model.parameters())


def _write_states(d: Path, scheduler: Any, rng: list, policy_state: Any, state: dict[str, Any]) -> None:
    """The small per-run files of a checkpoint; ``state.json`` last (a checkpoint counts once it exists)."""
    torch.save(scheduler.state_dict(), d / "scheduler.pt")
    torch.save(rng, d / "rng.pt")
    if policy_state is not None:
        torch.save(policy_state, d / "policy.pt")
    write_json_atomic(d / "state.json", state)


def save_checkpoint(
    out: Path,
    acc: Any,
    model: Any,
    net: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    policy_state: dict[str, Any] | None = None,
) -> None:
    """Write OUT/checkpoint atomically (the previous one is replaced only once this one is complete), with
    every rank's RNG state gathered into ``rng.pt``. One process or DDP: rank 0 writes it. Sharded (FSDP):
    every rank writes its shards of the trainable parameters and optimizer state into ``sharded/``
    (:func:`_write_shards`), rank 0 the rest."""
    from accelerate.utils import broadcast_object_list, gather_object

    rng = gather_object([_rng_state()]) if acc.num_processes > 1 else [_rng_state()]
    sharded = is_sharded(acc, model)
    if acc.is_main_process:
        with atomic_dir(out / CHECKPOINT) as tmp:
            if sharded:
                broadcast_object_list([str(tmp)])  # where the other ranks write their shards
                _write_shards(tmp / SHARDED, model, optimizer)
            else:
                net.save_pretrained(str(tmp / "adapter"), save_embedding_layers=False)
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            _write_states(tmp, scheduler, rng, policy_state, state)
    elif sharded:
        _write_shards(Path(broadcast_object_list([None])[0]) / SHARDED, model, optimizer)
    acc.wait_for_everyone()


SHARDED = "sharded"


def _write_shards(d: Path, model: Any, optimizer: Any) -> None:
    """This rank's shards of the trainable parameters and of their optimizer state (every rank calls it;
    ``torch.distributed.checkpoint``: rank 0 writes the metadata once every rank has written)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(ignore_frozen_params=True, strict=False)  # trainable only
    weights, optim = get_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=opts)
    dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=str(d))


def _read_shards(d: Path, model: Any, optimizer: Any) -> None:
    """Load :func:`_write_shards`'s checkpoint into the (sharded) model and optimizer (every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    opts = StateDictOptions(ignore_frozen_params=True, strict=False)  # trainable only
    inner = getattr(optimizer, "optimizer", optimizer)
    weights, optim = get_state_dict(model, inner, options=opts)  # the shapes and shards to read into
    state: dict[str, Any] = {"model": weights, "optimizer": optim}
    dcp.load(state, checkpoint_id=str(d))  # fails naming a key the checkpoint lacks
    set_state_dict(
        model, inner, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=opts
    )


def read_checkpoint_state(out: Path) -> dict[str, Any] | None:
    p = out / CHECKPOINT / "state.json"
    return read_json(p) if p.exists() else None


def check_same_run(saved: dict[str, Any], current: dict[str, Any], what: str) -> None:
    """Raise :class:`StaleOutputError` (a :class:`ConfigError`) naming every setting that differs between a saved and the current run."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key == "config":
            for k in sorted(set(saved[key]) | set(current[key])):
                if saved[key].get(k) != current[key].get(k):
                    diffs.append(f"train.{k}: {saved[key].get(k)!r} -> {current[key].get(k)!r}")
        elif saved.get(key) != current.get(key):
            diffs.append(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}")
    if diffs:
        raise StaleOutputError(
            f"{what} was written by a different run ({'; '.join(diffs)}); pass --force to train again from "
            "the start, or use another --out"
        )


def load_checkpoint(
    out: Path, acc: Any, model: Any, net: Any, optimizer: Any, scheduler: Any, policy: Any = None
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG state from OUT/checkpoint; return its
    state.json. Every rank reads the same files."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    d = out / CHECKPOINT
    if is_sharded(acc, model):
        if not (d / SHARDED).is_dir():
            raise ConfigError(
                f"{d}: no {SHARDED}/ (written without FSDP, or by an older tokenclean); delete it to start over"
            )
        _read_shards(d / SHARDED, model, optimizer)
    else:
        weights = load_file(str(d / "adapter" / "adapter_model.safetensors"))
        res: Any = set_peft_model_state_dict(net, weights)
        missing = [k for k in res.missing_keys if "lora_" in k]
        if res.unexpected_keys or missing:
            raise ConfigError(
                f"{d}: adapter does not fit the model (missing {missing[:3]}, unexpected {res.unexpected_keys[:3]})"
            )
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=True))
    rng = torch.load(d / "rng.pt", weights_only=False)
    if isinstance(rng, dict):  # a checkpoint of a single-process run written before ranks existed
        rng = [rng]
    _set_rng_state(rng[acc.process_index])
    if policy is not None and (d / "policy.pt").exists():
        policy.load_state(torch.load(d / "policy.pt", weights_only=True))
    return read_json(d / "state.json")
