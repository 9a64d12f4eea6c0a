"""Tiny tokenizers and tiny Llama models built from a seed at test time (no network, no weights committed).

- :func:`make_tiny_tokenizer`: a byte-level BPE (GPT-2 style, like SmolLM2/Llama-3) or a Metaspace BPE
  (SentencePiece style with BOS, like Llama-2/Mistral) trained in ~0.1 s on a seeded corpus; ChatML chat
  template; specials ``<s>``, ``</s>``, ``<pad>``, ``<|im_start|>``, ``<|im_end|>``.
- :func:`make_tiny_llama`: a LlamaForCausalLM with a few thousand to a few hundred thousand parameters.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "it",
    "by",
    "at",
    "from",
    "this",
    "be",
    "are",
    "or",
    "have",
    "not",
    "but",
    "what",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "more",
    "if",
    "no",
    "out",
    "so",
    "said",
    "up",
    "one",
    "about",
    "time",
    "only",
    "new",
    "some",
    "could",
    "these",
    "two",
    "may",
    "answer",
    "question",
    "paris",
    "france",
    "capital",
    "city",
    "river",
    "blue",
    "green",
    "red",
    "number",
    "seven",
    "twelve",
    "hundred",
    "first",
    "python",
    "code",
    "function",
    "return",
    "list",
    "value",
    "model",
    "token",
    "data",
    "learn",
    "train",
    "loss",
    "score",
    "clean",
    "sample",
    "please",
    "explain",
    "write",
    "summary",
    "step",
    "because",
    "therefore",
    "however",
    "example",
    "result",
    "true",
    "false",
    "yes",
    "hello",
    "world",
]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def tiny_corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
        punct = rng.choice([".", "?", "!", ",", ":", " 42.", " (1, 2)", "\n", "\n\n- item"])
        lines.append(" ".join(words) + punct + rng.choice(["", " <|user|>", " <|assistant|>", "\n"]))
    return lines


def make_tiny_tokenizer(
    out_dir: str | Path | None = None, seed: int = 0, kind: str = "bytelevel", vocab_size: int = 400
) -> Any:
    """Train a tiny fast tokenizer; save it to ``out_dir`` when given. Returns the transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tk = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(
            set(
                "".join(tiny_corpus(seed)) + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                "0123456789.,:;!?()[]{}<>|/\\-_'\"+=*&%$#@^~`\n\t "
            )
        )
    else:
        raise ValueError(f"unknown tokenizer kind '{kind}' (bytelevel, metaspace)")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    tk.train_from_iterator(tiny_corpus(seed), trainer=trainer)
    if kind == "metaspace":
        bos = tk.token_to_id("<s>")
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>" if kind == "metaspace" else "<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"]
        if kind == "metaspace"
        else ["<|im_start|>", "</s>"],
    )
    tok.chat_template = CHATML
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def make_tiny_llama(
    tokenizer: Any,
    out_dir: str | Path | None = None,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 1024,
) -> Any:
    """Build a tiny random LlamaForCausalLM on ``tokenizer``'s vocabulary from ``seed``; save when asked."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger-than-default init so losses differ visibly between tokens
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.eval()
    if out_dir is not None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    return model


def make_lora_adapter(
    model: Any,
    out_dir: str | Path,
    base: str | None = None,
    seed: int = 0,
    rank: int = 8,
    std: float = 0.05,
    targets: Any = None,
) -> Path:
    """Save a random (non-zero) LoRA adapter for ``model`` to ``out_dir``: a stand-in for a fine-tuned
    reference (``model`` is left unchanged). ``base`` is written as the adapter's
    ``base_model_name_or_path``; ``targets`` defaults to every attention and MLP projection."""
    import copy
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=targets
        or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, std)
    peft_model.save_pretrained(str(out_dir))
    if base is not None:
        cfg_path = Path(out_dir) / "adapter_config.json"
        saved = json.loads(cfg_path.read_text())
        saved["base_model_name_or_path"] = str(base)
        cfg_path.write_text(json.dumps(saved, indent=2))
    return Path(out_dir)


def make_tiny_peft(tokenizer: Any, seed: int, init_seed: int = 0) -> Any:
    """A tiny Llama (``seed``) with a non-zero LoRA adapter on q/v (r 4, drawn with ``init_seed``), in eval
    mode: the current and the adapter-off models differ, as a policy's signals need."""
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    cfg.init_lora_weights = False
    base = make_tiny_llama(tokenizer, seed=seed)
    torch.manual_seed(init_seed)
    return get_peft_model(base, cfg).eval()


def small_train_data(seed: int) -> Any:
    """Four random samples (9, 14, 6 and 11 tokens, ids 5..299), the last two thirds of each trained, as
    :class:`tokenclean.training.data.TrainData` with ids ``a``-``d``: a step for policy tests."""
    import numpy as np

    from tokenclean.training.data import TrainData

    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for n in (9, 14, 6, 11):
        x = rng.integers(5, 300, n).astype(np.int32)
        lab = np.full(n, -100, dtype=np.int32)
        lab[n // 3 :] = x[n // 3 :]
        ids.append(x)
        labels.append(lab)
    return TrainData(ids, labels, None, np.array([len(x) - len(x) // 3 for x in ids]), list("abcd"))
