"""Issue 21: nothing of the user's is destroyed by any command, and bad inputs end in a message, not a
traceback. One test per case of the issue (the ten defects, then the eleven unclear cases); each fails on the
code before the issue."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.cli import main
from tokenclean.data.prepare import prepare
from tokenclean.errors import ConfigError, DataError, OutputError
from tokenclean.testing import require
from tokenclean.testing.stores import write_prepared, write_score_store

X = IGNORE_INDEX
IDS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
LABELS = [[X, X, 3, 4, 5], [X, 7, 8], [X, X, 11, 12]]
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}


def jsonl(path: Path, rows: list[dict] | list[str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture()
def adapter(tmp_path: Path, tiny_model_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from tokenclean.testing.tiny import make_lora_adapter

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    return make_lora_adapter(model, tmp_path / "adapter", base=str(tiny_model_dir))


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. merge --out


def test_merge_refuses_a_foreign_out_the_model_and_the_adapter(
    tmp_path: Path, tiny_model_dir: Path, adapter: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    model_before, adapter_before = tree(tiny_model_dir), tree(adapter)
    for out, why in ((mine, "not a tokenclean output"), (tiny_model_dir, "input"), (adapter, "input")):
        code, err = cli(
            capsys, "merge", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(out)
        )
        assert code == 2 and why in err, err
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt"
    ]
    assert tree(tiny_model_dir) == model_before and tree(adapter) == adapter_before
    out = tmp_path / "merged"  # a new directory, then the same one again (an earlier merge is replaced)
    for _ in range(2):
        code, err = cli(
            capsys, "merge", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(out)
        )
        assert code == 0, err
    assert json.loads((out / "merge.json").read_text())["stage"] == "merge"


# ---------------------------------------------------------------- 2. run's run_dir


def _config(tmp_path: Path, tiny_model_dir: Path, run_dir: str, **extra: object) -> Path:
    import yaml

    cfg = {
        "run_dir": run_dir,
        "methods": ["base"],
        "data": {"path": "builtin:sample"},
        "model": {"base": str(tiny_model_dir)},
        **extra,
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("their_config", ["a: 1\n", "just a string\n"])
def test_run_refuses_a_directory_it_did_not_make_and_names_the_flag(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], their_config: str
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.yaml").write_text(their_config)
    code, err = cli(capsys, "run", str(_config(tmp_path, tiny_model_dir, str(theirs))), "--threads", "1")
    assert code == 2 and "was not made by tokenclean" in err and "--adopt-run-dir" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in theirs.iterdir()) == ["config.yaml"]
    assert (theirs / "config.yaml").read_text() == their_config


def test_run_dir_empty_is_refused(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = cli(capsys, "run", str(_config(tmp_path, tiny_model_dir, "")), "--threads", "1")
    assert code == 2 and "run_dir: empty" in err, err
    from tokenclean.outputs import check_run_dir

    with pytest.raises(OutputError, match="empty path"):
        check_run_dir("")


def test_run_dir_of_tokenclean_is_reused_and_adopt_takes_a_foreign_one(tmp_path: Path) -> None:
    from tokenclean.outputs import check_run_dir, is_run_dir, mark_owned

    d = tmp_path / "r"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    check_run_dir(d, adopt=True)  # the override
    mark_owned(d, "run")
    assert is_run_dir(d)
    check_run_dir(d)  # now it is a run's
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "summary.json").write_text(json.dumps({"pipeline": "base", "methods": {}}))
    check_run_dir(legacy)  # a run directory of an older tokenclean (no owner mark)


# ---------------------------------------------------------------- 3. a literal '~'


def test_tilde_is_expanded_once_at_the_cli_edge(
    tmp_path: Path, tiny_tok_dir: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    src = fixtures_dir / "alpaca.jsonl"
    assert main(["prepare", "--data", str(src), "--tokenizer", str(tiny_tok_dir), "--out", "~/pp"]) == 0
    assert json.loads((home / "pp" / "manifest.json").read_text())["stage"] == "prepare"
    assert sorted(p.name for p in home.iterdir()) == ["pp"]  # no half-expanded .pp.tmp-* left in $HOME
    assert list(work.iterdir()) == []  # and no ./~ directory
    from tokenclean.pipelines.config import load_run_config

    assert load_run_config(None, ["run_dir=~/r", "data.path=builtin:sample", "model.base=x"]).run_dir == str(
        home / "r"
    )


def test_an_unexpandable_tilde_is_refused(tmp_path: Path, tiny_tok, fixtures_dir: Path) -> None:
    from tokenclean.outputs import expand_user

    path = "~no-such-user-tokenclean/pp"
    assert expand_user(path) == path
    with pytest.raises(OutputError, match="starts with '~'"):
        prepare(fixtures_dir / "alpaca.jsonl", tiny_tok, path, progress=False)
    with pytest.raises(ConfigError, match="run_dir"):
        from tokenclean.pipelines.config import load_run_config

        load_run_config(None, [f"run_dir={path}", "data.path=builtin:sample", "model.base=x"])


# ---------------------------------------------------------------- 4. lock files never follow links


def test_a_symlinked_or_hard_linked_lock_file_is_refused_not_written(tmp_path: Path) -> None:
    from tokenclean.outputs import lock_path, output_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    lock_path(out).symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"), output_lock(out):
        pass
    assert victim.read_text() == "precious"
    lock_path(out).unlink()
    os.link(victim, lock_path(out))
    with pytest.raises(OutputError, match="hard link"), output_lock(out):
        pass
    assert victim.read_text() == "precious"


# ---------------------------------------------------------------- 5. eval --out inside an input


def test_eval_out_inside_an_input_or_a_foreign_file_is_refused_before_loading(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prep = write_prepared(tmp_path / "heldout", IDS, LABELS)
    before = (prep / "manifest.json").read_bytes()
    args = ["eval", "--model", str(tiny_model_dir), "--heldout", str(prep), "--threads", "1", "--out"]
    code, err = cli(capsys, *args, str(prep / "manifest.json"))
    assert code == 2 and "is inside the input" in err, err
    assert (prep / "manifest.json").read_bytes() == before
    code, err = cli(capsys, *args, "")
    assert code == 2 and "empty path" in err, err
    notes = tmp_path / "notes"  # an existing file without .json: refused, not a FileExistsError
    notes.write_text("mine")
    code, err = cli(capsys, *args, str(notes))
    assert code == 2 and "not a tokenclean eval result" in err and "Traceback" not in err, err
    assert notes.read_text() == "mine"
    res = tmp_path / "res.json"
    for _ in range(2):  # a new result file, then an earlier result replaced
        code, err = cli(capsys, *args, str(res))
        assert code == 0, err
    assert json.loads(res.read_text())["suite"] == "quick"


# ---------------------------------------------------------------- 7. a seeds run locks its top level

HOLD = textwrap.dedent(
    """
    import sys, time
    from tokenclean.outputs import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_a_seeds_run_locks_its_top_level_run_dir(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tokenclean.pipelines.config import load_run_config
    from tokenclean.pipelines.runner import run

    run_dir = tmp_path / "r"
    cfg = load_run_config(_config(tmp_path, tiny_model_dir, str(run_dir), seeds=[0, 1]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"in use by PID {holder.pid}\b"):
            run(cfg)
        assert not run_dir.exists()  # nothing written: no seed_0
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- 8. report file names


def test_report_refuses_two_names_that_make_one_file_name(tmp_path: Path) -> None:
    require("matplotlib")
    from tokenclean.report import build_report

    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    store = write_score_store(tmp_path / "scores", prep, seed=1)
    with pytest.raises(ConfigError, match=r"'m\.1' and 'm_1' would share"):
        build_report([f"m.1={store}", f"m_1={store}"], out=tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


# ---------------------------------------------------------------- 9. terminal output of user data


def test_inspect_escapes_control_characters_of_ids_and_text(tmp_path: Path, tiny_tok) -> None:
    from rich.console import Console

    from tokenclean.report.inspect import inspect

    evil = "\x1b]0;pwned\x07\x1b[2J\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"
    src = jsonl(
        tmp_path / "evil.jsonl",
        [
            {
                "id": f"id{evil}",
                "messages": [
                    {"role": "user", "content": f"q{evil}"},
                    {"role": "assistant", "content": f"a{evil}"},
                ],
            }
        ],
    )
    prep = tmp_path / "prep"
    prepare(src, tiny_tok, prep, progress=False)
    for markers in (True, False):
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=True, color_system=None, highlight=False)
        inspect(str(prep), tokenizer=tiny_tok, markers=markers, console=console)
        shown = buf.getvalue()
        assert "pwned" in shown and "\\x1b]0;" in shown and "\\x07" in shown
        assert "\x1b" not in shown and "\x07" not in shown  # (colours off: any ESC would be the data's)


# ---------------------------------------------------------------- 10. a huge line is cut before tokenising


def test_a_long_row_is_cut_to_a_character_budget_before_tokenising(
    tiny_tok, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenclean.data import labels as lab
    from tokenclean.data.formats import Message
    from tokenclean.data.templates import render

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "token", "clean", "data", "x", "yz", "."]
    long = " ".join(rng.choice(words, size=60_000))  # ~300k characters
    msgs = [Message("user", "tell me"), Message("assistant", long)]
    seen: list[int] = []
    real = lab.tokenize_rendered
    monkeypatch.setattr(lab, "tokenize_rendered", lambda r, t: (seen.append(len(r.text)), real(r, t))[1])
    enc = lab.encode_conversation(msgs, tiny_tok, "tulu", max_length=64)
    budget = lab.char_budget(tiny_tok, 64)
    assert seen == [budget] and budget < 5_000  # tokenised text bounded by max_length, not the line
    r = render(msgs, tiny_tok, "tulu")
    ids, offs = real(r, tiny_tok)
    want = lab.labels_from_spans(ids, offs, r.trained)[:64]
    assert enc.truncated and enc.input_ids == ids[:64] and enc.labels == want  # same tokens as uncut


def test_prepare_records_a_cut_row_as_truncated(tmp_path: Path, tiny_tok) -> None:
    big = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 100_000}]
    }
    prep = tmp_path / "prep"
    m = prepare(jsonl(tmp_path / "big.jsonl", [big, CHAT]), tiny_tok, prep, max_length=32, progress=False)
    assert m["counts"]["truncated"] == 1
    import datasets

    ds = datasets.load_from_disk(str(prep))
    assert ds["truncated"] == [True, False] and ds["length"][0] == 32


# ---------------------------------------------------------------- unclear cases: messages, not tracebacks


def test_deeply_nested_json_is_a_file_line_error(tmp_path: Path, tiny_tok) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    src = jsonl(tmp_path / "deep.jsonl", [json.dumps(CHAT), '{"messages": ' + deep + "}"])
    with pytest.raises(DataError, match=rf"{src}:2: JSON nested too deeply"):
        prepare(src, tiny_tok, tmp_path / "out", progress=False)
    whole = tmp_path / "deep.json"
    whole.write_text(deep)
    with pytest.raises(DataError, match="nested too deeply"):
        prepare(whole, tiny_tok, tmp_path / "out", progress=False)


def test_a_lone_surrogate_is_a_file_line_field_error(tmp_path: Path, tiny_tok) -> None:
    bad = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a\\ud800b"}]}'
    src = jsonl(tmp_path / "s.jsonl", [json.dumps(CHAT), bad])
    with pytest.raises(
        DataError,
        match=rf"{src}:2: field 'messages\[1\]\.content': invalid Unicode: a lone surrogate \\ud800",
    ):
        prepare(src, tiny_tok, tmp_path / "out", progress=False)


def test_a_parquet_file_that_is_not_parquet_is_named(tmp_path: Path, tiny_tok) -> None:
    p = tmp_path / "x.parquet"
    p.write_text("not parquet at all")
    with pytest.raises(DataError, match="cannot be read as Parquet"):
        prepare(p, tiny_tok, tmp_path / "out", progress=False)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EFBIG])
def test_a_full_disk_is_one_message_naming_the_output(
    tmp_path: Path, tiny_tok, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    import tokenclean.engines.shardfiles as shardfiles

    def full(*a: object, **k: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(shardfiles.ShardWriter, "write", full)  # prepare's rows, one record batch at a time
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=rf"cannot write {out}: .*free space"):
        prepare(fixtures_dir / "alpaca.jsonl", tiny_tok, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the partial output removed


def test_a_safetensors_write_on_a_full_disk_is_one_message(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    from tokenclean.utils import atomic_dir

    msg = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    ckpt = tmp_path / "checkpoint"
    with pytest.raises(OutputError, match=rf"cannot write {ckpt}: no space left on device"), atomic_dir(ckpt):
        raise SafetensorError(msg)
    assert list(tmp_path.iterdir()) == []


def test_cli_names_the_path_of_an_os_level_disk_error(
    tmp_path: Path, tiny_tok_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tokenclean.data.prepare as prep_mod

    chunk = tmp_path / "chunk-0001.arrow"

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(chunk))

    monkeypatch.setattr(prep_mod, "prepare", full)
    argv = [
        "prepare",
        "--data",
        "builtin:sample",
        "--tokenizer",
        str(tiny_tok_dir),
        "--out",
        str(tmp_path / "o"),
    ]
    code, err = cli(capsys, *argv)
    assert code == 2 and f"cannot write {chunk}: no space left" in err and "Traceback" not in err, err


def test_inspect_names_what_it_was_given(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "data" / "pool").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"pipeline": "base"}))
    write_prepared(run / "data" / "pool", IDS, LABELS)
    train = tmp_path / "train"
    (train / "checkpoint").mkdir(parents=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    src = jsonl(tmp_path / "d.jsonl", [CHAT])
    for path, said in (
        (src, "is a file, not a directory; inspect shows tokenised data: run `tokenclean prepare"),
        (
            run,
            f"is a run directory (tokenclean run); inspect one of its datasets instead: {run / 'data' / 'pool'}",
        ),
        (train, "is a training directory"),
        (empty, "is an empty directory"),
        (tiny_model_dir, "is a model directory"),
    ):
        code, err = cli(capsys, "inspect", str(path))
        assert code == 2 and said in err and "Traceback" not in err, err


def test_inspect_a_store_whose_prepared_set_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    store = write_score_store(tmp_path / "scores", prep, seed=1)
    shutil.rmtree(prep)
    code, err = cli(capsys, "inspect", str(store))
    assert code == 2 and "whose prepared dataset" in err and "Traceback" not in err, err


def test_inspect_n_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    for flag, v in (("--n", "-1"), ("--n", "0"), ("--start", "-2")):
        code, err = cli(capsys, "inspect", str(prep), flag, v)
        assert code == 2 and "must be >=" in err, err


def test_groundtruth_selection_given_a_prepared_set_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    src = jsonl(tmp_path / "d.jsonl", [CHAT])
    code, err = cli(capsys, "groundtruth", "--data", str(src), "--truth", str(src), "--selection", str(prep))
    assert (
        code == 2 and "--selection is a prepared dataset (tokenclean prepare), not a cleaned dataset" in err
    ), err


def test_groundtruth_out_inside_an_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    store = write_score_store(tmp_path / "scores", prep, seed=1)
    src = jsonl(tmp_path / "d.jsonl", [CHAT])
    before = (store / "manifest.json").read_bytes()
    code, err = cli(
        capsys,
        "groundtruth",
        "--data",
        str(src),
        "--truth",
        str(src),
        "--scores",
        str(store),
        "--out",
        str(store / "manifest.json"),
    )
    assert code == 2 and "is inside the input" in err, err
    assert (store / "manifest.json").read_bytes() == before


def test_select_scores_given_a_prepared_set_says_score_it_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    code, err = cli(capsys, "select", "--scores", str(prep), "--out", str(tmp_path / "c"))
    assert code == 2 and "--scores is a prepared dataset" in err and "tokenclean score --data" in err, err
    assert "pass --data" not in err


def test_soft_weights_on_all_infinite_scores_name_the_infinities(tmp_path: Path) -> None:
    from tokenclean.selection import select_many

    prep = write_prepared(tmp_path / "prep", IDS, LABELS)
    inf = [[np.nan if x == X else np.inf for x in row] for row in LABELS]
    store = write_score_store(tmp_path / "scores", prep, scores=inf)
    with (
        np.errstate(all="raise"),
        pytest.raises(DataError, match=r"no response-token score .* is finite \(7 are \+-inf"),
    ):
        select_many(store, [0.5], [tmp_path / "c"], weights="sigmoid")


def test_eval_data_never_replaces_a_users_file(tmp_path: Path) -> None:
    from tokenclean.evaluation.local_data import write_records

    d = tmp_path / "data"
    d.mkdir()
    (d / "mmlu.jsonl").write_text("my own\n")
    with pytest.raises(OutputError, match="not written by tokenclean eval-data"):
        write_records(d / "mmlu.jsonl", [{"a": 1}])
    assert (d / "mmlu.jsonl").read_text() == "my own\n"
    assert write_records(d / "logiqa.jsonl", [{"a": 1}]) == 1
    assert write_records(d / "logiqa.jsonl", [{"a": 2}]) == 1  # its own file: replaced
    src = d / "logiqa.jsonl"
    with pytest.raises(OutputError, match="is the input"):
        write_records(src, [{"a": 3}], [src])
