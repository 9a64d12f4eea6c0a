"""The run configuration of ``tokenclean run CONFIG.yaml [key=value ...]``: typed, frozen, strict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokenclean.config import (
    ATTN_HELP,
    DEFAULT_DEVICE,
    DEVICE_HELP,
    apply_overrides,
    from_dict,
    load_yaml,
    setting,
)
from tokenclean.errors import ConfigError
from tokenclean.groundtruth.generator import PoolConfig
from tokenclean.methods import get as get_method
from tokenclean.methods import names as method_names
from tokenclean.methods import specs
from tokenclean.training.config import TrainConfig

METHODS = method_names()


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class DataConfig:
    path: str = field(
        default="",
        metadata=_h("SFT file/dir, hub:NAME[:SPLIT] or builtin:sample (required unless data.synthetic)"),
    )
    format: Literal["auto", "prompt_completion", "alpaca", "messages", "sharegpt"] = field(
        default="auto", metadata=_h("record format (auto-detected)")
    )
    template: Literal["tulu", "chat", "plain"] = field(default="tulu", metadata=_h("conversation template"))
    max_length: int = setting(2048, "tokens per sample after truncation", bounds=">= 2")
    heldout: str | None = field(default=None, metadata=_h("held-out SFT file for the quick evaluation"))
    synthetic: PoolConfig | None = field(
        default=None, metadata=_h("generate a ground-truth pool instead of reading data.path")
    )
    skip_invalid: bool = field(default=False, metadata=_h("skip invalid rows instead of stopping"))
    workers: int = setting(
        1,
        "processes that tokenise the input (prepare), each its contiguous block of records and one data "
        "file; the rows are the same for any number",
        bounds=">= 1",
    )
    truth: str | None = field(
        default=None, metadata=_h("truth JSONL of character spans over data.path (groundtruth/user_truth.py)")
    )
    truth_positive: tuple[str, ...] = field(
        default=("informative",), metadata=_h("truth labels counted as informative (recall, AUROC)")
    )
    truth_noise: tuple[str, ...] = field(
        default=("noise", "hallucination"), metadata=_h("truth labels counted as noise (also LABEL:kind)")
    )


@dataclass(frozen=True)
class ModelConfig:
    base: str = field(default="", metadata=_h("base model: Hub id, dir, .gguf or alias (required)"))
    reference: str | None = field(
        default=None, metadata=_h("external reference model (same tokenizer); null = warm-up reference")
    )
    device: str = setting(DEFAULT_DEVICE, DEVICE_HELP)
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = setting("auto", ATTN_HELP)


@dataclass(frozen=True)
class ScoringConfig:
    dtype: Literal["fp32", "bf16", "fp16", "auto"] = field(default="fp32", metadata=_h("scoring dtype"))
    batch_tokens: int | None = setting(
        None,
        "computed tokens per scoring batch (null: 1024 on CPU, 16384 on CUDA; scores do not depend on it)",
        bounds=">= 16",
    )
    packing: Literal["auto", "on", "off"] = setting(
        "auto",
        "padding-free packed batches (auto: where the attention is a varlen kernel, flash_attention_2; "
        "on: also sdpa/eager, measured slower on CPU; off: length-sorted padded batches)",
    )


@dataclass(frozen=True)
class SelectionConfig:
    ratio: float = setting(0.6, "fraction K of response tokens kept (paper: 0.6)", bounds="(0, 1]")
    seed: int = setting(42, "seed of the random baseline and of the data splits", bounds=">= 0")
    split_seed: int | None = field(
        default=None, metadata=_h("seed of the pool splits and cross-fit folds (null: selection.seed)")
    )
    sweep: tuple[float, ...] = setting((), "extra ratios for a token-proportion sweep", bounds="(0, 1]")
    steps: Literal["mean", "min", "cut_mean", "cut_min"] | None = field(
        default=None,
        metadata=_h(
            "rank step-level scores (score-based levels): each step's mean or min score, cut_*: the running "
            "minimum along the trace; a step ends at a token containing step_separator (null: token scores)"
        ),
    )
    step_separator: str = field(default="\n", metadata=_h("text that ends a reasoning step (with steps)"))


@dataclass(frozen=True)
class SelfEvolvingConfig:
    rounds: int = setting(4, "T: the pool is split into T+1 parts (paper: 4 -> 5 x 10k)", bounds=">= 1")
    base: Literal["fixed", "previous"] = field(
        default="fixed", metadata=_h("score against the original base (paper text) or the previous round")
    )


@dataclass(frozen=True)
class WarmupConfig:
    epochs: int | None = setting(None, "epochs of the warm-up reference (null: train.epochs)", bounds=">= 1")
    data: str | None = field(
        default=None,
        metadata=_h(
            "warm up on this SFT file (a clean curated set) instead of split 0; synthetic:clean = "
            "the generated pool's clean.jsonl"
        ),
    )
    cross_fit: int = setting(
        0,
        "K >= 2: cut the pool into K folds; fold k is scored by a reference warmed up on the other folds only "
        "(fixed_model, rho); 0: off",
        bounds=">= 0",
    )


@dataclass(frozen=True)
class BudgetConfig:
    match_updates: bool = field(
        default=False,
        metadata=_h(
            "train every method that trains one adapter from the base (all but base, warmup and "
            "self_evolving) for as many optimizer updates as the self-evolving adapter received (warm-up + rounds)"
        ),
    )


@dataclass(frozen=True)
class EvalConfig:
    suite: Literal["none", "quick", "paper"] = field(
        default="quick", metadata=_h("evaluation after training")
    )
    tasks: tuple[str, ...] = field(default=(), metadata=_h("restrict the suite to these tasks"))
    limit: int | None = setting(None, "samples per task (null: all)", bounds=">= 1")
    data_dir: str | None = field(default=None, metadata=_h("local benchmark copies (see docs/evaluation.md)"))
    dtype: Literal["fp32", "bf16", "fp16", "auto"] = field(
        default="fp32", metadata=_h("dtype of the evaluated model")
    )


PeersConfig = dataclasses.make_dataclass(
    "PeersConfig",
    [(m.name, m.settings, field(default_factory=m.settings)) for m in specs() if m.settings is not None],
    frozen=True,
)
PeersConfig.__module__ = __name__
PeersConfig.__doc__ = "Settings of each method, one section per method (tokenclean.methods registry)."


@dataclass(frozen=True)
class RunConfig:
    name: str = field(default="run", metadata=_h("run name"))
    run_dir: str = field(default="runs/run", metadata=_h("directory holding every stage's outputs"))
    methods: tuple[str, ...] = field(
        default=("fixed_model",), metadata=_h(f"methods to run: {', '.join(METHODS)}")
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    self_evolving: SelfEvolvingConfig = field(default_factory=SelfEvolvingConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)  # type: ignore[valid-type]
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    seeds: tuple[int, ...] = field(
        default=(),
        metadata=_h(
            "train every method once per seed (train.seed; selection.seed of random); the pool and "
            "its splits stay fixed; tables show means with 95% intervals"
        ),
    )
    report: bool = field(default=True, metadata=_h("build the HTML/Markdown report at the end"))

    def validate(self, prefix: str = "") -> None:
        if not self.run_dir.strip():
            raise ConfigError(
                "run_dir: empty; give a directory (an empty one would mean the current directory)"
            )
        if self.run_dir.startswith("~"):
            raise ConfigError(f"run_dir: '{self.run_dir}' names no home directory tokenclean can expand")
        if not self.data.path and self.data.synthetic is None:
            raise ConfigError(
                "data.path: required (a file, a directory, hub:NAME[:SPLIT] or builtin:sample), or "
                "data.synthetic for a generated pool; the config gives neither"
            )
        if not self.model.base:
            raise ConfigError(
                "model.base: required (a Hub id, a local directory, a .gguf file or the alias smollm2); "
                "the config gives none"
            )
        self._validate_heldout()
        for i, m in enumerate(self.methods):
            get_method(m, f"methods[{i}]")
        if self.warmup.cross_fit == 1:
            raise ConfigError(f"warmup.cross_fit: must be 0 (off) or >= 2, got {self.warmup.cross_fit}")
        if self.warmup.cross_fit and (self.warmup.data or self.model.reference):
            raise ConfigError("warmup.cross_fit: cannot be combined with warmup.data or model.reference")
        if self.budget.match_updates and not any(get_method(m).rounds for m in self.methods):
            with_rounds = [m.name for m in specs() if m.rounds]
            raise ConfigError(
                f"budget.match_updates: needs a method that sets the budget in methods ({with_rounds})"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: must be distinct, got {list(self.seeds)}")
        if self.warmup.data == "synthetic:clean" and (
            self.data.synthetic is None or self.data.synthetic.clean_repeats < 1
        ):
            raise ConfigError("warmup.data: synthetic:clean needs data.synthetic.clean_repeats >= 1")

    def _validate_heldout(self) -> None:
        """No silent default: the bundled sample is never the held-out set of the user's own data (that the
        quick suite has a held-out set is checked when the run starts: pipelines/inputs.py)."""
        d = self.data
        cut = f"(cut one: tokenclean split --data {d.path or 'FILE'} --heldout 0.1 --out splits)"
        if d.heldout == "builtin:sample" and d.path != "builtin:sample" and d.synthetic is None:
            raise ConfigError(
                f"data.heldout: builtin:sample is the bundled sample, but data.path is '{d.path}'; a loss on it "
                f"says nothing about your data. Give data.heldout=YOUR_HELDOUT.jsonl {cut}, or "
                "data.heldout=null eval.suite=none to skip the evaluation"
            )


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None), apply ``key=value`` overrides."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    data = _expand_home(apply_overrides(data, list(overrides)))
    return from_dict(RunConfig, data)


def _expand_home(node: Any) -> Any:
    """Every string that starts with ``~`` expanded once, here at the config edge (paths of the config
    and its overrides); an unknown ``~user`` stays and is refused where the path is used."""
    from tokenclean.outputs import expand_user

    if isinstance(node, dict):
        return {k: _expand_home(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_home(v) for v in node]
    return expand_user(node)
