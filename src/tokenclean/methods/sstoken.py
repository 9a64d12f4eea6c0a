"""ssToken (Qin et al., ICLR 2026, arXiv 2510.18250), policy ``sstoken``: per sample, every step, the top
``ratio`` tokens by ``gamma * minmax(REL) + (1 - gamma) * attn``; REL = history loss - current loss (no-grad
passes in eval mode; history = the base, adapter off, or an EMA of the adapter), attn = the last layer's
attention of the token to its prompt positions (mean over heads). Cost: two no-grad passes per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tokenclean.config import check_fields, setting
from tokenclean.errors import ConfigError
from tokenclean.methods.spec import MethodSpec
from tokenclean.selection.masks import n_keep
from tokenclean.training.policies import Policy, StepView


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
        order = np.lexsort((pos[idx], -score[idx]))[: n_keep(ratio, len(idx))]
        keep[idx[order]] = True
    return keep


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
                rows, pos = mb.batch.token_sample.cpu().numpy(), mb.batch.token_pos.cpu().numpy()
                if attn_only:
                    score = attn.astype(np.float64)
                else:
                    rel = self._history_loss(view, mb) - cur
                    score = s.gamma * minmax_per_sample(rel, rows) + (1 - s.gamma) * attn
            out.append(top_per_sample(score, rows, pos, s.ratio).astype(np.float32))
        return out


SPEC = MethodSpec(
    "sstoken",
    "ssToken",
    "online",
    "per sample, the top tokens by retrospective excess loss (history - current) and attention to the prompt",
    settings=SsTokenSettings,
    policy=SsTokenPolicy,
    no_grad_passes=lambda s: 2,
    recovery="counted",
)
