"""The shared output rules (tokenclean.outputs) on the prepare and select stages: verified reuse, foreign
directories refused, one writer at a time, damaged files named, and the select stage's input checks.
Issue 11 cases 2, 3, 4, 5, 6 and 9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.data.prepare import prepare
from tokenclean.errors import DataError, TokencleanError
from tokenclean.outputs import StaleOutputError
from tokenclean.selection import select
from tokenclean.testing.stores import write_prepared, write_score_store

X = IGNORE_INDEX
IDS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
LABELS = [[X, X, 3, 4, 5], [X, 7, 8], [X, X, 11, 12]]


@pytest.fixture()
def src(tmp_path: Path, fixtures_dir: Path) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_bytes((fixtures_dir / "alpaca.jsonl").read_bytes())
    return p


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    return write_score_store(tmp_path / "scores", prep, seed=1)


def arrow_files(d: Path) -> list[Path]:
    return sorted(d.glob("data-*.arrow"))


# ---------------------------------------------------------------- case 3: finished outputs are verified


def test_prepared_dataset_with_a_deleted_arrow_file_is_recomputed(
    src: Path, tmp_path: Path, tiny_tok
) -> None:
    out = tmp_path / "out"
    prepare(src, tiny_tok, out, progress=False)
    want = {p.name: p.read_bytes() for p in arrow_files(out)}
    arrow_files(out)[0].unlink()
    m = prepare(src, tiny_tok, out, progress=False)
    assert not m.get("reused")  # not trusted from its manifest alone
    assert {p.name: p.read_bytes() for p in arrow_files(out)} == want  # recomputed, byte-identical


def test_prepared_dataset_with_changed_bytes_is_recomputed(src: Path, tmp_path: Path, tiny_tok) -> None:
    out = tmp_path / "out"
    prepare(src, tiny_tok, out, progress=False)
    f = arrow_files(out)[0]
    good = f.read_bytes()
    data = bytearray(good)
    data[-9] ^= 0xFF  # same size, other content
    f.write_bytes(bytes(data))
    assert not prepare(src, tiny_tok, out, progress=False).get("reused")
    assert f.read_bytes() == good
    assert prepare(src, tiny_tok, out, progress=False)["reused"]  # and now it verifies


def test_selection_with_changed_stats_is_recomputed_and_a_changed_store_is_refused(
    store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "c"
    first = select(store, 0.5, "global", out)
    (out / "selection_stats.json").write_text(json.dumps(dict(first, kept_tokens=0)))
    again = select(store, 0.5, "global", out)
    assert "reused" not in again and again["kept_tokens"] == first["kept_tokens"]
    # the score store (an input) changes after it was written: refused, naming the file
    f = arrow_files(store)[0]
    data = bytearray(f.read_bytes())
    data[-9] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(TokencleanError, match=r"scores: data-.*\.arrow changed content"):
        select(store, 0.5, "global", tmp_path / "d")


# ---------------------------------------------------------------- case 2: a store of other prepared data


def test_select_refuses_a_store_of_other_prepared_data_with_equal_ids_and_lengths(tmp_path: Path) -> None:
    a = write_prepared(tmp_path / "a", IDS, LABELS)
    other_ids = [[t + 100 for t in row] for row in IDS]  # same sample ids and lengths, other tokens
    other_labels = [[X if v == X else v + 100 for v in row] for row in LABELS]
    b = write_prepared(tmp_path / "b", other_ids, other_labels)
    s = write_score_store(tmp_path / "s", a)
    ka = json.loads((a / "manifest.json").read_text())["cache_key"]
    kb = json.loads((b / "manifest.json").read_text())["cache_key"]
    with pytest.raises(DataError, match=rf"prepared key {ka}.* has key {kb}"):
        select(s, 0.5, "global", tmp_path / "o", prepared_dir=b)
    assert not (tmp_path / "o").exists()
    select(s, 0.5, "global", tmp_path / "o", prepared_dir=a)  # its own data is fine


# ---------------------------------------------------------------- case 4: never destroy a user's directory


def test_prepare_and_select_refuse_a_users_directory(
    src: Path, store: Path, tmp_path: Path, tiny_tok
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work")
    with pytest.raises(
        TokencleanError, match=r"mine exists and is not a tokenclean output, not a prepare output"
    ):
        prepare(src, tiny_tok, mine, progress=False)
    with pytest.raises(TokencleanError, match=r"not a select output"):
        select(store, 0.5, "global", mine, force=True)  # not even with --force
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (
        mine / "notes.txt"
    ).read_text() == "my own work"
    # another kind of tokenclean output is not replaced either
    with pytest.raises(TokencleanError, match=r"is a tokenclean prepare output, not a select output"):
        select(store, 0.5, "global", store.parent / "prep")


def test_prepare_cli_refuses_a_users_directory_before_loading_the_tokenizer(
    src: Path, tmp_path: Path, capsys
) -> None:
    from tokenclean.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("x")
    tok = tmp_path / "tok"  # exists (the name check passes) but is no tokenizer: never loaded
    tok.mkdir()
    code = main(["prepare", "--data", str(src), "--tokenizer", str(tok), "--out", str(mine)])
    assert code == 2 and "is not a tokenclean output" in capsys.readouterr().err
    assert (mine / "a.txt").read_text() == "x"


def test_an_output_equal_to_or_inside_an_input_is_refused(
    src: Path, store: Path, tmp_path: Path, tiny_tok
) -> None:
    with pytest.raises(TokencleanError, match=r"is the input"):
        select(store, 0.5, "global", store)
    with pytest.raises(TokencleanError, match=r"is inside the input"):
        select(store, 0.5, "global", store / "cleaned")
    with pytest.raises(TokencleanError, match=r"is inside --out"):  # replacing --out would delete the input
        prepare(src, tiny_tok, tmp_path, progress=False)
    assert src.exists() and (store / "manifest.json").exists()


# ---------------------------------------------------------------- case 5: one writer at a time

HOLD = textwrap.dedent(
    """
    import sys, time
    from tokenclean.outputs import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_second_writer_gets_in_use_by_pid(src: Path, tmp_path: Path, tiny_tok) -> None:
    from tokenclean.outputs import lock_path

    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(TokencleanError, match=rf"in use by PID {holder.pid}\b"):
            prepare(src, tiny_tok, out, progress=False)
        assert not out.exists()  # nothing written by the second writer
    finally:
        holder.kill()
        holder.wait()
    prepare(src, tiny_tok, out, progress=False)  # the lock died with its holder
    assert not lock_path(out).exists()


def test_lock_is_reentrant_in_one_process_and_released(tmp_path: Path) -> None:
    from tokenclean.outputs import lock_path, output_lock

    out = tmp_path / "o"
    with output_lock(out), output_lock(out):
        assert lock_path(out).read_text() == str(os.getpid())
    assert not lock_path(out).exists()


def test_leftovers_of_a_killed_writer_are_removed_and_only_they(src: Path, tmp_path: Path, tiny_tok) -> None:
    """Issue 21 case 6: only names atomic_dir writes are removed (a user's ``.out.old-mybackup`` stays), and
    a leftover symbolic link is unlinked without touching what it points to."""
    out = tmp_path / "out"
    for name in (
        ".out.tokenclean-tmp-abcd_123",
        ".out.tokenclean-old-12345",
        ".out.old-mybackup",
        ".out.tmp-abc",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data-00000-of-00001.arrow").write_bytes(b"x")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    (tmp_path / ".out.tokenclean-old-999").symlink_to(victim)
    prepare(src, tiny_tok, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.old-mybackup",
        ".out.tmp-abc",
        "in.jsonl",
        "out",
        "victim",
    ]
    assert (victim / "keep.txt").read_text() == "mine"
    assert (tmp_path / ".out.old-mybackup" / "data-00000-of-00001.arrow").read_bytes() == b"x"


# ---------------------------------------------------------------- case 6: clear errors


def test_damaged_manifest_is_named_not_a_traceback(src: Path, tmp_path: Path, tiny_tok) -> None:
    out = tmp_path / "out"
    prepare(src, tiny_tok, out, progress=False)
    (out / "manifest.json").write_text('{"stage": "prepare", "cache')  # torn
    with pytest.raises(
        TokencleanError, match=r"manifest\.json: not valid JSON \(line 1.*remove that directory"
    ):
        prepare(src, tiny_tok, out, progress=False)


def test_damaged_plan_json_is_named_with_what_to_do(tmp_path: Path) -> None:
    from tokenclean.scoring import store as st

    out = tmp_path / "o"
    (out / ".work").mkdir(parents=True)
    (out / ".work" / "plan.json").write_text('{"run_key": ')
    with pytest.raises(st.StoreError, match=r"plan\.json: damaged .*--force to discard"):
        st.prepare_out(out, {"run_key": "k"}, force=False)
    st.prepare_out(out, {"run_key": "k"}, force=True)  # --force discards it


def test_read_json_names_the_file(tmp_path: Path) -> None:
    from tokenclean.utils import read_json

    p = tmp_path / "x.json"
    p.write_text("[1, 2")
    with pytest.raises(TokencleanError, match=r"x\.json: not valid JSON"):
        read_json(p)


def test_truncated_arrow_file_of_a_store_is_a_clear_error(store: Path, tmp_path: Path) -> None:
    f = arrow_files(store)[0]
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(TokencleanError, match=r"data-.*\.arrow changed size \(\d+ -> 100 bytes; truncated"):
        select(store, 0.5, "global", tmp_path / "c")


def test_a_read_only_out_is_found_before_the_work(src: Path, tmp_path: Path, tiny_tok, monkeypatch) -> None:
    import tokenclean.outputs as outputs

    monkeypatch.setattr(outputs, "_writable", lambda p: Path(p) != tmp_path)  # (root ignores chmod)
    called = []
    monkeypatch.setattr(
        "tokenclean.engines.prepare.read_records", lambda *a, **k: called.append(1) or iter(())
    )
    with pytest.raises(TokencleanError, match=rf"cannot write --out .*: no write permission on {tmp_path}"):
        prepare(src, tiny_tok, tmp_path / "out", progress=False)
    assert not called


# ---------------------------------------------------------------- case 9: silent selections


def test_all_nan_scores_are_refused_at_every_level(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    nan = [np.full(len(r), np.nan) for r in IDS]
    s = write_score_store(tmp_path / "s", prep, scores=nan)
    for level in ("random", "global", "sample"):
        with pytest.raises(DataError, match=r"every one of the 7 response-token scores .* is NaN"):
            select(s, 0.5, level, tmp_path / f"o-{level}")
        assert not (tmp_path / f"o-{level}").exists()


def test_empty_ratio_is_a_clear_error(store: Path, tmp_path: Path, capsys) -> None:
    from tokenclean.cli import main

    assert main(["select", "--scores", str(store), "--ratio", "", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--ratio: empty" in err and "{ratio}" not in err


def test_select_warns_when_ties_decide_the_cut(tmp_path: Path, tc_log: list[str]) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    zeros = [np.where(np.asarray(lab) == X, np.nan, 0.0) for lab in LABELS]
    s = write_score_store(tmp_path / "s", prep, scores=zeros)
    stats = select(s, 0.5, "global", tmp_path / "o")
    assert stats["kept_tokens"] == 3 and stats["tie_decided_tokens"] == 3
    assert any("ties decided 3 of the 3 kept tokens (100%)" in m for m in tc_log)
    tc_log.clear()
    stats = select(write_score_store(tmp_path / "s2", prep, seed=3), 0.5, "global", tmp_path / "o2")
    assert stats["tie_decided_tokens"] == 0 and not any("ties decided" in m for m in tc_log)


def test_identity_with_tuples_is_reused(tmp_path: Path) -> None:
    """An identity holding tuples (frozen settings dataclasses) equals the JSON lists its marker holds, so the
    output is reused (XTF's filters once made every re-run recompute XTF and retrain on it)."""
    from tokenclean.outputs import decide

    out = tmp_path / "cleaned"
    out.mkdir()
    ident = {"xtf": {"filters": ("novelty", "attention"), "expert_words": ()}, "base": "m"}
    marker = {"stage": "select", "identity": json.loads(json.dumps(ident)), "files": {}}
    (out / "manifest.json").write_text(json.dumps(marker))
    assert decide(out, "select", ident) == marker
    with pytest.raises(StaleOutputError, match=r"xtf\.filters"):
        decide(out, "select", {**ident, "xtf": {"filters": ("novelty",), "expert_words": ()}})


def test_verification_reads_a_settled_file_once_per_process_and_sees_any_later_write(
    tmp_path: Path, monkeypatch
) -> None:
    """Verifying an artifact again (each stage of a run verifies its inputs) does not re-read a file whose
    timestamps are settled; a rewrite with the same size is still caught, and a fresh file is re-read."""
    import time

    import tokenclean.utils as utils
    from tokenclean.outputs import file_digests, verify_files

    f = tmp_path / "data.bin"
    f.write_bytes(b"a" * 1000)
    files = file_digests(tmp_path)
    reads: list[str] = []
    real = utils.sha256_file
    monkeypatch.setattr(utils, "sha256_file", lambda p, *a: reads.append(str(p)) or real(p, *a))
    monkeypatch.setattr(utils, "SETTLED_NS", 0)  # every timestamp counts as settled
    assert verify_files(tmp_path, files) is None and verify_files(tmp_path, files) is None
    assert len(reads) == 1  # read once
    time.sleep(0.01)
    f.write_bytes(b"b" * 1000)  # same size, new timestamps: read again, and caught
    assert "changed content" in str(verify_files(tmp_path, files))
    assert len(reads) == 2
    monkeypatch.setattr(utils, "SETTLED_NS", 2_000_000_000)
    f.write_bytes(b"a" * 1000)  # timestamps younger than 2 s: read at every verification until they settle
    assert verify_files(tmp_path, files) is None and verify_files(tmp_path, files) is None
    assert len(reads) == 4
