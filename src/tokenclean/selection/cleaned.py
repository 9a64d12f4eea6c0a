"""The ``select`` stage: score store + prepared dataset -> cleaned dataset, stats and manifest.

Output directory (``datasets.load_from_disk(DIR)``), one row per sample that keeps at least one token:

- ``sample_id`` (str), ``input_ids`` (int32 list), ``attention_mask`` (int8 list of ones),
  ``labels`` (int32 list: kept tokens keep their id, everything else -100; HF convention, the model shifts),
  ``response_labels`` (the labels before selection), ``score`` (float32 list, NaN where not scored),
  ``completion_mask`` (int8 list, 1 on kept tokens: the mask TRL's SFTTrainer applies when
  ``completion_only_loss=True``; the HF Trainer drops it with the other unused columns);
- ``selection_stats.json``: requested vs achieved ratio, kept/total response tokens, NaN scores,
  per-sample kept-fraction histogram, samples emptied, level, seed, threshold, tie rule;
- ``dropped.jsonl``: the samples emptied by selection (row, sample_id, response tokens);
- ``manifest.json``: stage "select", inputs (paths and hashes of the score store and the prepared data),
  settings, tokenizer identity (so ``tokenclean inspect`` finds it), counts, versions, and the size and
  SHA-256 of every file (``files``), checked before the output is reused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.errors import ConfigError, DataError
from tokenclean.outputs import check_target, content_id, file_digests, guarded, verify_input
from tokenclean.selection import levels
from tokenclean.selection.blocks import token_blocks
from tokenclean.selection.selector import reusable_selection
from tokenclean.selection.stats import kept_per_sample
from tokenclean.selection.steps import check_mode, check_separator, separator_vocab, stepped
from tokenclean.selection.streamed import write_streamed
from tokenclean.selection.table import TokenTable, resolve_prepared_dir
from tokenclean.selection.writer import CleanedSize, emptied_records, split_rows, write_rows
from tokenclean.selection.writer import cleaned_arrow as cleaned_arrow  # these moved to .writer; the
from tokenclean.selection.writer import cleaned_features as cleaned_features  # engines import them here
from tokenclean.selection.writer import position_labels as position_labels
from tokenclean.utils import (
    atomic_dir,
    get_logger,
    read_json,
    sha256_file,
    sha256_json,
    sha256_tree,
    write_json_atomic,
)

log = get_logger("select")
_emptied_records = emptied_records  # its old name (tokenclean.engines.select)

SELECT_VERSION = 1  # bump when the output of select changes for the same inputs


def _inputs(scores_dir: Path, prep: Path) -> dict[str, Any]:
    """The identities of the two inputs, after checking their files and that they belong together."""
    sm = verify_input(scores_dir, hint="re-run tokenclean score (with --force)")
    pm = verify_input(prep, hint="re-run tokenclean prepare (with --force)")
    return {
        "scores": {
            "dir": str(scores_dir.resolve()),
            "sha256": content_id(sm["files"]) if sm.get("files") else sha256_tree(scores_dir),
            "scorer": sm.get("scorer"),
            "base": sm.get("base"),
            "reference": sm.get("reference"),
            "dtype": sm.get("dtype"),
        },
        "prepared": {
            "dir": str(prep.resolve()),
            "cache_key": pm.get("cache_key"),
            "manifest_sha256": sha256_file(prep / "manifest.json"),
            "content": content_id(pm["files"]) if pm.get("files") else None,
        },
        "tokenizer": pm.get("tokenizer"),
        "template": pm.get("template"),
    }


def check_same_data(scores_dir: Path, prep: Path) -> None:
    """The store must come from this prepared dataset: equal sample ids and lengths are not enough, the
    prepared key the store recorded must be the key in ``prep``'s manifest."""
    sm, pm = read_json(scores_dir / "manifest.json"), read_json(prep / "manifest.json")
    want, got = sm.get("prepared_cache_key"), pm.get("cache_key")
    if want and got and want != got:
        raise DataError(
            str(prep),
            f"is not the prepared data the score store {scores_dir} was computed from: the store records "
            f"prepared key {want}, {prep}/manifest.json has key {got} (same sample ids and lengths do not "
            f"make the same data); pass the store's own prepared dataset ({sm.get('prepared_dir')})",
            field="cache_key",
        )


def step_settings(settings: dict[str, Any], steps: str, separator: str) -> dict[str, Any]:
    """``settings`` with a checked step mode (:mod:`~.steps`); not for the random level (it ignores scores)."""
    check_mode(steps)
    if settings["level"] == "random":
        raise ConfigError("steps: the random level ignores scores; use --level global, sample or threshold")
    return dict(settings, steps=steps, step_separator=check_separator(separator))


def prepared_tokenizer(prep: Path, tok: Any = None) -> Any:
    """The tokenizer that prepared ``prep``: ``tok``, or the one its manifest's ``tokenizer`` names; either
    is checked against the vocabulary hash the manifest records."""
    from tokenclean.models.loader import load_tokenizer, tokenizer_identity

    info = read_json(prep / "manifest.json").get("tokenizer") or {}
    name = info.get("source") or info.get("name")
    if tok is None:
        if not name or name == "none":
            raise DataError(
                str(prep / "manifest.json"),
                "records no tokenizer, which step-level selection needs to find the step separator",
                field="tokenizer",
            )
        tok = load_tokenizer(str(name))
    if info.get("hash") and (got := tokenizer_identity(tok)["hash"]) != info["hash"]:
        raise DataError(
            str(prep / "manifest.json"),
            f"the tokenizer for the step separator has vocabulary hash {got[:12]}, but the data was prepared "
            f"with '{name}' ({info['hash'][:12]}): not the same tokenizer",
            field="tokenizer",
        )
    return tok


def write_cleaned(
    out: str | Path,
    table: TokenTable,
    keep: np.ndarray,
    stats: dict[str, Any],
    manifest: dict[str, Any],
    weights: np.ndarray | None = None,
) -> None:
    """Write the cleaned dataset of an in-memory table (in blocks, :func:`~.writer.write_rows`), its stats,
    emptied samples and manifest atomically into ``out``."""
    size = CleanedSize()
    size.add(table, kept_per_sample(keep, table.response_offsets) > 0)
    with atomic_dir(out) as tmp:
        rows = split_rows(table, keep, weights)
        write_rows(tmp, rows, size, weights is not None, manifest["cache_key"][:32])
        write_json_atomic(tmp / "selection_stats.json", stats)
        write_json_atomic(tmp / "manifest.json", dict(manifest, files=file_digests(tmp)))


def select(
    scores_dir: str | Path,
    ratio: float | None,
    level: str,
    out: str | Path,
    seed: int = 42,
    threshold: float | None = None,
    prepared_dir: str | Path | None = None,
    column: str = "score",
    force: bool = False,
    weights: str | None = None,
    temperature: float = 1.0,
    replace_stale: bool = False,
    steps: str | None = None,
    step_separator: str = "\n",
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Select tokens from a score store and write the cleaned dataset to ``out``. Returns the stats dict.

    ``level``: global | sample | random | threshold (see :mod:`tokenclean.selection.masks`); ``ratio`` is
    K in [0, 1] (unused by threshold); ``seed`` drives ``random``; ``threshold`` keeps ``score > value``.
    The same inputs and settings reuse an existing ``out`` (its files verified) unless ``force``; an
    ``out`` that is not a selection, or one of other inputs or settings, is refused unless ``force`` (or
    ``replace_stale``, for a pipeline's own stage directory); see :mod:`tokenclean.outputs`.
    ``steps`` ranks step-level scores instead (:mod:`~.steps`: ``mean``, ``min``, ``cut_mean``, ``cut_min``;
    a step ends at a token containing ``step_separator``; ``tokenizer``: the prepared data's, loaded from
    its manifest when None).
    """
    return select_many(
        scores_dir,
        [ratio],
        [out],
        level,
        seed,
        threshold,
        prepared_dir,
        column,
        force,
        weights,
        temperature,
        replace_stale,
        steps,
        step_separator,
        tokenizer,
    )[0]


@guarded("select", out="outs", inputs=("scores_dir", "prepared_dir"))
def select_many(
    scores_dir: str | Path,
    ratios: Sequence[float | None],
    outs: Sequence[str | Path],
    level: str = "global",
    seed: int = 42,
    threshold: float | None = None,
    prepared_dir: str | Path | None = None,
    column: str = "score",
    force: bool = False,
    weights: str | None = None,
    temperature: float = 1.0,
    replace_stale: bool = False,
    steps: str | None = None,
    step_separator: str = "\n",
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Score once, select many: one cleaned dataset per ratio, each selected and written block by block
    (:mod:`~.streamed`: memory bounded by one record batch, whatever the pool).
    Masks of a global sweep are nested (a larger K keeps a superset). With ``weights="sigmoid"`` (soft
    Token Cleaning, level global only) every scored response token is kept with the weight
    ``sigmoid((score - tau) / temperature)``, ``tau`` the score at the global top-K cut (see
    :func:`~.levels.soft_weights`), written as a ``weights`` column for ``train.policy: weights``."""
    if len(ratios) != len(outs):
        raise ConfigError(f"ratios/outs: {len(ratios)} ratios but {len(outs)} output directories")
    t0 = time.time()
    scores_dir = Path(scores_dir)
    prep = resolve_prepared_dir(scores_dir, prepared_dir)
    for o in outs:
        check_target(o, "select", [scores_dir, prep])
    inputs = _inputs(scores_dir, prep)
    jobs = []
    for r, o in zip(ratios, outs):
        settings = levels.settings(level, r, seed, threshold, column)
        if weights is not None:
            settings = levels.weight_settings(settings, weights, temperature)
        if steps is not None:
            settings = step_settings(settings, steps, step_separator)
        identity = {
            "v": SELECT_VERSION,
            "settings": settings,
            "inputs": inputs["scores"]["sha256"],
            "prep": inputs["prepared"],
        }
        key = sha256_json(identity)
        reused = reusable_selection(Path(o), identity, force, replace_stale)
        jobs.append((settings, key, identity, Path(o), reused))
    if all(j[4] is not None for j in jobs):
        return [j[4] for j in jobs]  # type: ignore[misc]
    blocks = token_blocks(scores_dir, prep, column)  # checks the columns and row counts
    check_same_data(scores_dir, prep)
    if steps is not None:
        blocks = stepped(blocks, separator_vocab(prepared_tokenizer(prep, tokenizer), step_separator), steps)
    results = []
    for settings, key, identity, out, reused in jobs:
        if reused is not None:
            results.append(reused)
            continue
        fields = dict(settings, **inputs, identity=identity)
        results.append(write_streamed(blocks, settings, out, key, fields, t0, scores_dir))
    return results
