"""A synthetic run directory laid out like the pipelines' (the report reads it the same way), for tests and
for previewing the report without training anything. Its losses and evaluation numbers are made up
(seeded); its name says so.

Every stage output is written by the stage's own code: the dataset by ``prepare``, the score stores by the
scoring stage's writer (:func:`tokenclean.testing.stores.write_score_store`, from drawn base/reference
losses), the cleaned datasets by ``select`` (global top-k for ``fixed_model``, per sample for ``rho``,
seeded uniform for ``random``; two self-evolving rounds on :func:`~tokenclean.pipelines.stages.subset`
splits), token recovery by :func:`~tokenclean.groundtruth.metrics.recovery_metrics` against the drawn
truth, and ``summary.json`` by :func:`~tokenclean.summary.write_summary` (with made-up
evaluation, held-out and sweep numbers). Usage: ``python -m tokenclean.testing.runs OUT_DIR [--data FILE]
[--tokenizer NAME]``.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean import IGNORE_INDEX
from tokenclean.groundtruth.metrics import recovery_metrics
from tokenclean.groundtruth.truth import INFORMATIVE, NOISE, NOT_RESPONSE
from tokenclean.methods import get as get_method
from tokenclean.summary import (
    EvalResult,
    MethodEntry,
    Recovery,
    Round,
    Summary,
    SweepEntry,
    TaskResult,
)
from tokenclean.testing.stores import write_score_store

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


def _eval(level: float, rng: np.random.Generator, noise: float = 0.04) -> EvalResult:
    values = {t: round(float(np.clip(level + rng.normal(0, noise), 0, 1)), 4) for t in TASKS}
    tasks: dict[str, TaskResult] = {
        t: {"metric": m, "value": values[t], "n": 500, "shots": s} for t, (m, s) in TASKS.items()
    }
    return {"tasks": tasks, "average": sum(values.values()) / len(values)}


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
    from tokenclean.pipelines.stages import subset
    from tokenclean.selection import select
    from tokenclean.summary import write_summary

    datasets.disable_progress_bars()
    out = Path(out)
    rng = np.random.default_rng(seed)
    prepare(data, tokenizer, out / "prepared", tokenizer_name=tokenizer_name, progress=False)
    labels = datasets.load_from_disk(str(out / "prepared"))["labels"]
    drawn = [draw_losses(lab, rng) for lab in labels]

    def scores(prepared: Path, rel: str, idx: Sequence[int], ref_scale: float = 1.0) -> Path:
        base = [drawn[i][0] for i in idx]
        ref = [(drawn[i][1] * ref_scale).astype(np.float32) for i in idx]
        return write_score_store(out / rel, prepared, base_loss=base, ref_loss=ref)

    everything = list(range(len(drawn)))
    store = scores(out / "prepared", "scores/fixed_model", everything)
    for method, level in (("fixed_model", "global"), ("rho", "sample"), ("random", "random")):
        select(store, ratio, level, out / "cleaned" / method, seed=seed)
    rounds: list[Round] = [
        {
            "round": 0,
            "scores": None,
            "cleaned": None,
            "adapter": "rounds/0/adapter",
            "eval": _eval(LEVEL["warmup"], rng),
            "heldout": {"loss": 1.25, "exact_match": 0.31},
        }
    ]
    parts = np.array_split(np.arange(len(drawn)), 3)
    for t in (1, 2):
        idx = [int(i) for i in parts[t]]
        split = subset(out / "prepared", idx, out / "rounds" / str(t) / "data", f"split {t} of 3")
        store_t = scores(split, f"rounds/{t}/scores", idx, ref_scale=1.0 - 0.08 * t)
        select(store_t, ratio, "global", out / "rounds" / str(t) / "cleaned", seed=seed)
        rounds.append(
            {
                "round": t,
                "scores": f"rounds/{t}/scores",
                "cleaned": f"rounds/{t}/cleaned",
                "adapter": f"rounds/{t}/adapter",
                "eval": _eval(LEVEL["fixed_model"] + 0.003 * t, rng),
                "heldout": {"loss": 1.2 - 0.04 * t, "exact_match": 0.33 + 0.02 * t},
            }
        )
    model = tokenizer_name or str(getattr(tokenizer, "name_or_path", ""))
    summary = _summary(out, name, model, ratio, rounds, drawn, rng)
    (out / "config.yaml").write_text(
        f"# synthetic run (made-up numbers)\npipeline: fixed_model\nratio: {ratio}\nseed: {seed}\n"
    )
    write_summary(out, dict(summary))
    return out


def _truth(drawn: list[Any]) -> list[np.ndarray]:
    """The token truth of the drawn losses: informative, noise (scored, not informative) or not response."""
    return [
        np.where(inf, INFORMATIVE, np.where(np.isfinite(base), NOISE, NOT_RESPONSE)).astype(np.int8)
        for base, _, inf in drawn
    ]


def _recovery(cleaned: Path, ids: list[str], truth: list[np.ndarray], scores: list[np.ndarray]) -> Recovery:
    """Recovery of the tokens a cleaned dataset kept (its emptied samples keep nothing)."""
    import datasets

    ds = datasets.load_from_disk(str(cleaned))
    kept = {sid: np.asarray(lab) != IGNORE_INDEX for sid, lab in zip(ds["sample_id"], ds["labels"])}
    keep = [kept.get(sid, np.zeros(len(t), dtype=bool)) for sid, t in zip(ids, truth)]
    return typing.cast(Recovery, recovery_metrics(truth, keep, scores))


def _summary(
    out: Path,
    name: str,
    model: str,
    ratio: float,
    rounds: list[Round],
    drawn: list[Any],
    rng: np.random.Generator,
) -> Summary:
    import datasets

    ids = datasets.load_from_disk(str(out / "prepared"))["sample_id"]
    truth, score = _truth(drawn), [d[0] - d[1] for d in drawn]
    rec = {m: _recovery(out / "cleaned" / m, ids, truth, score) for m in ("fixed_model", "rho", "random")}
    paths: dict[str, tuple[str | None, str | None]] = {m: ("scores/fixed_model", f"cleaned/{m}") for m in rec}
    paths["random"] = (None, "cleaned/random")  # as a method without a store (the pipeline records its store)
    methods: dict[str, MethodEntry] = {}
    for m, lvl in LEVEL.items():
        s, c = paths.get(m, (None, None))
        rounds_ = get_method(m).rounds  # the method trained in rounds (self-evolving)
        if rounds_:
            s, c = rounds[-1]["scores"], rounds[-1]["cleaned"]
        methods[m] = {
            "adapter": None if m == "base" else f"adapters/{m}",
            "cleaned": c,
            "scores": s,
            "round": 2 if rounds_ else None,
            "eval": rounds[-1]["eval"] if rounds_ else _eval(lvl, rng),
            "recovery": rec.get(m),
            "heldout": {
                "loss": round(1.5 - 8 * (lvl - 0.5), 4),
                "exact_match": round(0.2 + 5 * (lvl - 0.5), 4),
            },
        }
    sweep: list[SweepEntry] = [
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

    p = argparse.ArgumentParser(prog="python -m tokenclean.testing.runs", description=__doc__)
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
