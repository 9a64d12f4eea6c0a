"""How well a selection recovers the truth, and how a trained model does on the held-out set."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from tokenclean.groundtruth.truth import INFORMATIVE, NOISE, NOT_RESPONSE


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney U with mid-ranks for ties)."""
    ok = ~np.isnan(scores)
    s, y = scores[ok], positive[ok].astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # mid-ranks for ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    mid = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(mid, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def recovery_metrics(
    truth: Sequence[np.ndarray], keep: Sequence[np.ndarray], scores: Sequence[np.ndarray] | None = None
) -> dict[str, Any]:
    """Precision/recall of kept tokens for the informative class, AUROC of the score, and the noise rate of
    kept tokens vs all response tokens (the quantity of the paper's Theorem 5.1).

    ``truth[i]``: int8 per position (-1 not response). ``keep[i]``: bool per position. ``scores[i]``: float.
    """
    t = np.concatenate([np.asarray(x) for x in truth])
    k = np.concatenate([np.asarray(x, dtype=bool) for x in keep])
    resp = t != NOT_RESPONSE
    t, k = t[resp], k[resp]
    info, noise = t == INFORMATIVE, t == NOISE
    n_kept = int(k.sum())
    out: dict[str, Any] = {
        "response_tokens": int(resp.sum()),
        "kept_tokens": n_kept,
        "precision": float((k & info).sum() / n_kept) if n_kept else None,
        "recall": float((k & info).sum() / info.sum()) if info.sum() else None,
        "noise_rate_kept": float((k & noise).sum() / n_kept) if n_kept else None,
        "noise_rate_all": float(noise.mean()) if len(t) else None,
        "informative_rate_all": float(info.mean()) if len(t) else None,
        "auroc": None,
    }
    if scores is not None:
        s = np.concatenate([np.asarray(x, dtype=np.float64) for x in scores])[resp]
        out["auroc"] = auroc(s, info)
    return out


def label_breakdown(
    labels: Sequence[np.ndarray],
    decisive: Sequence[np.ndarray],
    keep: Sequence[np.ndarray],
    names: Sequence[str],
    scores: Sequence[np.ndarray] | None = None,
    positive: Collection[str] = ("informative",),
    is_noise: Callable[[str], bool] = lambda name: name.split(":", 1)[0] in ("noise", "hallucination"),
    weights: Sequence[np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per truth label: response tokens, the share kept, the mean score and, for soft methods (``weights``:
    each position's training weight, 0 where not kept), ``mean_weight``; for noise labels also the
    decisive-token view (a wrong span is decided at its first departing token; the tokens after it are
    predictable given that one, so token-level removal understates what a score can see):

    - ``dropped``: share of the label's tokens dropped (token level);
    - ``decisive_dropped``: share of its spans' decisive tokens dropped; this is also the span-level
      removal, since a span counts as removed when its decisive token is dropped (``spans_removed`` /
      ``spans``);
    - ``auroc_decisive``: AUROC of the score for ``positive`` tokens against the label's decisive tokens
      (1 = every informative token scores above every decisive noise token), next to ``auroc_tokens``
      against all of the label's tokens.

    ``labels[i]``: int per position (-1 not response, else an index into ``names``); ``decisive[i]``: int per
    position: the label index of the span whose decisive token it is, else -1). Labels with no token are
    left out.
    """
    lab = np.concatenate([np.asarray(x) for x in labels])
    dec = np.concatenate([np.asarray(x) for x in decisive])
    k = np.concatenate([np.asarray(x, dtype=bool) for x in keep])
    s = np.concatenate([np.asarray(x, dtype=np.float64) for x in scores]) if scores is not None else None
    w = np.concatenate([np.asarray(x, dtype=np.float64) for x in weights]) if weights is not None else None
    pos = np.isin(lab, [i for i, n in enumerate(names) if n in positive])
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        sel = lab == i
        if not sel.any():
            continue
        row: dict[str, Any] = {
            "tokens": int(sel.sum()),
            "kept": float(k[sel].mean()),
            "mean_score": float(s[sel].mean()) if s is not None else None,
        }
        if w is not None:
            row["mean_weight"] = float(w[sel].mean())
        if is_noise(name):
            d = dec == i
            row |= {
                "dropped": float(1.0 - k[sel].mean()),
                "spans": int(d.sum()),
                "spans_removed": int((d & ~k).sum()),
                "decisive_dropped": float((~k[d]).mean()) if d.any() else None,
                "auroc_tokens": _auroc_vs(s, pos, sel),
                "auroc_decisive": _auroc_vs(s, pos, d),
            }
        out[name] = row
    return out


def _auroc_vs(s: np.ndarray | None, pos: np.ndarray, neg: np.ndarray) -> float | None:
    """AUROC of ``s`` separating ``pos`` tokens from ``neg`` tokens (others ignored)."""
    if s is None or not pos.any() or not neg.any():
        return None
    both = pos | neg
    return auroc(s[both], pos[both])


def heldout_per_sample(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    truth: Sequence[np.ndarray],
    batch_tokens: int = 4096,
) -> dict[str, np.ndarray]:
    """Per held-out sample: summed response loss and its token count, summed answer (informative) loss and
    its token count, and whether every answer token is the model's greedy (argmax) prediction given the
    correct prefix (teacher forcing; equal to greedy decoding of the answer span).

    Samples are sorted by length and right-padded into forwards of at most ``batch_tokens`` padded tokens
    (a longer sample goes alone) through :func:`tokenclean.signals.token_signals`; right padding does not
    change a causal model's outputs at real positions, so results equal one sample per forward up to float
    rounding (tested)."""
    import torch

    from tokenclean.alignment import trained_positions
    from tokenclean.evaluation.quick import length_batches
    from tokenclean.signals import make_token_batch, token_signals

    n = len(input_ids)
    out = {
        "loss_sum": np.zeros(n),
        "tokens": np.zeros(n, dtype=np.int64),
        "answer_loss_sum": np.zeros(n),
        "answer_tokens": np.zeros(n, dtype=np.int64),
        "exact": np.zeros(n, dtype=bool),
    }
    model.eval()
    device = next(model.parameters()).device
    pos_of, resp_of, ans_of = [], [], []
    for labs, tr in zip(labels, truth):
        resp = trained_positions(np.asarray(labs))  # (n,) response positions j >= 1
        ans = np.flatnonzero(np.asarray(tr) == INFORMATIVE)
        ans = ans[ans >= 1]  # (a,) answer positions
        pos = np.union1d(resp, ans)  # (m,) every position asked about, ascending
        pos_of.append(pos)
        resp_of.append(np.isin(pos, resp))
        ans_of.append(np.isin(pos, ans))
    lengths = np.array([len(x) for x in input_ids])
    with torch.no_grad():
        for idx in length_batches(lengths, batch_tokens):
            batch = make_token_batch(
                [np.asarray(input_ids[i], dtype=np.int64) for i in idx], [pos_of[i] for i in idx]
            )
            sig = token_signals(model, batch.to(device), ("loss", "hit"))
            nll, hit = sig["loss"].double().cpu().numpy(), sig["hit"].cpu().numpy()  # (N,), (N,)
            rows = batch.rows.numpy()  # (N,)
            for r, i in enumerate(idx):
                at = rows == r
                l_i, h_i, resp_i, ans_i = nll[at], hit[at], resp_of[i], ans_of[i]
                out["loss_sum"][i] = l_i[resp_i].sum()
                out["tokens"][i] = int(resp_i.sum())
                out["answer_loss_sum"][i] = l_i[ans_i].sum()
                out["answer_tokens"][i] = int(ans_i.sum())
                out["exact"][i] = bool(ans_i.any() and h_i[ans_i].all())
    return out


def heldout_metrics(
    model: Any,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    truth: Sequence[np.ndarray],
    batch_tokens: int = 4096,
) -> dict[str, float]:
    """On clean held-out samples: mean response loss (token-weighted), mean loss on the answer (informative)
    tokens, and exact match = share of samples with an answer whose every answer token is predicted greedily
    (see :func:`heldout_per_sample`)."""
    p = heldout_per_sample(model, input_ids, labels, truth, batch_tokens)
    has = p["answer_tokens"] > 0
    return {
        "loss": float(p["loss_sum"].sum() / max(int(p["tokens"].sum()), 1)),
        "answer_loss": float(p["answer_loss_sum"].sum() / p["answer_tokens"].sum())
        if has.any()
        else float("nan"),
        "exact_match": float(p["exact"][has].mean()) if has.any() else float("nan"),
    }
