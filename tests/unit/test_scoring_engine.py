"""The loss engine: equals the naive full-logits twin, obeys the alignment rule, and does not depend on
batching, padding, order or chunk size."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tokenclean import IGNORE_INDEX
from tokenclean.scoring.engine import (
    PADDED,
    Packing,
    Sample,
    batch_token_losses,
    iter_token_losses,
    make_batches,
    make_packed_batches,
    model_parts,
    naive_token_losses,
)
from tokenclean.testing import make_tiny_llama


def _samples(n: int = 7, seed: int = 0, vocab: int = 300) -> list[Sample]:
    """Mixed-length samples with a prompt part (-100) and a response part, like prepared data."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(3, 40))
        ids = rng.integers(5, vocab, size=t)
        labels = ids.copy()
        labels[: int(rng.integers(1, t - 1))] = IGNORE_INDEX  # prompt
        out.append(Sample(i, ids.astype(np.int32), labels.astype(np.int32)))
    return out


@pytest.fixture(scope="module")
def model(tiny_tok):
    return make_tiny_llama(tiny_tok, seed=1)


def make_tiny_llama_like(model, dtype):
    return copy.deepcopy(model).to(dtype)


def _max_diff(a, b) -> float:
    assert [x.index for x in a] == [y.index for y in b]
    for x, y in zip(a, b):
        assert np.array_equal(x.positions, y.positions)
    return max(float(np.abs(x.losses - y.losses).max(initial=0)) for x, y in zip(a, b))


def test_engine_equals_naive_fp32(model) -> None:
    s = _samples()
    assert _max_diff(batch_token_losses(model, s, chunk_rows=5), naive_token_losses(model, s)) < 1e-5


def test_engine_equals_naive_bf16(model) -> None:
    m16 = make_tiny_llama_like(model, torch.bfloat16)
    s = _samples()
    fast, slow = batch_token_losses(m16, s, chunk_rows=5), naive_token_losses(m16, s)
    assert _max_diff(fast, slow) < 2e-2
    assert fast[0].losses.dtype == np.float32  # log-softmax accumulated in fp32
    # and bf16 really ran: it moves losses against fp32, by a bounded amount
    d32 = _max_diff(fast, batch_token_losses(model, s))
    assert 0 < d32 < 0.5


def test_alignment_hand_checked(model) -> None:
    """loss(j) = -log softmax(logits[j-1])[x_j], only at j >= 1 with a trained label."""
    ids = np.array([7, 8, 9, 10, 11, 12], dtype=np.int32)
    labels = np.array([7, -100, 9, -100, 11, 12], dtype=np.int32)  # position 0 labelled: still never scored
    (res,) = batch_token_losses(model, [Sample(0, ids, labels)])
    assert res.positions.tolist() == [2, 4, 5]
    with torch.no_grad():
        logp = model(torch.from_numpy(ids.astype(np.int64))[None]).logits[0].float().log_softmax(-1)
    want = [-logp[j - 1, ids[j]].item() for j in (2, 4, 5)]
    np.testing.assert_allclose(res.losses, want, atol=1e-5)


def test_sample_alone_equals_sample_in_mixed_padded_batch(model) -> None:
    s = _samples(9, seed=3)
    alone = [batch_token_losses(model, [x])[0] for x in s]
    together = batch_token_losses(model, s[::-1], pad_id=3)[::-1]  # reversed order, other pad id
    assert _max_diff(alone, together) < 1e-5
    assert len({len(x.input_ids) for x in s}) > 3  # the batch really mixes lengths (padding)


@pytest.mark.parametrize("packing", [PADDED, Packing(True, None), Packing(True, 50)])
@pytest.mark.parametrize("budget", [1, 60, 200, 10_000])
def test_iter_token_losses_independent_of_budget(model, budget: int, packing: Packing) -> None:
    """Padded or packed padding-free (one row, or rows of <= 50 tokens): the same losses to 1e-5."""
    s = _samples(9, seed=4)
    ref = {x.index: x for x in batch_token_losses(model, s)}
    got = [x for batch in iter_token_losses(model, s, batch_tokens=budget, packing=packing) for x in batch]
    assert sorted(x.index for x in got) == list(range(9))  # every sample exactly once
    assert _max_diff([ref[x.index] for x in got], got) < 1e-5


def test_packed_batches_fill_the_budget_with_real_tokens() -> None:
    lengths = [5, 30, 12, 12, 40, 3, 29, 100]
    batches = make_packed_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [7]  # longer than the budget: alone
    assert all(sum(lengths[i] for i in b) <= 64 for b in batches[1:])
    assert Packing(True, None).computed_tokens([lengths[i] for i in batches[1]]) == sum(
        lengths[i] for i in batches[1]
    )  # one packed row: no padding
    assert PADDED.computed_tokens([40, 30]) == 80


def test_make_batches_budget_and_order() -> None:
    lengths = [5, 30, 12, 12, 40, 3, 29, 100]
    batches = make_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 64 or len(b) == 1
    assert batches[0] == [7]  # longer than the budget: alone
    assert batches == make_batches(lengths, 64)  # deterministic
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)  # length-bucketed
    with pytest.raises(ValueError):
        make_batches(lengths, 0)


def test_peft_wrapped_model_engine_equals_naive(model, tmp_path) -> None:
    from peft import PeftModel

    from tokenclean.testing import make_lora_adapter

    make_lora_adapter(model, tmp_path / "a", std=0.1)
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "a")).eval()
    s = _samples(5, seed=5)
    with_adapter = batch_token_losses(pm, s)
    assert _max_diff(with_adapter, naive_token_losses(pm, s)) < 1e-5
    assert _max_diff(with_adapter, batch_token_losses(model, s)) > 1e-3  # the adapter changes losses
    with pm.disable_adapter():
        assert _max_diff(batch_token_losses(pm, s), batch_token_losses(model, s)) < 1e-6


def test_model_parts_rejects_non_causal_lm(model) -> None:
    with pytest.raises(TypeError):
        model_parts(model.get_decoder())


def test_softcapped_head_matches_naive(tiny_tok) -> None:
    """Gemma-2 soft-caps its logits after the head; the engine reproduces it."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=len(tiny_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=2.0,
        sliding_window=16,
    )
    torch.manual_seed(0)
    g = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in g.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    s = _samples(4, seed=6)
    assert _max_diff(batch_token_losses(g, s), naive_token_losses(g, s)) < 1e-5
