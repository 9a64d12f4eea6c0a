"""XTF (Yang et al. 2026): offline token filtering from the base model alone, the union of three noise filters.

For every response token ``j`` of a prepared dataset, from ONE pass of the base model through the token-signal
primitive (:func:`tokenclean.signals.token_signals`):

1. **Knowledge novelty** ``1 - P_base(x_j | x_<j)``: a token the base already predicts with probability above
   ``1 - novelty_min`` (novelty below ``novelty_min``, default 0.05) teaches nothing: noise.
2. **Reasoning importance**: the last decoder layer's attention of token ``j`` to its prompt positions (mean
   over heads; the prompt spans come from the label mask, multi-turn correct). Within each sample, a token
   below the IQR fence ``Q1 - iqr_k * IQR`` of that sample's values (``iqr_k`` 1.5) is noise.
3. **Task relevance**: the cosine similarity between the token's input embedding and the mean input embedding
   of the task's "expert words" (``expert_words``; default: every prompt token of the dataset, i.e. the
   task's own vocabulary). The relevance values of all response tokens are split by Multi-Otsu
   (``skimage.filters.threshold_multiotsu``, ``otsu_classes`` classes, default 3); the lowest class is noise.

Noise = the union; noise tokens get label -100, the rest keep theirs. The paper does not publish the layer,
the attention statistic or the source of the expert words: these are the settings above, documented in
docs/methods.md. The ``score`` column of the output holds the novelty (``1 - P_base``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from tokenclean.config import DEFAULT_DEVICE, check_fields, setting
from tokenclean.errors import ConfigError
from tokenclean.outputs import guarded
from tokenclean.selection.selector import Selection, Selector, reusable_selection, write_selection
from tokenclean.selection.table import TokenTable, load_prepared_table
from tokenclean.utils import read_json, sha256_json, sha256_tree


@dataclass(frozen=True)
class XtfSettings:
    novelty_min: float = setting(
        0.05, "tokens with 1 - P_base below this are noise (the base already knows them)", bounds="[0, 1)"
    )
    iqr_k: float = setting(
        1.5, "attention below Q1 - iqr_k * IQR of the sample's response tokens is noise", bounds="[0, inf)"
    )
    otsu_classes: int = setting(
        3, "Multi-Otsu classes of the task relevance; the lowest is noise", bounds=">= 2"
    )
    expert_words: tuple[str, ...] = setting(
        (), "words that define the task; empty: every prompt token of the data"
    )
    filters: tuple[Literal["novelty", "attention", "relevance"], ...] = setting(
        ("novelty", "attention", "relevance"), "the filters whose union is noise"
    )

    def __post_init__(self) -> None:
        check_fields(self, "xtf")
        if not self.filters:
            raise ConfigError("xtf.filters: expected at least one of novelty, attention, relevance, got none")


def iqr_fence_noise(values: np.ndarray, offsets: np.ndarray, k: float) -> np.ndarray:
    """Per sample (CSR ``offsets``), values below ``Q1 - k * IQR`` of that sample (linear quantiles)."""
    out = np.zeros(len(values), dtype=bool)
    for a, b in itertools.pairwise(offsets):
        if b - a < 4:  # too few tokens for quartiles to mean anything
            continue
        q1, q3 = np.quantile(values[a:b], [0.25, 0.75])
        out[a:b] = values[a:b] < q1 - k * (q3 - q1)
    return out


def otsu_low_class(values: np.ndarray, classes: int) -> tuple[np.ndarray, list[float]]:
    """Tokens in the lowest Multi-Otsu class of ``values``, and the thresholds."""
    from skimage.filters import threshold_multiotsu

    if len(np.unique(values)) < classes:
        return np.zeros(len(values), dtype=bool), []
    th = threshold_multiotsu(values, classes=classes)
    return values <= th[0], [float(t) for t in th]


def relevance(model: Any, token_ids: np.ndarray, expert_ids: np.ndarray) -> np.ndarray:
    """Cosine similarity of each token's input embedding with the mean embedding of ``expert_ids``."""
    import torch

    emb = model.get_input_embeddings().weight.detach().float()  # (V, H)
    centre = emb[torch.as_tensor(expert_ids)].mean(0)  # (H,)
    e = emb[torch.as_tensor(token_ids)]  # (N, H)
    return torch.nn.functional.cosine_similarity(e, centre[None], dim=-1).cpu().numpy()


def xtf_signals(
    model: Any,
    table: Any,
    prompt_masks: list[np.ndarray],
    batch_tokens: int = 1024,
    with_attention: bool = True,
) -> dict:
    """Novelty and attention (NaN without ``with_attention``) of every response token (CSR order of
    ``table``), batched by length."""
    from tokenclean.alignment import trained_positions
    from tokenclean.scoring.engine import make_batches
    from tokenclean.signals import make_token_batch, token_signals

    n = len(table.sample_ids)
    rows = [
        (
            table.input_ids[table.offsets[i] : table.offsets[i + 1]],
            table.labels[table.offsets[i] : table.offsets[i + 1]],
        )
        for i in range(n)
    ]
    prob = np.full(int(table.response_offsets[-1]), np.nan, dtype=np.float32)
    attn = np.full_like(prob, np.nan)
    device = next(model.parameters()).device
    for idx in make_batches([len(r[0]) for r in rows], batch_tokens):
        pos = [trained_positions(rows[i][1]) for i in idx]
        batch = make_token_batch(
            [rows[i][0].astype(np.int64) for i in idx], pos, prompt_mask=[prompt_masks[i] for i in idx]
        )
        sig = token_signals(model, batch.to(device), ("prob", "attn") if with_attention else ("prob",))
        p = sig["prob"].float().cpu().numpy()
        a = sig["attn"].float().cpu().numpy() if with_attention else np.full_like(p, np.nan)
        start = 0
        for i, ps in zip(idx, pos):
            lab = rows[i][1]
            resp = np.flatnonzero(lab != -100)  # CSR order includes position 0 if trained (never scored)
            dst = table.response_offsets[i] + np.searchsorted(resp, ps)
            prob[dst] = p[start : start + len(ps)]
            attn[dst] = a[start : start + len(ps)]
            start += len(ps)
    return {"novelty": 1.0 - prob, "attention": attn}


@dataclass(frozen=True)
class XtfSelector(Selector):
    """XTF as an offline selector: the union of the noise filters is dropped; the recorded score is the
    novelty ``1 - P_base`` of every scored response token."""

    level: ClassVar[str] = "xtf"
    model: Any = None
    settings: XtfSettings = XtfSettings()
    expert: np.ndarray | None = None  # token ids of the expert words; None: every prompt token of the data

    def keep(self, table: TokenTable) -> Selection:
        st = self.settings
        prompts = [table.labels[a:b] == -100 for a, b in itertools.pairwise(table.offsets)]
        sig = xtf_signals(self.model, table, prompts, with_attention="attention" in st.filters)
        expert = self.expert if self.expert is not None else table.input_ids[table.labels == -100]
        rel = relevance(self.model, table.input_ids[table.response_positions], expert)
        scored = ~np.isnan(sig["novelty"])
        low_relevance, otsu_thresholds = otsu_low_class(rel, st.otsu_classes)
        attention = np.nan_to_num(sig["attention"], nan=np.inf)
        noise = {
            "novelty": scored & (sig["novelty"] < st.novelty_min),
            "attention": scored & iqr_fence_noise(attention, table.response_offsets, st.iqr_k),
            "relevance": low_relevance,
        }
        union = np.zeros(len(rel), dtype=bool)
        for f in st.filters:
            union |= noise[f]
        record = {
            "settings": asdict(st),
            "noise_tokens": {f: int(noise[f].sum()) for f in noise},
            "union": int(union.sum()),
            "otsu_thresholds": otsu_thresholds,
        }
        return Selection(keep=~union & scored, scores=sig["novelty"], record={"xtf": record})


def _expert_ids(base: str, words: tuple[str, ...]) -> np.ndarray | None:
    if not words:
        return None
    from tokenclean.models.loader import load_tokenizer

    tok = load_tokenizer(base)
    return np.asarray([t for w in words for t in tok(" " + w, add_special_tokens=False)["input_ids"]])


def _load_base(base: str, dtype: str, device: str, filters: tuple[str, ...]) -> Any:
    from tokenclean.models.loader import load_model, resolve_device
    from tokenclean.signals import attention_unavailable

    model = load_model(base, dtype=dtype, device=resolve_device(device))
    model.eval()
    if "attention" in filters and (why := attention_unavailable(model)):
        raise ConfigError(
            f"peers.xtf.filters: the attention filter cannot run on {base}: {why}; "
            "leave 'attention' out of the filters (e.g. filters: [novelty, relevance])"
        )
    return model


@guarded("select", inputs=("prepared_dir",))
def xtf_select(
    prepared_dir: str | Path,
    base: str,
    out: str | Path,
    settings: XtfSettings = XtfSettings(),
    dtype: str = "fp32",
    device: str = DEFAULT_DEVICE,
    force: bool = False,
    replace_stale: bool = False,
) -> dict[str, Any]:
    """Run XTF on a prepared dataset with ``base`` and write a cleaned dataset (``tokenclean select``'s
    layout) to ``out``. Returns the selection stats, with per-filter counts under ``xtf``."""
    t0, prep, out = time.time(), Path(prepared_dir), Path(out)
    identity = {"xtf": asdict(settings), "base": base, "dtype": dtype, "prep": sha256_tree(prep)}
    key = sha256_json(identity)
    reused = reusable_selection(out, identity, force, replace_stale)
    if reused is not None:
        return reused
    table = load_prepared_table(prep)
    model = _load_base(base, dtype, device, settings.filters)
    selector = XtfSelector(model=model, settings=settings, expert=_expert_ids(base, settings.expert_words))
    fields = {"level": "xtf", "identity": identity, "base": base, "prepared": {"dir": str(prep.resolve())}}
    pm = prep / "manifest.json"
    if pm.exists():
        fields["tokenizer"] = read_json(pm).get("tokenizer")
    return write_selection(selector, table, out, key, fields, t0)


__all__ = ["XtfSelector", "XtfSettings", "iqr_fence_noise", "otsu_low_class", "xtf_select", "xtf_signals"]
