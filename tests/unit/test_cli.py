"""CLI smoke tests: prepare and inspect end to end on the tiny tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenclean.cli import main


def test_prepare_then_inspect(tmp_path: Path, fixtures_dir: Path, tiny_tok_dir: Path, capsys) -> None:
    out = tmp_path / "prep"
    rc = main(
        [
            "prepare",
            "--data",
            str(fixtures_dir / "sharegpt.jsonl"),
            "--tokenizer",
            str(tiny_tok_dir),
            "--template",
            "chat",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "1 samples (1 read, 0 truncated" in capsys.readouterr().out
    rc = main(["inspect", str(out), "--n", "1", "--markers"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "[+Paris.<|im_end|>+]" in text and "[+Rome.<|im_end|>+]" in text
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text  # prompt shown, unmarked


def test_bad_input_exits_2_with_location(tmp_path: Path, tiny_tok_dir: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]})
    )
    rc = main(["prepare", "--data", str(bad), "--tokenizer", str(tiny_tok_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.jsonl:1: field 'messages[1].role': unknown role 'bot'" in err


def test_prepare_and_inspect_bundled_sample(tmp_path: Path, tiny_tok_dir: Path, capsys) -> None:
    for template in ("tulu", "chat"):
        out = tmp_path / template
        argv = [
            "prepare",
            "--data",
            "builtin:sample",
            "--tokenizer",
            str(tiny_tok_dir),
            "--template",
            template,
        ]
        assert main([*argv, "--out", str(out)]) == 0
        assert "20 samples (20 read, 0 truncated, 0 dropped" in capsys.readouterr().out
        assert main([*argv, "--out", str(out)]) == 0  # same input, tokenizer, template, length: reused
        assert capsys.readouterr().out.startswith("reused")
        assert main(["inspect", str(out), "--n", "1", "--markers"]) == 0
        text = capsys.readouterr().out
        assert "[+The capital of France is Paris.<|im_end|>+]" in text
        assert "What is the capital of France?" in text and "[+What is" not in text


def test_threads_follow_the_request_the_environment_then_idle_cores(monkeypatch) -> None:
    from tokenclean.utils import choose_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert choose_threads(3, cores=2, idle=0.0) == 3  # asked for: as asked
    assert choose_threads(None, cores=2, idle=1.9) == 2  # a quiet machine: every core
    assert choose_threads(None, cores=2, idle=0.8) == 1  # one core busy: one thread
    assert choose_threads(None, cores=2, idle=0.0) == 1  # never below 1
    assert choose_threads(None, cores=8, idle=5.4) == 5
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")  # sleeping waits: every core, busy or not
    assert choose_threads(None, cores=8, idle=0.0) == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun / the user decided
    assert choose_threads(None, cores=8, idle=8.0) == 1


def test_idle_cores_measures_now_not_the_load_average(monkeypatch) -> None:
    """Idleness comes from two /proc/stat samples: a burst of load that just ended does not count, and a
    core busy right now does (the 1-minute load average lags by minutes)."""
    import threading
    import time

    from tokenclean.utils import idle_cores

    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat on this system")
    monkeypatch.setattr("os.getloadavg", lambda: (50.0, 50.0, 50.0))  # not consulted
    assert 0.0 <= idle_cores(0.2, cores=2) <= 2.0
    stop = time.monotonic() + 0.6
    spin = threading.Thread(target=lambda: [0 for _ in iter(lambda: time.monotonic() > stop, True)])
    spin.start()
    busy = idle_cores(0.3, cores=1)
    spin.join()
    assert busy < 0.9  # this process kept (a share of) a core busy during the sample


def test_run_overrides_may_follow_options(tmp_path: Path, capsys) -> None:
    """``key=value`` overrides are taken before and after options; anything else unknown is a usage error."""
    from tokenclean.cli import _parse, build_parser, main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: x\n")
    args = _parse(build_parser(), ["run", str(cfg), "a.b=1", "--threads", "1", "run_dir=/x", "c=[1,2]"])
    assert args.overrides == ["a.b=1", "run_dir=/x", "c=[1,2]"] and args.threads == 1
    assert main(["run", str(cfg), "--threads", "1", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["score", "--threads", "1", "stray=1"]) == 2  # overrides only where a command takes them
