"""The one label builder: hand-checked masks in every template, a property test over random
conversations, and the equivalence of segment tokenisation with whole-string tokenisation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenclean import IGNORE_INDEX
from tokenclean.data.formats import Message
from tokenclean.data.labels import encode_conversation, labels_from_spans
from tokenclean.data.templates import render
from tokenclean.errors import DataError

M = Message


def trained_runs(tok, enc) -> list[str]:
    """Decoded text of each maximal run of trained tokens."""
    runs, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


SINGLE = [M("user", "what is the capital of france?"), M("assistant", "paris is the capital.")]
MULTI = [
    M("system", "Be nice"),
    M("user", "hello"),
    M("assistant", "hello world!"),
    M("user", "and twelve?"),
    M("assistant", " seven hundred"),
]


def test_tulu_text_is_exactly_the_paper_format(tiny_tok) -> None:
    r = render(MULTI, tiny_tok, "tulu")
    assert r.text == (
        "<|system|>\nBe nice\n<|user|>\nhello\n<|assistant|>\nhello world!<|im_end|>\n"
        "<|user|>\nand twelve?\n<|assistant|>\n seven hundred<|im_end|>\n"
    )
    assert [r.text[a:b] for a, b in r.trained] == ["hello world!<|im_end|>", " seven hundred<|im_end|>"]


@pytest.mark.parametrize("tok_name", ["tiny_tok", "tiny_tok_sp"])
@pytest.mark.parametrize("template", ["tulu", "plain", "chat"])
def test_trained_tokens_are_assistant_turns_plus_eos(request, tok_name: str, template: str) -> None:
    tok = request.getfixturevalue(tok_name)
    closer = tok.eos_token if template != "chat" else "<|im_end|>"
    for msgs in (SINGLE, MULTI):
        enc = encode_conversation(msgs, tok, template)
        runs = trained_runs(tok, enc)
        want = [m.content + closer for m in msgs if m.role == "assistant"]
        if tok_name == "tiny_tok":  # byte-level decoding is exact
            assert runs == want
        else:  # Metaspace decoding drops the leading space of a decoded run
            assert [x.strip() for x in runs] == [w.strip() for w in want]
        assert enc.labels[0] == IGNORE_INDEX


def test_hand_checked_mask_metaspace_tulu(tiny_tok_sp) -> None:
    """Token-by-token mask of one sample, checked by hand against the tokenizer's pieces."""
    enc = encode_conversation(
        [M("user", "is it blue?"), M("assistant", "yes it is blue.")], tiny_tok_sp, "tulu"
    )
    toks = tiny_tok_sp.convert_ids_to_tokens(enc.input_ids)
    trained = [t for t, lab in zip(toks, enc.labels) if lab != IGNORE_INDEX]
    untrained = [t for t, lab in zip(toks, enc.labels) if lab == IGNORE_INDEX]
    assert toks[0] == "<s>"
    assert "".join(trained).replace("▁", " ") == "yes it is blue.</s>"
    # everything up to and including the header newline, then the newline after EOS, is untrained
    assert "".join(untrained).replace("▁", " ").startswith("<s> <|user|>\nis it blue?\n<|assistant|>\n")
    assert "".join(untrained).replace("▁", " ").endswith("\n")
    first_trained = next(j for j, lab in enumerate(enc.labels) if lab != IGNORE_INDEX)
    assert toks[first_trained - 1] == "\n"  # the last header token is a prompt token


def test_hand_checked_mask_chat_template_multiturn(tiny_tok) -> None:
    enc = encode_conversation(MULTI, tiny_tok, "chat")
    text = tiny_tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nBe nice<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n")
    assert trained_runs(tiny_tok, enc) == ["hello world!<|im_end|>", " seven hundred<|im_end|>"]
    # the "<|im_start|>assistant\n" header is never trained
    toks = tiny_tok.convert_ids_to_tokens(enc.input_ids)
    for j, t in enumerate(toks):
        if t == "<|im_start|>":
            assert enc.labels[j] == IGNORE_INDEX


def test_content_with_special_token_text_is_flagged(tiny_tok_sp) -> None:
    enc = encode_conversation([M("user", "what is </s> ?"), M("assistant", "a tag")], tiny_tok_sp, "tulu")
    assert enc.special_text_in_content
    assert not encode_conversation(SINGLE, tiny_tok_sp, "tulu").special_text_in_content


def test_tokenisation_equals_plain_hf_tokenisation(tiny_tok, tiny_tok_sp) -> None:
    """The ids are exactly what ``tokenizer(text)`` gives for the rendered text (BOS included where added)."""
    for tok in (tiny_tok, tiny_tok_sp):
        for tpl in ("tulu", "plain"):
            enc = encode_conversation(MULTI, tok, tpl)
            whole = tok(render(MULTI, tok, tpl).text, add_special_tokens=True)["input_ids"]
            assert enc.input_ids == whole


def test_boundary_merge_token_is_trained() -> None:
    # a token spanning prompt chars 0-4 and response chars 4-6 is trained; one ending at 4 is not
    labels = labels_from_spans([10, 11, 12], [(0, 2), (2, 4), (3, 6)], [(4, 6)])
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, 12]


def test_chat_strict_boundary_raises() -> None:
    with pytest.raises(DataError, match="straddles the start of an assistant turn"):
        labels_from_spans([1, 2], [(0, 5), (5, 8)], [(3, 8)], strict=True)


def test_chat_template_that_rewrites_history_is_rejected(tiny_tok_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tok_dir))
    # a template that writes the number of messages first: prefix renderings are not prefixes
    tok.chat_template = (
        "{{ messages|length }}" + tiny_tok_dir.joinpath("chat_template.jinja").read_text()
        if tiny_tok_dir.joinpath("chat_template.jinja").exists()
        else "{{ messages|length }}" + tok.chat_template
    )
    with pytest.raises(DataError, match="not a prefix of the full rendering"):
        encode_conversation(SINGLE, tok, "chat")


def test_truncation(tiny_tok) -> None:
    full = encode_conversation(SINGLE, tiny_tok, "tulu", max_length=None)
    short = encode_conversation(SINGLE, tiny_tok, "tulu", max_length=10)
    assert not full.truncated and short.truncated
    assert short.input_ids == full.input_ids[:10] and short.full_length == len(full.input_ids)


TEXT = st.text(
    alphabet=st.sampled_from(list("abcdefghij klmnop?!.,:\n0123456789éü")), min_size=1, max_size=40
)


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append(M("system", draw(TEXT)))
    for _ in range(draw(st.integers(1, 3))):
        msgs.append(M("user", draw(TEXT)))
        msgs.append(M("assistant", draw(TEXT.filter(lambda s: s.strip()))))
    return msgs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations(), template=st.sampled_from(["tulu", "chat"]))
def test_property_trained_tokens_decode_to_assistant_contents(tiny_tok, msgs, template) -> None:
    enc = encode_conversation(msgs, tiny_tok, template, max_length=None)
    want = [m.content + "<|im_end|>" for m in msgs if m.role == "assistant"]
    runs = trained_runs(tiny_tok, enc)
    # every assistant turn is one run; runs of adjacent turns never merge (a header lies between)
    assert runs == want
