"""``tokenclean select``: score store -> cleaned dataset (heavy imports stay inside the handler)."""

from __future__ import annotations

import argparse

from tokenclean.cli import _EXTRA_PARSERS, command
from tokenclean.errors import ConfigError

LEVELS = ("global", "sample", "random", "threshold")  # kept in sync with selection.masks.LEVELS (tested)


def parse_ratios(text: str | None) -> list[float | None]:
    """``"0.6"`` -> [0.6]; ``"0.5,0.6,0.7"`` -> a sweep; None (threshold level) -> [None]."""
    if text is None:
        return [None]
    try:
        ratios: list[float | None] = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ratio: expected a number or a comma-separated list, got '{text}'") from None
    if not ratios:
        raise ConfigError(f"--ratio: empty ('{text}'); give K in [0, 1], e.g. --ratio 0.6, or a list 0.5,0.6")
    return ratios


def sweep_outs(out: str, ratios: list[float | None]) -> list[str]:
    if len(ratios) == 1:
        return [out.replace("{ratio}", str(ratios[0]))]
    if "{ratio}" not in out:
        raise ConfigError("--out: several ratios need '{ratio}' in the output path, e.g. runs/clean-{ratio}")
    return [out.replace("{ratio}", str(r)) for r in ratios]


@command("select")
def _select(a: argparse.Namespace) -> int:
    from tokenclean.selection import select_many

    ratios = parse_ratios(a.ratio)
    if a.level != "threshold" and ratios == [None]:
        raise ConfigError(f"--ratio: level '{a.level}' needs --ratio K (0 <= K <= 1)")
    if a.level == "threshold":
        ratios = [None]
    outs = sweep_outs(a.out, ratios)
    all_stats = select_many(
        a.scores,
        ratios,
        outs,
        level=a.level,
        seed=a.seed,
        threshold=a.threshold,
        prepared_dir=a.data,
        column=a.column,
        force=a.force,
        weights=a.weights,
        temperature=a.temperature,
    )
    for out, st in zip(outs, all_stats):
        what = f"score > {st['threshold']}" if a.level == "threshold" else f"K={st['requested_ratio']}"
        print(
            f"{'reused' if st.get('reused') else 'wrote'} {out}: {a.level} {what}: kept "
            f"{st['kept_tokens']} of {st['total_response_tokens']} response tokens "
            f"(achieved {st['achieved_ratio']:.4f}); {st['samples_emptied']} of {st['samples_total']} "
            f"samples emptied and dropped; {st['nan_scores']} NaN scores"
            + (
                f"; soft weights ({st['weights']['mapping']}, T={st['weights']['temperature']}): "
                f"sum {st['weights']['sum']:.1f}, mean {st['weights']['mean']:.3f}"
                if st.get("weights")
                else ""
            )
        )
    return 0


@command("xtf")
def _xtf(a: argparse.Namespace) -> int:
    from tokenclean.selection.xtf import XtfSettings, xtf_select
    from tokenclean.utils import apply_threads

    apply_threads(getattr(a, "threads", None))
    settings = XtfSettings(
        novelty_min=a.novelty_min,
        iqr_k=a.iqr_k,
        otsu_classes=a.otsu_classes,
        expert_words=tuple(w.strip() for w in (a.expert_words or "").split(",") if w.strip()),
        filters=tuple(f.strip() for f in a.filters.split(",") if f.strip()),
    )
    st = xtf_select(a.data, a.base, a.out, settings, dtype=a.dtype, device=a.device, force=a.force)
    n = st["xtf"]["noise_tokens"]
    print(
        f"{'reused' if st.get('reused') else 'wrote'} {a.out}: XTF kept {st['kept_tokens']} of "
        f"{st['total_response_tokens']} response tokens; noise by filter: novelty {n['novelty']}, "
        f"attention {n['attention']}, relevance {n['relevance']} (union {st['xtf']['union']})"
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("select", help="keep the top-K response tokens by score; write the cleaned dataset")
    s.add_argument("--scores", required=True, help="score store directory (from `tokenclean score`)")
    s.add_argument(
        "--ratio",
        default=None,
        help="K in [0, 1], the share of response tokens kept; a comma list (0.5,0.6) makes a sweep",
    )
    s.add_argument(
        "--level", default="global", choices=LEVELS, help="global (Token Cleaning), sample (RHO), ..."
    )
    s.add_argument(
        "--threshold", type=float, default=None, help="level threshold: keep tokens with score > V"
    )
    s.add_argument("--seed", type=int, default=42, help="seed of the random level")
    s.add_argument(
        "--data", default=None, help="prepared dataset (default: prepared_dir in the score manifest)"
    )
    s.add_argument("--column", default="score", help="score-store column to rank by (default: score)")
    s.add_argument(
        "--weights",
        default=None,
        choices=["sigmoid"],
        help="soft Token Cleaning: keep every scored token with weight sigmoid((score - tau) / T), tau = the "
        "global top-K cut; writes a weights column for `tokenclean train --policy weights`",
    )
    s.add_argument(
        "--temperature", type=float, default=1.0, help="T of --weights sigmoid, in nats of score (1.0)"
    )
    s.add_argument(
        "--force", action="store_true", help="recompute, or replace an OUT selected from other inputs"
    )
    s.add_argument("--out", required=True, help="output directory ('{ratio}' is replaced in a sweep)")

    x = sub.add_parser(
        "xtf", help="XTF: drop tokens flagged by base-model novelty, attention or task relevance"
    )
    x.add_argument("--data", required=True, help="prepared dataset (tokenclean prepare)")
    x.add_argument("--base", required=True, help="base model (Hub id, dir, .gguf or alias smollm2)")
    x.add_argument("--out", required=True, help="cleaned dataset directory")
    x.add_argument("--novelty-min", type=float, default=0.05, help="noise if 1 - P_base < this (0.05)")
    x.add_argument(
        "--iqr-k", type=float, default=1.5, help="attention noise below Q1 - k*IQR per sample (1.5)"
    )
    x.add_argument("--otsu-classes", type=int, default=3, help="Multi-Otsu classes of task relevance (3)")
    x.add_argument("--expert-words", default=None, help="comma-separated task words (default: prompt tokens)")
    x.add_argument("--filters", default="novelty,attention,relevance", help="filters in the union")
    x.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    x.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    x.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the cores idle at start; OMP_NUM_THREADS if set)",
    )
    x.add_argument("--force", action="store_true", help="recompute even if OUT holds the same result")


_EXTRA_PARSERS.append(add_parsers)
