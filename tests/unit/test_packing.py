"""Padding-free (packed) batches: the same signals as the padded naive twin, for the attention
implementations that run on a CPU (sdpa, eager), and a packing layout that wastes nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tokenclean.packing import make_packed_batch, pack_rows, packing_works, padding_efficiency
from tokenclean.signals import make_token_batch, naive_token_signals, token_signals
from tokenclean.testing import make_tiny_llama

WANT = ("loss", "prob", "entropy", "hit", "attn")


def _data(n: int = 6, seed: int = 0, vocab: int = 300):
    rng = np.random.default_rng(seed)
    ids, pos, prompts = [], [], []
    for _ in range(n):
        t = int(rng.integers(4, 30))
        ids.append(rng.integers(5, vocab, size=t).astype(np.int64))
        cut = int(rng.integers(1, t - 1))
        pos.append(np.arange(cut, t))  # the response part
        pm = np.zeros(t, dtype=bool)
        pm[:cut] = True
        prompts.append(pm)
    return ids, pos, prompts


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_tok):
    m = make_tiny_llama(tiny_tok, seed=2)
    m.config._attn_implementation = request.param  # what attn_implementation= at load time sets
    return m


def _by_sample(batch, out) -> dict[tuple[int, int], dict[str, float]]:
    keys = zip(batch.token_sample.tolist(), batch.token_pos.tolist())
    return {k: {s: float(out[s][i]) for s in out} for i, k in enumerate(keys)}


@pytest.mark.parametrize("row_tokens", [None, 40])
def test_packed_equals_padded_naive_fp32(model, row_tokens) -> None:
    """Every signal (attention included) of a packed batch equals the padded naive twin, to 1e-5 in fp32."""
    ids, pos, prompts = _data()
    padded = make_token_batch(ids, pos, prompt_mask=prompts)
    packed = make_packed_batch(ids, pos, row_tokens=row_tokens, prompt_mask=prompts)
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"  # output_attentions needs eager
    want = _by_sample(padded, naive_token_signals(eager, padded, WANT))
    got = _by_sample(packed, token_signals(model, packed, WANT))
    assert got.keys() == want.keys()
    for k in want:
        for s in WANT:
            assert abs(got[k][s] - want[k][s]) < 1e-5, (k, s)
    assert packed.input_ids.shape[0] == (
        1 if row_tokens is None else len(pack_rows([len(x) for x in ids], 40))
    )


def test_packed_naive_equals_padded_naive(model) -> None:
    """transformers itself (full forward, no tokenclean code on the path) keeps packed samples apart."""
    ids, pos, _ = _data(seed=1)
    padded, packed = make_token_batch(ids, pos), make_packed_batch(ids, pos)
    a = _by_sample(padded, naive_token_signals(model, padded))
    b = _by_sample(packed, naive_token_signals(model, packed))
    assert max(abs(a[k]["loss"] - b[k]["loss"]) for k in a) < 1e-5


def test_packed_bf16_close_to_padded_naive(model) -> None:
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    ids, pos, _ = _data(seed=2)
    padded, packed = make_token_batch(ids, pos), make_packed_batch(ids, pos)
    a = _by_sample(padded, naive_token_signals(m16, padded))
    b = _by_sample(packed, token_signals(m16, packed))
    assert max(abs(a[k]["loss"] - b[k]["loss"]) for k in a) < 2e-2  # bf16 rounding of the body


def test_packed_with_grad_matches_padded_gradient(model) -> None:
    """The training use: a packed loss backpropagates the same gradient as the padded one."""
    ids, pos, _ = _data(seed=3)
    grads = []
    for batch in (make_token_batch(ids, pos), make_packed_batch(ids, pos, row_tokens=32)):
        model.zero_grad()
        token_signals(model, batch, grad=True)["loss"].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_packing_probe_accepts_sdpa_and_eager(model) -> None:
    m = copy.deepcopy(model)
    assert packing_works(m) is True
    assert m._tokenclean_packing_works is True  # remembered


def test_packing_probe_rejects_a_model_that_ignores_packed_positions(model) -> None:
    """A model whose mask ignores position_ids (simulated: the causal mask is forced) mixes samples: the
    probe says so, and scoring falls back to padded batches."""
    m = copy.deepcopy(model)
    decoder = m.get_decoder()
    orig = decoder.forward

    def forward(*args, **kwargs):
        ids = kwargs["input_ids"]
        kwargs["attention_mask"] = torch.ones_like(ids)  # a plain causal mask over the whole row
        return orig(*args, **kwargs)

    decoder.forward = forward
    assert packing_works(m) is False


def test_pack_rows_first_fit_decreasing() -> None:
    lengths = [30, 10, 25, 5, 40, 20]
    rows = pack_rows(lengths, 50)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 50 for r in rows)
    assert len(rows) == 3  # 130 tokens in 3 rows of 50
    assert pack_rows([60, 5], 50) == [[0], [1]]  # too long: a row of its own
    assert pack_rows([3, 4], None) == [[0, 1]]
    with pytest.raises(ValueError):
        pack_rows([3], 0)


def test_padding_efficiency_packed_is_one_and_padded_is_less() -> None:
    ids, pos, _ = _data(seed=4)
    real = sum(len(x) for x in ids)
    assert padding_efficiency(real, make_packed_batch(ids, pos)) == 1.0
    assert padding_efficiency(real, make_token_batch(ids, pos)) < 1.0


def test_position_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        make_packed_batch([np.arange(5)], [np.array([0, 1])])
