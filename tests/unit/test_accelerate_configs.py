"""The launcher configs under configs/accelerate/ load with accelerate's own config reader."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "kind", "procs"),
    [("single_gpu", "NO", 1), ("ddp_8gpu", "MULTI_GPU", 8), ("fsdp_8gpu", "FSDP", 8)],
)
def test_accelerate_config_loads(name: str, kind: str, procs: int) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    path = ROOT / "configs" / "accelerate" / f"{name}.yaml"
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert str(cfg.distributed_type).split(".")[-1] == kind and cfg.num_processes == procs
    assert "-m tokenclean train" in path.read_text()  # each opens with its launch line
