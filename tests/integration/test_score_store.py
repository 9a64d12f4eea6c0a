"""``score_dataset`` end to end on a tiny Llama + LoRA adapter: the store layout and manifest contract,
resume after a crash or a SIGKILL with identical scores, process shards that merge, reuse."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tokenclean import IGNORE_INDEX
from tokenclean.scoring import score_dataset
from tokenclean.scoring.store import StoreError

N = 12  # samples (chunks of 3 -> 4 chunks)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tok, tiny_model_dir: Path) -> dict[str, Path]:
    from tokenclean.data.formats import builtin_path
    from tokenclean.data.prepare import prepare
    from tokenclean.models.loader import load_model
    from tokenclean.testing import make_lora_adapter

    d = tmp_path_factory.mktemp("score")
    make_lora_adapter(load_model(str(tiny_model_dir)), d / "adapter", base=str(tiny_model_dir), std=0.1)
    lines = builtin_path("sample").read_text().splitlines()[:N]
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    prepare(d / "data.jsonl", tiny_tok, d / "prep", tokenizer_name=str(tiny_model_dir), progress=False)
    return {"dir": d, "model": tiny_model_dir, "adapter": d / "adapter", "prep": d / "prep"}


def _score(s: dict[str, Path], out: Path, **kw) -> dict:
    kw.setdefault("reference", str(s["adapter"]))
    kw.setdefault("shard_size", 3)
    return score_dataset(s["prep"], str(s["model"]), out=out, batch_tokens=200, progress=False, **kw)


def _cols(out: Path) -> dict[str, list]:
    import datasets

    ds = datasets.load_from_disk(str(out))
    return {c: ds[c] for c in ds.column_names}


def _same(a: dict, b: dict) -> bool:
    if a["sample_id"] != b["sample_id"]:
        return False
    return all(
        np.array_equal(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32), equal_nan=True)
        for c in ("base_loss", "ref_loss", "score")
        for x, y in zip(a[c], b[c])
    )


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ref") / "scores"
    return out, _score(setup, out)


def test_store_layout_and_manifest_contract(setup, uninterrupted) -> None:
    import datasets

    out, m = uninterrupted
    prep = datasets.load_from_disk(str(setup["prep"]))
    cols = _cols(out)
    assert cols["sample_id"] == prep["sample_id"]  # same order as the prepared dataset
    for ids, labels, b, r, s in zip(
        prep["input_ids"], prep["labels"], cols["base_loss"], cols["ref_loss"], cols["score"]
    ):
        b, r, s = (np.asarray(x, dtype=np.float64) for x in (b, r, s))
        assert len(b) == len(r) == len(s) == len(ids)
        scored = np.asarray(labels) != IGNORE_INDEX
        scored[0] = False
        assert np.array_equal(~np.isnan(b), scored) and np.array_equal(~np.isnan(s), scored)
        assert (b[scored] > 0).all()
        np.testing.assert_allclose(s[scored], b[scored] - r[scored], atol=1e-6)
    assert m["stage"] == "score" and m["scorer"] == "token_cleaning" and m["complete"]
    assert m["prepared_dir"] == str(setup["prep"].resolve())
    assert m["prepared_cache_key"] == m["prepared"]["cache_key"]
    assert len(m["base"]["hash"]) == 64 and m["reference"]["adapter_hash"]
    assert m["reference"]["adapter"] == str(setup["adapter"].resolve())
    assert m["mode"] == "one_model" and m["dtype"] == "fp32" and m["device"] == "cpu"
    assert m["reference_merged_in_place"] is True
    assert {"torch", "transformers", "peft"} <= set(m["versions"])
    assert m["counts"]["samples"] == N and m["counts"]["chunks"] == 4
    assert m["timings"]["tokens_per_s"] > 0 and m["self_check_max_diff"] < 1e-4
    assert not (out / ".work").exists()


def test_rerun_reuses_and_other_scorer_recomputes(setup, uninterrupted, tmp_path) -> None:
    out, _ = uninterrupted
    assert _score(setup, out).get("reused")
    other = tmp_path / "s"
    m = _score(setup, other, scorer="ref_loss")
    assert not m.get("reused")
    a, b = _cols(out), _cols(other)
    for x, y in zip(a["ref_loss"], b["score"]):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_resume_after_crash_gives_identical_scores(setup, uninterrupted, tmp_path) -> None:
    out = tmp_path / "s"
    seen: list[tuple[int, str]] = []

    def crash(k: int, phase: str) -> None:
        seen.append((k, phase))
        if len(seen) == 5:  # base parts of chunks 0-3 and the reference part of chunk 0 saved, then the crash
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _score(setup, out, on_part=crash)
    assert seen[-1] == (0, "ref") and not (out / "manifest.json").exists()
    resumed: list[tuple[int, str]] = []
    _score(setup, out, on_part=lambda k, ph: resumed.append((k, ph)))
    assert resumed == [(1, "ref"), (2, "ref"), (3, "ref")]  # finished parts are skipped
    assert _same(_cols(out), _cols(uninterrupted[0]))


def test_resume_after_sigkill_gives_identical_scores(setup, uninterrupted, tmp_path) -> None:
    """A real `kill -9` of `tokenclean score` in a subprocess, then a plain re-run."""
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "tokenclean.cli", "score", "--data", str(setup["prep"])]
    cmd += ["--base", str(setup["model"]), "--reference", str(setup["adapter"]), "--out", str(out)]
    cmd += ["--shard-size", "1", "--batch-tokens", "200", "--no-progress"]
    env = dict(os.environ, TOKENCLEAN_LOGLEVEL="WARNING")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".work").glob("chunk-*.json"))) < N + 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "run finished before the kill; test did not test anything"
    n_done = len(list((out / ".work").glob("chunk-*.json")))  # killed inside the reference phase
    assert N + 2 <= n_done < 2 * N
    resumed: list[int] = []
    score_dataset(
        setup["prep"], str(setup["model"]), reference=str(setup["adapter"]), out=out, shard_size=1,
        batch_tokens=200, progress=False, on_part=lambda k, ph: resumed.append(k),
    )  # fmt: skip
    assert len(resumed) <= 2 * N - n_done + 1  # at most the part being written at the kill is redone
    whole = tmp_path / "whole"  # uninterrupted, same settings: bit-identical
    _score(setup, whole, shard_size=1)
    assert _same(_cols(out), _cols(whole))
    for x, y in zip(_cols(out)["score"], _cols(uninterrupted[0])["score"]):  # other chunking: within 1e-5
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1e-5)


def test_process_shards_merge_to_the_single_process_result(setup, uninterrupted, tmp_path) -> None:
    out = tmp_path / "s"
    first = _score(setup, out, shard_index=1, num_shards=2)
    assert first["complete"] is False and first["missing_chunks"] == [0, 2]
    second = _score(setup, out, shard_index=0, num_shards=2)
    assert second["complete"] is True and second["num_shards"] == 2
    assert _same(_cols(out), _cols(uninterrupted[0]))


def test_changed_settings_do_not_mix_with_partial_results(setup, tmp_path) -> None:
    out = tmp_path / "s"

    def crash(k: int, phase: str) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        _score(setup, out, on_part=crash)
    with pytest.raises(StoreError, match="differs in: dtype"):
        _score(setup, out, dtype="bf16")
    m = _score(setup, out, dtype="bf16", force=True)
    assert m["dtype"] == "bf16" and m["complete"]


def test_base_only_scorer_needs_no_reference(setup, tmp_path) -> None:
    m = _score(setup, tmp_path / "s", reference=None, scorer="base_loss")
    assert m["mode"] == "base_only" and m["reference"] is None
    cols = _cols(tmp_path / "s")
    assert all(np.isnan(np.asarray(r, np.float32)).all() for r in cols["ref_loss"])
    assert cols["score"][0] == cols["base_loss"][0] or np.array_equal(
        np.asarray(cols["score"][0], np.float32), np.asarray(cols["base_loss"][0], np.float32), equal_nan=True
    )


def test_cli_score_and_errors(setup, tmp_path, capsys) -> None:
    from tokenclean.cli import main

    args = ["score", "--data", str(setup["prep"]), "--base", str(setup["model"]), "--no-progress"]
    rc = main([*args, "--reference", str(setup["adapter"]), "--out", str(tmp_path / "s")])
    assert rc == 0
    assert f"{N} samples" in capsys.readouterr().out
    rc = main([*args, "--out", str(tmp_path / "t")])  # token_cleaning without a reference
    assert rc == 2
    assert "'token_cleaning' needs a reference" in capsys.readouterr().err


def _close(a: dict, b: dict, tol: float) -> float:
    assert a["sample_id"] == b["sample_id"]
    worst = 0.0
    for c in ("base_loss", "ref_loss"):
        for x, y in zip(a[c], b[c]):
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            assert np.array_equal(np.isnan(x), np.isnan(y))
            worst = max(worst, float(np.nanmax(np.abs(x - y), initial=0.0)))
    assert worst < tol
    return worst


def test_packed_scoring_equals_padded_and_records_padding_efficiency(setup, uninterrupted, tmp_path) -> None:
    """packing=on (sdpa on CPU, samples back to back in a row) gives the padded store's losses to 1e-5
    (fp32) and records padding efficiency 1.0; the padded store records < 1 (chunks in global length
    order), and both record the attention implementation that ran."""
    ref_out, ref_m = uninterrupted
    m = _score(setup, tmp_path / "packed", packing="on")
    _close(_cols(ref_out), _cols(tmp_path / "packed"), 1e-5)
    assert m["packing"] == {"packed": True, "row_tokens": 200} and m["padding_efficiency"] == 1.0
    assert ref_m["packing"]["packed"] is False and 0.5 < ref_m["padding_efficiency"] < 1.0
    assert m["attn_implementation"] == ref_m["attn_implementation"] == "sdpa"
    assert m["chunk_order"] == "length"


def test_chunks_hold_samples_of_similar_length(setup) -> None:
    from tokenclean.scoring.run import PreparedData

    data = PreparedData(setup["prep"])
    chunks = [data.chunk(k, 3) for k in range(4)]
    assert sorted(int(r) for c in chunks for r in c) == list(range(N))
    firsts = [data.lengths[c].max() for c in chunks]
    assert firsts == sorted(firsts, reverse=True)  # chunk 0 holds the longest samples
    assert all(data.lengths[chunks[k]].min() >= data.lengths[chunks[k + 1]].max() for k in range(3))
