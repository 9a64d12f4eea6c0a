"""What each method's result cost, read back from its run directory: the budget columns of every table.

- ``updates``: optimizer updates that produced the evaluated weights (self-evolving: its warm-up plus every
  round, since each round continues the previous adapter; fixed-model, RHO, random, full: their own
  training; warm-up/DS2: the warm-up).
- ``trained_tokens``: tokens counted in the loss over those updates (kept tokens, every pass).
- ``forward_tokens`` / ``backward_tokens``: token-passes of the whole method, counting everything it needs:
  every training it depends on (warm-up, cross-fitted references; one forward and one backward pass per
  input token) and every scoring pass (two forward passes per scored token: base and reference).
  The random baseline needs no score, so none is counted for it. Online token policies add their
  no-grad passes over every step's input tokens (:data:`NO_GRAD_PASSES`: online RHO-1 one, two with
  ``reference: base``; ssToken two, current and history model; ProFit one; DFT none: its weight comes from
  the gradient pass), online RHO-1 with stored reference losses and soft Token Cleaning also the warm-up and
  scoring behind their store, XTF one base forward pass over the prepared pool.

Counts come from the stages' own records (``done.json`` ``tokens.input``/``tokens.kept``/``steps``, score
``manifest.json`` ``counts.tokens``), not from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenclean.utils import read_json


def _train(d: Path) -> dict[str, int]:
    done = read_json(d / "done.json")
    tok = done.get("tokens") or {}
    return {"updates": int(done["steps"]), "input": int(tok.get("input", 0)), "kept": int(tok.get("kept", 0))}


def _scored(d: Path) -> int:
    """Forward token-passes of a score store: base and reference pass over each scored sample."""
    m = read_json(d / "manifest.json")
    if "joined_from" in m:
        return sum(_scored(Path(p)) for p in m["joined_from"])
    return 2 * int((m.get("counts") or {}).get("tokens", 0))


def _reference_cost(root: Path, scores: Path) -> tuple[list[Path], list[Path]]:
    """(trainings, score stores) behind a fixed-reference score store."""
    m = read_json(scores / "manifest.json")
    if "joined_from" in m:
        trains = sorted((root / "crossfit").glob("fold_*/warmup"))
        return trains, [scores]
    return ([root / "warmup"] if (root / "warmup" / "done.json").exists() else []), [scores]


NO_GRAD_PASSES = {"rho1": 1, "sstoken": 2, "profit": 1, "dft": 0}
"""Forward passes per input token a token policy runs without gradient in every step, before the gradient
pass (tokenclean.training.policies)."""


def _policy_passes(m: dict[str, Any]) -> int:
    pol = m.get("policy") or {}
    name, settings = pol.get("name"), pol.get("settings") or {}
    extra = 1 if name == "rho1" and settings.get("reference") == "base" else 0
    return NO_GRAD_PASSES.get(str(name), 0) + extra


def _pool_tokens(cleaned: Path) -> int:
    """Input tokens of the prepared dataset a cleaned set was selected from (XTF's base pass)."""
    prepared = (read_json(cleaned / "manifest.json").get("prepared") or {}).get("dir")
    return (
        int((read_json(Path(prepared) / "manifest.json").get("tokens") or {}).get("total", 0))
        if prepared
        else 0
    )


def method_budget(root: Path, name: str, m: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, int]:
    """The budget of method ``name`` (its summary entry ``m``) in run directory ``root``."""
    if name == "base" or not m.get("adapter"):
        return {"updates": 0, "trained_tokens": 0, "forward_tokens": 0, "backward_tokens": 0}
    own = (root / m["adapter"]).parent
    lineage: list[Path]  # trainings whose updates built the evaluated weights
    extra: list[Path] = []  # other trainings the method needs (references)
    stores: list[Path] = []
    if name == "self_evolving":
        lineage = [root / "warmup"] + [(root / r["adapter"]).parent for r in rounds]
        stores = [root / r["scores"] for r in rounds]
    elif name in ("fixed_model", "rho", "soft_token_cleaning"):
        lineage = [own]
        extra, stores = _reference_cost(root, root / m["scores"])
    else:  # full, random, warmup, xtf, and the online policies
        lineage = [own]
        ref_store = ((m.get("policy") or {}).get("settings") or {}).get("scores")
        if ref_store:  # online RHO-1 against stored reference losses
            extra, stores = _reference_cost(root, root / ref_store)
    t_lin = [_train(d) for d in lineage]
    t_all = t_lin + [_train(d) for d in extra]
    passes = sum(t["input"] for t in t_all)
    no_grad = _policy_passes(m) * t_lin[-1]["input"]
    xtf = _pool_tokens(root / m["cleaned"]) if name == "xtf" else 0
    return {
        "updates": sum(t["updates"] for t in t_lin),
        "trained_tokens": sum(t["kept"] for t in t_lin),
        "forward_tokens": passes + sum(_scored(s) for s in stores) + no_grad + xtf,
        "backward_tokens": passes,
    }


def self_evolving_updates(root: Path, rounds: list[dict[str, Any]]) -> int:
    """Optimizer updates of the self-evolving adapter (warm-up + every round)."""
    lineage = [root / "warmup"] + [(root / r["adapter"]).parent for r in rounds]
    return sum(_train(d)["updates"] for d in lineage)
