"""``data.truth`` in a run and ``tokenclean groundtruth`` on multi-turn annotated data (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenclean.pipelines.config import load_run_config
from tokenclean.pipelines.runner import run

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def _data(tmp_path: Path) -> tuple[Path, Path]:
    rows, truth = [], []
    for i in range(12):
        a1, a2 = f"Sure. The answer is tolo{i}.", f"Also the moon is made of cheese {i}."
        rows.append(
            {
                "id": f"s{i}",
                "messages": [
                    {"role": "user", "content": f"question {i}?"},
                    {"role": "assistant", "content": a1},
                    {"role": "user", "content": "and?"},
                    {"role": "assistant", "content": a2},
                ],
            }
        )
        k = a1.index("tolo")
        truth.append(
            {
                "id": f"s{i}",
                "spans": [
                    [0, 0, 5, "boilerplate"],
                    [0, k, len(a1) - 1, "informative"],
                    [1, 16, len(a2) - 1, "hallucination"],
                ],
                "decisive": [[1, 16]],
            }
        )
    data, tr = tmp_path / "data.jsonl", tmp_path / "truth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tr.write_text("".join(json.dumps(r) + "\n" for r in truth))
    return data, tr


def test_user_truth_flows_through_run_cli_and_report(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from tokenclean.cli import main

    data, truth = _data(tmp_path)
    cfg = load_run_config(
        TINY,
        [
            f"run_dir={tmp_path / 'run'}",
            f"model.base={tiny_model_dir}",
            f"data.path={data}",
            f"data.truth={truth}",
            "data.heldout=null",
            "methods=[fixed_model]",
            "report=true",
            "eval.suite=none",
        ],
    )
    summary = run(cfg)
    m = summary["methods"]["fixed_model"]
    assert set(m["classes"]) >= {"boilerplate", "informative", "hallucination", "unlabelled"}
    h = m["classes"]["hallucination"]
    assert h["spans"] == 12 and 0 <= h["decisive_dropped"] <= 1 and "auroc_decisive" in h
    assert m["recovery"]["auroc"] is not None and m.get("heldout") is None  # no held-out set given
    lo, hi = m["recovery_ci"]["precision"]
    assert lo <= m["recovery"]["precision"] <= hi
    html = (tmp_path / "run" / "report" / "index.html").read_text()
    assert 'data-truth="hallucination"' in html and "tr-noise" in html

    out = tmp_path / "gt.json"
    args = ["groundtruth", "--data", str(data), "--truth", str(truth)]
    args += [
        "--selection",
        str(tmp_path / "run" / m["cleaned"]),
        "--scores",
        str(tmp_path / "run" / m["scores"]),
    ]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "12 annotated samples" in text and "hallucination" in text and "spans removed" in text
    got = json.loads(out.read_text())["methods"]["selection"]
    assert got["classes"]["hallucination"]["kept"] == h["kept"]  # the CLI and the run agree


def test_groundtruth_command_names_the_bad_span(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from tokenclean.cli import main

    data, truth = _data(tmp_path)
    cfg = load_run_config(
        TINY,
        [
            f"run_dir={tmp_path / 'run'}",
            f"model.base={tiny_model_dir}",
            f"data.path={data}",
            "data.heldout=null",
            "methods=[fixed_model]",
            "report=false",
            "eval.suite=none",
        ],
    )
    summary = run(cfg)
    lines = truth.read_text().splitlines()
    bad = json.loads(lines[3])
    bad["spans"][2] = [1, 16, 999, "hallucination"]
    lines[3] = json.dumps(bad)
    truth.write_text("\n".join(lines) + "\n")
    sel = tmp_path / "run" / summary["methods"]["fixed_model"]["cleaned"]
    rc = main(["groundtruth", "--data", str(data), "--truth", str(truth), "--selection", str(sel)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{truth}:4" in err and "'s3'" in err and "exceeds assistant message 1" in err


def test_demo_prints_intervals_budgets_and_overlap_words(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    from tokenclean.cli import main

    args = ["demo", "--out", str(tmp_path / "demo"), f"model.base={tiny_model_dir}", "report=false"]
    args += ["methods=[base,full,fixed_model]", "data.synthetic.n_facts=4", "data.synthetic.repeats=3"]
    args += ["warmup.epochs=1", "train.batch_size=4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "95% percentile-bootstrap interval over facts (each with all its held-out questions" in out
    assert "a cluster bootstrap) only (one seed)" in out
    assert "16 held-out questions" in out  # 4 facts x 4 phrasings
    assert "answer loss: " in out and "overlap" in out  # the overlap sentences
    head = next(ln for ln in out.splitlines() if ln.startswith("method") and "updates" in ln)
    assert "fwd tok" in head and "bwd tok" in head
    row = next(ln for ln in out.splitlines() if ln.startswith("fixed_model "))
    assert row.count("[") >= 5  # precision, recall, AUROC, noise kept, held-out columns with intervals
