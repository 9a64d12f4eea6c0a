"""Conversation templates: render messages to text plus the character spans that are trained.

- ``tulu``: the paper's format (open-instruct / Tulu), exactly::

      <|system|>\n{system}\n<|user|>\n{user}\n<|assistant|>\n{assistant}{eos}\n ...

  Trained: each assistant content and the EOS that follows it. The ``<|assistant|>\n`` header, user and
  system turns and the newline after EOS are not trained.
- ``plain``: the contents concatenated with no markup, EOS after each assistant turn
  (``prompt + completion + eos`` for a single turn). Trained: assistant contents + EOS.
- ``chat``: the tokenizer's own chat template. Each assistant turn's span starts where the rendering of the
  conversation *before* that turn with ``add_generation_prompt=True`` ends, and runs through the first
  special token that closes the turn (e.g. ``<|im_end|>``, ``<|eot_id|>``), which is trained like EOS.
  Prefix renderings must be string prefixes of the full rendering and end on a token boundary; a template
  that breaks this (e.g. one that rewrites earlier turns) raises a clear error.

A template returns a :class:`Rendered`; the one label builder in :mod:`tokenclean.data.labels` turns it
into token ids and labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenclean.data.formats import Message
from tokenclean.errors import DataError


@dataclass
class Rendered:
    """A rendered conversation.

    ``trained``: half-open character spans ``[start, end)`` of ``text`` whose tokens are trained.
    ``contents``: the character span of each assistant message's content, in order (user-supplied truth spans
    are offsets into these). ``specials``: character spans the template inserted that must come out as exactly one special token
    each (EOS), checked after tokenisation. ``None`` marks the chat-template path, where the template itself
    writes BOS and special-token strings (so the tokenizer must not add its own BOS).
    """

    text: str
    trained: list[tuple[int, int]] = field(default_factory=list)
    specials: list[tuple[int, int]] | None = field(default_factory=list)
    check_boundaries: bool = False  # chat path: trained span starts must fall on token boundaries
    contents: list[tuple[int, int]] = field(default_factory=list)  # each assistant message's content span


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.trained: list[tuple[int, int]] = []
        self.specials: list[tuple[int, int]] = []
        self.contents: list[tuple[int, int]] = []

    def add(self, text: str, *, trained: bool = False, special: bool = False, content: bool = False) -> None:
        start, end = self.pos, self.pos + len(text)
        if content:
            self.contents.append((start, end))
        if trained and text:
            if self.trained and self.trained[-1][1] == start:
                self.trained[-1] = (self.trained[-1][0], end)
            else:
                self.trained.append((start, end))
        if special:
            self.specials.append((start, end))
        self.parts.append(text)
        self.pos = end

    def build(self) -> Rendered:
        return Rendered("".join(self.parts), self.trained, self.specials, contents=self.contents)


def _eos(tokenizer: Any) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise DataError("tokenizer", "the tokenizer has no eos_token; the tulu and plain templates need one")
    return eos


def render_tulu(messages: Sequence[Message], tokenizer: Any) -> Rendered:
    eos = _eos(tokenizer)
    b = _Builder()
    for m in messages:
        if m.role == "assistant":
            b.add("<|assistant|>\n")
            b.add(m.content, trained=True, content=True)
            b.add(eos, trained=True, special=True)
            b.add("\n")
        else:
            b.add(f"<|{m.role}|>\n{m.content}\n")
    return b.build()


def render_plain(messages: Sequence[Message], tokenizer: Any) -> Rendered:
    eos = _eos(tokenizer)
    b = _Builder()
    for m in messages:
        if m.role == "assistant":
            b.add(m.content, trained=True, content=True)
            b.add(eos, trained=True, special=True)
        else:
            b.add(m.content)
    return b.build()


def _apply(tokenizer: Any, msgs: Sequence[Message], gen: bool) -> str:
    out = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in msgs], tokenize=False, add_generation_prompt=gen
    )
    return str(out)


def render_chat(messages: Sequence[Message], tokenizer: Any) -> Rendered:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("tokenizer", "the tokenizer has no chat_template; use --template tulu or plain")
    full = _apply(tokenizer, messages, gen=False)
    closers = [t for t in tokenizer.all_special_tokens if t]
    trained: list[tuple[int, int]] = []
    contents: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        prefix = _apply(tokenizer, messages[:i], gen=True)
        through = _apply(tokenizer, messages[: i + 1], gen=False)
        for name, part in (("generation-prompt prefix", prefix), ("prefix through this turn", through)):
            if not full.startswith(part):
                raise DataError(
                    "chat template",
                    f"the {name} rendering of assistant turn {i} is not a prefix of the full rendering; this "
                    "template rewrites earlier turns, so response spans cannot be derived (use --template tulu)",
                )
        start, end = len(prefix), len(through)
        # Stop after the first special token that closes the turn (trained, like EOS); any trailing
        # template text after it (e.g. a newline) is not trained.
        cut = _first_closer_end(full, start, end, closers)
        trained.append((start, cut if cut is not None else end))
        at = full.find(m.content, start, end)
        if at < 0:
            raise DataError(
                "chat template",
                f"assistant turn {i}: the template changes the message text (use --template tulu)",
            )
        contents.append((at, at + len(m.content)))
    return Rendered(full, trained, specials=None, check_boundaries=True, contents=contents)


def _first_closer_end(text: str, start: int, end: int, closers: list[str]) -> int | None:
    best: int | None = None
    for tok in closers:
        j = text.find(tok, start, end)
        if j >= 0 and (best is None or j + len(tok) < best):
            best = j + len(tok)
    return best


TEMPLATES = {"tulu": render_tulu, "plain": render_plain, "chat": render_chat}


def render(messages: Sequence[Message], tokenizer: Any, template: str) -> Rendered:
    try:
        fn = TEMPLATES[template]
    except KeyError:
        raise DataError(
            "template", f"unknown template '{template}' (valid: {', '.join(TEMPLATES)})"
        ) from None
    return fn(messages, tokenizer)
