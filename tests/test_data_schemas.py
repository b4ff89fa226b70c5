"""Schema adapters, auto-detection and bad-row classes (no tokenizer, no files)."""

import pytest

from lightning_robust.data.dialogue import hh_to_messages, messages_to_plain, prompt_to_messages
from lightning_robust.data.example import BadRow, PreferenceExample
from lightning_robust.data.reading import adapt_rows
from lightning_robust.data.schemas import SCHEMAS, detect_schema, get_schema


def msg(role, content):
    return {"role": role, "content": content}


def adapt(schema, row, group_column="__default__"):
    s = SCHEMAS[schema]
    return s.adapt(row, s.group_column if group_column == "__default__" else group_column)


HH_PROMPT = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant:"


# ------------------------------------------------------------------ adapters
def test_preference_strings():
    ex = adapt("preference", {"prompt": "p", "chosen": "a", "rejected": "b", "group": "g"})
    assert ex == PreferenceExample("p", "a", "b", "g")
    assert adapt("preference", {"prompt": "p", "chosen": "a", "rejected": "b"}).group is None


def test_hh_rlhf_splits_at_last_assistant_turn():
    ex = adapt("hh_rlhf", {"chosen": HH_PROMPT + " a good one", "rejected": HH_PROMPT + " no"})
    assert ex.prompt == HH_PROMPT
    assert (ex.chosen, ex.rejected, ex.group) == (" a good one", " no", None)


def test_conversational_implicit_prompt():
    prompt = [msg("user", "hi"), msg("assistant", "yo"), msg("user", "q")]
    row = {
        "chosen": prompt + [msg("assistant", "good")],
        "rejected": prompt + [msg("assistant", "bad")],
    }
    ex = adapt("conversational", row)
    assert ex.prompt == prompt and (ex.chosen, ex.rejected) == ("good", "bad")


def test_conversational_explicit_prompt():
    row = {
        "prompt": [msg("system", "be nice"), msg("user", "q")],
        "chosen": [msg("assistant", "good")],
        "rejected": [msg("assistant", "bad")],
        "group": "g1",
    }
    ex = adapt("conversational", row)
    assert ex.prompt == [msg("system", "be nice"), msg("user", "q")]
    assert (ex.chosen, ex.rejected, ex.group) == ("good", "bad", "g1")


@pytest.mark.parametrize("a_rating,b_rating,chosen", [(5, 2, "A"), (1.5, 4.0, "B")])
def test_unified_feedback_higher_rating_wins(a_rating, b_rating, chosen):
    prompt = [msg("user", "q")]
    row = {
        "conv_A": prompt + [msg("assistant", "A")],
        "conv_B": prompt + [msg("assistant", "B")],
        "conv_A_rating": a_rating,
        "conv_B_rating": b_rating,
        "source": "src",
    }
    ex = adapt("unified_feedback", row)
    assert ex.chosen == chosen and ex.rejected == ({"A", "B"} - {chosen}).pop()
    assert ex.prompt == prompt and ex.group == "src"


def test_unified_feedback_tie_is_dropped_not_an_error():
    row = {
        "conv_A": [msg("user", "q"), msg("assistant", "A")],
        "conv_B": [msg("user", "q"), msg("assistant", "B")],
        "conv_A_rating": 3,
        "conv_B_rating": 3,
        "source": "s",
    }
    out = adapt_rows([row, row], SCHEMAS["unified_feedback"], "source", "error", "f.jsonl")
    assert len(out) == 0 and out.skipped == {"tie": 2}


def test_rewardbench_group_is_subset():
    ex = adapt(
        "rewardbench", {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "llmbar-natural"}
    )
    assert ex.group == "llmbar-natural"


@pytest.mark.parametrize("labels,chosen", [([1, 0], "x"), ([0, 1], "y")])
def test_hhh_chosen_is_the_labelled_choice_not_the_first(labels, chosen):
    row = {"input": "q", "targets": {"choices": ["x", "y"], "labels": labels}, "category": "honest"}
    ex = adapt("hhh", row)
    assert ex.chosen == chosen and ex.rejected == ({"x", "y"} - {chosen}).pop()
    assert ex.group == "honest"


@pytest.mark.parametrize("label,chosen", [(1, "o1"), (2, "o2")])
def test_pair_label(label, chosen):
    ex = adapt("pair_label", {"input": "q", "output_1": "o1", "output_2": "o2", "label": label})
    assert ex.chosen == chosen and ex.prompt == "q"


def test_mt_bench_human_turns_and_ties():
    def conv(x):
        return [
            msg("user", "q1"),
            msg("assistant", x + "1"),
            msg("user", "q2"),
            msg("assistant", x + "2"),
        ]

    row = {"conversation_a": conv("a"), "conversation_b": conv("b"), "winner": "model_b", "turn": 1}
    ex = adapt("mt_bench_human", row)
    assert ex.prompt == [msg("user", "q1")] and (ex.chosen, ex.rejected) == ("b1", "a1")
    rows = [{**row, "turn": 2}, {**row, "winner": "tie (bothbad)"}, {**row, "winner": "model_a"}]
    out = adapt_rows(rows, SCHEMAS["mt_bench_human"], None, "error", "hub")
    assert out.skipped == {"later_turn": 1, "tie": 1} and out.source_index == [2]
    assert (out.examples[0].chosen, out.examples[0].rejected) == ("a1", "b1")


# ------------------------------------------------------------------ detection
@pytest.mark.parametrize(
    "row,schema",
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
        ({"chosen": HH_PROMPT + " a", "rejected": HH_PROMPT + " b"}, "hh_rlhf"),
        ({"chosen": [msg("user", "q"), msg("assistant", "a")], "rejected": []}, "conversational"),
        (
            {"prompt": [msg("user", "q")], "chosen": [msg("assistant", "a")], "rejected": []},
            "conversational",
        ),
        (
            {"conv_A": [], "conv_B": [], "conv_A_rating": 1, "conv_B_rating": 2, "source": "s"},
            "unified_feedback",
        ),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "subset": "s", "id": "x"}, "rewardbench"),
        ({"input": "q", "targets": {}}, "hhh"),
        ({"input": "q", "output_1": "a", "output_2": "b", "label": 1}, "pair_label"),
        (
            {"conversation_a": [], "conversation_b": [], "winner": "tie", "turn": 1},
            "mt_bench_human",
        ),
    ],
)
def test_detect_schema(row, schema):
    assert detect_schema(list(row), row) == schema


def test_unknown_schema_lists_columns_and_schemas():
    with pytest.raises(ValueError) as err:
        detect_schema(["question", "answer"])
    text = str(err.value)
    assert "question" in text and "answer" in text
    for name in SCHEMAS:
        assert name in text
    with pytest.raises(ValueError, match="unknown schema 'nope'"):
        get_schema("nope", ["prompt", "chosen", "rejected"])
    with pytest.raises(ValueError, match="missing"):
        get_schema("hhh", ["prompt", "chosen", "rejected"])


# ------------------------------------------------------------------ bad rows
BAD_ROWS = [
    ("preference", {"prompt": "p", "chosen": "a"}, "missing", "rejected"),
    ("preference", {"prompt": "p", "chosen": None, "rejected": "b"}, "missing", "chosen"),
    ("preference", {"prompt": "  ", "chosen": "a", "rejected": "b"}, "empty", "prompt"),
    ("preference", {"prompt": "p", "chosen": "", "rejected": "b"}, "empty", "chosen"),
    ("preference", {"prompt": "p", "chosen": 3, "rejected": "b"}, "wrong_type", "chosen"),
    ("preference", {"prompt": "p", "chosen": "same", "rejected": "same "}, "identical", "chosen"),
    (
        "hh_rlhf",
        {"chosen": HH_PROMPT + " a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
        "prompt_mismatch",
        "rejected",
    ),
    ("hh_rlhf", {"chosen": "no turns here", "rejected": "x"}, "wrong_type", "chosen"),
    ("hh_rlhf", {"chosen": HH_PROMPT + " ", "rejected": HH_PROMPT + " b"}, "empty", "chosen"),
    (
        "conversational",
        {
            "chosen": [msg("user", "q"), msg("assistant", "a")],
            "rejected": [msg("user", "Q"), msg("assistant", "b")],
        },
        "prompt_mismatch",
        "rejected",
    ),
    (
        "conversational",
        {
            "chosen": [msg("user", "q"), msg("user", "a")],
            "rejected": [msg("user", "q"), msg("assistant", "b")],
        },
        "wrong_type",
        "chosen",
    ),
    ("conversational", {"chosen": "text", "rejected": [msg("user", "q")]}, "wrong_type", "chosen"),
    ("conversational", {"chosen": [{"role": "user"}], "rejected": []}, "wrong_type", "chosen"),
    (
        "unified_feedback",
        {
            "conv_A": [msg("user", "q"), msg("assistant", "a")],
            "conv_B": [msg("user", "x"), msg("assistant", "b")],
            "conv_A_rating": 1,
            "conv_B_rating": 2,
        },
        "prompt_mismatch",
        "conv_B",
    ),
    (
        "unified_feedback",
        {
            "conv_A": [msg("user", "q"), msg("assistant", "a")],
            "conv_B": [msg("user", "q"), msg("assistant", "b")],
            "conv_A_rating": "high",
            "conv_B_rating": 2,
        },
        "wrong_type",
        "conv_A_rating",
    ),
    (
        "hhh",
        {"input": "q", "targets": {"choices": ["x", "y"], "labels": [1, 1]}},
        "bad_label",
        "targets",
    ),
    (
        "hhh",
        {"input": "q", "targets": {"choices": ["x", "y", "z"], "labels": [1, 0, 0]}},
        "bad_label",
        "targets",
    ),
    (
        "hhh",
        {"input": "q", "targets": {"choices": ["x", "x"], "labels": [1, 0]}},
        "identical",
        "chosen",
    ),
    ("hhh", {"input": "q"}, "missing", "targets"),
    (
        "pair_label",
        {"input": "q", "output_1": "a", "output_2": "b", "label": 3},
        "bad_label",
        "label",
    ),
    (
        "pair_label",
        {"input": "q", "output_1": "a", "output_2": "b", "label": "1"},
        "wrong_type",
        "label",
    ),
    (
        "mt_bench_human",
        {
            "conversation_a": [msg("user", "q"), msg("assistant", "a")],
            "conversation_b": [msg("user", "q"), msg("assistant", "b")],
            "winner": "model_c",
        },
        "bad_label",
        "winner",
    ),
]


@pytest.mark.parametrize("schema,row,reason,field", BAD_ROWS)
def test_bad_row_classes(schema, row, reason, field):
    with pytest.raises(BadRow) as err:
        adapt(schema, row)
    assert (err.value.reason, err.value.field) == (reason, field)


def test_adapt_rows_error_names_source_row_and_field():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "a"},
    ]
    with pytest.raises(ValueError) as err:
        adapt_rows(rows, SCHEMAS["preference"], None, "error", "data/pairs.jsonl")
    text = str(err.value)
    assert (
        "data/pairs.jsonl" in text
        and "row 1" in text
        and "'chosen'" in text
        and "identical" in text
    )


def test_adapt_rows_skip_counts_per_reason():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "a"},
        {"prompt": "p", "chosen": "", "rejected": "b"},
        {"prompt": "p", "chosen": "c", "rejected": "c"},
        {"prompt": "p", "chosen": "x", "rejected": "y"},
    ]
    out = adapt_rows(rows, SCHEMAS["preference"], None, "skip", "f")
    assert out.source_index == [0, 4]
    assert out.skipped == {"identical": 2, "empty": 1}


# ------------------------------------------------------------------ dialogue helpers
def test_hh_prompt_to_messages_and_back():
    messages = hh_to_messages(HH_PROMPT)
    assert messages == [msg("user", "hi"), msg("assistant", "hello"), msg("user", "tell me a joke")]
    assert prompt_to_messages(HH_PROMPT) == messages
    assert prompt_to_messages("just a question") == [msg("user", "just a question")]
    assert messages_to_plain(messages) == HH_PROMPT.replace("Assistant: hello", "Assistant: hello")
