"""Held-out response loss: the ``quick`` suite's download-free check on a prepared split of the user's own data.

For every trained position j (``labels[j] != -100``, j >= 1) of every sample: ``loss(j) = -log P(x_j | x_<j)``
from the logits at j-1 (tokenclean.alignment). Reported:

- ``loss``: mean over all trained tokens of the split (token-weighted, like the training loss);
- ``perplexity``: ``exp(loss)``;
- ``token_accuracy``: share of trained tokens whose greedy (argmax) prediction is the label;
- ``exact_match``: share of samples whose every trained token is predicted greedily. For a single-turn sample
  this is exactly "greedy decoding from the prompt reproduces the reference answer and its EOS"; for
  multi-turn samples it is the same per assistant turn, each turn given the reference history.

Batching: samples sorted by length, right-padded, at most ``batch_tokens`` padded tokens per forward; the
language-model head runs only at the positions that predict trained tokens (``logits_to_keep``), so results
do not depend on the batching (a test compares them with a one-sample-at-a-time naive computation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.alignment import trained_positions
from tokenclean.errors import DataError, ModelError
from tokenclean.evaluation.parallel import SINGLE, EvalGroup, rank_samples
from tokenclean.utils import read_json


def length_batches(lengths: np.ndarray, batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped so that ``len(batch) * max_length <= batch_tokens`` (a longer sample goes alone)."""
    order = np.argsort(lengths, kind="stable")[::-1]
    batch: list[int] = []
    for i in order.tolist():
        width = max([int(lengths[j]) for j in batch] + [int(lengths[i])])
        if batch and width * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _batch_stats(model: Any, samples: list[tuple[np.ndarray, np.ndarray]], device: Any) -> dict[str, Any]:
    """Summed loss, counts of tokens and greedy hits, and per-sample all-correct flags for one batch, from
    the one token-signal primitive (:func:`tokenclean.signals.token_signals`)."""
    from tokenclean.signals import make_token_batch, token_signals

    batch = make_token_batch([x for x, _ in samples], [trained_positions(y) for _, y in samples])
    sig = token_signals(model, batch.to(device), ("loss", "hit"))
    loss, hit = sig["loss"].double().cpu(), sig["hit"].cpu().numpy()  # (N,), (N,)
    rows = batch.rows.numpy()  # (N,)
    return {
        "loss_sum": float(loss.sum()),
        "tokens": len(rows),
        "hits": int(hit.sum()),
        "all_hit": [bool(hit[rows == r].all()) for r in range(len(samples))],
    }


def _check_tokenizer(prepared_dir: Path, tokenizer: Any) -> None:
    from tokenclean.models.loader import tokenizer_identity

    manifest = prepared_dir / "manifest.json"
    if tokenizer is None or not manifest.exists():
        return
    want = read_json(manifest).get("tokenizer", {}).get("hash")
    have = tokenizer_identity(tokenizer)["hash"]
    if want and want != have:
        raise ModelError(
            f"{prepared_dir} was tokenised with another tokenizer ({read_json(manifest)['tokenizer'].get('name')}) "
            "than the model's; held-out loss needs the same token ids: re-run `tokenclean prepare` with this model"
        )


def load_heldout(prepared_dir: str | Path, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) of a prepared dataset (first ``limit`` samples), samples with a trained token only."""
    from datasets import load_from_disk

    d = Path(prepared_dir)
    if not (d / "dataset_info.json").exists() and not (d / "state.json").exists():
        raise DataError(str(d), "not a prepared dataset (run `tokenclean prepare --out DIR` first)")
    ds = load_from_disk(str(d))
    for col in ("input_ids", "labels"):
        if col not in ds.column_names:
            raise DataError(str(d), "missing column (not a prepared or cleaned dataset)", col)
    n = len(ds) if limit is None else min(len(ds), int(limit))
    ds = ds.select(range(n)).with_format("numpy", columns=["input_ids", "labels"])
    out = [(np.asarray(r["input_ids"]), np.asarray(r["labels"])) for r in ds]
    return [(x, y) for x, y in out if len(trained_positions(y))]


def heldout_metrics(
    model: Any,
    prepared_dir: str | Path,
    tokenizer: Any = None,
    limit: int | None = None,
    batch_tokens: int = 2048,
    progress: bool = True,
    group: EvalGroup = SINGLE,
) -> dict[str, Any]:
    """Held-out response loss, perplexity, token accuracy and exact match of ``model`` on a prepared split.

    Equals a per-sample ``log_softmax(model(x).logits)`` gathered at the trained positions (see module doc).
    Under a launched group each rank evaluates its share of the samples (:func:`rank_samples`) and the sums
    are reduced over the ranks: the same numbers as one process up to float summation order;
    ``per_rank`` records each rank's samples and tokens."""
    prepared_dir = Path(prepared_dir)
    _check_tokenizer(prepared_dir, tokenizer)
    samples = load_heldout(prepared_dir, limit)
    if not samples:
        raise DataError(str(prepared_dir), "no sample with a trained token")
    lengths = np.array([len(x) for x, _ in samples])
    mine = rank_samples(lengths, group.rank, group.world)
    own = _sums(model, [samples[i] for i in mine], batch_tokens, progress and group.is_main)
    loss_sum, tokens, hits, all_hit = group.sum(np.array([own[k] for k in _SUMS])).tolist()
    per_rank = group.gather({"samples": len(mine), "tokens": int(lengths[mine].sum())})
    loss = loss_sum / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "token_accuracy": hits / tokens,
        "exact_match": all_hit / len(samples),
        "n_samples": len(samples),
        "n_tokens": int(tokens),
        "per_rank": per_rank,
        "prepared_dir": str(prepared_dir.resolve()),
    }


_SUMS = ("loss_sum", "tokens", "hits", "all_hit")


def _sums(
    model: Any, samples: list[tuple[np.ndarray, np.ndarray]], batch_tokens: int, progress: bool
) -> dict[str, float]:
    """Summed loss (float64) and counts of trained tokens, greedy hits and all-hit samples over ``samples``."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    lengths = np.array([len(x) for x, _ in samples], dtype=np.int64)
    tot = dict.fromkeys(_SUMS, 0.0)
    bar = tqdm(total=int(lengths.sum()), unit="tok", desc="held-out loss", disable=not progress)
    for batch in length_batches(lengths, batch_tokens):
        s = _batch_stats(model, [samples[i] for i in batch], device)
        for k in ("loss_sum", "tokens", "hits"):
            tot[k] += s[k]
        tot["all_hit"] += sum(s["all_hit"])
        bar.update(int(lengths[batch].sum()))
    bar.close()
    return tot


def heldout_entries(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The held-out numbers as result entries (``tasks`` of :func:`tokenclean.evaluation.evaluate`)."""
    common = {"n": metrics["n_samples"], "shots": 0, "source": f"local:{metrics['prepared_dir']}"}
    return {
        "heldout_loss": {
            "metric": "loss",
            "value": metrics["loss"],
            "higher_is_better": False,
            **common,
            "details": {k: v for k, v in metrics.items() if k != "prepared_dir"},
        },
        "heldout_perplexity": {
            "metric": "perplexity",
            "value": metrics["perplexity"],
            "higher_is_better": False,
            **common,
        },
        "heldout_exact_match": {
            "metric": "exact_match",
            "value": metrics["exact_match"],
            "higher_is_better": True,
            **common,
        },
    }
