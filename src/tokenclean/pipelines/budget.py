"""What each method's result cost, read back from its run directory: the budget columns of every table.

- ``updates``: optimizer updates that produced the evaluated weights (self-evolving: its warm-up plus every
  round, since each round continues the previous adapter; fixed-model, RHO, random, full: their own
  training; warm-up/DS2: the warm-up).
- ``trained_tokens``: tokens counted in the loss over those updates (kept tokens, every pass).
- ``forward_tokens`` / ``backward_tokens``: token-passes of the whole method, counting everything it needs:
  every training it depends on (warm-up, cross-fitted references; one forward and one backward pass per
  input token) and every scoring pass (two forward passes per scored token: base and reference).
  Only methods whose spec is ``scored`` pay for a score store (the random baseline needs none). Online token
  policies add their no-grad passes over every step's input tokens (``MethodSpec.no_grad_passes`` of their
  settings), methods with ``pool_passes`` their forward passes over the prepared pool (XTF's base pass).
  Every trait comes from the method registry (:mod:`tokenclean.methods`).

Counts come from the stages' own records (``done.json`` ``tokens.input``/``tokens.kept``/``steps``, score
``manifest.json`` ``counts.tokens``), not from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenclean import methods
from tokenclean.methods import MethodSpec
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
    """(trainings, score stores) behind a fixed-reference score store: the training that made its reference
    adapter (read from the store's manifest; none for an external model), or every cross-fitted fold's."""
    m = read_json(scores / "manifest.json")
    if "joined_from" in m:
        trains = sorted((root / "crossfit").glob("fold_*/warmup"))
        return trains, [scores]
    adapter = (m.get("reference") or {}).get("adapter")
    trained = Path(adapter).parent if adapter else None
    return ([trained] if trained is not None and (trained / "done.json").exists() else []), [scores]


def _policy_passes(spec: MethodSpec, m: dict[str, Any]) -> int:
    """No-grad passes per input token of the policy the method trained with (its recorded settings)."""
    pol = m.get("policy") or {}
    if spec.policy is None or pol.get("name") != spec.policy.name:
        return 0
    return spec.passes(pol.get("settings"))


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
    spec = methods.get(name)
    if not m.get("adapter"):
        return {"updates": 0, "trained_tokens": 0, "forward_tokens": 0, "backward_tokens": 0}
    lineage: list[Path] = [(root / m["adapter"]).parent]  # trainings whose updates built the weights
    extra: list[Path] = []  # other trainings the method needs (references)
    stores: list[Path] = []
    if spec.rounds:
        lineage = [root / "warmup"] + [(root / r["adapter"]).parent for r in rounds]
        stores = [root / r["scores"] for r in rounds]
    elif spec.scored and m.get("scores"):
        for store in m.get("score_stores") or [m["scores"]]:
            trains, own_stores = _reference_cost(root, root / store)
            extra += [t for t in trains if t not in extra]
            stores += own_stores
    t_lin = [_train(d) for d in lineage]
    t_all = t_lin + [_train(d) for d in extra]
    passes = sum(t["input"] for t in t_all)
    no_grad = _policy_passes(spec, m) * t_lin[-1]["input"]
    pool = spec.pool_passes * _pool_tokens(root / m["cleaned"]) if spec.pool_passes else 0
    return {
        "updates": sum(t["updates"] for t in t_lin),
        "trained_tokens": sum(t["kept"] for t in t_lin),
        "forward_tokens": passes + sum(_scored(s) for s in stores) + no_grad + pool,
        "backward_tokens": passes,
    }


def self_evolving_updates(root: Path, rounds: list[dict[str, Any]]) -> int:
    """Optimizer updates of the self-evolving adapter (warm-up + every round)."""
    lineage = [root / "warmup"] + [(root / r["adapter"]).parent for r in rounds]
    return sum(_train(d)["updates"] for d in lineage)
