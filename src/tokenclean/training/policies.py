"""Token policies: which tokens of a training step count in the loss, and with what weight.

A policy runs *inside* every optimizer step, between reading the step's samples and the gradient pass. It
sees the step's candidate tokens (every token whose label is trained in the data, ``labels != -100``) on this
rank, and returns a weight ``w_j >= 0`` per candidate. The step's loss (see :mod:`tokenclean.training.loss`) is

    loss_step = sum_{ranks, micro-batches, j} w_j * m_j * loss_j  /  sum_{ranks, micro-batches, j} w_j

where ``m_j`` is an optional in-forward multiplier (1 unless the policy sets one from the gradient pass's
own signals, as DFT or EAFT do). Tokens with ``w_j = 0`` never reach the LM head in the gradient pass.

This module holds the :class:`Policy` base, :class:`StepView` and the two generic policies:

- ``labels``: the labels as given (a cleaned dataset's kept tokens): ``w = 1``.
- ``weights``: the dataset's per-token float column ``weights`` (``tokenclean select --weights``): ``w`` as
  stored, so the loss is ``sum w*l / sum w`` over the step on all ranks.

The methods' policies (online RHO-1, ssToken, DFT, ProFit, EAFT, top-entropy, the -p family) live in their
method modules (:mod:`tokenclean.methods`); the policy names of ``train --policy`` come from that registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tokenclean.config import from_dict
from tokenclean.errors import ConfigError
from tokenclean.selection.masks import n_keep


@dataclass(frozen=True)
class StepView:
    """What a policy may read about one optimizer step on this rank."""

    model: Any  # the unwrapped signal model (tokenclean.signals.signal_model); call under no grad only
    micro_batches: Sequence[Any]  # tokenclean.training.collate.MicroBatch, this rank's share of the step
    step: int
    rank: int
    gather: Callable[[np.ndarray], list[np.ndarray]]  # this rank's array -> every rank's array, rank order
    autocast: Callable[[], Any]


class Policy:
    """Base of every policy: ``weights`` returns one float32 array per micro-batch (its candidates)."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = type(None)
    uses_data_weights: ClassVar[bool] = False  # reads the dataset's ``weights`` column (required then)
    forward_signals: ClassVar[tuple[str, ...]] = ()  # signals the gradient pass must also return
    soft: ClassVar[bool] = False  # tokens count with weights between 0 and 1 (reports show mean weights)
    # the policy decides during training which tokens count, so the loop records them (OUT/counted/, read
    # by the report and ground truth); False where the dataset already says it (labels, weights)
    records_counted: ClassVar[bool] = True

    def metrics(self, result: Any) -> dict[str, float]:
        """Extra fields of a step's log record from its :class:`tokenclean.training.loss.StepResult`."""
        return {}

    def multiplier(self, signals: dict[str, Any]) -> Any:
        """An in-forward, detached per-token multiplier ``m_j`` from the gradient pass's own signals
        (e.g. DFT's ``sg(p)``), or None for ``m = 1``."""
        return None

    @classmethod
    def check_settings(cls, settings: Any, prefix: str) -> None:
        """Rules a training run needs beyond the settings' own bounds (a ConfigError naming ``prefix.key``)."""

    def check_model(self, model: Any) -> None:
        """Fail before training when the policy cannot work with ``model`` (a ConfigError naming the setting)."""

    def on_step_end(self, net: Any) -> None:
        """Called after every optimizer step (all ranks), e.g. to update an EMA of the adapter."""

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint must keep for an exact resume (None: nothing)."""
        return None

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def __init__(self, settings: Any, train_data: Any = None) -> None:
        self.settings = settings

    def weights(self, view: StepView) -> list[np.ndarray]:
        """Per micro-batch, the weight of each candidate; the default: every candidate counts (``w = 1``)."""
        return [np.ones(mb.n_candidates, dtype=np.float32) for mb in view.micro_batches]


def policy_names() -> list[str]:
    from tokenclean.methods import policy_names as names

    return names()


def get_policy_class(name: str, prefix: str = "train.policy") -> type[Policy]:
    from tokenclean.methods import policy_class

    return policy_class(name, prefix)


def parse_settings(name: str, values: Any, prefix: str) -> Any:
    """The policy's settings dataclass from a mapping (:func:`tokenclean.config.from_dict`: unknown keys and
    bad values name the dotted key), or ``values`` itself when it already is one (typed from YAML to the
    policy)."""
    cls = get_policy_class(name, prefix.rsplit(".", 1)[0] + ".policy").Settings
    if isinstance(values, cls):
        return values
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of the policy's settings, got {values!r}")
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    for key in values:
        if key not in names:
            valid = ", ".join(names) if names else "none"
            raise ConfigError(f"{prefix}.{key}: unknown setting of policy {name!r} (valid: {valid})")
    return from_dict(cls, values, prefix)


def top_k_over_ranks(
    values: np.ndarray, keys: np.ndarray, ratio: float, gather: Callable, rank: int = 0
) -> np.ndarray:
    """Bool mask of this rank's tokens in the step's top ``floor(ratio * N)`` over all ranks.

    ``values`` (n,) float, larger = kept first (NaN last); ``keys`` (n, 2) int64 (sample index, position)
    break ties ascending. Every rank computes the same global order from the gathered arrays, so the choice
    does not depend on the number of processes or the micro-batching."""
    all_v, all_k = gather(values.astype(np.float64)), gather(keys.astype(np.int64).reshape(-1))
    v = np.concatenate(all_v)  # (N,)
    k = np.concatenate([a.reshape(-1, 2) for a in all_k])  # (N, 2)
    origin = np.concatenate([np.full(len(a), r) for r, a in enumerate(all_v)])  # (N,)
    local = np.concatenate([np.arange(len(a)) for a in all_v])  # (N,)
    v = np.where(np.isnan(v), -np.inf, v)  # unscored tokens go last
    order = np.lexsort((k[:, 1], k[:, 0], -v))[: n_keep(ratio, len(v))]
    mine = np.zeros(len(values), dtype=bool)
    mine[local[order][origin[order] == rank]] = True
    return mine


def step_signal(view: StepView, want: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """A no-grad pass of the current model over every micro-batch of the step: ``want`` signals per
    micro-batch as float arrays (N_m,)."""
    from tokenclean.signals import token_signals

    out = []
    for mb in view.micro_batches:
        with view.autocast():
            sig = token_signals(view.model, mb.batch, want)
        out.append({k: v.float().cpu().numpy() for k, v in sig.items()})
    return out


def split_like(flat: np.ndarray, view: StepView) -> list[np.ndarray]:
    """``flat`` (sum of candidates,) cut back into one float32 array per micro-batch."""
    sizes = [mb.n_candidates for mb in view.micro_batches]
    return [w.astype(np.float32) for w in np.split(flat, np.cumsum(sizes)[:-1])]


# ---- labels / weights -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoSettings:
    pass


class LabelsPolicy(Policy):
    name = "labels"
    Settings = NoSettings
    records_counted = False


class WeightsPolicy(Policy):
    name = "weights"
    Settings = NoSettings
    uses_data_weights = True
    soft = True
    records_counted = False

    def weights(self, view: StepView) -> list[np.ndarray]:
        return [mb.data_weights for mb in view.micro_batches]

    def metrics(self, result: Any) -> dict[str, float]:
        return {"weight_sum": round(result.weight_sum, 6)}  # the loss denominator W_step


GENERIC_POLICIES: tuple[type[Policy], ...] = (LabelsPolicy, WeightsPolicy)


def build_policy(name: str, settings: Any, train_data: Any) -> Policy:
    """The policy ``name`` with ``settings`` (a mapping or its typed settings) for ``train_data``."""
    cls = get_policy_class(name)
    return cls(parse_settings(name, settings, "train.policy_settings"), train_data)


__all__ = [
    "GENERIC_POLICIES",
    "Policy",
    "StepView",
    "build_policy",
    "get_policy_class",
    "parse_settings",
    "policy_names",
    "split_like",
    "step_signal",
    "top_k_over_ranks",
]
