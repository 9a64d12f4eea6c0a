"""The evaluation stage end to end on a tiny Llama, offline: local benchmark files through
lm-evaluation-harness for the base model and for base + LoRA adapter (applied in memory), and the quick suite's
held-out loss against a naive computation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tokenclean.evaluation import evaluate

SUBJECTS = ("anatomy", "virology")


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.requires("lm_eval")]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("evaldata")
    words = ["red", "blue", "green", "seven"]
    _jsonl(
        d / "mmlu.jsonl",
        [
            {
                "question": f"what is the {words[i % 4]} {s} number {i}?",
                "subject": s,
                "choices": words,
                "answer": i % 4,
            }
            for s in SUBJECTS
            for i in range(6)
        ],
    )
    _jsonl(
        d / "truthfulqa_mc2.jsonl",
        [
            {
                "question": f"is the {w} city true?",
                "mc2_targets": {"choices": ["yes", "no", "true"], "labels": [1, 0, 1]},
            }
            for w in words
        ],
    )
    _jsonl(
        d / "tydiqa.jsonl",
        [
            {
                "id": f"english-{i}",
                "context": f"the capital city is {w}.",
                "question": "what is the capital?",
                "answers": {"text": [w], "answer_start": [20]},
            }
            for i, w in enumerate(words)
        ],
    )
    _jsonl(
        d / "logiqa.jsonl",
        [
            {
                "context": f"all {w} cats are cats.",
                "question": "which is true?",
                "options": words,
                "label": "abcd"[i],
            }
            for i, w in enumerate(words)
        ],
    )
    _jsonl(
        d / "hellaswag.jsonl",
        [
            {
                "activity_label": "Cooking",
                "ctx_a": f"a man cooks {w} rice.",
                "ctx_b": "then he",
                "ctx": "",
                "endings": words,
                "label": str(i),
            }
            for i, w in enumerate(words)
        ],
    )
    _jsonl(
        d / "arc_challenge.jsonl",
        [
            {
                "id": str(i),
                "question": f"which colour is {w}?",
                "choices": {"text": words, "label": list("ABCD")},
                "answerKey": "ABCD"[i],
            }
            for i, w in enumerate(words)
        ],
    )
    _jsonl(
        d / "boolq.jsonl",
        [
            {"passage": f"the sky is {w}.", "question": f"is the sky {w}", "idx": i, "label": i % 2}
            for i, w in enumerate(words)
        ],
    )
    return d


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A LoRA adapter on the tiny Llama with non-zero B matrices (so it changes the model)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tokenclean.models.loader import load_model

    model = get_peft_model(
        load_model(str(tiny_model_dir)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    d = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(d))
    return d


TASKS = ["mmlu", "truthfulqa_mc2", "tydiqa"]


def _check_shape(r: dict[str, Any]) -> None:
    t = r["tasks"]
    assert set(t) == set(TASKS)
    assert (t["mmlu"]["n"], t["mmlu"]["shots"], t["mmlu"]["metric"]) == (12, 5, "acc")
    assert (t["truthfulqa_mc2"]["n"], t["truthfulqa_mc2"]["metric"]) == (4, "mc2")
    assert (t["tydiqa"]["n"], t["tydiqa"]["shots"], t["tydiqa"]["metric"]) == (4, 1, "f1")
    for e in t.values():
        assert 0.0 <= e["value"] <= 1.0 and e["source"].startswith("local:")
    assert r["average"] == pytest.approx(sum(e["value"] for e in t.values()) / 3)
    assert r["harness_config"]["n-shot"]["tc_mmlu_anatomy"] == 5


def test_local_tasks_base_adapter_and_merged(
    tiny_model_dir: Path, adapter_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    from tokenclean.models.loader import load_model, load_tokenizer

    base = evaluate(
        str(tiny_model_dir),
        suite="paper",
        tasks=TASKS,
        data_dir=data_dir,
        out=tmp_path / "base",
        batch_size=4,
    )
    ada = evaluate(
        str(tiny_model_dir),
        adapter=str(adapter_dir),
        suite="paper",
        tasks=TASKS,
        data_dir=data_dir,
        out=tmp_path / "ada.json",
        batch_size=4,
    )
    for r in (base, ada):
        _check_shape(r)
    assert json.loads((tmp_path / "base" / "eval_paper.json").read_text())["tasks"] == base["tasks"]
    assert json.loads((tmp_path / "ada.json").read_text())["adapter"] == str(adapter_dir)
    # MC2 is a continuous probability mass: the adapter must move it ...
    assert abs(ada["tasks"]["truthfulqa_mc2"]["value"] - base["tasks"]["truthfulqa_mc2"]["value"]) > 1e-4
    # ... and the in-memory adapter must score exactly like the same weights merged.
    merged = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(adapter_dir)).merge_and_unload()
    mer = evaluate(
        merged,
        tokenizer=load_tokenizer(str(tiny_model_dir)),
        suite="paper",
        tasks=TASKS,
        data_dir=data_dir,
        batch_size=4,
    )
    for name in TASKS:
        assert mer["tasks"][name]["value"] == pytest.approx(ada["tasks"][name]["value"], abs=1e-5), name
    # an adapter directory alone names its base (adapter_config.json)
    alone = evaluate(
        str(adapter_dir), suite="paper", tasks=["truthfulqa_mc2"], data_dir=data_dir, batch_size=4
    )
    assert alone["tasks"]["truthfulqa_mc2"]["value"] == pytest.approx(
        ada["tasks"]["truthfulqa_mc2"]["value"], abs=1e-6
    )


def test_whole_paper_suite_from_local_files(tiny_model_dir: Path, data_dir: Path) -> None:
    """Every benchmark's local file (in its Hub dataset's schema) runs through the harness's own task YAML."""
    r = evaluate(str(tiny_model_dir), suite="paper", data_dir=data_dir, batch_size=8)
    assert list(r["tasks"]) == [
        "truthfulqa_mc2",
        "tydiqa",
        "logiqa",
        "mmlu",
        "hellaswag",
        "arc_challenge",
        "boolq",
    ]
    assert {k: v["n"] for k, v in r["tasks"].items()} == {
        "truthfulqa_mc2": 4,
        "tydiqa": 4,
        "logiqa": 4,
        "mmlu": 12,
        "hellaswag": 4,
        "arc_challenge": 4,
        "boolq": 4,
    }
    assert "acc_norm" in r["tasks"]["hellaswag"]["details"]  # kept for reference; the reported metric is acc
    assert r["tasks"]["hellaswag"]["value"] == r["tasks"]["hellaswag"]["details"]["acc"]
    assert r["average"] == pytest.approx(sum(v["value"] for v in r["tasks"].values()) / 7)


def test_limit_applies_per_subject(tiny_model_dir: Path, data_dir: Path) -> None:
    r = evaluate(str(tiny_model_dir), suite="paper", tasks=["mmlu"], data_dir=data_dir, limit=2, batch_size=4)
    assert r["tasks"]["mmlu"]["n"] == 4 and r["limit"] == 2


def test_missing_data_fails_before_loading_the_model(tmp_path: Path) -> None:
    from tokenclean.evaluation import EvalDataError

    with pytest.raises(EvalDataError, match=r"boolq\.jsonl"):  # the model path does not even exist
        evaluate(str(tmp_path / "no-model"), suite="paper", tasks=["boolq"], data_dir=tmp_path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_tok: Any, tiny_tok_dir: Path) -> Path:
    from tokenclean.data.prepare import prepare

    d = tmp_path_factory.mktemp("heldout") / "prep"
    prepare(
        "builtin:sample",
        tiny_tok,
        d,
        template="tulu",
        max_length=128,
        tokenizer_name=str(tiny_tok_dir),
        progress=False,
    )
    return d


def _naive(model: Any, prepared: Path) -> dict[str, float]:
    """One sample at a time, full logits: loss(j) = -log_softmax(logits[j-1])[x_j] at trained positions."""
    import torch
    from datasets import load_from_disk

    losses, hits, exact = [], [], []
    for row in load_from_disk(str(prepared)):
        ids = torch.tensor(row["input_ids"])[None]
        labels = torch.tensor(row["labels"])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
        pos = [j for j in range(1, len(labels)) if labels[j] != -100]
        if not pos:
            continue
        lp = torch.stack([logp[j - 1, ids[0, j]] for j in pos])
        h = [int(logp[j - 1].argmax()) == int(ids[0, j]) for j in pos]
        losses += (-lp).tolist()
        hits += h
        exact.append(all(h))
    return {
        "loss": sum(losses) / len(losses),
        "token_accuracy": sum(hits) / len(hits),
        "exact_match": sum(exact) / len(exact),
        "n_tokens": len(losses),
    }


def test_heldout_loss_equals_naive_and_ignores_batching(
    tiny_model_dir: Path, tiny_tok: Any, prepared: Path
) -> None:
    from tokenclean.evaluation.quick import heldout_metrics
    from tokenclean.models.loader import load_model

    model = load_model(str(tiny_model_dir))
    want = _naive(model, prepared)
    for batch_tokens in (1, 64, 100_000):  # one sample per forward ... everything in one padded batch
        got = heldout_metrics(model, prepared, tiny_tok, batch_tokens=batch_tokens, progress=False)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(want["loss"]), rel=1e-5)
        assert got["token_accuracy"] == pytest.approx(want["token_accuracy"])
        assert got["exact_match"] == pytest.approx(want["exact_match"])
        assert got["n_tokens"] == want["n_tokens"]


def test_quick_suite_heldout_plus_custom_yaml(
    tiny_model_dir: Path, prepared: Path, data_dir: Path, tmp_path: Path
) -> None:
    yaml_path = tmp_path / "mytask.yaml"
    yaml_path.write_text(
        "task: my_yesno\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data_dir / 'truthfulqa_mc2.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: ['yes', 'no']\ndoc_to_target: 0\nmetric_list:\n  - metric: acc\n"
    )
    r = evaluate(str(tiny_model_dir), suite="quick", tasks=[str(yaml_path)], heldout=prepared, out=tmp_path)
    t = r["tasks"]
    assert set(t) == {"heldout_loss", "heldout_perplexity", "heldout_exact_match", "my_yesno"}
    assert t["heldout_loss"]["metric"] == "loss" and not t["heldout_loss"]["higher_is_better"]
    assert t["heldout_perplexity"]["value"] == pytest.approx(math.exp(t["heldout_loss"]["value"]))
    assert t["my_yesno"]["n"] == 4 and t["my_yesno"]["source"] == f"yaml:{yaml_path}"
    assert r["average"] == t["my_yesno"]["value"] and r["average_over"] == ["my_yesno"]
    assert (tmp_path / "eval_quick.json").exists()


def test_heldout_rejects_other_tokenizer(tiny_model_dir: Path, tiny_tok_sp: Any, prepared: Path) -> None:
    from tokenclean.errors import ModelError
    from tokenclean.evaluation.quick import heldout_metrics
    from tokenclean.models.loader import load_model

    with pytest.raises(ModelError, match="another tokenizer"):
        heldout_metrics(load_model(str(tiny_model_dir)), prepared, tiny_tok_sp, progress=False)
