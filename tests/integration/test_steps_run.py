"""Step-annotated traces through a run: ``truth from-steps`` -> ``data.truth`` with correct/mistake/after, and
``tokenclean groundtruth`` reproduces the run's per-label recovery from its outputs (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenclean.groundtruth.steps_io import from_steps
from tokenclean.pipelines.config import load_run_config
from tokenclean.pipelines.runner import run

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def _traces(tmp_path: Path) -> Path:
    rows = []
    for i in range(14):
        steps = [f"start {i}", f"push ( ; stack: ( {i}", f"pop ) ; stack: empty {i}", f"so the answer is {i}"]
        rows.append(
            {"input": f"close ( {i}", "steps": steps, "mistake_index": None if i % 4 == 0 else 1 + i % 3}
        )
    p = tmp_path / "traces.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_step_truth_in_a_run_and_groundtruth_agree(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from tokenclean.cli import main

    from_steps([_traces(tmp_path)], tmp_path / "bbm")
    data, truth = tmp_path / "bbm" / "data.jsonl", tmp_path / "bbm" / "truth.jsonl"
    cfg = load_run_config(
        TINY,
        [
            f"run_dir={tmp_path / 'run'}",
            f"model.base={tiny_model_dir}",
            f"data.path={data}",
            f"data.truth={truth}",
            "data.truth_positive=[correct]",
            "data.truth_noise=[mistake,after]",
            "data.heldout=null",
            "methods=[fixed_model]",
            "report=false",
            "eval.suite=none",
        ],
    )
    m = run(cfg)["methods"]["fixed_model"]
    assert set(m["classes"]) >= {"correct", "mistake", "after"}
    mis = m["classes"]["mistake"]
    assert mis["spans"] >= 1 and "auroc_decisive" in mis and "decisive_dropped" in mis
    out = tmp_path / "gt.json"
    args = ["groundtruth", "--data", str(data), "--truth", str(truth), "--positive", "correct"]
    args += ["--noise", "mistake,after", "--selection", str(tmp_path / "run" / m["cleaned"])]
    args += ["--scores", str(tmp_path / "run" / m["scores"]), "--out", str(out)]
    assert main(args) == 0
    assert "spans removed" in capsys.readouterr().out
    got = json.loads(out.read_text())["methods"]["selection"]
    for label in ("correct", "mistake", "after"):
        assert got["classes"][label]["kept"] == m["classes"][label]["kept"]  # the CLI and the run agree
    assert got["classes"]["mistake"]["auroc_decisive"] == mis["auroc_decisive"]


def test_groundtruth_run_reproduces_a_seeded_runs_table(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    """``tokenclean groundtruth --run`` recomputes every method's recovery (a selection, a random draw and an
    online method's counted tokens, over two seeds) from the run's files and finds the recorded table; a
    recorded value changed by hand is reported and exits 1."""
    from tokenclean.cli import main

    from_steps([_traces(tmp_path)], tmp_path / "bbm")
    data, truth = tmp_path / "bbm" / "data.jsonl", tmp_path / "bbm" / "truth.jsonl"
    root = tmp_path / "run"
    over = [f"run_dir={root}", f"model.base={tiny_model_dir}", f"data.path={data}", f"data.truth={truth}"]
    over += ["data.truth_positive=[correct]", "data.truth_noise=[mistake,after]", "data.heldout=null"]
    over += ["methods=[random,fixed_model,dft]", "seeds=[0,1]", "report=false", "eval.suite=none"]
    summary = run(load_run_config(TINY, over))
    assert {"random", "fixed_model", "dft"} <= set(summary["methods"])
    assert main(["groundtruth", "--run", str(root)]) == 0
    out = capsys.readouterr().out
    assert "over 2 seed(s)" in out and "equal to the table recorded" in out and "(3 methods" in out
    path = root / "summary.json"
    top = json.loads(path.read_text())
    top["methods"]["dft"]["classes"]["mistake"]["kept"] += (
        0.01  # a table that no longer follows from the files
    )
    path.write_text(json.dumps(top))
    assert main(["groundtruth", "--run", str(root)]) == 1
    assert "dft: classes.mistake.kept" in capsys.readouterr().out


def test_a_run_with_step_selection_cuts_each_trace_at_its_worst_step(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``selection.steps: cut_min`` in a run: fixed-model's selection records it, and since a trace's step
    scores never rise along the trace, every sample keeps a prefix of its scored response tokens."""
    import datasets
    import numpy as np

    from_steps([_traces(tmp_path)], tmp_path / "bbm")
    cfg = load_run_config(
        TINY,
        [
            f"run_dir={tmp_path / 'run'}",
            f"model.base={tiny_model_dir}",
            f"data.path={tmp_path / 'bbm' / 'data.jsonl'}",
            "data.heldout=null",
            "methods=[fixed_model]",
            "selection.steps=cut_min",
            "report=false",
            "eval.suite=none",
        ],
    )
    m = run(cfg)["methods"]["fixed_model"]
    cleaned = tmp_path / "run" / m["cleaned"]
    stats = json.loads((cleaned / "selection_stats.json").read_text())
    assert stats["steps"] == {"mode": "cut_min", "separator": "\n"}
    ds = datasets.load_from_disk(str(cleaned))
    prefixes = 0
    for lab, resp, score in zip(ds["labels"], ds["response_labels"], ds["score"]):
        resp_pos = np.flatnonzero(np.asarray(resp) != -100)
        s = np.asarray(score, dtype=np.float64)[resp_pos]
        scored = ~np.isnan(s)
        assert np.all(np.diff(s[scored]) <= 0)  # the cut: step scores never rise along a trace
        kept = (np.asarray(lab) != -100)[resp_pos][scored]
        assert not np.any(kept[1:] & ~kept[:-1])  # kept tokens form a prefix of the scored ones
        prefixes += int(kept.any() and not kept.all())
    assert len(ds) >= 1 and prefixes >= 1
