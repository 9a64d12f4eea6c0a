"""The one token-signal primitive equals its naive twin (full logits, output_attentions) for every signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenclean.signals import make_token_batch, naive_token_signals, signal_model, token_signals
from tokenclean.testing import make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed: int = 0, vocab: int = 300):
    """Rows of different lengths; a multi-turn-like prompt mask (prompt spans before and between responses)."""
    rng = np.random.default_rng(seed)
    ids, pos, prompt = [], [], []
    for n in (9, 17, 5, 12):
        x = rng.integers(5, vocab, n)
        pm = np.ones(n, dtype=bool)
        pm[n // 3 : n // 2] = False  # first response span
        pm[(2 * n) // 3 :] = False  # second response span
        ids.append(x)
        pos.append(np.flatnonzero(~pm))
        prompt.append(pm)
    return make_token_batch(ids, pos, pad_id=0, prompt_mask=prompt)


@pytest.fixture()
def eager_model(tiny_tok):
    m = make_tiny_llama(tiny_tok, seed=3)
    m.config._attn_implementation = "eager"  # the twin needs output_attentions
    return m.eval()


def test_every_signal_equals_the_naive_twin(eager_model) -> None:
    b = _batch()
    want = ("loss", "prob", "entropy", "hit", "attn")
    fast = token_signals(eager_model, b, want, chunk_rows=5)
    slow = naive_token_signals(eager_model, b, want)
    assert set(fast) == set(want)
    for k in ("loss", "prob", "entropy", "attn"):
        assert fast[k].shape == (len(b.rows),)
        assert torch.allclose(fast[k], slow[k], atol=2e-5), k
    assert torch.equal(fast["hit"], slow["hit"])
    assert float(fast["attn"].min()) >= 0 and float(fast["attn"].max()) <= 1 + 1e-6
    assert float(fast["attn"].std()) > 0  # not a constant: the test can fail


def test_wrapper_with_grad_matches_and_backpropagates(eager_model) -> None:
    b = _batch(seed=1)
    wrapped = signal_model(eager_model)
    out = token_signals(wrapped, b, ("loss", "prob"), grad=True)
    assert out["loss"].requires_grad and not out["prob"].requires_grad
    out["loss"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in eager_model.parameters())
    slow = naive_token_signals(eager_model, b)
    assert torch.allclose(out["loss"].detach(), slow["loss"], atol=2e-5)


def test_no_grad_runs_in_inference_mode_and_empty_batches(eager_model) -> None:
    b = _batch(seed=2)
    out = token_signals(eager_model, b, ("loss",))
    assert not out["loss"].requires_grad
    empty = make_token_batch([np.arange(5, 10)], [np.array([], dtype=np.int64)])
    assert token_signals(eager_model, empty, ("loss", "prob"))["loss"].numel() == 0


def test_position_zero_and_unknown_signals_are_refused(eager_model) -> None:
    with pytest.raises(ValueError, match="position 0"):
        make_token_batch([np.arange(5, 10)], [np.array([0, 1])])
    with pytest.raises(ValueError, match="unknown signal"):
        token_signals(eager_model, _batch(), ("loss", "surprise"))


@pytest.mark.parametrize("batch_tokens", [1, 28, 4096])
def test_groundtruth_heldout_metrics_equal_full_logits(eager_model, batch_tokens: int) -> None:
    """The ground-truth held-out metrics (batched by length on the primitive) equal a one-sample-at-a-time
    full-logits computation, for one sample per forward, two, and all in one forward."""
    from tokenclean.groundtruth.metrics import heldout_metrics
    from tokenclean.groundtruth.truth import INFORMATIVE, NOT_RESPONSE, UNINFORMATIVE

    rng = np.random.default_rng(4)
    ids, labels, truth = [], [], []
    for n in (10, 14, 7):
        x = rng.integers(5, 300, n)
        lab = np.full(n, -100)
        lab[n // 2 :] = x[n // 2 :]
        tr = np.full(n, NOT_RESPONSE, dtype=np.int8)
        tr[n // 2 :] = UNINFORMATIVE
        tr[n // 2 + 1 : n // 2 + 3] = INFORMATIVE
        ids.append(x)
        labels.append(lab)
        truth.append(tr)
    got = heldout_metrics(eager_model, ids, labels, truth, batch_tokens=batch_tokens)
    resp, ans, exact = [], [], []
    with torch.no_grad():
        for x, lab, tr in zip(ids, labels, truth):
            logits = eager_model(input_ids=torch.as_tensor(x)[None]).logits[0, :-1].float()  # (T-1, V)
            nll = -torch.log_softmax(logits, -1).gather(1, torch.as_tensor(x)[1:, None])[:, 0].numpy()
            hit = logits.argmax(-1).numpy() == x[1:]
            resp += nll[lab[1:] != -100].tolist()
            a = tr[1:] == INFORMATIVE
            ans += nll[a].tolist()
            exact.append(bool(hit[a].all()))
    assert got["loss"] == pytest.approx(np.mean(resp), rel=1e-5)
    assert got["answer_loss"] == pytest.approx(np.mean(ans), rel=1e-5)
    assert got["exact_match"] == pytest.approx(np.mean(exact))


def test_attention_methods_name_the_setting_on_models_without_llama_attention(eager_model) -> None:
    """ssToken (and XTF's attention filter) need a Llama-style last attention module; a model without one
    (GPT-2's fused c_attn) fails before any work with the setting to change; the loss-only setting runs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tokenclean.errors import ConfigError
    from tokenclean.signals import attention_unavailable
    from tokenclean.training.policies import build_policy

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    assert attention_unavailable(eager_model) is None
    assert attention_unavailable(gpt2)
    with pytest.raises(
        ConfigError, match=r"peers\.sstoken\.gamma .*set gamma: 1 and attention_warmup_steps: 0"
    ):
        build_policy("sstoken", {}, None).check_model(gpt2)
    build_policy("sstoken", {"gamma": 1.0}, None).check_model(gpt2)  # loss signal only: no attention needed
    build_policy("sstoken", {}, None).check_model(eager_model)
    with pytest.raises(ConfigError, match="attention_warmup_steps"):
        build_policy("sstoken", {"gamma": 1.0, "attention_warmup_steps": 2}, None).check_model(gpt2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_token_signals_equal_the_naive_twin_through_a_wrapper(tiny_tok, dtype: torch.dtype) -> None:
    """The signals computed through the model's own forward (logits_to_keep empty, hidden states from a hook),
    with the model inside a ``.module`` wrapper as DDP holds it, equal the full-logits twin and carry grad."""
    from tokenclean.signals import forward_token_signals

    model = make_tiny_llama(tiny_tok, seed=3).to(dtype).eval()

    class Wrapper(torch.nn.Module):  # what DDP looks like from outside: .module and a forward
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.module = m
            self.calls = 0

        def forward(self, **kw):  # type: ignore[no-untyped-def]
            self.calls += 1
            return self.module(**kw)

    b = _batch(seed=2)
    wrapped = Wrapper(model)
    out = forward_token_signals(wrapped, b, ("loss", "prob", "entropy"), chunk_rows=7)
    assert wrapped.calls == 1 and out["loss"].requires_grad
    slow = naive_token_signals(model, b, ("loss", "prob", "entropy"))
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    for k in ("loss", "prob", "entropy"):
        assert torch.allclose(out[k].detach().float(), slow[k].float(), atol=tol, rtol=tol), k
    out["loss"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
