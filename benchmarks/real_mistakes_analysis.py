"""Why does Token Cleaning keep real reasoning errors, and what would remove them? (issue 23)

Reads the score stores of benchmarks/real_mistakes_refs.sh (per seed: base vs a warm-up reference trained on
split 0 of the pool, mistakes included = ``noisy``, or on as many mistake-free traces from outside the pool =
``clean``) over splits 1 and 2 of configs/real_mistakes_smollm2.yaml's pool, and the pool's step truth
(``tokenclean truth from-steps``). For every token signal below it keeps the top 60% of the scored response
tokens (global, as fixed-model cleaning does) and reports, as mean [95% interval] of a bootstrap over traces
and seeds (tokenclean.stats.bootstrap):

- share of correct / mistake / after tokens kept, the kept noise rate (mistake + after) vs the pool's;
- AUROC correct vs mistake tokens, and correct vs the mistake's decisive (first) token;
- ``noise@95``: the share of noise tokens kept at the cut that keeps 95% of correct tokens (a ranking's
  operating point at the issue's bar), and the kept noise rate there.

Signals: ``tc`` = base loss - reference loss (Token Cleaning); ``ref_ll`` = -reference loss (what the reference
finds likely); ``base_ll`` = -base loss; ``random``; ``step:X`` = X averaged over each reasoning step (a step
starts at its decisive token); ``stepmin:X`` = the step's lowest X (its least likely / least learnable
token); ``cut:X`` / ``cutmin:X`` = the running minimum of step:X / stepmin:X along the trace (a step inherits
the worst step before it, so what follows an error goes with it).

    python benchmarks/real_mistakes_analysis.py [--refs runs/rm-refs] [--run runs/real-mistakes/seed_0]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

NOISE = ("mistake", "after")
RATIO = 0.6


def load(
    refs: Path, run: Path, seeds: list[int], names: list[str]
) -> tuple[list[str], dict[str, Any], dict[str, list]]:
    """(ids, truth {labels, decisive, names}, losses {ref name: per seed: {base, ref} per sample})."""
    import datasets

    from tokenclean.groundtruth.user_truth import load_user_truth
    from tokenclean.models.loader import load_tokenizer

    data = Path("runs/bbmistake-data")
    tt = load_user_truth(
        data / "truth.jsonl", data / "data.jsonl", run / "data" / "pool", load_tokenizer("smollm2")
    )
    losses: dict[str, list] = {}
    ids: list[str] = []
    for ref in names:
        losses[ref] = []
        for s in seeds:
            base, rl = {}, {}
            for k in (1, 2):
                ds = datasets.load_from_disk(str(refs / f"scores_{ref}_s{s}_split{k}"))
                for sid, b, r in zip(ds["sample_id"], ds["base_loss"], ds["ref_loss"]):
                    base[sid], rl[sid] = np.asarray(b, np.float64), np.asarray(r, np.float64)
            ids = sorted(base)
            losses[ref].append({"base": [base[i] for i in ids], "ref": [rl[i] for i in ids]})
    truth = {
        "names": tt.names,
        "labels": [tt.samples[i].labels.astype(np.int64) for i in ids],
        "decisive": [tt.samples[i].decisive.astype(np.int64) for i in ids],
    }
    return ids, truth, losses


def steps_of(decisive: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Step index per position: a step starts at each decisive token (every step's first token)."""
    return np.cumsum(decisive >= 0) * scored


def step_mean(x: np.ndarray, step: np.ndarray, scored: np.ndarray) -> np.ndarray:
    out = x.copy()
    for k in np.unique(step[scored]):
        m = scored & (step == k)
        out[m] = x[m].mean()
    return out


def step_min(x: np.ndarray, step: np.ndarray, scored: np.ndarray) -> np.ndarray:
    out = x.copy()
    for k in np.unique(step[scored]):
        m = scored & (step == k)
        out[m] = x[m].min()
    return out


def running_min(x: np.ndarray, step: np.ndarray, scored: np.ndarray, agg: Callable = step_mean) -> np.ndarray:
    sm = agg(x, step, scored)
    out = x.copy()
    out[scored] = np.minimum.accumulate(sm[scored])
    return out


def signals(lo: dict[str, list], truth: dict[str, Any], seed: int) -> dict[str, list[np.ndarray]]:
    """Every signal per sample (NaN where not scored) for one seed."""
    base = {ref: lo[ref][seed]["base"] for ref in lo}["noisy"]
    rng = np.random.default_rng(1000 + seed)
    raw: dict[str, list[np.ndarray]] = {
        "random": [rng.random(len(b)) for b in base],
        "base_ll": [-b for b in base],
    }
    for ref in lo:
        r = lo[ref][seed]["ref"]
        raw[f"tc[{ref}]"] = [b - x for b, x in zip(base, r)]
        raw[f"ref_ll[{ref}]"] = [-x for x in r]
    out = dict(raw)
    for name in [n for n in raw if n.startswith(("tc", "ref_ll"))]:
        for v in ("step", "cut", "stepmin", "cutmin"):
            out[f"{v}:{name}"] = []
        for x, d in zip(raw[name], truth["decisive"]):
            sc = ~np.isnan(x)
            st = steps_of(d, sc)
            out[f"step:{name}"].append(step_mean(x, st, sc))
            out[f"cut:{name}"].append(running_min(x, st, sc))
            out[f"stepmin:{name}"].append(step_min(x, st, sc))
            out[f"cutmin:{name}"].append(running_min(x, st, sc, step_min))
    return out


def top_keep(sig: list[np.ndarray], ratio: float, seed: int = 0) -> list[np.ndarray]:
    """Exactly the top ``ratio`` of the scored tokens (ties, e.g. within a step, broken at random)."""
    flat = np.concatenate(sig)
    ok = np.flatnonzero(~np.isnan(flat))
    jitter = np.random.default_rng(seed).random(len(ok))
    order = ok[np.lexsort((jitter, -flat[ok]))]  # best first
    keep = np.zeros(len(flat), dtype=bool)
    keep[order[: round(ratio * len(ok))]] = True
    return np.split(keep, np.cumsum([len(x) for x in sig])[:-1])


def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if not len(pos) or not len(neg):
        return None
    allv = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(allv, kind="mergesort"), kind="mergesort") + 1.0
    # average ranks of ties
    _, inv, cnt = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / cnt)[inv]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def stat_fn(truth: dict[str, Any], per_seed: list[dict[str, list[np.ndarray]]], name: str) -> Callable:
    names = truth["names"]
    idx = {n: names.index(n) for n in ("correct", *NOISE) if n in names}
    keeps = [top_keep(ps[name], RATIO, i) for i, ps in enumerate(per_seed)]

    def f(s: int, units: np.ndarray) -> dict[str, float | None]:
        lab = np.concatenate([truth["labels"][u] for u in units])
        dec = np.concatenate([truth["decisive"][u] for u in units])
        sig = np.concatenate([per_seed[s][name][u] for u in units])
        kp = np.concatenate([keeps[s][u] for u in units])
        ok = ~np.isnan(sig)
        cor, mis, aft = (ok & (lab == idx[n]) for n in ("correct", "mistake", "after"))
        noise = mis | aft
        mdec = ok & (dec == idx["mistake"])
        out: dict[str, float | None] = {
            f"{n} kept": float(kp[m].mean()) if m.any() else None
            for n, m in (("correct", cor), ("mistake", mis), ("after", aft))
        }
        out["decisive kept"] = float(kp[mdec].mean()) if mdec.any() else None
        out["noise rate kept"] = float(kp[noise].sum() / max(kp[ok].sum(), 1))
        out["noise rate pool"] = float(noise.sum() / ok.sum())
        out["AUROC c/m"] = auroc(sig[cor], sig[mis])
        out["AUROC c/dec"] = auroc(sig[cor], sig[mdec])
        thr = np.quantile(sig[cor], 0.05) if cor.any() else np.inf
        at = ok & (sig >= thr)
        out["noise@95 kept"] = float(at[noise].mean()) if noise.any() else None
        out["noise@95 rate"] = float(at[noise].sum() / max(at.sum(), 1))
        return out

    return f


def class_means(truth: dict[str, Any], lo: dict[str, list], seed: int) -> dict[str, dict[str, float]]:
    """Mean base loss, reference losses and Token Cleaning score per token class (one seed): the why."""
    names = truth["names"]
    lab = np.concatenate(truth["labels"])
    dec = np.concatenate(truth["decisive"])
    base = np.concatenate(lo["noisy"][seed]["base"])
    cols = {"base loss": base}
    for ref in lo:
        r = np.concatenate(lo[ref][seed]["ref"])
        cols[f"ref loss [{ref}]"] = r
        cols[f"tc [{ref}]"] = base - r
    ok = ~np.isnan(base)
    groups = {
        "correct": ok & (lab == names.index("correct")),
        "mistake (decisive token)": ok & (dec == names.index("mistake")),
        "mistake (other tokens)": ok & (lab == names.index("mistake")) & (dec != names.index("mistake")),
        "after": ok & (lab == names.index("after")),
    }
    return {
        g: {c: float(v[m].mean()) for c, v in cols.items()} | {"tokens": int(m.sum())}
        for g, m in groups.items()
    }


def main() -> None:
    from tokenclean.stats import bootstrap

    ap = argparse.ArgumentParser()
    ap.add_argument("--refs", default="runs/rm-refs")
    ap.add_argument("--run", default="runs/real-mistakes/seed_0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--refs-names", default="noisy,clean")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--out", default="runs/rm-refs/analysis.json")
    a = ap.parse_args()
    seeds = [int(x) for x in a.seeds.split(",")]
    ids, truth, lo = load(Path(a.refs), Path(a.run), seeds, a.refs_names.split(","))
    per_seed = [signals(lo, truth, i) for i in range(len(seeds))]
    print(f"{len(ids)} traces (splits 1-2), seeds {seeds}; keep ratio {RATIO}; mean [95% interval]")
    res: dict[str, Any] = {}
    for name in per_seed[0]:
        iv = bootstrap(stat_fn(truth, per_seed, name), len(seeds), len(ids), n_boot=a.boot)
        res[name] = {k: [v.mean, v.lo, v.hi] for k, v in iv.items()}
    cols = [
        "correct kept",
        "mistake kept",
        "decisive kept",
        "after kept",
        "noise rate kept",
        "AUROC c/m",
        "AUROC c/dec",
        "noise@95 kept",
        "noise@95 rate",
    ]
    pool = res["random"]["noise rate pool"]
    print(f"noise rate of the scored pool: {pool[0]:.3f} [{pool[1]:.3f}, {pool[2]:.3f}]")
    print("| signal | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in res.items():
        cells = []
        for c in cols:
            m, lo_, hi = r.get(c, [None] * 3)
            pct = "kept" in c or "rate" in c
            cells.append(
                "-"
                if m is None
                else (
                    f"{100 * m:.1f}% [{100 * lo_:.1f}, {100 * hi:.1f}]"
                    if pct
                    else f"{m:.2f} [{lo_:.2f}, {hi:.2f}]"
                )
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    why = [class_means(truth, lo, i) for i in range(len(seeds))]
    print("\nMean per token class (seed-averaged): base loss, reference losses, Token Cleaning score")
    for g in why[0]:
        vals = {c: np.mean([w[g][c] for w in why]) for c in why[0][g]}
        print(
            f"  {g}: "
            + ", ".join(f"{c} {v:.2f}" if c != "tokens" else f"{int(v)} tokens" for c, v in vals.items())
        )
    Path(a.out).write_text(json.dumps({"ids": ids, "seeds": seeds, "signals": res, "why": why}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
