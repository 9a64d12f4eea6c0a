"""A synthetic run directory in the pipelines' layout, for tests and for previewing the report without
training anything. Its numbers are made up (seeded); its name says so.

It prepares a real dataset with :func:`tokenclean.data.prepare.prepare`, draws per-token base/reference
losses, writes score stores and cleaned datasets in the stage contracts (global top-k for
``fixed_model``, per-sample top-k for ``rho``, seeded uniform for ``random``, two self-evolving rounds on
separate splits) and a ``summary.json`` with evaluation, token recovery, held-out results and a ratio
sweep. Usage: ``python -m tokenclean.report.synthetic OUT_DIR [--data FILE] [--tokenizer NAME]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX

TASKS = {
    "mmlu": ("acc", 5),
    "truthfulqa_mc2": ("mc2", 0),
    "hellaswag": ("acc_norm", 0),
    "arc_challenge": ("acc_norm", 0),
    "boolq": ("acc", 0),
    "logiqa": ("acc_norm", 0),
    "tydiqa": ("f1", 1),
}
# made-up mean scores per method (the shape of the paper's Table 1, not its numbers)
LEVEL = {
    "base": 0.50,
    "warmup": 0.515,
    "full": 0.52,
    "random": 0.518,
    "rho": 0.526,
    "fixed_model": 0.533,
    "self_evolving": 0.538,
}


NASTY_RECORDS = [  # texts that stress HTML escaping and newline handling in the report page
    {
        "id": "nasty-<1>",
        "prompt": "Show <b>bold</b> & 'quotes'?",
        "completion": 'Use <script>alert("x")</script> &amp; "q"\nnew line',
    },
    {
        "id": "plain-2",
        "prompt": "the capital of france",
        "completion": "paris is the capital city of france.",
    },
    {"id": "code-3", "prompt": "write python code", "completion": "def f(x):\n    return x < 3 && x > 1\n"},
    {"id": "multi-4", "prompt": "explain the loss", "completion": "the loss is\n\n- item one\n- item two"},
    {"id": "plain-5", "prompt": "what number", "completion": "seven hundred and twelve"},
    {"id": "plain-6", "prompt": "hello world", "completion": "hello there, the answer is yes"},
]


def write_records(path: str | Path, records: Sequence[dict[str, str]] = tuple(NASTY_RECORDS)) -> Path:
    """Write ``records`` as JSONL to ``path``."""
    p = Path(path)
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return p


def draw_losses(labels: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, ref, informative) per position: NaN where not scored (prompt, position 0)."""
    L = len(labels)
    scored = np.array([j >= 1 and lab != IGNORE_INDEX for j, lab in enumerate(labels)])  # (L,)
    informative = rng.random(L) < 0.55
    base = rng.gamma(2.0, 1.2, size=L).astype(np.float32)
    ref = np.where(informative, base * rng.uniform(0.15, 0.6, L), base * rng.uniform(0.85, 1.3, L)).astype(
        np.float32
    )
    base[~scored], ref[~scored] = np.nan, np.nan
    return base, ref, informative & scored


def keep_global(scores: list[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Top ``floor(ratio * N)`` scored tokens over all samples (ties by position order)."""
    flat = np.concatenate(scores)
    ok = np.flatnonzero(np.isfinite(flat))
    k = math.floor(ratio * len(ok))
    order = ok[np.argsort(-flat[ok], kind="stable")][:k]
    keep = np.zeros(len(flat), dtype=bool)
    keep[order] = True
    return np.split(keep, np.cumsum([len(s) for s in scores])[:-1])


def keep_per_sample(scores: list[np.ndarray], ratio: float) -> list[np.ndarray]:
    return [keep_global([s], ratio)[0] for s in scores]


def keep_random(scores: list[np.ndarray], ratio: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return keep_global([np.where(np.isfinite(s), rng.random(len(s)), np.nan) for s in scores], ratio)


def _write(ds_dict: dict[str, Any], features: Any, out: Path, manifest: dict[str, Any]) -> None:
    import datasets

    datasets.Dataset.from_dict(ds_dict, features=features).save_to_disk(str(out))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _eval(level: float, rng: np.random.Generator, noise: float = 0.04) -> dict[str, Any]:
    tasks: dict[str, dict[str, Any]] = {
        t: {
            "metric": m,
            "value": round(float(np.clip(level + rng.normal(0, noise), 0, 1)), 4),
            "n": 500,
            "shots": s,
        }
        for t, (m, s) in TASKS.items()
    }
    return {"tasks": tasks, "average": sum(t["value"] for t in tasks.values()) / len(tasks)}


def make_synthetic_run(
    out: str | Path,
    tokenizer: Any,
    data: str | Path = "builtin:sample",
    tokenizer_name: str | None = None,
    ratio: float = 0.6,
    seed: int = 0,
    name: str = "synthetic-demo",
) -> Path:
    """Write a complete synthetic run directory to ``out``; return its path."""
    import datasets

    from tokenclean.data.prepare import prepare
    from tokenclean.scoring.store import score_features
    from tokenclean.selection.cleaned import cleaned_features

    datasets.disable_progress_bars()

    out = Path(out)
    rng = np.random.default_rng(seed)
    prepare(data, tokenizer, out / "prepared", tokenizer_name=tokenizer_name, progress=False)
    ds = datasets.load_from_disk(str(out / "prepared"))
    rows = [ds[i] for i in range(len(ds))]
    drawn = [draw_losses(r["labels"], rng) for r in rows]

    def write_scores(rel: str, idx: Sequence[int], ref_scale: float = 1.0) -> list[np.ndarray]:
        base = [drawn[i][0] for i in idx]
        ref = [(drawn[i][1] * ref_scale).astype(np.float32) for i in idx]
        score = [b - r for b, r in zip(base, ref)]
        cols = {
            "sample_id": [rows[i]["sample_id"] for i in idx],
            "base_loss": base,
            "ref_loss": ref,
            "score": score,
        }
        man = {
            "stage": "score",
            "scorer": "token_cleaning",
            "prepared_dir": str((out / "prepared").resolve()),
            "synthetic": True,
        }
        _write(cols, score_features(), out / rel, man)
        return score

    def write_cleaned(
        rel: str, idx: Sequence[int], keep: list[np.ndarray], score: list[np.ndarray], scores_rel: str | None
    ) -> None:
        labels = [np.where(k, rows[i]["labels"], IGNORE_INDEX) for i, k in zip(idx, keep)]
        cols = {
            "sample_id": [rows[i]["sample_id"] for i in idx],
            "input_ids": [rows[i]["input_ids"] for i in idx],
            "attention_mask": [[1] * len(rows[i]["input_ids"]) for i in idx],
            "labels": labels,
            "response_labels": [rows[i]["labels"] for i in idx],
            "score": score,
            "completion_mask": [(lab != IGNORE_INDEX).astype(np.int8) for lab in labels],
        }
        man = {
            "stage": "select",
            "prepared_dir": str((out / "prepared").resolve()),
            "ratio": ratio,
            "synthetic": True,
        }
        if scores_rel:
            man["scores_dir"] = str((out / scores_rel).resolve())
        _write(cols, cleaned_features(), out / rel, man)

    allidx = list(range(len(rows)))
    score = write_scores("scores/fixed_model", allidx)
    write_cleaned("cleaned/fixed_model", allidx, keep_global(score, ratio), score, "scores/fixed_model")
    write_cleaned("cleaned/rho", allidx, keep_per_sample(score, ratio), score, "scores/fixed_model")
    write_cleaned("cleaned/random", allidx, keep_random(score, ratio, seed), score, None)
    parts = np.array_split(np.arange(len(rows)), 3)
    rounds: list[dict[str, Any]] = [
        {
            "round": 0,
            "scores": None,
            "cleaned": None,
            "adapter": "rounds/0/adapter",
            "eval": _eval(LEVEL["warmup"], rng),
            "heldout": {"loss": 1.25, "exact_match": 0.31},
        }
    ]
    for t in (1, 2):
        idx = [int(i) for i in parts[t]]
        sc = write_scores(f"rounds/{t}/scores", idx, ref_scale=1.0 - 0.08 * t)
        write_cleaned(f"rounds/{t}/cleaned", idx, keep_global(sc, ratio), sc, f"rounds/{t}/scores")
        lvl = LEVEL["fixed_model"] + 0.003 * t
        rounds.append(
            {
                "round": t,
                "scores": f"rounds/{t}/scores",
                "cleaned": f"rounds/{t}/cleaned",
                "adapter": f"rounds/{t}/adapter",
                "eval": _eval(lvl, rng),
                "heldout": {"loss": 1.2 - 0.04 * t, "exact_match": 0.33 + 0.02 * t},
            }
        )
    summary = _summary(
        name, tokenizer_name or str(getattr(tokenizer, "name_or_path", "")), ratio, rounds, drawn, rows, rng
    )
    (out / "config.yaml").write_text(
        f"# synthetic run (made-up numbers)\npipeline: fixed_model\nratio: {ratio}\nseed: {seed}\n"
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out


def _recovery(kept: np.ndarray, truth: np.ndarray, noise_all: float) -> dict[str, float]:
    tp = float((kept & truth).sum())
    return {
        "precision": tp / max(kept.sum(), 1),
        "recall": tp / max(truth.sum(), 1),
        "auroc": 0.5 + 0.4 * tp / max(truth.sum(), 1),
        "noise_rate_kept": float((kept & ~truth).sum()) / max(kept.sum(), 1),
        "noise_rate_all": noise_all,
    }


def _summary(
    name: str,
    model: str,
    ratio: float,
    rounds: list[dict[str, Any]],
    drawn: list[Any],
    rows: list[Any],
    rng: np.random.Generator,
) -> dict[str, Any]:
    truth = np.concatenate([d[2] for d in drawn])
    scored = np.concatenate([np.isfinite(d[0]) for d in drawn])
    score = [d[0] - d[1] for d in drawn]
    noise_all = float((~truth & scored).sum() / max(scored.sum(), 1))
    rec = {
        "fixed_model": _recovery(np.concatenate(keep_global(score, ratio)), truth, noise_all),
        "rho": _recovery(np.concatenate(keep_per_sample(score, ratio)), truth, noise_all),
        "random": _recovery(np.concatenate(keep_random(score, ratio, 0)), truth, noise_all),
    }
    paths = {
        "fixed_model": ("scores/fixed_model", "cleaned/fixed_model"),
        "rho": ("scores/fixed_model", "cleaned/rho"),
        "random": (None, "cleaned/random"),
    }
    methods: dict[str, Any] = {}
    for m, lvl in LEVEL.items():
        s, c = paths.get(m, (None, None))
        if m == "self_evolving":
            s, c = rounds[-1]["scores"], rounds[-1]["cleaned"]
        methods[m] = {
            "adapter": None if m == "base" else f"adapters/{m}",
            "cleaned": c,
            "scores": s,
            "round": 2 if m == "self_evolving" else None,
            "eval": rounds[-1]["eval"] if m == "self_evolving" else _eval(lvl, rng),
            "recovery": rec.get(m),
            "heldout": {
                "loss": round(1.5 - 8 * (lvl - 0.5), 4),
                "exact_match": round(0.2 + 5 * (lvl - 0.5), 4),
            },
        }
    sweep = [
        {
            "ratio": k,
            "method": "fixed_model",
            "eval": _eval(0.53 - 0.3 * (k - 0.6) ** 2, rng, 0.004),
            "heldout": {
                "loss": round(1.24 + 0.3 * (k - 0.6) ** 2, 4),
                "exact_match": round(0.33 - 0.2 * (k - 0.6) ** 2, 4),
            },
        }
        for k in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ]
    return {
        "pipeline": "fixed_model",
        "name": name,
        "model": model,
        "ratio": ratio,
        "synthetic": True,
        "methods": methods,
        "rounds": rounds,
        "sweep": sweep,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tokenclean.report.synthetic", description=__doc__)
    p.add_argument("out")
    p.add_argument("--data", default="builtin:sample")
    p.add_argument("--tokenizer", default="smollm2")
    a = p.parse_args(argv)
    from tokenclean.models.loader import load_tokenizer

    run = make_synthetic_run(a.out, load_tokenizer(a.tokenizer), a.data, tokenizer_name=a.tokenizer)
    print(f"wrote synthetic run {run}; build its report with: tokenclean report {run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
