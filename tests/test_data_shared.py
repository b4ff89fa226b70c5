"""Real data from ../shared/data (never copied into the repo) through PreferenceDataModule."""

import json
from pathlib import Path

import pytest

from lightning_robust.data import PreferenceDataModule, SyntheticShiftConfig
from lightning_robust.data.dialogue import prompt_key, split_hh_transcript
from lightning_robust.data.example import BadRow
from lightning_robust.data.schemas import SCHEMAS

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not SHARED_DATA.exists(),
        reason="../shared/data not found: real-data tests need it beside the repo",
    ),
]
HH = SHARED_DATA / "hh_rlhf_harmless_base" / "harmless_base_test_shared.jsonl"
FILES = {
    "hh": str(HH),
    "hhh": str(SHARED_DATA / "hhh_alignment" / "*.jsonl"),
    "mt_bench": str(SHARED_DATA / "mt_bench_human_pairs" / "llmbar_mtbench_shared.jsonl"),
    "rewardbench": str(
        SHARED_DATA / "rewardbench_llmbar" / "llmbar_rewardbench_format_shared.jsonl"
    ),
}
TINY_SYNTH = SyntheticShiftConfig(num_train=32, num_eval=8)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def build(tmp_path, **kw):
    dm = PreferenceDataModule(cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup("fit")
    return dm


def hh_bad_rows():
    """Independent check of the hh rows: (mismatched prefixes, empty answers)."""
    mismatch, empty = [], []
    for i, row in enumerate(read_jsonl(HH)):
        prompt, answer = split_hh_transcript(row["chosen"])
        if not row["rejected"].startswith(prompt):
            mismatch.append(i)
        elif not answer.strip() or not row["rejected"][len(prompt) :].strip():
            empty.append(i)
    return mismatch, empty


def test_hh_bad_rows_error_and_skip_counts(tmp_path):
    mismatch, empty = hh_bad_rows()
    assert len(mismatch) >= 1
    first = min(mismatch + empty)
    with pytest.raises(ValueError) as err:
        build(tmp_path, train=str(HH), tokenizer="minilm")
    text = str(err.value)
    assert str(HH) in text and f"row {first} " in text
    assert ("prompt_mismatch" if first in mismatch else "empty") in text
    # the first mismatched row is named as such by the hh adapter
    with pytest.raises(BadRow) as bad:
        SCHEMAS["hh_rlhf"].adapt(read_jsonl(HH)[mismatch[0]], None)
    assert (bad.value.reason, bad.value.field) == ("prompt_mismatch", "rejected")
    dm = build(tmp_path, train=str(HH), tokenizer="minilm", on_bad_row="skip")
    skipped = dm.skipped_rows["train"]
    assert skipped["prompt_mismatch"] == len(mismatch) and skipped["empty"] == len(empty)
    kept = len(dm.datasets["train"]) + len(dm.datasets["val"])
    assert kept + sum(skipped.values()) + sum(dm.skipped_rows.get("val", {}).values()) == 1500


def test_hh_split_by_prompt(tmp_path):
    dm = build(
        tmp_path,
        train=str(HH),
        tokenizer="tiny",
        on_bad_row="skip",
        max_length=1024,
        val_fraction=0.2,
        seed=7,
    )
    train = {prompt_key(e.prompt) for e in dm.datasets["train"].examples}
    val = {prompt_key(e.prompt) for e in dm.datasets["val"].examples}
    assert not train & val
    assert 0.15 < len(val) / (len(train) + len(val)) < 0.25


@pytest.mark.parametrize("tokenizer", ["tiny", "minilm"])
@pytest.mark.parametrize("name", list(FILES))
def test_loads_as_train_and_as_eval_set(tmp_path, name, tokenizer):
    max_length = (
        512 if tokenizer == "minilm" else 1024
    )  # the tiny tokenizer splits rare words into bytes
    dm = build(
        tmp_path,
        train=FILES[name],
        tokenizer=tokenizer,
        on_bad_row="skip",
        max_length=max_length,
        batch_size=4,
    )
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["chosen_input_ids"].shape[1] <= max_length and batch["chosen_input_ids"].shape[0] == 4
    )
    kept = len(dm.datasets["train"]) + len(dm.datasets["val"])
    skipped = sum(n for counts in dm.skipped_rows.values() for n in counts.values())
    assert kept + skipped == len(read_jsonl_glob(FILES[name])) and kept > 0.5 * (kept + skipped)
    ev = build(
        tmp_path,
        synthetic=TINY_SYNTH,
        tokenizer=tokenizer,
        on_bad_row="skip",
        eval_sets={name: FILES[name]},
    )
    assert ev.val_set_names[-1] == name
    assert len(next(iter(ev.val_dataloader()[-1]))["index"]) > 0


def read_jsonl_glob(pattern):
    import glob

    return [row for path in sorted(glob.glob(pattern)) for row in read_jsonl(path)]


def test_hhh_chosen_is_labelled_choice_and_groups(tmp_path):
    dm = build(tmp_path, train=FILES["hhh"], tokenizer="minilm", max_length=1024, val_fraction=0.0)
    assert dm.group_names == ["harmless", "helpful", "honest", "other"]
    rows = read_jsonl_glob(FILES["hhh"])
    ds = dm.datasets["train"]
    assert len(ds) == len(rows) == 221
    for i, ex in zip(ds.source_index, ds.examples, strict=True):
        targets = rows[i]["targets"]
        assert ex.chosen == targets["choices"][targets["labels"].index(1)]


def test_mt_bench_pairs_follow_label(tmp_path):
    dm = build(
        tmp_path, train=FILES["mt_bench"], tokenizer="tiny", max_length=4096, val_fraction=0.0
    )
    rows = read_jsonl(FILES["mt_bench"])
    ds = dm.datasets["train"]
    assert len(ds) == 101
    for i, ex in zip(ds.source_index, ds.examples, strict=True):
        assert ex.chosen == rows[i][f"output_{rows[i]['label']}"] and ex.prompt == rows[i]["input"]


def test_rewardbench_subsets_are_groups_and_minilm_boundary(tmp_path):
    dm = build(
        tmp_path,
        train=FILES["rewardbench"],
        tokenizer="minilm",
        on_bad_row="skip",
        val_fraction=0.0,
        batch_size=2,
        shuffle=False,
    )
    assert len(dm.group_names) == 5 and all(g.startswith("llmbar-") for g in dm.group_names)
    batch = next(iter(dm.train_dataloader()))
    tok, ex = dm.tokenizer, dm.datasets["train"].examples[0]
    ids = batch["chosen_input_ids"][0][batch["chosen_attention_mask"][0] == 1].tolist()
    plen = int(batch["chosen_prompt_len"][0])
    assert ids[plen - 1] == tok.sep_token_id
    assert tok.decode(ids[plen:], skip_special_tokens=True) == tok.decode(
        tok(ex.chosen, add_special_tokens=False)["input_ids"]
    )
