"""The test kits (tokenclean.testing) write what the real stages write for the same inputs.

Compared byte for byte: the Arrow data files, ``dataset_info.json``, ``selection_stats.json`` and
``dropped.jsonl``. Compared field for field, with the fields that must differ named:

- ``state.json``: equal except ``_fingerprint``: prepare's is its cache key, a hash of the source file and
  tokenizer, which the kit (made from token ids) does not have; the score store's is random in the real
  writer too (two real runs differ there);
- manifests: the same keys (the kit adds ``synthetic: true``); model identities, ``run_key``, timings,
  the batch size, the self-check and how the reference was loaded differ, since no model ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from tokenclean.data.prepare import prepare
from tokenclean.selection import select
from tokenclean.summary import SCHEMA_VERSION, check_summary
from tokenclean.testing.runs import make_synthetic_run, write_records
from tokenclean.testing.stores import write_prepared, write_score_store
from tokenclean.utils import read_json

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_dataset(a: Path, b: Path) -> None:
    """Two dataset directories hold byte-identical data files and info; their states differ at most in the
    fingerprint."""
    arrows = sorted(p.name for p in a.glob("data-*.arrow"))
    assert arrows and arrows == sorted(p.name for p in b.glob("data-*.arrow"))
    for name in [*arrows, "dataset_info.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = read_json(a / "state.json"), read_json(b / "state.json")
    assert {k: v for k, v in sa.items() if k != "_fingerprint"} == {
        k: v for k, v in sb.items() if k != "_fingerprint"
    }


@pytest.fixture(scope="module")
def real_prepared(tmp_path_factory: pytest.TempPathFactory, tiny_tok, tiny_tok_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("kits")
    prepare(
        write_records(d / "data.jsonl"),
        tiny_tok,
        d / "prep",
        tokenizer_name=str(tiny_tok_dir),
        progress=False,
    )
    return d / "prep"


def test_kit_prepared_dataset_is_what_prepare_writes(real_prepared: Path, tmp_path: Path) -> None:
    ds = datasets.load_from_disk(str(real_prepared))
    real = read_json(real_prepared / "manifest.json")
    kit_dir = write_prepared(
        tmp_path / "kit", ds["input_ids"], ds["labels"], ds["sample_id"], real["tokenizer"], ds["location"]
    )
    _same_dataset(real_prepared, kit_dir)
    kit = read_json(kit_dir / "manifest.json")
    assert set(kit) == set(real) | {"synthetic"}
    for key in ("stage", "tokens", "tokenizer", "versions"):
        assert kit[key] == real[key], key
    assert kit["counts"]["written"] == real["counts"]["written"] == len(ds)


def test_kit_score_store_is_what_scoring_writes(
    real_prepared: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from tokenclean.models.loader import load_model
    from tokenclean.scoring import score_dataset
    from tokenclean.testing import make_lora_adapter

    adapter = make_lora_adapter(
        load_model(str(tiny_model_dir)), tmp_path / "adapter", base=str(tiny_model_dir)
    )
    real_dir = tmp_path / "real"
    score_dataset(real_prepared, str(tiny_model_dir), reference=str(adapter), out=real_dir, progress=False)
    ds = datasets.load_from_disk(str(real_dir))
    kit_dir = write_score_store(
        tmp_path / "kit", real_prepared, base_loss=ds["base_loss"], ref_loss=ds["ref_loss"]
    )
    _same_dataset(real_dir, kit_dir)
    real, kit = read_json(real_dir / "manifest.json"), read_json(kit_dir / "manifest.json")
    assert set(kit) == set(real) | {"synthetic"}
    differ = {"base", "reference", "run_key", "timings", "batch_tokens", "self_check_max_diff", "files"}
    differ |= {"reference_merged_in_place"}  # how the reference model was loaded
    differ |= {"packing", "attn_implementation", "padding_efficiency"}  # the models' batch layout
    assert {k for k in real if real[k] != kit[k]} <= differ
    assert {k: v for k, v in kit["files"].items() if k != "state.json"} == {
        k: v for k, v in real["files"].items() if k != "state.json"
    }


def test_synthetic_run_is_what_select_and_the_summary_writer_write(
    tmp_path: Path, tiny_tok, tiny_tok_dir: Path
) -> None:
    run = make_synthetic_run(
        tmp_path / "run", tiny_tok, write_records(tmp_path / "d.jsonl"), str(tiny_tok_dir)
    )
    for method, level in (("fixed_model", "global"), ("rho", "sample"), ("random", "random")):
        again = tmp_path / "again" / method
        select(run / "scores" / "fixed_model", 0.6, level, again, seed=0)
        kit = run / "cleaned" / method
        for name in ("selection_stats.json", "dropped.jsonl", "state.json"):
            assert (kit / name).read_bytes() == (again / name).read_bytes(), (method, name)
        _same_dataset(kit, again)
        km, am = read_json(kit / "manifest.json"), read_json(again / "manifest.json")
        assert {k for k in km if km[k] != am[k]} <= {"seconds"}, method  # wall time only
    summary = json.loads((run / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION
    check_summary(summary, "synthetic", strict=True)  # only declared keys, of their declared types
    rec = summary["methods"]["fixed_model"]["recovery"]
    assert (
        rec["kept_tokens"]
        == read_json(run / "cleaned" / "fixed_model" / "selection_stats.json")["kept_tokens"]
    )
