"""Prompt data for online RL: schemas, rendering, left padding and truncation, bad rows, batches."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lightning_robust.data import PromptDataModule, SyntheticPromptConfig
from lightning_robust.data.prompts import (
    PROMPT_SCHEMAS,
    PromptCollator,
    detect_prompt_schema,
    encode_prompts,
    render_prompt,
)
from lightning_robust.models import load_tokenizer
from tests.conftest import SHARED_DATA, needs_shared_data

HH_ROW = {
    "chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Use flour.\n\nHuman: And then?\n\nAssistant: Bake it.",
    "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Use flour.\n\nHuman: And then?\n\nAssistant: No.",
}
MSGS = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer("tiny")


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
    """A Llama-like tokenizer: BOS before single texts."""
    from tokenizers import processors

    tok = copy.deepcopy(load_tokenizer("tiny"))
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return tok


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def build(train, tokenizer=None, **kw):
    kw.setdefault("shuffle", False)
    dm = PromptDataModule(train=train, **kw)
    if tokenizer is not None:
        dm._tokenizer = tokenizer
    dm.setup("fit")
    return dm


def adapt(schema, row):
    return PROMPT_SCHEMAS[schema].adapt(row, PROMPT_SCHEMAS[schema].group_column)


# ---------------------------------------------------------------- schemas
def test_schema_detection():
    assert (
        detect_prompt_schema(["conv_A", "conv_B", "conv_A_rating", "conv_B_rating"])
        == "unified_feedback"
    )
    assert detect_prompt_schema(["messages"]) == "messages"
    assert detect_prompt_schema(["prompt"]) == "prompt"
    assert (
        detect_prompt_schema(["prompt", "chosen", "rejected"]) == "prompt"
    )  # explicit prompt wins
    assert detect_prompt_schema(["chosen", "rejected"], HH_ROW) == "hh_rlhf"
    assert detect_prompt_schema(["chosen", "rejected"], {"chosen": MSGS}) == "conversational"
    with pytest.raises(ValueError, match="cannot detect the prompt schema.*columns found"):
        detect_prompt_schema(["text"])


def test_hh_prompt_is_the_first_human_turn_with_the_exact_template():
    ex = adapt("hh_rlhf", HH_ROW)
    assert ex.prompt == "\n\nHuman: How do I bake bread?\n\nAssistant:"


def test_message_schemas_keep_the_messages_before_the_last_assistant_turn():
    conv = MSGS + [
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "ok"},
    ]
    assert adapt("messages", {"messages": conv}).prompt == conv[:4]
    assert adapt("messages", {"messages": MSGS}).prompt == MSGS  # no assistant turn: all of them
    assert adapt("conversational", {"chosen": conv}).prompt == conv[:4]
    assert adapt("unified_feedback", {"conv_A": conv, "source": "x"}).prompt == conv[:4]
    assert adapt("unified_feedback", {"conv_A": conv, "source": "x"}).group == "x"
    assert adapt("prompt", {"prompt": "tell me", "group": 3}).prompt == "tell me"
    assert adapt("prompt", {"prompt": MSGS}).prompt == MSGS


def test_rendering_plain_and_with_a_chat_template(tiny, tiny_chat):
    hh = "\n\nHuman: hi there\n\nAssistant:"
    assert render_prompt(hh, tiny) == hh
    assert render_prompt("tell me", tiny) == "tell me"
    assert render_prompt(MSGS, tiny) == "\n\nSystem: be kind\n\nHuman: hi there\n\nAssistant:"
    # with a template the hh prompt is a one-message chat
    assert render_prompt(hh, tiny_chat) == "<s>user hi there </s>assistant"
    assert render_prompt(MSGS, tiny_chat) == "<s>system be kind </s>user hi there </s>assistant"
    assert render_prompt(hh, tiny_chat, chat_template=False) == hh


# ---------------------------------------------------------------- data module on files
def test_batches_are_left_padded_and_match_the_rendered_prompts(tmp_path, tiny):
    rows = [{"prompt": "hello"}, {"prompt": "the red dog and the blue cat sat"}, {"prompt": MSGS}]
    dm = build(write_jsonl(tmp_path / "p.jsonl", rows), batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
    assert bool(mask[:, -1].all())  # the last column is always a real token
    for row, raw in enumerate(batch["prompts"]):
        expected = tiny(render_prompt(raw, tiny), add_special_tokens=False)["input_ids"]
        n = len(expected)
        assert ids[row, -n:].tolist() == expected
        assert mask[row].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert ids[row, : ids.shape[1] - n].eq(tiny.pad_token_id).all()
    assert batch["prompts"] == ["hello", rows[1]["prompt"], MSGS]
    assert batch["index"].tolist() == [0, 1, 2]
    assert "group" not in batch  # no group column in the source


def test_long_prompts_are_cut_from_the_left_and_counted(tmp_path, tiny, tiny_bos):
    long = "one two three four five six seven eight nine ten"
    rows = [{"prompt": long}, {"prompt": "one two"}, {"prompt": long + " red"}]
    dm = build(write_jsonl(tmp_path / "p.jsonl", rows), max_prompt_length=4)
    full = tiny(long, add_special_tokens=False)["input_ids"]
    assert dm.train_dataset[0]["prompt_input_ids"] == full[-4:]
    assert (
        dm.train_dataset[1]["prompt_input_ids"]
        == tiny("one two", add_special_tokens=False)["input_ids"]
    )
    assert dm.truncated_prompts == {"train": 2}
    # a BOS-prefixed tokenizer keeps its BOS and the last tokens
    enc = encode_prompts([long, "one"], tiny_bos, max_prompt_length=4)
    assert enc.input_ids[0] == [tiny_bos.bos_token_id] + full[-3:]
    assert (
        enc.input_ids[1]
        == [tiny_bos.bos_token_id] + tiny("one", add_special_tokens=False)["input_ids"]
    )
    assert enc.truncated == 1


def test_chat_template_datamodule_renders_hh_as_one_message_chat(tmp_path, tiny_chat):
    dm = build(write_jsonl(tmp_path / "hh.jsonl", [HH_ROW]), tokenizer=tiny_chat)
    item = dm.train_dataset[0]
    text = "<s>user How do I bake bread? </s>assistant"
    assert item["prompt_input_ids"] == tiny_chat(text, add_special_tokens=False)["input_ids"]
    assert item["prompt"] == "\n\nHuman: How do I bake bread?\n\nAssistant:"


def test_bad_rows_error_names_file_row_and_field(tmp_path):
    rows = [
        {"prompt": "fine"},
        {"prompt": "ok"},
        {"prompt": "   "},
        {"prompt": 5},
        {"prompt": "good"},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        build(path)
    message = str(err.value)
    assert (
        path in message
        and "row 2" in message
        and "'prompt'" in message
        and "on_bad_row='skip'" in message
    )


def test_bad_rows_are_skipped_and_counted(tmp_path):
    rows = [
        {"prompt": "fine"},
        {"prompt": "   "},
        {"prompt": None},
        {"prompt": [{"role": "user"}]},
        {"prompt": "good"},
    ]
    dm = build(write_jsonl(tmp_path / "bad.jsonl", rows), on_bad_row="skip")
    assert dm.skipped_rows == {"empty": 1, "missing": 1, "wrong_type": 1}
    assert len(dm.train_dataset) == 2
    assert dm.train_dataset.source_index == [0, 4]
    hh_bad = {"chosen": "no turns at all", "rejected": "x"}
    dm = build(write_jsonl(tmp_path / "hh.jsonl", [HH_ROW, hh_bad]), on_bad_row="skip")
    assert dm.skipped_rows == {"wrong_type": 1}


def test_unknown_schema_and_options_are_named(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="p.jsonl: cannot detect the prompt schema"):
        build(path)
    with pytest.raises(ValueError, match="unknown prompt schema 'nope'"):
        build(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "x"}]), schema="nope")
    with pytest.raises(ValueError, match="on_bad_row"):
        PromptDataModule(on_bad_row="drop")
    with pytest.raises(ValueError, match="max_prompt_length"):
        PromptDataModule(max_prompt_length=0)


def test_group_column_becomes_group_ids(tmp_path):
    rows = [
        {"prompt": "a", "group": "x"},
        {"prompt": "b", "group": "y"},
        {"prompt": "c", "group": "x"},
    ]
    dm = build(write_jsonl(tmp_path / "g.jsonl", rows), batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    assert dm.group_names == ["x", "y"]
    assert batch["group"].tolist() == [0, 1, 0]


# ---------------------------------------------------------------- synthetic default and loaders
def test_synthetic_default_and_full_pass_through_dataloaders():
    cfg = SyntheticPromptConfig(num_train=20, num_val=7, seed=1)
    dm = PromptDataModule(batch_size=6, val_batch_size=4, synthetic=cfg)
    dm.setup("fit")
    assert len(dm.train_dataset) == 20 and len(dm.val_dataset) == 7
    seen = []
    for batch in dm.train_dataloader():
        assert set(batch) == {
            "prompt_input_ids",
            "prompt_attention_mask",
            "index",
            "prompts",
            "group",
        }
        assert bool(batch["prompt_attention_mask"][:, -1].all())
        for k, i in enumerate(batch["index"].tolist()):
            assert batch["prompts"][k] == dm.train_dataset.prompts[i]
            assert dm.group_names[batch["group"][k]] in batch["prompts"][k]
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(20))
    val = [b["index"].tolist() for b in dm.val_dataloader()]
    assert val == [[0, 1, 2, 3], [4, 5, 6]]
    assert dm.hparams.synthetic == cfg and dm.hparams.tokenizer == "tiny"


def test_order_is_deterministic_given_the_seed():
    def first(seed):
        dm = PromptDataModule(seed=seed, synthetic=SyntheticPromptConfig(num_train=40, seed=0))
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, c = first(0), first(0), first(1)
    assert (
        torch.equal(a["prompt_input_ids"], b["prompt_input_ids"]) and a["prompts"] == b["prompts"]
    )
    assert a["index"].tolist() != c["index"].tolist()


def test_val_fraction_holds_out_whole_prompts(tmp_path):
    rows = [{"prompt": f"p {k % 10}"} for k in range(30)]
    dm = build(write_jsonl(tmp_path / "p.jsonl", rows), val_fraction=0.2)
    train = {p for p in dm.train_dataset.prompts}
    val = {p for p in dm.val_dataset.prompts}
    assert len(val) == 2 and not train & val and len(dm.train_dataset) + len(dm.val_dataset) == 30


def test_collator_pads_on_the_left_only():
    out = PromptCollator(pad_token_id=0)(
        [
            {"prompt_input_ids": [5, 6, 7], "prompt": "a", "index": 0},
            {"prompt_input_ids": [8], "prompt": "b", "index": 1},
        ]
    )
    assert out["prompt_input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert out["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


# ---------------------------------------------------------------- real hh-rlhf rows
@needs_shared_data
def test_real_hh_rows_give_their_first_human_turn(tmp_path, tiny):
    path = SHARED_DATA / "hh_rlhf_harmless_base" / "harmless_base_test_shared.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines()[:4]]
    dm = build(str(path), max_rows=4, max_prompt_length=4096, cache_dir=str(tmp_path / "cache"))
    assert len(dm.train_dataset) == 4
    for k, row in enumerate(raw):
        first_turn = row["chosen"].split("\n\nAssistant:")[0]
        assert first_turn.startswith("\n\nHuman:")
        expected = "\n\nHuman: " + first_turn[len("\n\nHuman:") :].strip() + "\n\nAssistant:"
        assert dm.train_dataset.prompts[k] == expected
        assert (
            dm.train_dataset[k]["prompt_input_ids"]
            == tiny(expected, add_special_tokens=False)["input_ids"]
        )
