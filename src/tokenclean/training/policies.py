"""Token policies: which tokens of a training step count in the loss, and with what weight.

A policy runs *inside* every optimizer step, between reading the step's samples and the gradient pass. It
sees the step's candidate tokens (every token whose label is trained in the data, ``labels != -100``) on this
rank, and returns a weight ``w_j >= 0`` per candidate. The step's loss (see :mod:`tokenclean.training.loss`) is

    loss_step = sum_{ranks, micro-batches, j} w_j * m_j * loss_j  /  sum_{ranks, micro-batches, j} w_j

where ``m_j`` is an optional in-forward multiplier (1 for every policy here; a soft policy such as DFT sets
it from the same forward pass). Tokens with ``w_j = 0`` never reach the LM head in the gradient pass.

Registered policies:

- ``labels``: the labels as given (a cleaned dataset's kept tokens): ``w = 1``.
- ``weights``: the dataset's per-token float column ``weights`` (``tokenclean select --weights``): ``w`` as
  stored, so the loss is ``sum w*l / sum w`` over the step on all ranks.
- ``dft``: DFT, every token weighted in the same forward by its own detached probability (floored).
- ``profit``: ProFit, tokens whose current-model probability is above (or below, or inside a band of)
  a threshold count.
- ``sstoken``: ssToken, per sample the top tokens by retrospective excess loss (history - current) and
  last-layer attention to the prompt.
- ``rho1``: online RHO-1 (Lin et al. 2024). Before the gradient pass, a no-grad pass of the current model
  (eval mode: no dropout) gives ``loss_cur``; the reference loss ``loss_ref`` comes from a score store
  (``reference: store``, its ``ref_loss`` column) or from the same model with the adapter switched off
  (``reference: base``). Excess loss ``loss_cur - loss_ref``; the top ``floor(ratio * N_step)`` tokens of
  the step over all ranks count (``w = 1``), ties broken by (sample index, position) ascending, so the
  choice does not depend on the number of processes or the micro-batching.

Adding a policy is one class here with a settings dataclass and a ``@register`` line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from tokenclean.config import check_fields, from_dict, setting
from tokenclean.errors import ConfigError


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
        raise NotImplementedError


_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    _REGISTRY[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_policy_class(name: str, prefix: str = "train.policy") -> type[Policy]:
    if name not in _REGISTRY:
        raise ConfigError(f"{prefix}: unknown token policy {name!r} (valid: {', '.join(policy_names())})")
    return _REGISTRY[name]


def parse_settings(name: str, values: dict[str, Any] | None, prefix: str) -> Any:
    """The policy's settings dataclass from a mapping (:func:`tokenclean.config.from_dict`): unknown keys and
    bad values name the dotted key."""
    cls = get_policy_class(name).Settings
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    for key in values:
        if key not in names:
            valid = ", ".join(names) if names else "none"
            raise ConfigError(f"{prefix}.{key}: unknown setting of policy {name!r} (valid: {valid})")
    return from_dict(cls, values, prefix)


# ---- labels / weights -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoSettings:
    pass


@register
class LabelsPolicy(Policy):
    name = "labels"
    Settings = NoSettings
    records_counted = False

    def weights(self, view: StepView) -> list[np.ndarray]:
        return [np.ones(mb.n_candidates, dtype=np.float32) for mb in view.micro_batches]


@register
class WeightsPolicy(Policy):
    name = "weights"
    Settings = NoSettings
    uses_data_weights = True
    records_counted = False

    def weights(self, view: StepView) -> list[np.ndarray]:
        return [mb.data_weights for mb in view.micro_batches]

    def metrics(self, result: Any) -> dict[str, float]:
        return {"weight_sum": round(result.weight_sum, 6)}  # the loss denominator W_step


# ---- online RHO-1 -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rho1Settings:
    ratio: float = setting(
        0.6,
        "share of each step's candidate tokens (over all ranks) that count: the top floor(ratio * N)",
        bounds="(0, 1]",
    )
    reference: Literal["store", "base"] = setting(
        "store", "store: reference losses from a score store (scores); base: the model with its adapter off"
    )
    scores: str | None = setting(
        None, "a score store directory (tokenclean score) whose ref_loss is the reference (reference: store)"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.reference == "store" and not self.scores:
            raise ValueError("scores: reference 'store' needs a score store directory (scores: DIR)")


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
    col = tbl["ref_loss"].combine_chunks()
    off, vals = col.offsets.to_numpy(), col.values.to_numpy(zero_copy_only=False)
    missing = [s for s in sample_ids if s not in by_id]
    if missing:
        raise ConfigError(
            f"train.policy_settings.scores: {path} has no scores for {len(missing)} training samples "
            f"(e.g. sample_id {missing[0]!r}); score the training data with `tokenclean score`"
        )
    return [vals[off[by_id[s]] : off[by_id[s] + 1]] for s in sample_ids]


def top_k_over_ranks(
    values: np.ndarray, keys: np.ndarray, ratio: float, gather: Callable, rank: int = 0
) -> np.ndarray:
    """Bool mask of this rank's tokens in the step's top ``floor(ratio * N)`` over all ranks.

    ``values`` (n,) float, larger = kept first; ``keys`` (n, 2) int64 (sample index, position) break ties
    ascending. Every rank computes the same global order from the gathered arrays."""
    all_v, all_k = gather(values.astype(np.float64)), gather(keys.astype(np.int64).reshape(-1))
    v = np.concatenate(all_v)  # (N,)
    k = np.concatenate([a.reshape(-1, 2) for a in all_k])  # (N, 2)
    origin = np.concatenate([np.full(len(a), r) for r, a in enumerate(all_v)])  # (N,)
    local = np.concatenate([np.arange(len(a)) for a in all_v])  # (N,)
    n_keep = math.floor(ratio * len(v) + 1e-9)
    v = np.where(np.isnan(v), -np.inf, v)  # unscored tokens go last
    order = np.lexsort((k[:, 1], k[:, 0], -v))[:n_keep]
    mine = np.zeros(len(values), dtype=bool)
    mine[local[order][origin[order] == rank]] = True
    return mine


@register
class Rho1Policy(Policy):
    name = "rho1"
    Settings = Rho1Settings

    def __init__(self, settings: Rho1Settings, train_data: Any = None) -> None:
        super().__init__(settings)
        self.ref: list[np.ndarray] | None = None
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
        sizes = [len(e) for e in excess]
        flat = np.concatenate(excess) if excess else np.zeros(0)
        flat_keys = np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.int64)
        kept = top_k_over_ranks(flat, flat_keys, self.settings.ratio, view.gather, view.rank)
        return [w.astype(np.float32) for w in np.split(kept, np.cumsum(sizes)[:-1])]


# ---- DFT ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DftSettings:
    weight_floor: float = setting(
        0.0,
        "lower bound of the per-token weight max(sg(p), floor) (0: the published DFT; ~0.1 keeps gradients "
        "from vanishing on long, unlikely text)",
        bounds="[0, 1]",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@register
class DftPolicy(Policy):
    """DFT (Wu et al. 2025): every candidate counts (``w = 1``); its loss is multiplied in the same forward
    pass by its own detached probability, floored: ``loss = mean_j(max(sg(p_j), floor) * -log p_j)``."""

    name = "dft"
    Settings = DftSettings
    forward_signals = ("prob",)

    def weights(self, view: StepView) -> list[np.ndarray]:
        return [np.ones(mb.n_candidates, dtype=np.float32) for mb in view.micro_batches]

    def multiplier(self, signals: dict[str, Any]) -> Any:
        p = signals["prob"]  # detached by the primitive
        return p.clamp_min(self.settings.weight_floor) if self.settings.weight_floor > 0 else p


# ---- ProFit -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfitSettings:
    prob_threshold: float = setting(
        0.1,
        "probability under the current model that decides whether a token counts (published default 0.1)",
        bounds="(0, 1)",
    )
    direction: Literal["higher", "lower", "middle"] = setting(
        "higher",
        "higher: keep p > threshold (published, recommended); lower: keep p < threshold; middle: keep "
        "prob_range[0] < p < prob_range[1]",
    )
    prob_range: tuple[float, float] = setting((0.1, 0.9), "the band [low, high] of direction: middle")

    def __post_init__(self) -> None:
        check_fields(self)
        lo, hi = self.prob_range
        if not 0 <= lo < hi <= 1:
            raise ValueError(
                f"prob_range: expected [low, high] with 0 <= low < high <= 1, got {list(self.prob_range)!r}"
            )


@register
class ProfitPolicy(Policy):
    """ProFit (Liu et al. 2026): a token counts (``w = 1``) when its probability under the current model
    (no-grad pass, eval mode) is on the chosen side of ``prob_threshold``."""

    name = "profit"
    Settings = ProfitSettings

    def weights(self, view: StepView) -> list[np.ndarray]:
        from tokenclean.signals import token_signals

        s, out = self.settings, []
        for mb in view.micro_batches:
            with view.autocast():
                p = token_signals(view.model, mb.batch, ("prob",))["prob"].float().cpu().numpy()
            if s.direction == "higher":
                keep = p > s.prob_threshold
            elif s.direction == "lower":
                keep = p < s.prob_threshold
            else:
                keep = (p > s.prob_range[0]) & (p < s.prob_range[1])
            out.append(keep.astype(np.float32))
        return out


# ---- ssToken -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SsTokenSettings:
    ratio: float = setting(
        0.6,
        "rho: the share of each sample's candidate tokens that count, every step (floor(rho * n_i))",
        bounds="(0, 1]",
    )
    gamma: float = setting(
        0.5,
        "g in g * minmax_per_sample(REL) + (1 - g) * attn (1: loss signal only; 0: attention only)",
        bounds="[0, 1]",
    )
    history: Literal["base", "ema"] = setting(
        "base", "history model of REL = loss_history - loss_current: base (the adapter switched off) or ema"
    )
    ema_decay: float = setting(
        0.99,
        "a in h <- a * h + (1 - a) * theta (history ema), updated after every optimizer step",
        bounds="[0, 1]",
    )
    attention_warmup_steps: int = setting(
        0,
        "optimizer steps at the start that select by attention only (the published code's warm-up)",
        bounds=">= 0",
    )

    def __post_init__(self) -> None:
        check_fields(self)


def minmax_per_sample(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(v - min) / (max - min)`` within each row (0 where a row's values are all equal)."""
    out = np.zeros(len(values), dtype=np.float64)
    for r in np.unique(rows):
        sel = rows == r
        v = values[sel]
        span = float(v.max() - v.min())
        out[sel] = (v - v.min()) / span if span > 0 else 0.0
    return out


def top_per_sample(score: np.ndarray, rows: np.ndarray, pos: np.ndarray, ratio: float) -> np.ndarray:
    """Keep ``floor(ratio * n_r)`` tokens of each row by score (descending), ties by position ascending."""
    keep = np.zeros(len(score), dtype=bool)
    for r in np.unique(rows):
        idx = np.flatnonzero(rows == r)
        k = math.floor(ratio * len(idx) + 1e-9)
        order = np.lexsort((pos[idx], -score[idx]))[:k]
        keep[idx[order]] = True
    return keep


@register
class SsTokenPolicy(Policy):
    """ssToken (Qin et al. 2026): per sample, every step, the top ``ratio`` tokens by
    ``gamma * minmax(REL) + (1 - gamma) * attn``; REL = history loss - current loss (no-grad passes, eval
    mode), attn = the last layer's attention of the token to its prompt positions (mean over heads)."""

    name = "sstoken"
    Settings = SsTokenSettings

    def __init__(self, settings: SsTokenSettings, train_data: Any = None) -> None:
        super().__init__(settings)
        self.ema: dict[str, Any] | None = None

    def check_model(self, model: Any) -> None:
        from tokenclean.signals import attention_unavailable

        s = self.settings
        if (s.gamma < 1 or s.attention_warmup_steps > 0) and (why := attention_unavailable(model)):
            raise ConfigError(
                f"peers.sstoken.gamma (train.policy_settings.gamma): {why}; ssToken's attention signal is "
                "unavailable for this model: set gamma: 1 and attention_warmup_steps: 0 (loss signal only)"
            )

    def _lora(self, net: Any) -> dict[str, Any]:
        return {n: p for n, p in net.named_parameters() if p.requires_grad}

    def on_step_end(self, net: Any) -> None:
        if self.settings.history != "ema":
            return
        import torch

        a = self.settings.ema_decay
        with torch.no_grad():
            params = self._lora(net)
            if self.ema is None:
                self.ema = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                self.ema[n].mul_(a).add_(p.detach(), alpha=1 - a)

    def state(self) -> dict[str, Any] | None:
        return None if self.ema is None else {"ema": {n: t.cpu() for n, t in self.ema.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.ema = dict(state["ema"])

    def _history_loss(self, view: StepView, mb: Any) -> np.ndarray:
        import torch

        from tokenclean.signals import token_signals

        lm = view.model.lm
        if self.settings.history == "base":
            with lm.disable_adapter():
                return token_signals(view.model, mb.batch)["loss"].float().cpu().numpy()
        params = self._lora(lm)
        if self.ema is None:  # before the first step the history is the initial adapter
            self.ema = {n: p.detach().clone() for n, p in params.items()}
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.ema[n].to(p.device))
            try:
                return token_signals(view.model, mb.batch)["loss"].float().cpu().numpy()
            finally:
                for n, p in params.items():
                    p.copy_(saved[n])

    def weights(self, view: StepView) -> list[np.ndarray]:
        from tokenclean.signals import token_signals

        s, out = self.settings, []
        if s.history == "ema" and self.ema is None:  # h_0 = the adapter before the first update
            self.ema = {n: p.detach().clone() for n, p in self._lora(view.model.lm).items()}
        attn_only = view.step < s.attention_warmup_steps
        want = ("loss", "attn") if (s.gamma < 1 or attn_only) else ("loss",)
        for mb in view.micro_batches:
            with view.autocast():
                try:
                    sig = token_signals(view.model, mb.batch, want)
                except NotImplementedError as e:
                    raise ConfigError(
                        f"train.policy_settings.gamma: ssToken's attention signal is not available for this "
                        f"model ({e}); set gamma: 1 and attention_warmup_steps: 0 to select by loss only"
                    ) from None
                cur = sig["loss"].float().cpu().numpy()
                attn = sig["attn"].float().cpu().numpy() if "attn" in sig else np.zeros_like(cur)
                rows, pos = mb.batch.rows.cpu().numpy(), mb.batch.pos.cpu().numpy()
                if attn_only:
                    score = attn.astype(np.float64)
                else:
                    rel = self._history_loss(view, mb) - cur
                    score = s.gamma * minmax_per_sample(rel, rows) + (1 - s.gamma) * attn
            out.append(top_per_sample(score, rows, pos, s.ratio).astype(np.float32))
        return out


def build_policy(name: str, settings: dict[str, Any] | None, train_data: Any) -> Policy:
    cls = get_policy_class(name)
    return cls(parse_settings(name, settings, "train.policy_settings"), train_data)


__all__ = [
    "Policy",
    "StepView",
    "build_policy",
    "get_policy_class",
    "parse_settings",
    "policy_names",
    "register",
    "top_k_over_ranks",
]
