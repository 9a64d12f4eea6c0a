"""The methods added through the registry (eaft, top_entropy, neg_prob, toss): each against a naive twin
computed from full logits, and their registry traits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenclean import methods
from tokenclean.errors import ConfigError
from tokenclean.signals import make_token_batch, naive_token_signals, signal_model, token_signals
from tokenclean.testing import make_tiny_llama, make_tiny_peft, small_train_data
from tokenclean.training.collate import collate
from tokenclean.training.data import TrainData
from tokenclean.training.policies import StepView, build_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed: int = 0) -> TrainData:
    return small_train_data(seed)


@pytest.fixture()
def peft_model(tiny_tok):
    return make_tiny_peft(tiny_tok, seed=7)


def _view(model, mbs) -> StepView:
    return StepView(
        signal_model(model), mbs, 0, 0, lambda a: [a], lambda: torch.autocast("cpu", enabled=False)
    )


def _naive_logits(model, data: TrainData) -> list[tuple[torch.Tensor, int, int, int]]:
    """(logits at j-1 (V,), target, sample, position) of every candidate, one sample at a time."""
    out = []
    with torch.no_grad():
        for i in range(len(data.input_ids)):
            x = torch.as_tensor(data.input_ids[i], dtype=torch.long)[None]
            logits = model(input_ids=x).logits[0].float()
            for j in np.flatnonzero(data.labels[i] != -100):
                if j >= 1:
                    out.append((logits[j - 1], int(data.input_ids[i][j]), i, int(j)))
    return out


def _framework_eaft_weight(logits: torch.Tensor, k: int, alpha: float) -> float:
    """The frameworks' rule written out (axolotl / LLaMA-Factory EAFT): softmax over the top-k logits,
    entropy with a 1e-10 guard, raised to alpha; no division by ln k."""
    top = torch.topk(logits, k).values
    q = torch.softmax(top, -1)
    return float((-(q * torch.log(q + 1e-10)).sum()) ** alpha)


def test_topk_entropy_signal_equals_naive_twin(peft_model) -> None:
    data = _data(0)
    mb = collate(data, np.array([0, 1, 2, 3]))
    fast = token_signals(signal_model(peft_model), mb.batch, ("topk_entropy:5", "entropy"))
    naive = naive_token_signals(peft_model, mb.batch, ("topk_entropy:5", "entropy"))
    torch.testing.assert_close(fast["topk_entropy:5"], naive["topk_entropy:5"], rtol=1e-5, atol=1e-5)
    assert (fast["topk_entropy:5"] <= math.log(5) + 1e-5).all()
    with pytest.raises(ValueError, match="topk_entropy:K"):
        token_signals(signal_model(peft_model), mb.batch, ("topk_entropy",))


@pytest.mark.parametrize(("k", "alpha", "normalize"), [(20, 1.0, False), (4, 2.0, False), (20, 1.0, True)])
def test_eaft_loss_equals_the_frameworks_rule(peft_model, k: int, alpha: float, normalize: bool) -> None:
    from tokenclean.training.loss import accumulate_step

    data = _data(1)
    mbs = [collate(data, np.array([0, 1])), collate(data, np.array([2, 3]))]
    policy = build_policy("eaft", {"k": k, "alpha": alpha, "normalize": normalize}, data)
    res = accumulate_step(
        peft_model,
        mbs,
        policy.weights(_view(peft_model, mbs)),
        multiplier=policy.multiplier,
        forward_signals=policy.forward_signals,
    )
    rows = _naive_logits(peft_model, data)
    scale = math.log(k) ** alpha if normalize else 1.0
    want = [
        _framework_eaft_weight(lg, k, alpha) / scale * float(torch.logsumexp(lg, -1) - lg[t])
        for lg, t, _, _ in rows
    ]
    assert res.loss == pytest.approx(float(np.mean(want)), rel=1e-4)  # sum / num_items, as the frameworks
    assert res.n_kept == len(rows)


def test_top_entropy_equals_naive_twin(peft_model) -> None:
    data = _data(2)
    mbs = [collate(data, np.array([0, 1])), collate(data, np.array([2, 3]))]
    policy = build_policy("top_entropy", {"quantile": 0.3}, data)
    got = np.concatenate(policy.weights(_view(peft_model, mbs))) > 0
    rows = _naive_logits(peft_model, data)
    ent = {(i, j): float(-(lg.log_softmax(-1).exp() * lg.log_softmax(-1)).sum()) for lg, _, i, j in rows}
    n = math.floor(0.3 * len(rows))
    chosen = set(sorted(ent, key=lambda key: (-ent[key], key))[:n])
    keys = np.concatenate([mb.keys for mb in mbs])
    np.testing.assert_array_equal(got, [(int(s), int(p)) in chosen for s, p in keys])
    assert got.sum() == n


@pytest.mark.parametrize(
    "settings",
    [
        {"shape": "p", "exponent": 1.0},
        {"shape": "p", "exponent": 3.0, "threshold": 0.003},
        {"shape": "log", "threshold": 0.003},
    ],
)
def test_neg_prob_gradient_equals_autograd_of_its_objective(tiny_tok, settings) -> None:
    """The multiplier form trains exactly the literal objective f(p): the adapter gradients equal
    autograd of mean_j f(p_j) computed from full logits (the twin)."""
    from peft import LoraConfig, get_peft_model

    from tokenclean.methods.neg_prob import NegProbSettings, neg_prob_loss
    from tokenclean.training.loss import accumulate_step

    def fresh():
        torch.manual_seed(0)
        base = make_tiny_llama(tiny_tok, seed=8)
        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        cfg.init_lora_weights = False
        return get_peft_model(base, cfg).eval()

    data = _data(3)
    mbs = [collate(data, np.array([0, 1, 2, 3]))]
    fast = fresh()
    policy = build_policy("neg_prob", settings, data)
    accumulate_step(
        fast,
        mbs,
        policy.weights(_view(fast, mbs)),
        multiplier=policy.multiplier,
        forward_signals=policy.forward_signals,
    )
    naive = fresh()
    b = mbs[0].batch
    logp = naive(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float().log_softmax(-1)
    lp = logp[b.rows, b.pos - 1].gather(1, b.targets[:, None]).squeeze(1)  # (N,)
    neg_prob_loss(lp, NegProbSettings(**settings)).mean().backward()
    grads = [(n, p.grad) for n, p in fast.named_parameters() if p.requires_grad]
    twin = dict((n, p.grad) for n, p in naive.named_parameters() if p.requires_grad)
    assert any(float(g.abs().sum()) > 0 for _, g in grads)
    for n, g in grads:
        torch.testing.assert_close(g, twin[n], rtol=1e-4, atol=1e-7)


def test_neg_prob_p_has_exactly_dfts_weights(peft_model) -> None:
    data = _data(4)
    mb = collate(data, np.array([0, 1, 2, 3]))
    sig = token_signals(signal_model(peft_model), mb.batch, ("prob",))
    neg = build_policy("neg_prob", {}, data).multiplier(sig)
    dft = build_policy("dft", {}, data).multiplier(sig)
    torch.testing.assert_close(neg, dft)


def test_toss_settings_need_two_distinct_references() -> None:
    from tokenclean.pipelines.config import load_run_config

    base = ["data.path=x", "model.base=y"]
    with pytest.raises(ConfigError, match=r"peers\.toss\.reference_b: must not be base"):
        load_run_config(None, [*base, "peers.toss.reference_b=base"])
    with pytest.raises(ConfigError, match=r"peers\.toss\.reference_a: equals reference_b"):
        load_run_config(None, [*base, "peers.toss.reference_a=warmup"])
    cfg = load_run_config(None, [*base, "methods=[full,toss]", "peers.toss.reference_a=method:full"])
    assert cfg.peers.toss.reference_a == "method:full"


def test_registry_traits_of_the_new_methods() -> None:
    """What the budget, recovery and report read for each new method (declared once, in its module)."""
    get = methods.get
    assert (get("eaft").kind, get("eaft").recovery, get("eaft").passes({})) == ("soft", "counted", 0)
    assert (get("top_entropy").kind, get("top_entropy").passes({})) == ("online", 1)
    assert (get("neg_prob").kind, get("neg_prob").passes({})) == ("soft", 0)
    assert (get("toss").kind, get("toss").scored, get("toss").recovery) == ("offline", True, "cleaned")
    assert get("online_rho1").passes({"reference": "base"}) == 2
    assert get("online_rho1").passes({"reference": "store", "scores": "s"}) == 1
    with pytest.raises(ConfigError, match="methods: unknown method 'eaftt'"):
        get("eaftt")
    # every policy method's policy is found under its own name, and soft methods' policies say so
    for spec in methods.specs():
        if spec.policy is not None:
            assert methods.policy_class(spec.policy.name) is spec.policy
            assert spec.policy.soft == (spec.kind == "soft")


def test_naive_twin_batches_are_padding_invariant_for_topk_entropy(peft_model) -> None:
    """A sample's top-k entropy alone equals the same sample inside a padded, mixed-length batch."""
    data = _data(5)
    ids = [np.asarray(x, dtype=np.int64) for x in data.input_ids]
    pos = [np.arange(1, len(x)) for x in ids]
    sm = signal_model(peft_model)
    both = token_signals(sm, make_token_batch(ids, pos), ("topk_entropy:7",))["topk_entropy:7"]
    alone = token_signals(sm, make_token_batch(ids[:1], pos[:1]), ("topk_entropy:7",))["topk_entropy:7"]
    torch.testing.assert_close(both[: len(pos[0])], alone, rtol=1e-5, atol=1e-5)
