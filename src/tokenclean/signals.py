"""The one token-signal primitive: per-token signals of a causal LM at the positions asked for.

Every per-token number tokenclean computes from a model comes from :func:`token_signals`: scoring losses
(:mod:`tokenclean.scoring.engine`), the training loss and online token policies (:mod:`tokenclean.training`),
held-out metrics (:mod:`tokenclean.evaluation.quick`, :mod:`tokenclean.groundtruth.metrics`).

Signals of token ``j`` (``j >= 1``; the alignment rule of :mod:`tokenclean.alignment`: predicted by the
logits at ``j - 1``):

- ``loss``: ``-log P(x_j | x_<j)`` (fp32; with ``grad=True`` it carries the autograd graph);
- ``prob``: ``P(x_j | x_<j) = exp(-loss)``;
- ``entropy``: entropy (nats) of the predictive distribution at ``j - 1``;
- ``hit``: whether the greedy (argmax) prediction at ``j - 1`` is ``x_j``;
- ``topk_entropy:K``: entropy (nats) of the softmax over the ``K`` largest logits at ``j - 1`` (EAFT's
  approximation of the entropy; ``K`` an integer, e.g. ``topk_entropy:20``);
- ``attn``: the last decoder layer's attention *of token j* (query ``j``) to the prompt positions of its row
  (``prompt_mask``), averaged over heads. Computed by a forward pre-hook on that one attention module which
  recomputes its query/key projections for the asked rows only; never ``output_attentions=True``.

How it stays lean: the decoder runs once, its final hidden states are gathered at the ``N`` logit positions
``j - 1`` only, and the LM head runs on those ``N`` rows in chunks of ``chunk_rows``, so no ``(B, T, V)``
tensor is ever built and tokens not asked for cost no head compute. :class:`SignalModel` holds this as a
``torch.nn.Module`` whose ``forward`` is the computation, so DDP/FSDP (through accelerate) wrap it like any
model and see one forward per micro-batch. :func:`naive_token_signals` is the twin (full logits,
``log_softmax().gather()``, ``output_attentions=True`` on an eager model); tests assert they agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenclean.alignment import logit_positions

PLAIN_SIGNALS = ("loss", "prob", "entropy", "hit", "attn")
SIGNALS = (*PLAIN_SIGNALS, "topk_entropy:K")


def _topk_of(name: str) -> int | None:
    """``K`` of a ``topk_entropy:K`` signal name, else None."""
    base, _, k = name.partition(":")
    return int(k) if base == "topk_entropy" and k.isdigit() and int(k) > 0 else None


def _unknown(want: frozenset[str]) -> list[str]:
    return sorted(w for w in want if w not in PLAIN_SIGNALS and _topk_of(w) is None)


def _topk_entropy(logits: Any, k: int) -> Any:
    """Entropy of the softmax over the ``k`` largest of ``logits`` (C, V) -> (C,), no grad."""
    top = logits.detach().topk(min(k, logits.shape[-1]), dim=-1).values  # (C, k)
    lp = top.log_softmax(-1)  # (C, k)
    return -(lp.exp() * lp).sum(-1)


DEFAULT_CHUNK_ROWS = 256  # LM-head rows per chunk: 256 x vocab fp32 logits (49k vocab: 50 MB)
# attention implementations that read packed samples from the position_ids of a single row (varlen kernels)
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


@dataclass
class TokenBatch:
    """A batch and the tokens asked about, in flat form.

    Token ``k`` is ``input_ids[rows[k], pos[k]]`` (``pos[k] >= 1`` within its sample), predicted by the
    logits at ``pos[k] - 1``. ``prompt_mask`` (only needed for ``attn``) marks the prompt positions.

    Two layouts: *padded* (:func:`make_token_batch`: one sample per row, right-padded, ``attention_mask``
    0 on padding, ``position_ids`` None = ``0..T-1``) and *packed* (:func:`tokenclean.packing.
    make_packed_batch`: several samples per row, ``attention_mask`` None, ``position_ids`` restarting at 0
    at every sample, which transformers turns into a block-diagonal causal mask or flash-attention varlen).
    ``sample``/``sample_pos`` name each asked token's sample (0-based, in the order the batch was built
    from) and its position inside that sample; None means ``rows``/``pos`` (the padded layout).
    """

    input_ids: Any  # torch.LongTensor (B, T)
    attention_mask: Any  # torch.LongTensor (B, T), 0 on padding; None when packed
    rows: Any  # torch.LongTensor (N,)
    pos: Any  # torch.LongTensor (N,) token positions in the row, j >= 1 within its sample
    prompt_mask: Any = None  # torch.BoolTensor (B, T) or None
    position_ids: Any = None  # torch.LongTensor (B, T) restarting per packed sample; None: 0..T-1
    sample: Any = None  # torch.LongTensor (N,) sample of each asked token; None: rows
    sample_pos: Any = None  # torch.LongTensor (N,) position inside its sample; None: pos

    @property
    def targets(self) -> Any:
        """Token ids of the asked tokens, (N,)."""
        return self.input_ids[self.rows, self.pos]

    @property
    def token_sample(self) -> Any:
        """(N,) the sample each asked token belongs to."""
        return self.rows if self.sample is None else self.sample

    @property
    def token_pos(self) -> Any:
        """(N,) each asked token's position inside its own sample."""
        return self.pos if self.sample_pos is None else self.sample_pos

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def to(self, device: Any) -> TokenBatch:
        moved = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
        }
        return TokenBatch(**moved)

    def select(self, idx: Any) -> TokenBatch:
        """The same batch asking only for tokens ``idx`` (a LongTensor into the N asked tokens)."""
        per_token = {"rows", "pos", "sample", "sample_pos"}
        kept = {
            f.name: (v[idx] if f.name in per_token and v is not None else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }
        return TokenBatch(**kept)


def make_token_batch(
    input_ids: Sequence[np.ndarray],
    positions: Sequence[np.ndarray],
    pad_id: int = 0,
    attention_mask: Sequence[np.ndarray] | None = None,
    prompt_mask: Sequence[np.ndarray] | None = None,
) -> TokenBatch:
    """Right-pad ``input_ids`` (one array per row) and list ``positions[r]`` (token positions, ``>= 1``) of
    each row as the asked tokens, row by row in the given order."""
    import torch

    b, t = len(input_ids), max(len(x) for x in input_ids)
    ids = np.full((b, t), pad_id, dtype=np.int64)  # (B, T)
    att = np.zeros((b, t), dtype=np.int64)  # (B, T)
    pm = np.zeros((b, t), dtype=bool) if prompt_mask is not None else None  # (B, T)
    rows, pos = [], []
    for r, x in enumerate(input_ids):
        n = len(x)
        ids[r, :n] = x
        att[r, :n] = 1 if attention_mask is None else attention_mask[r]
        if pm is not None and prompt_mask is not None:
            pm[r, :n] = prompt_mask[r]
        p = np.asarray(positions[r], dtype=np.int64)
        logit_positions(p)  # raises on position 0 (the alignment rule)
        rows.append(np.full(len(p), r, dtype=np.int64))
        pos.append(p)
    return TokenBatch(
        torch.from_numpy(ids),
        torch.from_numpy(att),
        torch.from_numpy(np.concatenate(rows)),
        torch.from_numpy(np.concatenate(pos)),
        None if pm is None else torch.from_numpy(pm),
    )


def model_parts(model: Any) -> tuple[Any, Any, Any]:
    """``(decoder, lm_head, inner causal LM)`` of a causal LM, also inside a PEFT wrapper (public APIs only).

    The decoder returns the final-norm hidden states; ``lm_head`` maps them to logits. LoRA layers injected
    by PEFT live inside these modules, so ``disable_adapter()`` on the wrapper still applies."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder()
    head = inner.get_output_embeddings()
    if decoder is inner or head is None:
        raise TypeError(f"{type(inner).__name__} has no separate decoder and LM head; not a causal LM")
    return decoder, head, inner


def head_transform(inner: Any, logits: Any) -> Any:
    """Architecture-specific logit post-processing some causal LMs apply after the head (fp32 in, fp32 out):
    Gemma-2/3 final soft-capping, Granite ``logits_scaling``, Cohere ``logit_scale``. Anything else is
    caught by the scoring self-check (engine vs full forward on one sample)."""
    import torch

    cfg = inner.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scaling = getattr(cfg, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    scale = getattr(inner, "logit_scale", None)
    if isinstance(scale, (int, float)):
        logits = logits * scale
    return logits


def _head_signals(head: Any, inner: Any, h: Any, tgt: Any, want: frozenset[str], chunk_rows: int) -> dict:
    """Loss (and entropy/hit on request) of the ``N`` rows of ``h`` (N, H) against ``tgt`` (N,), chunked."""
    import torch

    topk = {w: k for w in want if (k := _topk_of(w)) is not None}
    keys = ("loss", "entropy", "hit", *topk)
    parts: dict[str, list[Any]] = {k: [] for k in keys if k in want or k == "loss"}
    for lo in range(0, len(tgt), chunk_rows):
        logits = head_transform(inner, head(h[lo : lo + chunk_rows]).float())  # (C, V) fp32
        t = tgt[lo : lo + chunk_rows, None]  # (C, 1)
        lse = torch.logsumexp(logits, dim=-1)  # (C,)
        parts["loss"].append(lse - logits.gather(1, t).squeeze(1))  # (C,)
        if "entropy" in want:
            with torch.no_grad():
                logp = logits.detach() - lse.detach()[:, None]  # (C, V)
                parts["entropy"].append(-(logp.exp() * logp).sum(-1))  # (C,)
        if "hit" in want:
            parts["hit"].append(logits.detach().argmax(-1) == t.squeeze(1))  # (C,)
        for name, k in topk.items():
            parts[name].append(_topk_entropy(logits, k))  # (C,)
    out = {k: torch.cat(v) if v else torch.empty(0, device=h.device) for k, v in parts.items()}
    if "prob" in want:
        out["prob"] = torch.exp(-out["loss"].detach())
    return out


def _last_attention(decoder: Any) -> tuple[Any, str | None]:
    """The decoder's last Llama-style attention module (``q_proj``, ``k_proj``, ``head_dim``), or None and
    why there is none."""
    layers = getattr(decoder, "layers", None)
    attn = getattr(layers[-1], "self_attn", None) if layers else None
    if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "head_dim")):
        return None, (
            f"the attention signal needs a Llama-style last attention module (q_proj, k_proj, head_dim); "
            f"{type(decoder).__name__} has none"
        )
    return attn, None


def attention_unavailable(model: Any) -> str | None:
    """Why the ``attn`` signal cannot be computed for ``model`` (None when it can): the last decoder layer
    needs a Llama-style attention module (``q_proj``, ``k_proj``, ``head_dim``; Llama, Mistral, Qwen2/3,
    SmolLM2). A structural check only (no forward), for callers that want to fail before any work."""
    try:
        decoder = model_parts(model)[0]
    except TypeError as e:
        return str(e)
    return _last_attention(decoder)[1]


class _LastLayerAttention:
    """Captures the last attention module's inputs (a forward pre-hook) and recomputes, for the asked
    tokens only, their softmax attention row; returns the mass on prompt positions, averaged over heads.

    Works for the Llama family of attention modules (``q_proj``/``k_proj``, rotary ``position_embeddings``,
    grouped-query heads; Llama, Mistral, Qwen2, SmolLM2). Anything else raises a clear error."""

    def __init__(self, decoder: Any) -> None:
        attn, why = _last_attention(decoder)
        if attn is None:
            raise NotImplementedError(f"{why}: choose a policy without attention")
        self.module = attn
        self.captured: dict[str, Any] = {}

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        def pre(_mod: Any, args: tuple, kwargs: dict) -> None:
            self.captured["h"] = kwargs.get("hidden_states", args[0] if args else None)
            self.captured["pe"] = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)

        handle = self.module.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def prompt_mass(self, batch: TokenBatch) -> Any:
        import torch

        h, pe, m = self.captured.pop("h"), self.captured.pop("pe"), self.module
        if h is None or pe is None:
            raise NotImplementedError(
                f"{type(m).__name__} was not called with rotary position embeddings; attention signals "
                "are not available for this architecture"
            )
        cfg = m.config
        n_h, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, m.head_dim
        with torch.no_grad():
            b, t, _ = h.shape
            q = m.q_proj(h).view(b, t, n_h, d).transpose(1, 2)  # (B, nh, T, d)
            k = m.k_proj(h).view(b, t, n_kv, d).transpose(1, 2)  # (B, nkv, T, d)
            if hasattr(m, "q_norm"):  # Qwen3-style per-head norms
                q, k = m.q_norm(q), m.k_norm(k)
            cos, sin = pe
            q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
            k = k.repeat_interleave(n_h // n_kv, dim=1)  # (B, nh, T, d)
            qs = q[batch.rows, :, batch.pos]  # (N, nh, d) queries of the asked tokens
            ks = k[batch.rows]  # (N, nh, T, d)
            scores = torch.einsum("nhd,nhtd->nht", qs.float(), ks.float()) * (d**-0.5)  # (N, nh, T)
            ar = torch.arange(t, device=h.device)
            first = batch.pos - batch.token_pos  # (N,) row position where each token's sample starts
            allowed = (ar[None, :] <= batch.pos[:, None]) & (ar[None, :] >= first[:, None])  # (N, T)
            if batch.attention_mask is not None:
                allowed &= batch.attention_mask[batch.rows].bool()
            scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
            probs = scores.softmax(-1).mean(1)  # (N, T) averaged over heads
            prompt = batch.prompt_mask[batch.rows].to(probs.dtype)  # (N, T)
            return (probs * prompt).sum(-1)  # (N,)


def _rotary(x: Any, cos: Any, sin: Any) -> Any:
    """Rotary embedding (the half-split convention of the Llama family); ``cos``/``sin`` are (B, T, d)."""
    import torch

    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, d)
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def signal_model(model: Any) -> Any:
    """Wrap a causal LM (plain or PEFT) in a ``torch.nn.Module`` whose ``forward(batch, want, chunk_rows)``
    returns :func:`token_signals`'s dict. Wrap once and hand the wrapper to accelerate/DDP for training."""
    import torch

    class _SignalModel(torch.nn.Module):
        is_token_signal_model = True

        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, batch: TokenBatch, want: tuple[str, ...], chunk_rows: int) -> dict[str, Any]:
            return _compute(self.lm, batch, frozenset(want), chunk_rows)

    return _SignalModel(model)


def _position_ids(batch: TokenBatch, inner: Any) -> Any:
    """The batch's ``position_ids`` (B, T): ``0..T-1`` per row when padded; a packed batch's own, refused
    on several rows for varlen attention kernels (they read sample boundaries from ONE row)."""
    import torch

    b, t = batch.input_ids.shape
    if batch.position_ids is None:
        return torch.arange(t, device=batch.input_ids.device).unsqueeze(0).expand(b, t)  # (B, T)
    if b > 1 and getattr(inner.config, "_attn_implementation", "") in VARLEN_ATTENTION:
        raise ValueError(
            f"{inner.config._attn_implementation} reads packed samples from position_ids of ONE row; "
            f"this packed batch has {b} rows (pack with row_tokens=None)"
        )
    return batch.position_ids


def _compute(model: Any, batch: TokenBatch, want: frozenset[str], chunk_rows: int) -> dict[str, Any]:
    bad = _unknown(want)
    if bad:
        raise ValueError(f"unknown signal(s) {bad}; valid: {', '.join(SIGNALS)}")
    decoder, head, inner = model_parts(model)
    position_ids = _position_ids(batch, inner)
    attn = _LastLayerAttention(decoder) if "attn" in want else None
    if attn is not None and batch.prompt_mask is None:
        raise ValueError("the attn signal needs batch.prompt_mask")
    with attn.hooked() if attn is not None else contextlib.nullcontext():
        hidden = decoder(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state  # (B, T, H), final norm applied
    h = hidden[batch.rows, batch.pos - 1]  # (N, H) hidden states at the logit positions j - 1
    del hidden
    out = _head_signals(head, inner, h, batch.targets, want, chunk_rows)
    if attn is not None:
        out["attn"] = attn.prompt_mass(batch)
    return {k: v for k, v in out.items() if k in want or k == "loss"}


def token_signals(
    model: Any,
    batch: TokenBatch,
    want: Sequence[str] = ("loss",),
    *,
    grad: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict[str, Any]:
    """Signals ``want`` (see the module doc) of the asked tokens of ``batch``: a dict of (N,) tensors, in
    the order of ``batch.rows``/``batch.pos``; ``loss`` is always included. ``model`` is a causal LM, a
    PEFT model or a :func:`signal_model` wrapper (possibly inside DDP/FSDP). With ``grad=False`` it runs
    under ``torch.inference_mode``; with ``grad=True`` the ``loss`` tensor carries the graph (the other
    signals are always detached)."""
    import torch

    dev = batch.input_ids.device
    if getattr(getattr(model, "module", model), "is_token_signal_model", False):
        run = lambda: model(batch, tuple(sorted(want)), chunk_rows)  # noqa: E731
    else:
        run = lambda: _compute(model, batch, frozenset(want), chunk_rows)  # noqa: E731
    if batch.rows.numel() == 0:
        return {k: torch.empty(0, device=dev) for k in {"loss", *want}}
    if grad:
        return run()
    with torch.inference_mode():
        return run()


def forward_token_signals(
    model: Any, batch: TokenBatch, want: Sequence[str] = ("loss",), *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> dict[str, Any]:
    """:func:`token_signals` with ``grad=True`` (``attn`` excepted), computed through ``model``'s own
    ``forward`` so that a wrapper around it (DDP's gradient hooks, a trainer's patched forward) sees the pass.

    The forward is asked for no logits (``logits_to_keep`` an empty index); a forward hook on the decoder
    takes its final hidden states, and the LM head runs on the ``N`` asked rows only, in chunks, exactly as in
    :func:`token_signals` (same numbers). ``model`` is a causal LM or PEFT model, possibly wrapped by
    accelerate/DDP (``.module``)."""
    import torch

    if "attn" in want:
        raise ValueError("forward_token_signals does not compute the attn signal; use token_signals")
    inner_model = model
    while hasattr(inner_model, "module"):
        inner_model = inner_model.module
    decoder, head, inner = model_parts(inner_model)
    dev = batch.input_ids.device
    if batch.rows.numel() == 0:
        return {k: torch.empty(0, device=dev) for k in {"loss", *want}}
    got: dict[str, Any] = {}

    def keep(_mod: Any, _args: Any, out: Any) -> None:
        got["h"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    handle = decoder.register_forward_hook(keep)
    try:
        model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=_position_ids(batch, inner),
            logits_to_keep=torch.zeros(0, dtype=torch.long, device=dev),  # no (B, T, V) logits
            use_cache=False,
        )
    finally:
        handle.remove()
    h = got.pop("h")[batch.rows, batch.pos - 1]  # (N, H) hidden states at the logit positions j - 1
    out = _head_signals(head, inner, h, batch.targets, frozenset(want), chunk_rows)
    return {k: v for k, v in out.items() if k in want or k == "loss"}


def naive_token_signals(model: Any, batch: TokenBatch, want: Sequence[str] = ("loss",)) -> dict[str, Any]:
    """The twin: full ``(B, T, V)`` logits from ``model(...)``, ``log_softmax`` in fp32, ``gather``; the
    attention from ``output_attentions=True`` (load the model with ``attn_implementation="eager"``)."""
    import torch

    with torch.inference_mode():
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_attentions="attn" in want,
            use_cache=False,
        )
        logp = out.logits.float().log_softmax(-1)  # (B, T, V)
        lp = logp[batch.rows, batch.pos - 1]  # (N, V)
        res = {"loss": -lp.gather(1, batch.targets[:, None]).squeeze(1)}
        res["prob"] = res["loss"].neg().exp()
        res["entropy"] = -(lp.exp() * lp).sum(-1)
        res["hit"] = lp.argmax(-1) == batch.targets
        for w in want:
            if (k := _topk_of(w)) is not None:  # softmax over the k largest logits, entropy in full
                top = lp.topk(min(k, lp.shape[-1]), dim=-1).values  # (N, k); log_softmax keeps the order
                q = torch.softmax(top, -1)
                res[w] = -(q * torch.log(q)).sum(-1)
        if "attn" in want:
            a = out.attentions[-1].float().mean(1)  # (B, T, T) last layer, mean over heads (packed: masked)
            row = a[batch.rows, batch.pos]  # (N, T) attention of token j
            res["attn"] = (row * batch.prompt_mask[batch.rows].float()).sum(-1)
    return {k: v for k, v in res.items() if k in want or k == "loss"}


__all__ = [
    "SIGNALS",
    "TokenBatch",
    "forward_token_signals",
    "head_transform",
    "make_token_batch",
    "model_parts",
    "naive_token_signals",
    "signal_model",
    "token_signals",
]
