"""The TRL plug-in refuses configurations that would bypass or change its loss (no TRL needed here)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tokenclean.errors import ConfigError
from tokenclean.interop.trl_trainer import check_args, check_trainer


def args(**kw: Any) -> SimpleNamespace:
    base = dict(use_liger_kernel=False, loss_type="nll", label_smoothing_factor=0.0, packing=False,
                packing_strategy="bfd", average_tokens_across_devices=True)  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


class Model:
    def forward(self) -> None:
        pass


def trainer(model: Any = None, kind: str = "NO", n: int = 1, **kw: Any) -> SimpleNamespace:
    acc = SimpleNamespace(
        distributed_type=f"DistributedType.{kind}", num_processes=n, unwrap_model=lambda m: m
    )
    return SimpleNamespace(compute_loss_func=None, accelerator=acc, args=args(**kw), model=model or Model())


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"use_liger_kernel": True}, "args.use_liger_kernel"),
        ({"loss_type": "dft"}, "args.loss_type"),
        ({"label_smoothing_factor": 0.1}, "args.label_smoothing_factor"),
        ({"packing": True, "packing_strategy": "bfd_split"}, "args.packing_strategy"),
    ],
)
def test_check_args(kw: dict[str, Any], key: str) -> None:
    check_args(args())
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_args(args(**kw))


def test_check_trainer() -> None:
    check_trainer(trainer())
    with pytest.raises(ConfigError, match="FSDP"):
        check_trainer(trainer(kind="FSDP"))
    with pytest.raises(ConfigError, match="average_tokens_across_devices"):
        check_trainer(trainer(n=2, average_tokens_across_devices=False))

    class Patched(Model):
        def forward(self) -> None:
            pass

    Patched.forward.__module__ = "liger_kernel.transformers.model.llama"
    with pytest.raises(ConfigError, match="Liger"):
        check_trainer(trainer(Patched()))
    t = trainer()
    t.compute_loss_func = print
    with pytest.raises(ConfigError, match="compute_loss_func"):
        check_trainer(t)
