"""The ONE label builder: a rendered conversation -> ``input_ids`` + ``labels``, tokenised once.

Alignment rule (see :mod:`tokenclean.alignment`): ``labels[j]`` is about token ``j`` itself (the HF
convention); the model predicts it from the logits at ``j - 1``.

A token is trained when its character span (from the fast tokenizer's offset mapping) overlaps a trained
character span of the rendering. So a BPE token that merges the last prompt character with the first
response character is trained (producing it is part of producing the response); prompt-only tokens never
are. The chat-template path is stricter: a trained span must start on a token boundary, else an error.

The whole rendered text is tokenised in ONE call with special-token parsing, exactly as Hugging Face
training code would see it (so Metaspace/SentencePiece tokenizers get the same prefix-space handling). Content
that itself contains special-token text (e.g. a literal ``</s>``) is parsed as that special token, like
everywhere else in the HF stack; :func:`content_has_special_text` flags such samples so ``prepare`` can count
and warn about them.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenclean import IGNORE_INDEX
from tokenclean.data.formats import Message
from tokenclean.data.templates import Rendered, render
from tokenclean.errors import DataError


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where not trained, else the token id
    truncated: bool
    full_length: int  # length before truncation
    special_text_in_content: bool = False  # a message contained special-token text (see module doc)

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def tokenize_rendered(r: Rendered, tokenizer: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and their character spans in ``r.text``: ONE tokenizer call on the whole text.

    For tulu/plain the tokenizer adds its own BOS (if it has one); the chat template writes its own.
    Each template-inserted special span (EOS) must come out as exactly one token with that token's id.
    """
    add_special = r.specials is not None
    enc = tokenizer(r.text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = [int(x) for x in enc["input_ids"]]
    offs = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    if add_special and len(ids) > 1 and offs[-1] == (0, 0) and ids[-1] == tokenizer.eos_token_id:
        ids, offs = ids[:-1], offs[:-1]  # tokenizers whose post-processor appends EOS: the template owns EOS
    for s, e in r.specials or []:
        want = tokenizer.convert_tokens_to_ids(r.text[s:e])
        if not any(a == s and b == e and i == want for i, (a, b) in zip(ids, offs)):
            raise DataError(
                "tokenizer", f"'{r.text[s:e]}' is not tokenised as one special token of this tokenizer"
            )
    return ids, offs


def labels_from_spans(
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    trained: Sequence[tuple[int, int]],
    strict: bool = False,
) -> list[int]:
    """Label each token by overlap of its character span with the trained spans (see module doc)."""
    labels = [IGNORE_INDEX] * len(ids)
    starts = {a for a, b in offsets if b > a}
    for ts, te in trained:
        if strict and ts not in starts and any(a < ts < b for a, b in offsets):
            raise DataError(
                "chat template",
                f"a token straddles the start of an assistant turn at character {ts}: the generation-prompt "
                "prefix is not a token prefix of the full rendering (use --template tulu)",
            )
        for j, (a, b) in enumerate(offsets):
            if b > a and a < te and b > ts:
                labels[j] = int(ids[j])
    return labels


def encode_conversation(
    messages: Sequence[Message], tokenizer: Any, template: str = "tulu", max_length: int | None = 2048
) -> EncodedSample:
    """Render, cut to :func:`char_budget` characters, tokenise once, label, truncate (right side) to
    ``max_length``. A rendering cut before tokenisation is longer than ``max_length`` tokens, so it is
    truncated anyway (``truncated`` is True and ``full_length`` counts only the tokens of the cut text);
    the cut keeps tokenising a 50 MB line to the cost of a ``max_length`` one."""
    r = render(messages, tokenizer, template)
    flagged = content_has_special_text(messages, tokenizer)
    cut = max_length is not None and len(r.text) > char_budget(tokenizer, max_length)
    if cut:
        r = cut_rendered(r, char_budget(tokenizer, max_length or 0))
    ids, offsets = tokenize_rendered(r, tokenizer)
    labels = labels_from_spans(ids, offsets, r.trained, strict=r.check_boundaries)
    n = len(ids)
    truncated = cut or (max_length is not None and n > max_length)
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedSample(
        input_ids=list(map(int, ids)),
        labels=labels,
        truncated=truncated,
        full_length=n,
        special_text_in_content=flagged,
    )


_LONGEST: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_MARGIN_TOKENS = 16  # tokens kept past max_length, so the cut never changes the tokens that are kept


def char_budget(tokenizer: Any, max_length: int) -> int:
    """Characters of a rendering that hold at least ``max_length + 16`` tokens: no token of this
    tokenizer covers more characters than its longest vocabulary entry (byte-level entries spell one
    character per byte, so they bound characters too)."""
    longest = _LONGEST.get(tokenizer)
    if longest is None:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
        _LONGEST[tokenizer] = longest  # once per tokenizer (the vocabulary is walked once)
    return (max_length + _MARGIN_TOKENS) * longest


def cut_rendered(r: Rendered, budget: int) -> Rendered:
    """``r`` cut to its first ``budget`` characters (spans clipped; special spans past the cut dropped)."""

    def clip(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(s, min(e, budget)) for s, e in spans if s < budget]

    return dataclasses.replace(
        r,
        text=r.text[:budget],
        trained=clip(r.trained),
        specials=None if r.specials is None else [(s, e) for s, e in r.specials if e <= budget],
        contents=[(min(s, budget), min(e, budget)) for s, e in r.contents],  # one per assistant turn
    )


def content_has_special_text(messages: Sequence[Message], tokenizer: Any) -> bool:
    specials = [t for t in tokenizer.all_special_tokens if t]
    return any(t in m.content for m in messages for t in specials)
