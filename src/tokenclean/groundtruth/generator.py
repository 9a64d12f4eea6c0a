"""Generate a synthetic SFT pool with per-character truth.

Facts are invented (``The capital of Velmora is Qaristan.``), so no pretrained model knows them: their
answer tokens are *informative* (a reference fine-tuned on part of the pool learns them, the base does not).
Answers are wrapped in chat boilerplate the instruct model already predicts (*uninformative*). A fraction of
samples carries *noise*: a wrong answer (contradicting the facts elsewhere in the pool: harmful) or a
gibberish span (unlearnable). Each pool fact appears several times with different phrasings; the held-out
test set asks every fact once more, cleanly.

Each written row is a ``messages`` record plus ``truth``: ``[[start, end, label], ...]`` character spans of
the assistant content, ``decisive``: for each noise span, the character where it departs from the truth (a
wrong answer departs at its first character that differs from the true answer: the tokens after it are
predictable given that one; gibberish departs at its first character), and ``answer``: the correct answer
string (test rows). The same span format is what ``data.truth`` reads for user-annotated data
(:mod:`tokenclean.groundtruth.user_truth`).

Besides ``pool.jsonl`` the generator writes ``test.jsonl`` (every fact asked ``heldout_phrasings`` times,
cleanly) and, when ``clean_repeats > 0``, ``clean.jsonl``: a noise-free curated set about the same facts, for
a warm-up reference that knows better than the pool (``warmup.data: synthetic:clean``). Both come from their
own random streams, so asking for more of them leaves ``pool.jsonl`` unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenclean.utils import write_json_atomic

SYLLABLES = [
    "ka",
    "vel",
    "mor",
    "qua",
    "ris",
    "tan",
    "zen",
    "lo",
    "bri",
    "dun",
    "sha",
    "tor",
    "mi",
    "xe",
    "nal",
    "pho",
    "gri",
    "ul",
    "dra",
    "ven",
    "oth",
    "cy",
    "bel",
    "nor",
    "sk",
    "ith",
    "ar",
    "wyn",
]

RELATIONS = {
    "capital": (
        ["What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital city of {s}."],
        ["The capital of {s} is {o}.", "{s}'s capital is {o}.", "The capital city of {s} is {o}."],
    ),
    "inventor": (
        ["Who invented the {s}?", "Which person invented the {s}?", "Tell me who created the {s}."],
        ["The {s} was invented by {o}.", "{o} invented the {s}.", "The {s} was created by {o}."],
    ),
    "river": (
        [
            "Which river flows through {s}?",
            "What river runs through {s}?",
            "Name the river that crosses {s}.",
        ],
        [
            "The river that flows through {s} is the {o}.",
            "The {o} runs through {s}.",
            "{s} is crossed by the {o}.",
        ],
    ),
}
OPENERS = ["", "Sure! ", "Of course. ", "Great question! ", "Certainly. "]
CLOSERS = [
    "",
    " I hope this helps!",
    " Let me know if you have any other questions.",
    " Feel free to ask if you need anything else.",
]


@dataclass(frozen=True)
class PoolConfig:
    """How the synthetic pool is made."""

    n_facts: int = field(default=40, metadata={"help": "number of invented facts"})
    repeats: int = field(default=6, metadata={"help": "pool samples per fact (different phrasings)"})
    noise_rate: float = field(default=0.3, metadata={"help": "fraction of pool samples carrying noise"})
    wrong_fact_share: float = field(
        default=0.5, metadata={"help": "share of noisy samples with a wrong answer"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    heldout_phrasings: int = field(
        default=1, metadata={"help": "held-out questions per fact (each a different question phrasing)"}
    )
    clean_repeats: int = field(
        default=0, metadata={"help": "samples per fact in clean.jsonl, a noise-free curated set (0: none)"}
    )

    def validate(self, prefix: str = "") -> None:
        from tokenclean.errors import ConfigError

        p = f"{prefix}." if prefix else ""
        if self.n_facts < 2:
            raise ConfigError(f"{p}n_facts: must be >= 2, got {self.n_facts}")
        if self.repeats < 1:
            raise ConfigError(f"{p}repeats: must be >= 1, got {self.repeats}")
        if self.heldout_phrasings < 1:
            raise ConfigError(f"{p}heldout_phrasings: must be >= 1, got {self.heldout_phrasings}")
        if self.clean_repeats < 0:
            raise ConfigError(f"{p}clean_repeats: must be >= 0, got {self.clean_repeats}")
        for name in ("noise_rate", "wrong_fact_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{p}{name}: must be in [0, 1], got {v}")


def _name(rng: np.random.Generator, n_syl: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n_syl)).capitalize()


def _unique_names(rng: np.random.Generator, n: int, n_syl: tuple[int, int], taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        s = _name(rng, int(rng.integers(n_syl[0], n_syl[1] + 1)))
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


def make_facts(cfg: PoolConfig) -> list[dict[str, str]]:
    rng = np.random.default_rng(cfg.seed)
    taken: set[str] = set()
    subjects = _unique_names(rng, cfg.n_facts, (2, 3), taken)
    objects = _unique_names(rng, cfg.n_facts, (2, 3), taken)
    rels = list(RELATIONS)
    return [
        {"subject": s, "object": o, "relation": rels[i % len(rels)]}
        for i, (s, o) in enumerate(zip(subjects, objects))
    ]


def _gibberish(rng: np.random.Generator) -> str:
    letters = "bcdfghjklmnpqrstvwxz0123456789"
    words = ["".join(rng.choice(list(letters)) for _ in range(int(rng.integers(3, 7)))) for _ in range(3)]
    return " " + " ".join(words)


def departure(wrong: str, true: str) -> int:
    """Index of the first character of ``wrong`` that differs from ``true`` (the decisive character)."""
    for i, (a, b) in enumerate(zip(wrong, true)):
        if a != b:
            return i
    return min(len(wrong), len(true), max(len(wrong) - 1, 0))


def _sample(
    fact: dict[str, str],
    rng: np.random.Generator,
    noise: str | None,
    wrong_object: str,
    question: int | None = None,
) -> dict[str, Any]:
    """One sample; ``question`` picks the question phrasing (None: drawn at random)."""
    questions, answers = RELATIONS[fact["relation"]]
    q_template = questions[question % len(questions)] if question is not None else rng.choice(questions)
    q = str(q_template).format(s=fact["subject"])
    template = str(rng.choice(answers))
    opener, closer = str(rng.choice(OPENERS)), str(rng.choice(CLOSERS))
    obj = wrong_object if noise == "wrong_fact" else fact["object"]
    before, after = template.split("{o}")
    before = opener + before.format(s=fact["subject"])
    content = before + obj
    truth: list[list[Any]] = [
        [0, len(before), "uninformative"],
        [len(before), len(content), "noise" if noise else "informative"],
    ]
    rest = after.format(s=fact["subject"])
    decisive = [len(before) + departure(obj, fact["object"])] if noise == "wrong_fact" else []
    if noise == "gibberish":
        g = _gibberish(rng)
        truth[1][2] = "informative"
        truth.append([len(content), len(content) + len(g), "noise"])
        decisive = [len(content) + 1]  # the first gibberish character (after its leading space)
        content += g
    truth.append([len(content), len(content) + len(rest) + len(closer), "uninformative"])
    content += rest + closer
    return {
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": content}],
        "truth": truth,
        "decisive": decisive,
    }


def generate_pool(cfg: PoolConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write ``pool.jsonl``, ``test.jsonl``, ``facts.json`` (and ``clean.jsonl``) to ``out_dir``; return
    counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed + 1)
    facts = make_facts(cfg)
    rows = []
    for i, fact in enumerate(facts):
        for r in range(cfg.repeats):
            noise = None
            if rng.random() < cfg.noise_rate:
                noise = "wrong_fact" if rng.random() < cfg.wrong_fact_share else "gibberish"
            others = [f["object"] for f in facts if f["relation"] == fact["relation"] and f is not fact]
            others = others or [f["object"] for f in facts if f is not fact]
            row = _sample(fact, rng, noise, str(rng.choice(others)))
            row.update(id=f"f{i:03d}-r{r}", fact=i, noise=noise or "none")
            rows.append(row)
    order = rng.permutation(len(rows))
    pool = [rows[k] for k in order]
    test = _heldout(facts, cfg, rng)
    files = [("pool.jsonl", pool), ("test.jsonl", test)]
    if cfg.clean_repeats:
        files.append(("clean.jsonl", _clean(facts, cfg)))
    for name, data in files:
        tmp = out / f".{name}.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
        tmp.replace(out / name)
    write_json_atomic(out / "facts.json", {"config": cfg.__dict__, "facts": facts})
    counts = {"pool": len(pool), "test": len(test), "noisy": sum(r["noise"] != "none" for r in pool)}
    return counts | ({"clean": len(files[2][1])} if cfg.clean_repeats else {})


def _heldout(facts: list[dict[str, str]], cfg: PoolConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Every fact asked ``heldout_phrasings`` times, cleanly. One phrasing: the question is drawn at random
    (the original test set); several: phrasing p uses question template p (cycling), and draws of its own
    stream so that the test set with one phrasing is unchanged."""
    test = []
    many = cfg.heldout_phrasings > 1
    rng_many = np.random.default_rng(cfg.seed + 3)
    for i, fact in enumerate(facts):
        for p in range(cfg.heldout_phrasings):
            if many:
                row = _sample(fact, rng_many, None, fact["object"], question=p)
            else:
                row = _sample(fact, rng, None, fact["object"])
            rid = f"test-f{i:03d}" if p == 0 else f"test-f{i:03d}-p{p}"
            row.update(id=rid, fact=i, noise="none", answer=fact["object"])
            test.append(row)
    return test


def _clean(facts: list[dict[str, str]], cfg: PoolConfig) -> list[dict[str, Any]]:
    """A noise-free curated set: every fact ``clean_repeats`` times, from a random stream of its own."""
    rng = np.random.default_rng(cfg.seed + 2)
    rows = []
    for i, fact in enumerate(facts):
        for r in range(cfg.clean_repeats):
            row = _sample(fact, rng, None, fact["object"])
            row.update(id=f"clean-f{i:03d}-r{r}", fact=i, noise="none")
            rows.append(row)
    return [rows[k] for k in rng.permutation(len(rows))]
