"""Step-level selection on real reasoning mistakes: ``tokenclean select --steps`` against token selection.

Reads a finished ``tokenclean run configs/real_mistakes_smollm2.yaml`` (its seeds' pool score stores: base vs
the warm-up reference, what fixed-model cleaning ranks) and selects again from them, without training: the
token score (fixed-model cleaning), and each step mode of :mod:`tokenclean.selection.steps` (a step ends at a
newline token, as ``tokenclean truth from-steps`` writes the traces). For each ratio it prints the run's
recovery columns, mean [95% interval] of the run's own bootstrap over traces and seeds
(:func:`tokenclean.pipelines.groundtruth.recovery_intervals`): the share of correct / mistake / after tokens
kept, the kept noise rate against the pool's, and the AUROC of the ranked score, correct vs noise.

    python benchmarks/real_mistakes_steps.py RUN_DIR [--ratios 0.6,0.9] [--out DIR]

Run it from the directory the run was started in (the run's data paths are relative to it). Seconds per
selection on 24-36 traces: well under one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

MODES = ("random", None, "mean", "min", "cut_mean", "cut_min")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run of configs/real_mistakes_smollm2.yaml")
    ap.add_argument("--ratios", default="0.6,0.9", help="comma list of keep ratios")
    ap.add_argument("--out", type=Path, default=None, help="where the selections go (default: a temp dir)")
    a = ap.parse_args(argv)

    from tokenclean.pipelines.groundtruth import _evidence, finished_runs, load_truth, recovery_intervals
    from tokenclean.selection import select
    from tokenclean.selection.steps import separator_vocab

    _, runs = finished_runs(a.run)
    truth = load_truth(runs[0])
    tok = runs[0].tokenizer
    ends = separator_vocab(tok, "\n")
    out = a.out or Path(tempfile.mkdtemp(prefix="steps-"))
    ratios = [float(r) for r in a.ratios.split(",")]
    print(f"run {a.run}: {len(runs)} seeds; selections in {out}")
    cols = ("correct", "mistake", "after")
    print(
        "| ratio | ranked by | "
        + " | ".join(f"{c} kept" for c in cols)
        + " | noise rate kept (pool) | AUROC correct vs noise | AUROC correct vs decisive |"
    )
    print("|---|---|" + "---|" * (len(cols) + 3))
    for ratio in ratios:
        for mode in MODES:
            ev = []
            for r in runs:
                d = out / r.root.name / f"{mode or 'tokens'}_{ratio:g}"
                rand = mode == "random"
                select(
                    r.root / "scores" / "pool",
                    ratio,
                    "random" if rand else "global",
                    d,
                    seed=r.cfg.selection.seed,
                    steps=None if rand else mode,
                    tokenizer=tok,
                    replace_stale=True,
                )
                store = r.root / "scores" / "pool"
                e = _evidence(
                    truth,
                    r.root,
                    "fixed_model",
                    {"cleaned": str(d.resolve()), "scores": str(store.resolve())},
                    [],
                )
                if rand:
                    e["scores"] = None
                elif mode is not None:  # AUROC of what was ranked: the step score
                    e["scores"] = _step_scores(store, ends, mode, e["ids"])
                ev.append(e)
            iv = recovery_intervals(truth, ev)
            cells = [_cell(iv, f"{c}|kept") for c in cols]
            rate, pool = iv["noise_rate_kept"], iv["noise_rate_all"]
            name = {None: "token score (fixed-model)", "random": "random"}.get(mode, f"steps={mode}")
            print(
                f"| {ratio:g} | {name} | "
                + " | ".join(cells)
                + f" | {_pct(rate)} ({100 * pool.mean:.1f}%) | {_num(iv.get('auroc'))}"
                + f" | {_num(iv.get('mistake|auroc_decisive'))} |"
            )
    return 0


def _step_scores(store: Path, ends: Any, mode: str, ids: list[str]) -> list[Any]:
    """Per sample (in ``ids`` order) the step scores :func:`~tokenclean.selection.steps.step_scores` ranks."""
    from tokenclean.selection.steps import step_scores
    from tokenclean.selection.table import load_token_table

    t = load_token_table(store)
    s = step_scores(t, ends, mode)
    row = {sid: s[int(a) : int(b)] for sid, a, b in zip(t.sample_ids, t.offsets[:-1], t.offsets[1:])}
    return [row[i] for i in ids]


def _pct(v: Any) -> str:
    return f"{100 * v.mean:.1f}% [{100 * v.lo:.1f}, {100 * v.hi:.1f}]"


def _num(v: Any) -> str:
    return "-" if v is None or v.mean is None else f"{v.mean:.2f} [{v.lo:.2f}, {v.hi:.2f}]"


def _cell(iv: dict[str, Any], key: str) -> str:
    return _pct(iv[key]) if key in iv and iv[key].mean is not None else "-"


if __name__ == "__main__":
    sys.exit(main())
