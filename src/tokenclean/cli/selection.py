"""``tokenclean select``: score store -> cleaned dataset (heavy imports stay inside the handler)."""

from __future__ import annotations

import argparse

from tokenclean.cli.args import (
    Command,
    add_runtime,
    add_setting,
    add_settings,
    apply_runtime,
    existing,
    model_name,
    settings_from_args,
)
from tokenclean.config import check_bounds
from tokenclean.errors import ConfigError
from tokenclean.methods.soft_token_cleaning import SoftWeightsSettings
from tokenclean.pipelines.config import SelectionConfig
from tokenclean.selection.xtf import XtfSettings

LEVELS = ("global", "sample", "random", "threshold")  # kept in sync with selection.masks.LEVELS (tested)


def parse_ratios(text: str | float | None) -> list[float | None]:
    """``"0.6"`` -> [0.6]; ``"0.5,0.6,0.7"`` -> a sweep; None (threshold level) -> [None]. Each ratio is
    checked against the bounds of ``selection.ratio``."""
    if text is None:
        return [None]
    try:
        ratios: list[float | None] = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ratio: expected a number or a comma-separated list, got '{text}'") from None
    if not ratios:
        raise ConfigError(f"--ratio: empty ('{text}'); give K in (0, 1], e.g. --ratio 0.6, or a list 0.5,0.6")
    for r in ratios:
        check_bounds(SelectionConfig, "ratio", r, "--ratio")
    return ratios


def sweep_outs(out: str, ratios: list[float | None]) -> list[str]:
    if len(ratios) == 1:
        return [out.replace("{ratio}", str(ratios[0]))]
    if "{ratio}" not in out:
        raise ConfigError("--out: several ratios need '{ratio}' in the output path, e.g. runs/clean-{ratio}")
    return [out.replace("{ratio}", str(r)) for r in ratios]


def _select(a: argparse.Namespace) -> int:
    ratios: list[float | None] = [None] if a.level == "threshold" else parse_ratios(a.ratio)
    settings_from_args(SelectionConfig, a, "selection", only=["seed"])
    settings_from_args(SoftWeightsSettings, a, "peers.soft_token_cleaning")
    outs = sweep_outs(a.out, ratios)
    from tokenclean.selection import select_many

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
        steps=a.steps,
        step_separator=a.step_separator,
    )
    from tokenclean.selection.stats import describe

    for out, st in zip(outs, all_stats):
        print(f"{'reused' if st.get('reused') else 'wrote'} {out}: {describe(st, a.level)}")
    return 0


def _xtf(a: argparse.Namespace) -> int:
    settings = settings_from_args(XtfSettings, a, "xtf")
    rt = apply_runtime(a)
    from tokenclean.selection.xtf import xtf_select

    st = xtf_select(a.data, a.base, a.out, settings, dtype=a.dtype, device=rt.device, force=a.force)
    n = st["xtf"]["noise_tokens"]
    print(
        f"{'reused' if st.get('reused') else 'wrote'} {a.out}: XTF kept {st['kept_tokens']} of "
        f"{st['total_response_tokens']} response tokens; noise by filter: novelty {n['novelty']}, "
        f"attention {n['attention']}, relevance {n['relevance']} (union {st['xtf']['union']})"
    )
    return 0


def _select_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--scores",
        required=True,
        type=existing("score store"),
        help="score store directory (tokenclean score)",
    )
    s.add_argument("--out", required=True, help="output directory ('{ratio}' is replaced in a sweep)")
    add_setting(
        s, SelectionConfig, "ratio", "selection", note="; a comma list 0.5,0.6 makes a sweep", type=str
    )
    s.add_argument(
        "--level",
        default="global",
        choices=LEVELS,
        help="global: top-K of all tokens (Token Cleaning); sample: top-K within each sample (RHO); random: "
        "K at random (seeded); threshold: keep tokens with score > --threshold",
    )
    s.add_argument(
        "--threshold", type=float, default=None, help="level threshold: keep tokens with score > V"
    )
    add_setting(s, SelectionConfig, "seed", "selection")
    s.add_argument(
        "--data",
        default=None,
        type=existing("prepared dataset"),
        help="prepared dataset (default: prepared_dir in the score manifest)",
    )
    s.add_argument("--column", default="score", help="score-store column to rank by")
    s.add_argument(
        "--weights",
        default=None,
        choices=["sigmoid"],
        help="soft Token Cleaning: keep every scored token with weight sigmoid((score - tau) / T), tau = the "
        "global top-K cut; writes a weights column for `tokenclean train --policy weights`",
    )
    add_setting(
        s, SoftWeightsSettings, "temperature", "peers.soft_token_cleaning", note=" (with --weights sigmoid)"
    )
    add_setting(s, SelectionConfig, "steps", "selection")
    add_setting(s, SelectionConfig, "step_separator", "selection")
    s.add_argument(
        "--force", action="store_true", help="recompute, or replace an OUT selected from other inputs"
    )


def _xtf_args(x: argparse.ArgumentParser) -> None:
    x.add_argument(
        "--data",
        required=True,
        type=existing("prepared dataset"),
        help="prepared dataset (tokenclean prepare)",
    )
    x.add_argument(
        "--base",
        required=True,
        type=model_name("base model"),
        help="base model (Hub id, dir, .gguf or alias smollm2)",
    )
    x.add_argument("--out", required=True, help="cleaned dataset directory")
    add_settings(x, XtfSettings, "xtf")
    x.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="dtype of the base model"
    )
    add_runtime(x)
    x.add_argument("--force", action="store_true", help="recompute even if OUT holds the same result")


COMMANDS = (
    Command(
        "select",
        "keep the top-K response tokens by score; write the cleaned dataset",
        _select_args,
        _select,
        example="tokenclean select --scores runs/scores --ratio 0.6 --out runs/clean",
    ),
    Command(
        "xtf",
        "XTF: drop tokens flagged by base-model novelty, attention or task relevance",
        _xtf_args,
        _xtf,
        example="tokenclean xtf --data runs/prep --base smollm2 --out runs/xtf",
    ),
)
