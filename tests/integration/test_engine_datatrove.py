"""The pool stages on datatrove (issue 18, "an existing engine beyond one SPMD job"), on CPU with the tiny
model:

- ``tokenclean pool`` (3 tasks, 2 local workers) writes the prepared data, the score store and the cleaned
  data of the torchrun path (``prepare``, ``score`` under 2 gloo processes, ``select``): equal columns,
  bit-identical scores, the same selected mask and stats;
- a score task killed (``os._exit``) mid-shard leaves only whole parts and no completion; the rerun skips
  the completed tasks and scores exactly the killed task's missing parts (every part written once);
- a prepare task that raises while writing its shard leaves no shard; the rerun redoes that task only;
- the map/reduce radix select equals the in-memory global top-K on a pool full of ties and NaN, for 1 to 4
  tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.requires("datatrove")]

ROOT = Path(__file__).resolve().parents[2]
PREPARED_COLS = ("sample_id", "input_ids", "labels", "n_trained", "length", "truncated", "location")
STORE_COLS = ("sample_id", "base_loss", "ref_loss", "score")


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENCLEAN_LOGLEVEL="WARNING", PYTHONPATH=path)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


def _run_to_death(cmd: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``cmd`` in its own session until it dies; then end what it left behind (datatrove's local
    executor starts a ``multiprocess`` manager process, which outlives a driver killed with ``os._exit``).
    Returns the exit status and stderr."""
    import signal

    with open(cwd / "killed.err", "w") as err:
        p = subprocess.Popen(
            cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        rc = p.wait(timeout=900)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)  # the orphaned manager, if any (same process group)
    return rc, (cwd / "killed.err").read_text()


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_tok, tiny_model_dir: Path) -> Path:
    """26 samples, the tiny model, a LoRA reference on it, and the torchrun path's outputs in ``ref/``."""
    import random

    from tokenclean.models.loader import load_model
    from tokenclean.testing import WORDS, make_lora_adapter

    d = tmp_path_factory.mktemp("engine")
    rng = random.Random(1)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    recs = [{"prompt": say(rng.randint(2, 8)), "completion": say(rng.randint(2, 12))} for _ in range(26)]
    (d / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "model").symlink_to(tiny_model_dir)
    make_lora_adapter(load_model(str(d / "model")), d / "adapter", base=str(d / "model"), seed=3)
    tc = [sys.executable, "-m", "tokenclean"]
    ok(_run([*tc, "prepare", "--data", "sft.jsonl", "--tokenizer", "model", "--out", "ref/prepared"], d))
    score = [
        "score",
        "--data",
        "ref/prepared",
        "--base",
        "model",
        "--reference",
        "adapter",
        "--out",
        "ref/scores",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    torchrun += ["127.0.0.1", "--master_port", str(_port()), "-m", "tokenclean"]
    ok(
        _run(
            [*torchrun, *score, "--shard-size", "4", "--threads", "1", "--no-progress", "--device", "cpu"], d
        )
    )
    assert json.loads((d / "ref/scores/manifest.json").read_text())["processes"] == 2
    ok(_run([*tc, "select", "--scores", "ref/scores", "--ratio", "0.6", "--out", "ref/selected"], d))
    return d


def _pool_args(out: str) -> list[str]:
    args = "--data sft.jsonl --base model --reference adapter --tasks 3 --shard-size 4 --device cpu"
    return [*args.split(), "--out", out]


def _same_dataset(a_dir: Path, b_dir: Path, cols: tuple[str, ...] | None = None) -> None:
    import datasets
    import pyarrow as pa

    from tokenclean.columns import flat_list

    a, b = datasets.load_from_disk(str(a_dir)), datasets.load_from_disk(str(b_dir))
    assert a.column_names == b.column_names and len(a) == len(b)
    ta, tb = a.with_format("arrow")[:], b.with_format("arrow")[:]
    for c in cols or tuple(a.column_names):
        x, y = ta.column(c), tb.column(c)
        if not pa.types.is_list(x.type):
            assert x.to_pylist() == y.to_pylist(), c
            continue
        (vx, nx), (vy, ny) = (
            flat_list(x, x.type.value_type.to_pandas_dtype()),
            flat_list(y, y.type.value_type.to_pandas_dtype()),
        )
        assert np.array_equal(nx, ny) and vx.tobytes() == vy.tobytes(), c  # bit-equal (NaN included)


def _same_scores(a_dir: Path, b_dir: Path) -> None:
    import datasets

    a, b = datasets.load_from_disk(str(a_dir)), datasets.load_from_disk(str(b_dir))
    assert a["sample_id"] == b["sample_id"]
    for col in ("base_loss", "ref_loss", "score"):
        x = np.concatenate([np.asarray(r, dtype=np.float32) for r in a[col]])
        y = np.concatenate([np.asarray(r, dtype=np.float32) for r in b[col]])
        assert x.tobytes() == y.tobytes(), col


def _same_selection(a_dir: Path, b_dir: Path) -> None:
    _same_dataset(a_dir, b_dir)  # labels, completion_mask (the mask), scores, rows kept
    sa = json.loads((a_dir / "selection_stats.json").read_text())
    sb = json.loads((b_dir / "selection_stats.json").read_text())
    assert sa == sb
    assert (a_dir / "dropped.jsonl").read_text() == (b_dir / "dropped.jsonl").read_text()


def test_pool_cli_equals_the_torchrun_path(work: Path) -> None:
    p = ok(_run([sys.executable, "-m", "tokenclean", "pool", *_pool_args("pool"), "--workers", "2"], work))
    assert "wrote pool: 26 samples prepared" in p.stdout
    _same_dataset(work / "ref/prepared", work / "pool/prepared", PREPARED_COLS)
    _same_scores(work / "ref/scores", work / "pool/scores")
    _same_selection(work / "ref/selected", work / "pool/selected")
    prep = json.loads((work / "pool/prepared/manifest.json").read_text())
    assert prep["identity"] == json.loads((work / "ref/prepared/manifest.json").read_text())["identity"]
    assert len([f for f in prep["files"] if f.endswith(".arrow")]) == 3  # one data file per task
    store = json.loads((work / "pool/scores/manifest.json").read_text())
    assert store["complete"] and store["num_shards"] == 3 and store["engine"] == {"tasks": 3}
    for stage in ("prepared", "scores", "selected"):
        assert not (work / "pool" / stage / ".work").exists()
    # a rerun reuses all three outputs (files verified) and runs no task
    p = ok(_run([sys.executable, "-m", "tokenclean", "pool", *_pool_args("pool")], work))
    assert "Launching pipeline" not in p.stderr


KILL_SCRIPT = """
import os, sys
from pathlib import Path
from tokenclean.engines.datatrove_engine import ExecutorSpec
from tokenclean.engines.pool import PoolSpec, run_pool

out, kill = Path(sys.argv[1]), sys.argv[2] == "kill"

def on_part(rank, k, phase):
    with open(out.parent / "parts.log", "a") as f:
        f.write(f"{rank} {k} {phase}\\n")
    if kill and rank == 1:  # task 1 dies after its first part: mid-shard
        os._exit(3)

spec = PoolSpec("sft.jsonl", "model", str(out), tasks=3, reference="adapter", device="cpu", shard_size=4)
run_pool(spec, ExecutorSpec(workers=1), on_part=on_part)
"""


def test_a_killed_score_task_is_redone_not_lost_or_duplicated(work: Path) -> None:
    from tokenclean.scoring import store

    (work / "kill.py").write_text(textwrap.dedent(KILL_SCRIPT))
    out = work / "killed" / "pool"
    rc, err = _run_to_death([sys.executable, str(work / "kill.py"), str(out), "kill"], work)
    assert rc == 3, err[-4000:]
    first = (work / "killed/parts.log").read_text().split("\n")[:-1]
    assert first[-1].startswith("1 ") and not any(x.startswith("2 ") for x in first)
    scores = out / "scores"
    logs = next((out / ".engine").glob("score-*"))
    assert sorted(p.name for p in (logs / "completions").iterdir()) == ["00000"]  # task 1: no completion
    for marker in store.work_dir(scores).glob("chunk-*.json"):  # every part on disk is whole
        k, phase = int(marker.name[6:11]), marker.name.split(".")[1]
        assert store.part_done(scores, k, phase)
    assert not list(store.work_dir(scores).glob(".*.tmp")) and not (scores / "manifest.json").exists()
    ok(_run([sys.executable, str(work / "kill.py"), str(out), "rerun"], work))
    lines = (work / "killed/parts.log").read_text().split("\n")[:-1]
    total = store.n_chunks(26, 4)
    want = sorted(f"{k % 3} {k} {ph}" for k in range(total) for ph in ("base", "ref"))
    assert sorted(lines) == want  # every part scored exactly once over both runs
    parts = {r: {f"{r} {k} {ph}" for k in range(r, total, 3) for ph in ("base", "ref")} for r in range(3)}
    assert set(lines[len(first) :]) == (parts[1] - set(first)) | parts[2]  # task 0 skipped, 1 resumed
    _same_scores(work / "ref/scores", scores)
    _same_selection(work / "ref/selected", out / "selected")


def test_a_failed_prepare_task_leaves_no_shard_and_only_it_is_redone(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasets.arrow_writer import ArrowWriter

    from tokenclean.engines import pool as ep
    from tokenclean.engines.datatrove_engine import EngineError, ExecutorSpec
    from tokenclean.scoring.store import shard_paths

    monkeypatch.chdir(work)
    out = work / "failed"
    spec = ep.PoolSpec("sft.jsonl", "model", str(out), tasks=3, reference="adapter", device="cpu")
    calls = {"n": 0}
    real = ArrowWriter.finalize

    def finalize_fails_in_task_1(self, *a, **k):  # the second shard written: task 1, mid-write
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk gone")
        return real(self, *a, **k)

    monkeypatch.setattr(ArrowWriter, "finalize", finalize_fails_in_task_1)
    with pytest.raises(EngineError, match=r"prepare: a task failed .*disk gone.*Rerun the same command"):
        ep.pool_prepare(spec, ExecutorSpec(workers=1))
    prepared = out / "prepared"
    assert shard_paths(prepared, 0, 3)[1].exists()
    assert not shard_paths(prepared, 1, 3)[0].exists() and not shard_paths(prepared, 1, 3)[1].exists()
    before = shard_paths(prepared, 0, 3)[0].stat()
    monkeypatch.setattr(ArrowWriter, "finalize", real)
    ep.pool_prepare(spec, ExecutorSpec(workers=1))
    after = prepared / shard_paths(prepared, 0, 3)[0].name  # moved into the dataset by the index step
    assert (after.stat().st_ino, after.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # kept
    _same_dataset(work / "ref/prepared", prepared, PREPARED_COLS)


def test_another_number_of_tasks_starts_an_unfinished_stage_afresh(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasets.arrow_writer import ArrowWriter

    from tokenclean.engines import pool as ep
    from tokenclean.engines.datatrove_engine import EngineError, ExecutorSpec

    monkeypatch.chdir(work)
    real = ArrowWriter.finalize
    monkeypatch.setattr(ArrowWriter, "finalize", lambda self, *a, **k: (_ for _ in ()).throw(OSError("full")))
    spec = ep.PoolSpec("sft.jsonl", "model", str(work / "retasked"), tasks=3)
    with pytest.raises(EngineError, match="full"):
        ep.pool_prepare(spec, ExecutorSpec(workers=1))
    monkeypatch.setattr(ArrowWriter, "finalize", real)
    m = ep.pool_prepare(ep.PoolSpec("sft.jsonl", "model", str(work / "retasked"), tasks=2), ExecutorSpec())
    assert m["engine"]["tasks"] == 2 and len(list((work / "retasked/.engine").glob("prepare-*"))) == 2
    _same_dataset(work / "ref/prepared", work / "retasked/prepared", PREPARED_COLS)


@pytest.mark.parametrize("tasks", [1, 2, 4])
def test_map_reduce_select_equals_in_memory_select_with_ties_and_nan(tmp_path: Path, tasks: int) -> None:
    from tokenclean.engines import pool as ep
    from tokenclean.engines.datatrove_engine import ExecutorSpec
    from tokenclean.selection import select
    from tokenclean.testing.stores import write_prepared, write_score_store

    rng = np.random.default_rng(tasks)
    n = 40
    lengths = rng.integers(3, 12, n)
    input_ids = [rng.integers(5, 90, k).tolist() for k in lengths]
    labels = [[-100 if j < k // 2 else t for j, t in enumerate(ids)] for ids, k in zip(input_ids, lengths)]
    scores = []
    for lab in labels:
        s = np.round(rng.normal(size=len(lab)) * 2) / 2  # few distinct values: many ties at the cut
        s[rng.random(len(lab)) < 0.1] = np.nan
        s[np.asarray(lab) == -100] = np.nan
        scores.append(s.astype(np.float32))
    write_prepared(tmp_path / "pool/prepared", input_ids, labels)
    write_score_store(tmp_path / "pool/scores", tmp_path / "pool/prepared", scores)
    for ratio in (0.3, 0.6):
        out = tmp_path / f"pool-{ratio}"
        (out).mkdir()
        for d in ("prepared", "scores"):
            (out / d).symlink_to(tmp_path / "pool" / d)
        spec = ep.PoolSpec("unused.jsonl", "unused", str(out), tasks=tasks, ratio=ratio)
        st = ep.pool_select(spec, ExecutorSpec(workers=1))
        select(tmp_path / "pool/scores", ratio, "global", tmp_path / f"mem-{ratio}")
        _same_selection(tmp_path / f"mem-{ratio}", out / "selected")
        assert st["tie_decided_tokens"] > 0  # the ties at the cut were split between the tasks
