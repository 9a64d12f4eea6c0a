"""TyDiQA-GoldP as a generation task for lm-evaluation-harness (which ships none), with SQuAD token F1.

Protocol (the paper's "TyDiQA, 1-shot, gold passage, F1"): each question comes with its gold passage; the
prompt holds one solved example of the *same language* (its own ``shot_*`` fields when the record has them,
else the first other question of that language in the file), then the passage and question; the model
answers greedily up to a newline; the score is the SQuAD token F1 between the answer and the closest gold
answer, averaged over questions.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

INSTRUCTION = "Answer the question with a short span from the passage.\n\n"
_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop ASCII punctuation and English articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after :func:`normalize_answer` (bag of tokens)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def max_over_golds(metric: Any, prediction: str, golds: list[str]) -> float:
    """The metric against the closest gold answer (SQuAD convention for several references)."""
    return max((metric(prediction, g) for g in golds), default=0.0)


def gold_answers(answers: Any) -> list[str]:
    """Gold texts from the Hub layout ``{"text": [...]}``, a list of strings or SQuAD ``[{"text": ...}]``."""
    if isinstance(answers, dict):
        answers = answers.get("text", [])
    if isinstance(answers, str):
        return [answers]
    return [a["text"] if isinstance(a, dict) else str(a) for a in answers]


def language_of(doc: dict[str, Any]) -> str:
    """The ``language`` field, else the prefix of the TyDiQA id (``"finnish-123-0"`` -> ``"finnish"``)."""
    return str(doc.get("language") or str(doc.get("id", "")).split("-", 1)[0] or "unknown")


def _block(context: str, question: str, answer: str | None) -> str:
    tail = f" {answer}" if answer is not None else ""
    return f"Passage: {context.strip()}\nQuestion: {question.strip()}\nAnswer:{tail}"


def build_prompt(doc: dict[str, Any], shot: dict[str, Any] | None) -> str:
    """Instruction, the demonstration (when there is one), then the question to answer."""
    parts = [INSTRUCTION.rstrip("\n")]
    if shot is not None:
        parts.append(_block(shot["context"], shot["question"], gold_answers(shot["answers"])[0]))
    parts.append(_block(doc["context"], doc["question"], None))
    return "\n\n".join(parts)


def pick_shots(docs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Per doc, its demonstration: its own ``shot_context/shot_question/shot_answer`` fields when present,
    else the first other doc of the same language (None when the language has a single doc)."""
    first: dict[str, list[int]] = {}
    for i, d in enumerate(docs):
        first.setdefault(language_of(d), [])
        if len(first[language_of(d)]) < 2:
            first[language_of(d)].append(i)
    shots: list[dict[str, Any] | None] = []
    for i, d in enumerate(docs):
        if d.get("shot_context"):
            shots.append(
                {"context": d["shot_context"], "question": d["shot_question"], "answers": [d["shot_answer"]]}
            )
            continue
        cands = [j for j in first[language_of(d)] if j != i]
        shots.append(docs[cands[0]] if cands else None)
    return shots


def process_docs(dataset: Any) -> Any:
    """Add ``prompt``, ``golds`` and ``language`` to every record (harness ``process_docs`` hook)."""
    docs = [dict(d) for d in dataset]
    shots = pick_shots(docs)
    prompts = [build_prompt(d, s) for d, s in zip(docs, shots)]
    golds = [gold_answers(d["answers"]) for d in docs]
    langs = [language_of(d) for d in docs]
    for name, column in (("prompt", prompts), ("golds", golds), ("language", langs)):
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
        dataset = dataset.add_column(name, column)
    return dataset


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Per-question F1 and exact match of the generated answer (harness ``process_results`` hook)."""
    pred = first_line(results[0])
    golds = list(doc["golds"])
    return {
        "f1": max_over_golds(token_f1, pred, golds),
        "exact_match": max_over_golds(exact_match, pred, golds),
    }
