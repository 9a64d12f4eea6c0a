"""A run's inputs are checked before its directory is made; the bundled sample is never a silent held-out set."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenclean.errors import ConfigError
from tokenclean.pipelines.config import load_run_config
from tokenclean.pipelines.runner import run

ROOT = Path(__file__).resolve().parents[2]
OWN = ROOT / "configs" / "own_data_cpu.yaml"
SAMPLE = ROOT / "src" / "tokenclean" / "resources" / "sample_sft.jsonl"


def test_own_data_without_heldout_is_an_error_not_the_bundled_sample(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"data\.heldout: builtin:sample is the bundled sample.*tokenclean split"
    ):
        load_run_config(OWN, [f"data.path={SAMPLE}"])
    cfg = load_run_config(OWN, [f"data.path={SAMPLE}", "data.heldout=null", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"data\.heldout: required by eval\.suite=quick"):
        run(cfg)  # found before the run directory is made
    assert not (tmp_path / "run").exists()
    cfg = load_run_config(OWN, [f"data.path={SAMPLE}", "data.heldout=null", "eval.suite=none"])
    assert cfg.data.heldout is None
    assert (
        load_run_config(OWN).data.heldout == "builtin:sample"
    )  # the config as shipped: the sample on itself


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.heldout={tmp}/nope.jsonl", r"data\.heldout: '.*nope\.jsonl': no such file or directory"),
        ("data.heldout={tmp}/bad.jsonl", r"data\.heldout: .*bad\.jsonl:1: malformed JSON"),
        ("data.heldout={tmp}/late.jsonl", r"data\.heldout: .*late\.jsonl:2: field 'completion': missing"),
        ("model.base=smolm2", r"model\.base 'smolm2' is not a local path.*did you mean 'smollm2'"),
        ("model.reference=./ref", r"model\.reference './ref': no such file or directory"),
    ],
)
def test_a_wrong_input_creates_no_run_directory(tmp_path: Path, override: str, match: str) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": \n')
    (tmp_path / "late.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    out = tmp_path / "run"
    cfg = load_run_config(
        OWN,
        [f"data.path={SAMPLE}", f"data.heldout={SAMPLE}", f"run_dir={out}", override.format(tmp=tmp_path)],
    )
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not out.exists()
