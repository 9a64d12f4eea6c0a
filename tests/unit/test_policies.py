"""Token policies: online RHO-1 against a naive twin, the cross-rank top-k, strict settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenclean.errors import ConfigError
from tokenclean.signals import signal_model
from tokenclean.testing import make_tiny_llama, make_tiny_peft, small_train_data
from tokenclean.training.collate import collate
from tokenclean.training.config import TrainConfig
from tokenclean.training.data import TrainData
from tokenclean.training.policies import StepView, build_policy, top_k_over_ranks

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed: int = 0) -> TrainData:
    return small_train_data(seed)


@pytest.fixture()
def peft_model(tiny_tok):
    return make_tiny_peft(tiny_tok, seed=2)


def _local_gather(arr: np.ndarray) -> list[np.ndarray]:
    return [arr]


def test_online_rho1_equals_naive_twin(peft_model) -> None:
    data = _data()
    mbs = [collate(data, np.array([0, 1])), collate(data, np.array([2, 3]))]
    policy = build_policy("rho1", {"ratio": 0.4, "reference": "base"}, data)
    view = StepView(
        signal_model(peft_model), mbs, 0, 0, _local_gather, lambda: torch.autocast("cpu", enabled=False)
    )
    got = np.concatenate(policy.weights(view))

    # naive: full logits of the current model and of the adapter-off model, excess, global sort
    rows = []
    with torch.no_grad():
        for i in range(4):
            x = torch.as_tensor(data.input_ids[i], dtype=torch.long)[None]
            cur = torch.log_softmax(peft_model(input_ids=x).logits[0].float(), -1)
            with peft_model.disable_adapter():
                ref = torch.log_softmax(peft_model(input_ids=x).logits[0].float(), -1)
            for j in np.flatnonzero(data.labels[i] != -100):
                if j >= 1:
                    t = int(data.input_ids[i][j])
                    rows.append((-(float(-cur[j - 1, t]) - float(-ref[j - 1, t])), i, int(j)))
    k = math.floor(0.4 * len(rows))
    chosen = {(i, j) for _, i, j in sorted(rows)[:k]}
    keys = np.concatenate([mb.keys for mb in mbs])
    expected = np.array([(int(s), int(p)) in chosen for s, p in keys])
    assert got.dtype == np.float32 and got.sum() == k
    np.testing.assert_array_equal(got > 0, expected)


def test_top_k_over_ranks_is_independent_of_the_split() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=40).round(1)  # many ties
    keys = np.stack([rng.integers(0, 6, 40), np.arange(40)], 1)
    alone = top_k_over_ranks(v, keys, 0.3, _local_gather, 0)
    split = [np.arange(0, 40, 3), np.setdiff1d(np.arange(40), np.arange(0, 40, 3))]  # uneven shares

    def gather(arr: np.ndarray) -> list[np.ndarray]:  # what each rank would contribute, in rank order
        src = v if arr.dtype == np.float64 else keys.reshape(-1)
        if arr.dtype == np.float64:
            return [src[s].astype(np.float64) for s in split]
        return [keys[s].reshape(-1) for s in split]

    got = np.zeros(40, dtype=bool)
    for r, s in enumerate(split):
        got[s] = top_k_over_ranks(v[s], keys[s], 0.3, gather, r)
    np.testing.assert_array_equal(got, alone)
    assert alone.sum() == math.floor(0.3 * 40)


def test_policy_settings_are_strict() -> None:
    with pytest.raises(ConfigError, match=r"train.policy: unknown token policy 'rho2'"):
        TrainConfig.from_dict({"policy": "rho2"})
    with pytest.raises(ConfigError, match=r"train.policy_settings.ratios: unknown setting of policy 'rho1'"):
        TrainConfig.from_dict({"policy": "rho1", "policy_settings": {"ratios": 0.5, "reference": "base"}})
    with pytest.raises(ConfigError, match=r"^train\.policy_settings\.ratio: must be in \(0, 1\], got 1\.5"):
        TrainConfig.from_dict({"policy": "rho1", "policy_settings": {"ratio": 1.5, "reference": "base"}})
    with pytest.raises(ConfigError, match="scores: reference 'store' needs a score store"):
        TrainConfig.from_dict({"policy": "rho1"})
    cfg = TrainConfig.from_dict({"policy": "rho1", "policy_settings": {"reference": "base"}})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.identity()["policy"] == "rho1"
    assert "policy" not in TrainConfig().identity()  # the default keeps older run identities valid


def _naive_probs(model, data: TrainData) -> list[tuple[float, float, int, int]]:
    """(p, -log p, sample, position) of every candidate from full logits, one sample at a time."""
    out = []
    with torch.no_grad():
        for i in range(len(data.input_ids)):
            x = torch.as_tensor(data.input_ids[i], dtype=torch.long)[None]
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
            for j in np.flatnonzero(data.labels[i] != -100):
                if j >= 1:
                    lp = float(logp[j - 1, int(data.input_ids[i][j])])
                    out.append((math.exp(lp), -lp, i, int(j)))
    return out


@pytest.mark.parametrize("direction", ["higher", "lower", "middle"])
def test_profit_equals_naive_twin(peft_model, direction: str) -> None:
    data = _data(seed=3)
    mbs = [collate(data, np.array([0, 1, 2, 3]))]
    settings = {"prob_threshold": 0.004, "direction": direction, "prob_range": [0.002, 0.01]}
    policy = build_policy("profit", settings, data)
    view = StepView(
        signal_model(peft_model), mbs, 0, 0, _local_gather, lambda: torch.autocast("cpu", enabled=False)
    )
    got = np.concatenate(policy.weights(view)) > 0
    naive = {(i, j): p for p, _, i, j in _naive_probs(peft_model, data)}
    p = np.array([naive[(int(s), int(q))] for s, q in mbs[0].keys])
    want = {"higher": p > 0.004, "lower": p < 0.004, "middle": (p > 0.002) & (p < 0.01)}[direction]
    np.testing.assert_array_equal(got, want)
    assert 0 < got.sum() < len(got)  # the threshold splits this tiny model's tokens: the test can fail


@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_dft_loss_equals_naive_twin(peft_model, floor: float) -> None:
    from tokenclean.training.loss import accumulate_step

    data = _data(seed=4)
    mbs = [collate(data, np.array([0, 1])), collate(data, np.array([2, 3]))]
    policy = build_policy("dft", {"weight_floor": floor}, data)
    view = StepView(
        signal_model(peft_model), mbs, 0, 0, _local_gather, lambda: torch.autocast("cpu", enabled=False)
    )
    res = accumulate_step(
        peft_model,
        mbs,
        policy.weights(view),
        multiplier=policy.multiplier,
        forward_signals=policy.forward_signals,
    )
    rows = _naive_probs(peft_model, data)
    want = np.mean([max(p, floor) * nll for p, nll, _, _ in rows])
    assert res.loss == pytest.approx(want, rel=1e-5)
    assert res.n_kept == len(rows)


@pytest.mark.parametrize("warmup", [0, 1])
def test_sstoken_equals_naive_twin(tiny_tok, warmup: int) -> None:
    """REL from the adapter-off history and the current model, attention to the prompt from
    output_attentions on an eager model, per-sample min-max, per-sample top-k: all computed naively."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_llama(tiny_tok, seed=5)
    base.config._attn_implementation = "eager"
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    cfg.init_lora_weights = False
    torch.manual_seed(1)
    model = get_peft_model(base, cfg).eval()
    data = _data(seed=6)
    mbs = [collate(data, np.array([0, 1, 2, 3]))]
    settings = {"ratio": 0.5, "gamma": 0.3, "history": "base", "attention_warmup_steps": warmup}
    policy = build_policy("sstoken", settings, data)
    view = StepView(
        signal_model(model), mbs, 0, 0, _local_gather, lambda: torch.autocast("cpu", enabled=False)
    )
    got = np.concatenate(policy.weights(view)) > 0

    want = []
    with torch.no_grad():
        for i in range(4):
            x = torch.as_tensor(data.input_ids[i], dtype=torch.long)[None]
            out = model(input_ids=x, output_attentions=True)
            cur = -torch.log_softmax(out.logits[0].float(), -1)
            with model.disable_adapter():
                hist = -torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
            a = out.attentions[-1][0].float().mean(0)  # (T, T)
            prompt = torch.as_tensor(data.labels[i] == -100)
            pos = [j for j in np.flatnonzero(data.labels[i] != -100) if j >= 1]
            t = [int(data.input_ids[i][j]) for j in pos]
            rel = np.array([float(hist[j - 1, tt] - cur[j - 1, tt]) for j, tt in zip(pos, t)])
            attn = np.array([float((a[j] * prompt).sum()) for j in pos])
            span = rel.max() - rel.min()
            score = attn if warmup else 0.3 * (rel - rel.min()) / span + 0.7 * attn
            k = math.floor(0.5 * len(pos))
            top = set(np.lexsort((np.array(pos), -score))[:k].tolist())
            want += [n in top for n in range(len(pos))]
    np.testing.assert_array_equal(got, np.array(want))


def test_sstoken_ema_history_tracks_the_adapter(peft_model) -> None:
    data = _data(seed=7)
    policy = build_policy("sstoken", {"history": "ema", "ema_decay": 0.5}, data)
    mbs = [collate(data, np.array([0, 1]))]
    view = StepView(
        signal_model(peft_model), mbs, 0, 0, _local_gather, lambda: torch.autocast("cpu", enabled=False)
    )
    policy.weights(view)  # h_0 = the adapter now
    name, p = next((n, p) for n, p in peft_model.named_parameters() if p.requires_grad)
    h0 = policy.ema[name].clone()
    with torch.no_grad():
        p.add_(1.0)
    policy.on_step_end(peft_model)
    torch.testing.assert_close(policy.ema[name], 0.5 * h0 + 0.5 * p.detach())
    restored = build_policy("sstoken", {"history": "ema", "ema_decay": 0.5}, data)
    restored.load_state(policy.state())
    assert torch.equal(restored.ema[name], policy.ema[name])
