"""The ONE place that loads models, tokenizers and adapters."""

from tokenclean.models.loader import (
    ALIASES,
    check_same_tokenizer,
    load_model,
    load_tokenizer,
    resolve_model,
    tokenizer_identity,
)

__all__ = [
    "ALIASES",
    "check_same_tokenizer",
    "load_model",
    "load_tokenizer",
    "resolve_model",
    "tokenizer_identity",
]
