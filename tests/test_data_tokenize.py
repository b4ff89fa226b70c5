"""Tokenisation: rendering modes, prompt boundary, left truncation and over-long pairs."""

import copy

import pytest

from lightning_robust.data.example import BadRow, PreferenceExample
from lightning_robust.data.tokenize import EncodedPair, encode_examples, render_mode
from lightning_robust.models import load_tokenizer

HH_PROMPT = "\n\nHuman: hello there\n\nAssistant: yes good\n\nHuman: tell me\n\nAssistant:"
LONG_PROMPT = " ".join(["water", "food", "bread", "rice", "soup", "tea"] * 5)  # 30 one-token words


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer("minilm")


@pytest.fixture
def tiny_chat():
    tok = copy.deepcopy(load_tokenizer("tiny"))
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}assistant{% endif %}"
    )
    return tok


@pytest.fixture
def tiny_bos():
    """A Llama-like tokenizer: BOS before single texts, no separator (concatenation mode)."""
    from tokenizers import processors

    tok = copy.deepcopy(load_tokenizer("tiny"))
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return tok


def split(tok, ids, prompt_len):
    return tok.decode(ids[:prompt_len]), tok.decode(ids[prompt_len:])


def one(examples, tok, max_length=512, **kw):
    (out,) = encode_examples(examples, tok, max_length, **kw)
    return out


def test_render_modes(tiny, minilm, tiny_chat):
    assert render_mode(tiny) == "concat"
    assert render_mode(minilm) == "pair"
    assert render_mode(tiny_chat) == "chat"
    assert render_mode(tiny_chat, chat_template=False) == "concat"
    with pytest.raises(ValueError, match="no chat template"):
        render_mode(tiny, chat_template=True)


def test_tiny_concatenation_boundary(tiny):
    ex = PreferenceExample("alpha travel please help", "good answer here", "bad")
    out = one([ex], tiny)
    assert isinstance(out, EncodedPair)
    assert out.chosen_prompt_len == out.rejected_prompt_len == 4  # one token per word
    assert out.chosen_input_ids[:4] == out.rejected_input_ids[:4]
    assert split(tiny, out.chosen_input_ids, out.chosen_prompt_len) == (
        " alpha travel please help",
        " good answer here",
    )
    assert split(tiny, out.rejected_input_ids, out.rejected_prompt_len)[1] == " bad"


def test_minilm_pair_encoding(minilm):
    ex = PreferenceExample("what is the capital of france?", "paris is the capital.", "london")
    out = one([ex], minilm)
    ids, plen = out.chosen_input_ids, out.chosen_prompt_len
    assert (
        ids[0] == minilm.cls_token_id
        and ids[plen - 1] == minilm.sep_token_id
        and ids[-1] == minilm.sep_token_id
    )
    assert minilm.decode(ids[1 : plen - 1]) == "what is the capital of france?"
    assert minilm.decode(ids[plen:-1]) == "paris is the capital."
    assert ids == minilm(ex.prompt, ex.chosen)["input_ids"]


def test_minilm_left_truncation_matches_hf_only_first(minilm):
    ex = PreferenceExample(LONG_PROMPT, "paris is the capital of france", "london")
    out = one([ex], minilm, max_length=16)
    ref = copy.deepcopy(minilm)
    ref.truncation_side = "left"
    expected = ref(ex.prompt, ex.chosen, truncation="only_first", max_length=16)
    assert out.chosen_input_ids == expected["input_ids"]
    assert out.chosen_prompt_len == expected.sequence_ids().index(1)
    assert len(out.chosen_input_ids) == 16
    assert minilm.decode(out.chosen_input_ids[out.chosen_prompt_len : -1]) == ex.chosen


@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_left_truncation_keeps_response_whole(name):
    tok = load_tokenizer(name)
    response = "the answer is to use a clean map"
    out = one([PreferenceExample(LONG_PROMPT, response, "no")], tok, max_length=14)
    ids, plen = out.chosen_input_ids, out.chosen_prompt_len
    assert len(ids) == 14
    prompt_text, response_text = split(tok, ids, plen)
    assert response_text.replace("[SEP]", "").strip() == response
    kept = prompt_text.replace("[CLS]", "").replace("[SEP]", "").strip()
    assert kept and LONG_PROMPT.endswith(kept)  # the prompt was cut from the left
    assert len(out.rejected_input_ids) == 14  # short answer: more prompt kept, same max


def test_left_truncation_keeps_leading_bos(tiny_bos):
    out = one([PreferenceExample(LONG_PROMPT, "good answer", "bad")], tiny_bos, max_length=6)
    assert out.chosen_input_ids[0] == tiny_bos.bos_token_id
    assert len(out.chosen_input_ids) == 6 and out.chosen_prompt_len == 4
    assert tiny_bos.decode(out.chosen_input_ids[1:4]) == " rice soup tea"  # last prompt words
    assert split(tiny_bos, out.chosen_input_ids, 4)[1] == " good answer"


@pytest.mark.parametrize(
    "name,max_length,fits",
    [("tiny", 3, True), ("tiny", 2, False), ("minilm", 6, True), ("minilm", 5, False)],
)
def test_over_long_counts_special_tokens(name, max_length, fits):
    tok = load_tokenizer(name)
    out = one(
        [PreferenceExample("a question here", "one two three", "four")], tok, max_length=max_length
    )
    if fits:  # the prompt is cut to nothing but the answer (and [CLS] [SEP] .. [SEP]) fits
        assert isinstance(out, EncodedPair) and len(out.chosen_input_ids) == max_length
    else:
        assert isinstance(out, BadRow) and out.reason == "too_long" and out.field == "chosen"


def test_over_long_rejected_field(tiny):
    out = one([PreferenceExample("q", "yes", "one two three four five")], tiny, max_length=4)
    assert isinstance(out, BadRow) and (out.reason, out.field) == ("too_long", "rejected")


def test_append_eos(tiny, minilm):
    out = one([PreferenceExample("q", "yes", "no")], tiny, append_eos=True)
    assert (
        out.chosen_input_ids[-1] == tiny.eos_token_id
        and out.rejected_input_ids[-1] == tiny.eos_token_id
    )
    assert isinstance(
        one([PreferenceExample("q", "one two", "no")], tiny, max_length=2, append_eos=True), BadRow
    )
    with pytest.raises(ValueError, match="no eos"):
        encode_examples([PreferenceExample("q", "yes", "no")], minilm, 32, append_eos=True)


def test_chat_template_with_hh_prompt(tiny_chat):
    out = one([PreferenceExample(HH_PROMPT, " good answer", " bad")], tiny_chat)
    prompt, response = split(tiny_chat, out.chosen_input_ids, out.chosen_prompt_len)
    assert prompt == "<s> user hello there </s> assistant yes good </s> user tell me </s> assistant"
    assert response == " good answer </s>"
    assert out.chosen_input_ids[0] == tiny_chat.bos_token_id


def test_chat_template_with_messages_and_plain_prompt(tiny_chat):
    msgs = [{"role": "user", "content": "what time"}]
    out = one([PreferenceExample(msgs, "one hour", "two")], tiny_chat)
    assert (
        split(tiny_chat, out.chosen_input_ids, out.chosen_prompt_len)[0]
        == "<s> user what time </s> assistant"
    )
    out2 = one([PreferenceExample("what time", "one hour", "two")], tiny_chat)
    assert out2 == out  # a plain text prompt becomes one user turn
    # chat_template=False renders messages as hh text instead
    out3 = one([PreferenceExample(msgs, "one hour", "two")], tiny_chat, chat_template=False)
    assert (
        split(tiny_chat, out3.chosen_input_ids, out3.chosen_prompt_len)[0]
        == " \n\nHuman: what time\n\nAssistant:"
    )


def test_chat_left_truncation_keeps_bos(tiny_chat):
    out = one([PreferenceExample(LONG_PROMPT, "good", "bad")], tiny_chat, max_length=8)
    assert len(out.chosen_input_ids) == 8 and out.chosen_input_ids[0] == tiny_chat.bos_token_id
    assert split(tiny_chat, out.chosen_input_ids, out.chosen_prompt_len)[1] == " good </s>"


def test_batched_matches_one_by_one(tiny, minilm):
    examples = [
        PreferenceExample(f"question number {w}", f"answer {w} here", f"no {w}")
        for w in ("one", "two", "three")
    ]
    for tok in (tiny, minilm):
        together = encode_examples(examples, tok, 64, chunk_size=2)
        assert together == [one([e], tok, 64) for e in examples]
