"""TyDiQA task: SQuAD token F1 on hand-checked examples, and the 1-shot prompt built per language."""

from __future__ import annotations

import pytest

from tokenclean.evaluation.tasks import tydiqa as T


@pytest.mark.parametrize(
    ("pred", "gold", "f1"),
    [
        ("Paris", "Paris", 1.0),
        ("the Eiffel Tower.", "Eiffel tower", 1.0),  # articles, punctuation and case are normalised away
        ("Paris France", "Paris", 2 / 3),  # precision 1/2, recall 1 -> 2PR/(P+R) = 2/3
        ("in 1889 in Paris", "1889", 0.4),  # P = 1/4, R = 1 -> 2 * 0.25 / 1.25
        ("London", "Paris", 0.0),
        ("", "Paris", 0.0),
        ("a", "the", 1.0),  # both normalise to nothing
    ],
)
def test_token_f1_hand_examples(pred: str, gold: str, f1: float) -> None:
    assert T.token_f1(pred, gold) == pytest.approx(f1)


def test_repeated_tokens_count_once_per_match() -> None:
    # pred "paris paris" vs gold "paris": overlap 1 (multiset), P = 1/2, R = 1
    assert T.token_f1("paris paris", "paris") == pytest.approx(2 / 3)


def test_max_over_golds_and_exact_match() -> None:
    golds = ["the river Seine", "Seine"]
    assert T.max_over_golds(T.token_f1, "Seine", golds) == 1.0
    assert T.max_over_golds(T.exact_match, "river seine", golds) == 1.0
    assert T.max_over_golds(T.exact_match, "seine river x", golds) == 0.0
    assert T.max_over_golds(T.token_f1, "anything", []) == 0.0


def test_process_results_uses_first_generated_line() -> None:
    doc = {"golds": ["Helsinki"]}
    r = T.process_results(doc, [" Helsinki\nQuestion: next"])
    assert r == {"f1": 1.0, "exact_match": 1.0}
    assert T.process_results(doc, ["Espoo"]) == {"f1": 0.0, "exact_match": 0.0}


def test_gold_answers_layouts() -> None:
    assert T.gold_answers({"text": ["a", "b"], "answer_start": [0, 3]}) == ["a", "b"]
    assert T.gold_answers([{"text": "x", "answer_start": 1}]) == ["x"]
    assert T.gold_answers(["y"]) == ["y"]


def _doc(i: str, lang: str, q: str, a: str) -> dict:
    return {
        "id": f"{lang}-{i}",
        "context": f"ctx {q}",
        "question": q,
        "answers": {"text": [a], "answer_start": [0]},
    }


def test_process_docs_one_shot_same_language_never_itself() -> None:
    datasets = pytest.importorskip("datasets")
    docs = [
        _doc("1", "finnish", "fq1", "fa1"),
        _doc("2", "english", "eq1", "ea1"),
        _doc("3", "finnish", "fq2", "fa2"),
        _doc("4", "swahili", "sq1", "sa1"),
    ]
    out = T.process_docs(datasets.Dataset.from_list(docs))
    p = out["prompt"]
    assert out["language"] == ["finnish", "english", "finnish", "swahili"]
    assert out["golds"][0] == ["fa1"]
    # doc 0's shot is the other Finnish question, doc 2's is the first Finnish question
    assert "Question: fq2\nAnswer: fa2\n\nPassage: ctx fq1\nQuestion: fq1\nAnswer:" in p[0]
    assert "Question: fq1\nAnswer: fa1\n\nPassage: ctx fq2\nQuestion: fq2\nAnswer:" in p[2]
    assert p[0].startswith(T.INSTRUCTION) and p[0].endswith("Answer:")
    # a language with a single question has no demonstration (0-shot) rather than a foreign one
    assert p[3].count("Question:") == 1
    assert p[1].count("Question:") == 1


def test_process_docs_prefers_given_shot_fields() -> None:
    datasets = pytest.importorskip("datasets")
    d = _doc("1", "korean", "kq", "ka") | {"shot_context": "SC", "shot_question": "SQ", "shot_answer": "SA"}
    out = T.process_docs(datasets.Dataset.from_list([d, _doc("2", "korean", "kq2", "ka2")]))
    assert "Passage: SC\nQuestion: SQ\nAnswer: SA\n\n" in out["prompt"][0]
