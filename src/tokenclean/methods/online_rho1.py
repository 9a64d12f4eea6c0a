"""Online RHO-1 (Lin et al. 2024, "Not All Tokens Are What You Need"), policy ``rho1``.

Before the gradient pass of every step, a no-grad pass of the current model (eval mode: no dropout) gives
``loss_cur``; the reference loss ``loss_ref`` comes from a score store (``reference: store``, its
``ref_loss`` column; in ``tokenclean run`` the warm-up reference's store of the pool) or from the same model
with the adapter switched off (``reference: base``). Excess loss ``loss_cur - loss_ref``; the top
``floor(ratio * N_step)`` tokens of the step over all ranks count (``w = 1``), ties broken by (sample index,
position) ascending, so the choice does not depend on the number of processes or the micro-batching.
Cost: one no-grad pass per step (two with ``reference: base``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tokenclean.columns import flat_list, offsets_of
from tokenclean.config import check_fields, setting
from tokenclean.errors import ConfigError
from tokenclean.methods.spec import MethodSpec
from tokenclean.training.policies import Policy, StepView, split_like, top_k_over_ranks


@dataclass(frozen=True)
class Rho1Settings:
    ratio: float = setting(
        0.6,
        "share of each step's candidate tokens (over all ranks) that count: the top floor(ratio * N)",
        bounds="(0, 1]",
    )
    reference: Literal["store", "base"] = setting(
        "store",
        "store: reference losses from a score store (scores; in tokenclean run: the warm-up reference's "
        "store of the pool, as fixed_model's); base: the model with its adapter off",
    )
    scores: str | None = setting(
        None,
        "a score store directory (tokenclean score) whose ref_loss is the reference (reference: store; "
        "tokenclean run fills it in)",
    )

    def __post_init__(self) -> None:
        check_fields(self)


def load_reference_losses(store_dir: str, sample_ids: Sequence[str]) -> list[np.ndarray]:
    """Per training sample (by ``sample_id``) its ``ref_loss`` array from a score store (NaN where unscored)."""
    import datasets

    path = Path(store_dir)
    try:
        ds = datasets.load_from_disk(str(path)).with_format("arrow")
    except FileNotFoundError:
        raise ConfigError(f"train.policy_settings.scores: {path} is not a score store") from None
    if "ref_loss" not in ds.column_names:
        raise ConfigError(f"train.policy_settings.scores: {path} has no ref_loss column")
    tbl = ds[:]
    by_id = dict(zip(tbl["sample_id"].to_pylist(), range(tbl.num_rows)))
    vals, lengths = flat_list(tbl["ref_loss"], np.float32)  # chunk by chunk: no 2**31 limit
    off = offsets_of(lengths)
    missing = [s for s in sample_ids if s not in by_id]
    if missing:
        raise ConfigError(
            f"train.policy_settings.scores: {path} has no scores for {len(missing)} training samples "
            f"(e.g. sample_id {missing[0]!r}); score the training data with `tokenclean score`"
        )
    return [vals[off[by_id[s]] : off[by_id[s] + 1]] for s in sample_ids]


class Rho1Policy(Policy):
    name = "rho1"
    Settings = Rho1Settings

    @classmethod
    def check_settings(cls, settings: Rho1Settings, prefix: str) -> None:
        if settings.reference == "store" and not settings.scores:
            raise ConfigError(
                f"{prefix}.scores: reference 'store' needs a score store directory (scores: DIR)"
            )

    def __init__(self, settings: Rho1Settings, train_data: Any = None) -> None:
        super().__init__(settings)
        self.ref: list[np.ndarray] | None = None
        self.check_settings(settings, "train.policy_settings")
        if settings.reference == "store" and train_data is not None:
            assert settings.scores is not None
            self.ref = load_reference_losses(settings.scores, train_data.sample_ids)

    def weights(self, view: StepView) -> list[np.ndarray]:
        from tokenclean.signals import token_signals

        excess, keys = [], []
        lm = view.model.lm
        for mb in view.micro_batches:
            with view.autocast():
                cur = token_signals(view.model, mb.batch)["loss"].float().cpu().numpy()
                if self.settings.reference == "base":
                    with lm.disable_adapter():
                        ref = token_signals(view.model, mb.batch)["loss"].float().cpu().numpy()
                else:
                    assert self.ref is not None
                    ref = np.concatenate(
                        [self.ref[s][p] for s, p in zip(mb.sample_rows, mb.positions_by_row)]
                    )
            excess.append(cur - ref)
            keys.append(mb.keys)
        flat = np.concatenate(excess) if excess else np.zeros(0)
        flat_keys = np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.int64)
        kept = top_k_over_ranks(flat, flat_keys, self.settings.ratio, view.gather, view.rank)
        return split_like(kept.astype(np.float32), view)


def run(run: Any, spec: MethodSpec) -> None:
    """Base + LoRA on the whole pool with policy ``rho1``; with ``reference: store`` the reference losses are
    the pool's store scored against the warm-up reference (shared with fixed_model)."""
    from tokenclean.pipelines import fixed_model
    from tokenclean.pipelines.peers import train_with_policy

    s: Rho1Settings = run.cfg.peers.online_rho1
    scores = None
    if s.reference == "store" and not s.scores:
        scores = fixed_model.pool_scores(run)
        s = dataclasses.replace(s, scores=str(scores))
    train_with_policy(run, spec, settings=s, scores=scores)


SPEC = MethodSpec(
    "online_rho1",
    "Online RHO-1",
    "online",
    "top k% of each step's tokens by excess loss (current model - reference), chosen in every step",
    run="tokenclean.methods.online_rho1:run",
    settings=Rho1Settings,
    policy=Rho1Policy,
    no_grad_passes=lambda s: 1 + (s.reference == "base"),
    scored=True,
    recovery="counted",
)
