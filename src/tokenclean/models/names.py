"""Checking a model name before anything is loaded or written: a typo must fail at once with what was meant.

A name is, in this order: an existing local path (directory or ``.gguf`` file), a built-in alias, or a Hub
id. A Hub id is accepted when it is in the local Hugging Face cache; otherwise it is looked up once, with a
short timeout, unless ``HF_HUB_OFFLINE`` is set. A name that is none of these stops with a message that
says which it is not and suggests the closest alias or sibling path ("did you mean").
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path

from tokenclean.errors import ModelError

HUB_TIMEOUT_S = 5.0


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def suggestions(name: str) -> list[str]:
    """Aliases and existing sibling paths close to ``name`` (best first)."""
    from tokenclean.models.loader import ALIASES

    out = difflib.get_close_matches(name.lower(), list(ALIASES), n=1, cutoff=0.6)
    p = Path(name)
    parent = p.parent if str(p.parent) not in ("", ".") else Path(".")
    if parent.is_dir():
        siblings = [c.name for c in parent.iterdir() if not c.name.startswith(".")]
        for s in difflib.get_close_matches(p.name, siblings, n=2, cutoff=0.6):
            out.append(str(parent / s) if parent != Path(".") else s)
    elif not parent.exists() and str(parent) != ".":
        out.extend(f"{c}/{p.name}" for c in suggestions(str(parent)) if Path(c).is_dir())
    return out


def _did_you_mean(name: str) -> str:
    s = suggestions(name)
    return f"; did you mean {' or '.join(repr(x) for x in s)}?" if s else ""


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        for f in ("config.json", "tokenizer_config.json", "adapter_config.json"):
            if isinstance(try_to_load_from_cache(repo_id, f), str):
                return True
    except Exception:  # an id the Hub library refuses (bad characters): not cached
        return False
    return False


@lru_cache(maxsize=64)
def _hub_lookup(repo_id: str) -> str | None:
    """None when the Hub has ``repo_id`` (or it is gated); else why it cannot be used. Asked once per process."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        return None  # transformers will say what is missing when it loads
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return None  # it exists; loading needs a token (transformers says so)
    except RepositoryNotFoundError:
        return "no such model on the Hugging Face Hub"
    except Exception as e:  # no network, DNS, timeout, invalid id
        return f"the Hugging Face Hub could not be asked within {HUB_TIMEOUT_S:.0f} s ({type(e).__name__})"
    return None


def check_model_name(name: str, what: str = "model") -> None:
    """Raise :class:`ModelError` unless ``name`` is a local path, an alias or a reachable/cached Hub id."""
    from tokenclean.models.loader import ALIASES

    if not name:
        raise ModelError(f"{what}: no name given")
    if name.lower() in ALIASES or Path(name).exists():
        return
    looks_local = name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1
    if looks_local:
        raise ModelError(f"{what} '{name}': no such file or directory{_did_you_mean(name)}")
    if _in_hub_cache(name):
        return
    known = ", ".join(sorted(ALIASES))
    head = f"{what} '{name}' is not a local path (no such file or directory), not an alias ({known})"
    if hub_offline():
        raise ModelError(
            f"{head}, and not in the local Hugging Face cache (HF_HUB_OFFLINE is set, so the Hub was not "
            f"asked){_did_you_mean(name)}"
        )
    why = _hub_lookup(name)
    if why is not None:
        raise ModelError(f"{head}, and as a Hub id: {why}{_did_you_mean(name)}")
