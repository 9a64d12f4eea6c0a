"""``tokenclean groundtruth``: recovery metrics of a selection (or a score store) against user-supplied
token truth (character spans, :mod:`tokenclean.groundtruth.user_truth`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokenclean.cli.args import Command, HelpFormatter, existing
from tokenclean.errors import DataError


def _is_truth_summary(obj: Any) -> bool:
    return isinstance(obj, dict) and {"methods", "labels", "samples"} <= set(obj)


def _prepared_dir(selection: str | None, scores: str | None) -> Path:
    """The prepared dataset behind ``--selection`` (a cleaned dataset) or ``--scores`` (a score store);
    another kind of directory is named as what it is, with what the flag wants."""
    from tokenclean.artifacts import require_kind

    if selection:
        m = require_kind(
            selection, ("select",), "--selection", "pass a cleaned dataset (tokenclean select --out)"
        )
        prep = (m.get("prepared") or {}).get("dir")
    else:
        assert scores is not None
        m = require_kind(scores, ("score",), "--scores", "pass a score store (tokenclean score --out)")
        prep = m.get("prepared_dir")
    if not prep:
        raise DataError(
            str(Path(selection or scores or "") / "manifest.json"), "no prepared dataset recorded"
        )
    return Path(prep)


def truth_summary(
    data: str,
    truth: str,
    selection: str | None,
    scores: str | None,
    tokenizer: Any,
    fmt: str = "auto",
    positive: tuple[str, ...] = ("informative",),
    noise: tuple[str, ...] = ("noise", "hallucination"),
) -> dict[str, Any]:
    """A one-method summary (``methods.selection``) of recovery metrics with 95% intervals over samples."""
    import datasets
    import numpy as np

    from tokenclean import IGNORE_INDEX
    from tokenclean.groundtruth.truth import classes
    from tokenclean.groundtruth.user_truth import load_user_truth
    from tokenclean.pipelines.groundtruth import Truth, recovery_intervals

    prep = _prepared_dir(selection, scores)
    tt = load_user_truth(truth, data, prep, tokenizer, fmt)
    t = Truth(tt, positive, noise)
    ids = sorted(tt.samples)
    if not ids:
        raise DataError(truth, "no annotated sample is in the prepared data")
    if selection:
        sel = datasets.load_from_disk(selection)
        by_id = {s: np.asarray(lab) != IGNORE_INDEX for s, lab in zip(sel["sample_id"], sel["labels"])}
        keep = [by_id.get(i, np.zeros(len(tt.samples[i].labels), dtype=bool)) for i in ids]
    else:  # no selection: every response token counts as kept (the score columns still say everything)
        keep = [tt.samples[i].labels >= 0 for i in ids]
    sc = None
    if scores:
        st = datasets.load_from_disk(scores)
        sid = {s: np.asarray(v, dtype=np.float64) for s, v in zip(st["sample_id"], st["score"])}
        sc = [sid[i] for i in ids]
    ev = {
        "ids": ids,
        "cls": classes(tt, ids, positive, noise),
        "labels": [tt.samples[i].labels for i in ids],
        "decisive": [tt.samples[i].decisive for i in ids],
        "keep": keep,
        "scores": sc,
    }
    iv = recovery_intervals(t, [ev])
    m: dict[str, Any] = {"recovery": {}, "recovery_ci": {}, "classes": {}, "classes_ci": {}}
    for k, v in iv.items():
        if "|" in k:
            label, key = k.split("|", 1)
            m["classes"].setdefault(label, {})[key] = v.mean
            m["classes_ci"].setdefault(label, {})[key] = v.as_list()
        else:
            m["recovery"][k], m["recovery_ci"][k] = v.mean, v.as_list()
    return {"methods": {"selection": m}, "seeds_used": [], "labels": tt.names, "samples": len(ids)}


def _groundtruth_run(a: argparse.Namespace) -> int:
    """``--run RUN_DIR``: the run's recovery table recomputed from its outputs, checked against its summary."""
    from tokenclean.pipelines.groundtruth import recompute_run, recovery_differences
    from tokenclean.report.truth_tables import print_all

    if a.data or a.truth or a.selection or a.scores:
        raise DataError(
            "groundtruth", "--run takes the data, truth and selections from the run; drop the others"
        )
    top, methods = recompute_run(Path(a.run))
    summary = {
        **top,
        "methods": {n: {**(top.get("methods") or {}).get(n, {}), **m} for n, m in methods.items()},
    }
    seeds = top.get("seeds_used") or []
    print(f"{a.run}: recovery recomputed from the run's outputs over {max(len(seeds), 1)} seed(s)")
    print_all(summary)
    diffs = recovery_differences(top, methods)
    if diffs:
        print(f"\nDIFFERS from {a.run}/summary.json in {len(diffs)} values:")
        print("\n".join(f"  {d}" for d in diffs[:50]))
        return 1
    print(f"\nequal to the table recorded in {a.run}/summary.json ({len(methods)} methods, every value)")
    return 0


def _groundtruth(a: argparse.Namespace) -> int:
    from tokenclean.models.loader import load_tokenizer
    from tokenclean.outputs import check_file_target
    from tokenclean.report.truth_tables import class_table, decisive_table, results_table
    from tokenclean.utils import read_json, write_json_atomic

    if a.run:
        return _groundtruth_run(a)
    if not (a.data and a.truth):
        raise DataError("groundtruth", "give --data FILE and --truth FILE (or --run RUN_DIR)")
    if not (a.selection or a.scores):
        raise DataError("groundtruth", "give --selection DIR and/or --scores DIR")
    if a.out:  # refused before any work: an input, or a file that is not an earlier summary
        check_file_target(a.out, "groundtruth", _is_truth_summary, [a.data, a.truth, a.selection, a.scores])
    prep = _prepared_dir(a.selection, a.scores)
    name = a.tokenizer or (read_json(prep / "manifest.json").get("tokenizer") or {}).get("source")
    if not name:
        raise DataError(
            str(prep / "manifest.json"), "no tokenizer recorded; pass --tokenizer", field="tokenizer"
        )
    summary = truth_summary(
        a.data,
        a.truth,
        a.selection,
        a.scores,
        load_tokenizer(str(name)),
        a.format,
        tuple(a.positive.split(",")),
        tuple(a.noise.split(",")),
    )
    print(f"{summary['samples']} annotated samples; labels: {', '.join(summary['labels'])}")
    print(results_table(summary))
    print("[lo, hi] = 95% percentile-bootstrap interval over annotated samples.")
    print("\nPer truth label: share of its tokens kept [95% interval] / mean score")
    print(class_table(summary))
    print(decisive_table(summary))
    if a.out:
        from tokenclean.outputs import output_lock

        with output_lock(a.out):
            write_json_atomic(Path(a.out), summary)
        print(f"wrote {a.out}")
    return 0


def _groundtruth_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--run",
        default=None,
        type=existing("run directory"),
        help="a finished `tokenclean run` with truth: recompute its recovery table from its outputs and "
        "check it against its summary.json (exit 1 when a value differs)",
    )
    s.add_argument(
        "--data", default=None, type=existing("file"), help="the SFT file the prepared data came from"
    )
    s.add_argument(
        "--truth",
        default=None,
        type=existing("file"),
        help='JSONL: {"id", "spans": [[start, end, label], ...]}',
    )
    s.add_argument(
        "--selection",
        default=None,
        type=existing("cleaned dataset"),
        help="a cleaned dataset (tokenclean select --out)",
    )
    s.add_argument(
        "--scores", default=None, type=existing("score store"), help="a score store (tokenclean score --out)"
    )
    s.add_argument("--format", default="auto", help="record format of --data")
    s.add_argument("--tokenizer", default=None, help="defaults to the one named in the prepared manifest")
    s.add_argument("--positive", default="informative", help="comma list of informative labels")
    s.add_argument("--noise", default="noise,hallucination", help="comma list of noise labels")
    s.add_argument("--out", default=None, help="write the summary JSON here")


def _from_steps(a: argparse.Namespace) -> int:
    from tokenclean.groundtruth.steps import Split, StepFields
    from tokenclean.groundtruth.steps_io import from_steps

    fields = StepFields(a.input_field, a.steps_field, a.mistake_field, a.ratings_field, a.id_field)
    limit = tuple(int(x) for x in a.limit.split(",")) if a.limit else ()
    split = Split(a.heldout, limit, a.max_chars, a.seed)
    sep = a.sep.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")
    m = from_steps(a.data, a.out, fields, a.style, sep, split, force=a.force)
    what = "reused" if m.get("reused") else "wrote"
    print(f"{what} {a.out}: {m['samples']} samples (data.jsonl, truth.jsonl), {m['heldout']} held out")
    for path, c in m["per_file"].items():
        print(f"  {path}: {json.dumps(c)}")
    print(f"  steps by label: {json.dumps(m['steps_by_label'])}")
    return 0


def _from_steps_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--data", required=True, action="append", type=existing("file"), help="JSONL traces (repeatable)"
    )
    s.add_argument("--out", required=True, help="output directory (a truth output of tokenclean)")
    s.add_argument(
        "--style",
        default="auto",
        choices=("auto", "first_mistake", "ratings"),
        help="annotation style; auto: the field each record has",
    )
    s.add_argument("--input-field", default="input", help="the prompt field")
    s.add_argument("--steps-field", default="steps", help="the list of steps")
    s.add_argument("--mistake-field", default="mistake_index", help="0-based first wrong step (null: none)")
    s.add_argument("--ratings-field", default="ratings", help="per-step -1/0/+1 ratings (PRM800K style)")
    s.add_argument("--id-field", default=None, help="record id field (default: FILE_STEM-LINE)")
    s.add_argument("--sep", default="\\n", help="separator between steps (backslash escapes allowed)")
    s.add_argument(
        "--heldout", type=int, default=0, help="error-free traces per file held out (heldout.jsonl)"
    )
    s.add_argument(
        "--limit", default=None, help="at most N pool traces per file (N, or N1,N2,... one per --data file)"
    )
    s.add_argument("--max-chars", type=int, default=None, help="skip traces whose steps exceed N characters")
    s.add_argument("--seed", type=int, default=0, help="seed of the held-out pick and the --limit sample")
    s.add_argument("--force", action="store_true", help="replace an output of other inputs or settings")


def _truth(a: argparse.Namespace) -> int:
    return int(a.truth_handler(a))


def _truth_args(s: argparse.ArgumentParser) -> None:
    sub = s.add_subparsers(dest="truth_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser(
        "from-steps",
        help="SFT samples + span truth from step-annotated reasoning traces",
        description="Reasoning traces with a first-mistake index (BIG-Bench Mistake) or per-step ratings "
        "(PRM800K) -> DIR/data.jsonl (input as the user turn, steps joined by --sep as the assistant turn) "
        "and DIR/truth.jsonl (steps before the first mistake 'correct', the first wrong step 'mistake', "
        "later steps 'after'; ratings -1/0/+1 -> 'wrong'/'neutral'/'correct').",
        epilog="example:\n  tokenclean truth from-steps --data word_sorting.jsonl --out bbm --heldout 10",
        formatter_class=HelpFormatter,
    )
    _from_steps_args(p)
    p.set_defaults(truth_handler=_from_steps)


COMMANDS = (
    Command(
        "truth",
        "convert annotated data into SFT samples plus token truth (from-steps)",
        _truth_args,
        _truth,
        example="tokenclean truth from-steps --data traces.jsonl --out truth_dir",
    ),
    Command(
        "groundtruth",
        "recovery metrics of a selection against annotated token truth",
        _groundtruth_args,
        _groundtruth,
        example="tokenclean groundtruth --data my.jsonl --truth my_truth.jsonl --selection runs/clean",
    ),
)
