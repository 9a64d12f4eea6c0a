"""Test support: tiny models, optional-dependency marks and stage outputs written by the real stage code.

Used by the test suite and the benchmarks, and handy for users writing their own tests. Nothing here
re-implements a stage: the writers call the code a real run calls, so what they write is what a run writes.

- :mod:`tokenclean.testing.tiny`: :func:`make_tiny_tokenizer`, :func:`make_tiny_llama`,
  :func:`make_lora_adapter`, :func:`make_tiny_peft`, :func:`small_train_data` (built from a seed; no
  network, no hub);
- :mod:`tokenclean.testing.deps`: :func:`require` (skip a test without an optional dependency, fail it
  under CI) and :func:`have`;
- :mod:`tokenclean.testing.stores`: prepared datasets and score stores from token ids and scores (or
  losses), through the ``prepare`` and ``score`` stages' own writers;
- :mod:`tokenclean.testing.runs`: a run directory with made-up losses and evaluation numbers, selected by
  the real ``select`` and summarised through :mod:`tokenclean.summary` (``python -m
  tokenclean.testing.runs OUT_DIR`` previews the report without training anything).

The data-writing submodules import ``datasets``/``numpy`` when used; importing this package does not.
"""

from __future__ import annotations

from tokenclean.testing.deps import HIDE_ENV, OPTIONAL, have, in_ci, require
from tokenclean.testing.tiny import (
    CHATML,
    SPECIALS,
    WORDS,
    make_lora_adapter,
    make_tiny_llama,
    make_tiny_peft,
    make_tiny_tokenizer,
    small_train_data,
    tiny_corpus,
)

__all__ = [
    "CHATML",
    "HIDE_ENV",
    "OPTIONAL",
    "SPECIALS",
    "WORDS",
    "have",
    "in_ci",
    "make_lora_adapter",
    "make_tiny_llama",
    "make_tiny_peft",
    "make_tiny_tokenizer",
    "require",
    "small_train_data",
    "tiny_corpus",
]
