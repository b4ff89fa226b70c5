"""PreferenceDataModule: notebook use, sources, splits, bad rows, groups, loaders, CLI."""

import json
import logging

import pytest
import torch

from lightning_robust.data import BATCH_KEYS, DataSource, PreferenceDataModule, SyntheticShiftConfig
from lightning_robust.data.dialogue import prompt_key

SMALL = SyntheticShiftConfig(num_train=120, num_eval=40)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def dm_for(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    dm = PreferenceDataModule(**kw)
    dm.setup("fit")
    return dm


def good_rows(n, prompts=None):
    return [
        {
            "prompt": f"question {i % (prompts or n)}",
            "chosen": f"good answer {i}",
            "rejected": f"bad answer {i}",
        }
        for i in range(n)
    ]


# ------------------------------------------------------------------ synthetic default
def test_notebook_style_synthetic_default(tmp_path):
    dm = dm_for(tmp_path, synthetic=SMALL, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch) == BATCH_KEYS
    assert batch["chosen_input_ids"].shape[0] == 8
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
    assert dm.val_set_names == ["val", "shifted", "minority"]
    assert dm.group_names == ["alpha", "beta"]
    assert [len(dm.datasets[n]) for n in ["train", *dm.val_set_names]] == [120, 40, 40, 40]
    loaders = dm.val_dataloader()
    assert len(loaders) == 3 and len(dm.test_dataloader()) == 3
    minority = next(iter(loaders[2]))
    assert (minority["group"] == dm.group_names.index("beta")).all()
    # the prompt boundary: first response token follows the prompt
    row = dm.datasets["train"].examples[int(batch["index"][0])]
    ids, plen = batch["chosen_input_ids"][0], int(batch["chosen_prompt_len"][0])
    assert dm.tokenizer.decode(ids[:plen]).strip() == row.prompt
    assert (
        dm.tokenizer.decode(ids[plen : int(batch["chosen_attention_mask"][0].sum())]).strip()
        == row.chosen
    )


def test_train_order_is_seeded(tmp_path):
    def first_indices(seed, shuffle=True):
        dm = dm_for(tmp_path, synthetic=SMALL, batch_size=16, seed=seed, shuffle=shuffle)
        return [b["index"].tolist() for b in dm.train_dataloader()][:2]

    assert first_indices(0) == first_indices(0)
    assert first_indices(0) != first_indices(1)
    assert first_indices(0, shuffle=False)[0] == list(range(16))


def test_user_eval_sets_follow_synthetic_ones(tmp_path):
    path = write_jsonl(tmp_path / "extra.jsonl", good_rows(6))
    dm = dm_for(tmp_path, synthetic=SMALL, eval_sets={"extra": path, "shift2": "synthetic:shifted"})
    assert dm.val_set_names == ["val", "shifted", "minority", "extra", "shift2"]
    assert len(dm.val_dataloader()) == 5
    assert (next(iter(dm.val_dataloader()[3]))["group"] == -1).all()


# ------------------------------------------------------------------ local files
def test_split_by_prompt_has_no_overlap(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_rows(200, prompts=40))
    dm = dm_for(tmp_path, train=path, val_fraction=0.25, seed=3)
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) + len(val) == 200
    train_prompts = {prompt_key(e.prompt) for e in train.examples}
    val_prompts = {prompt_key(e.prompt) for e in val.examples}
    assert not train_prompts & val_prompts and len(val_prompts) == 10
    assert sorted(train.source_index + val.source_index) == list(range(200))
    again = dm_for(tmp_path, train=path, val_fraction=0.25, seed=3)
    assert again.datasets["val"].source_index == val.source_index
    assert (
        dm_for(tmp_path, train=path, val_fraction=0.25, seed=4).datasets["val"].source_index
        != val.source_index
    )


def test_val_fraction_zero_and_explicit_val(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_rows(10))
    assert dm_for(tmp_path, train=path, val_fraction=0.0).val_set_names == []
    val = write_jsonl(tmp_path / "v.jsonl", good_rows(3))
    dm = dm_for(tmp_path, train=path, val=val, eval_sets={"e": DataSource(path=val)})
    assert dm.val_set_names == ["val", "e"] and len(dm.datasets["train"]) == 10


def test_parquet_and_max_rows(tmp_path):
    from datasets import Dataset

    path = str(tmp_path / "d.parquet")
    Dataset.from_list(good_rows(30)).to_parquet(path)
    dm = dm_for(tmp_path, train=path, max_rows=20, val_fraction=0.1)
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 20


def test_groups_from_train_first_and_overrides(tmp_path):
    rows = [
        {**r, "subset": s, "topic": t}
        for r, s, t in zip(good_rows(6), "bbaacc", "xyxyxy", strict=True)
    ]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    other = write_jsonl(
        tmp_path / "o.jsonl",
        [{**good_rows(1)[0], "subset": "a0"}, {**good_rows(2)[1], "subset": "z"}],
    )
    dm = dm_for(tmp_path, train=train, val_fraction=0.0, eval_sets={"o": other})
    assert dm.group_names == ["a", "b", "c", "a0", "z"]
    assert dm.datasets["o"].groups == [3, 4]
    dm2 = dm_for(
        tmp_path, train=train, val_fraction=0.0, group_column="topic", eval_sets={"o": other}
    )
    assert dm2.group_names == ["x", "y", "a0", "z"]  # eval set lacks 'topic': its schema default
    dm3 = dm_for(tmp_path, train=DataSource(path=train, group_column="topic"), val_fraction=0.0)
    assert dm3.group_names == ["x", "y"]
    with pytest.raises(ValueError, match="group column 'nope'"):
        dm_for(tmp_path, train=train, group_column="nope")


def test_unknown_schema_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError) as err:
        dm_for(tmp_path, train=path)
    assert (
        "odd.jsonl" in str(err.value)
        and "question" in str(err.value)
        and "hh_rlhf" in str(err.value)
    )
    with pytest.raises(FileNotFoundError):
        dm_for(tmp_path, train=str(tmp_path / "nope.jsonl"))


# ------------------------------------------------------------------ bad rows
HH = "\n\nHuman: hello\n\nAssistant:"
BAD = [
    ("missing", {"prompt": "q", "chosen": "a"}, "rejected"),
    ("empty", {"prompt": "q", "chosen": " ", "rejected": "b"}, "chosen"),
    ("wrong_type", {"prompt": "q", "chosen": ["a"], "rejected": "b"}, "chosen"),
    ("identical", {"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen"),
    ("too_long", {"prompt": "q", "chosen": " ".join(["water"] * 40), "rejected": "b"}, "chosen"),
]


@pytest.mark.parametrize("reason,bad,field", BAD)
def test_bad_row_error_names_file_row_and_field(tmp_path, reason, bad, field):
    rows = good_rows(5)
    rows.insert(3, bad)
    path = write_jsonl(tmp_path / f"{reason}.jsonl", rows)
    with pytest.raises(ValueError) as err:
        dm_for(tmp_path, train=path, max_length=32, val_fraction=0.0)
    text = str(err.value)
    assert f"{reason}.jsonl" in text and "row 3" in text and f"'{field}'" in text and reason in text


def test_hh_prefix_mismatch_error(tmp_path):
    rows = [
        {"chosen": HH + " hi", "rejected": HH + " yo"},
        {"chosen": HH + " hi", "rejected": "\n\nHuman: bye\n\nAssistant: no"},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.raises(ValueError, match=r"hh\.jsonl, row 1 .*'rejected'.*prompt_mismatch"):
        dm_for(tmp_path, train=path, val_fraction=0.0)


def test_skip_counts_and_one_warning(tmp_path, caplog):
    rows = good_rows(6)
    for k, (_, bad, _) in enumerate(BAD):
        rows.insert(2 * k, bad)
    rows.append({"prompt": "q", "chosen": "x", "rejected": "x"})
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    evalp = write_jsonl(
        tmp_path / "e.jsonl", [{"prompt": "q", "chosen": "c", "rejected": "c"}, *good_rows(2)]
    )
    with caplog.at_level(logging.WARNING, logger="lightning_robust.data.datamodule"):
        dm = dm_for(
            tmp_path,
            train=path,
            on_bad_row="skip",
            max_length=32,
            val_fraction=0.0,
            eval_sets={"e": evalp},
        )
    assert dm.skipped_rows == {
        "train": {"empty": 1, "identical": 2, "missing": 1, "too_long": 1, "wrong_type": 1},
        "e": {"identical": 1},
    }
    assert len(dm.datasets["train"]) == 6 and len(dm.datasets["e"]) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "identical=2" in warnings[0].getMessage()


def test_unified_feedback_ties_counted_even_in_error_mode(tmp_path):
    conv = lambda a: [{"role": "user", "content": "q"}, {"role": "assistant", "content": a}]  # noqa: E731
    rows = [
        {
            "conv_A": conv("a"),
            "conv_B": conv("b"),
            "conv_A_rating": 2,
            "conv_B_rating": 2,
            "source": "s1",
        },
        {
            "conv_A": conv("a"),
            "conv_B": conv("b"),
            "conv_A_rating": 1,
            "conv_B_rating": 2,
            "source": "s2",
        },
        {
            "conv_A": conv("c"),
            "conv_B": conv("d"),
            "conv_A_rating": 5,
            "conv_B_rating": 2,
            "source": "s1",
        },
    ]
    dm = dm_for(tmp_path, train=write_jsonl(tmp_path / "uf.jsonl", rows), val_fraction=0.0)
    assert dm.skipped_rows == {"train": {"tie": 1}}
    assert dm.group_names == ["s1", "s2"]
    assert [e.chosen for e in dm.datasets["train"].examples] == ["b", "c"]


# ------------------------------------------------------------------ construction / CLI
def test_sources_from_strings_and_dicts():
    dm = PreferenceDataModule(
        train="synthetic",
        val="synthetic:minority",
        eval_sets={"x": {"path": "a.jsonl", "schema": "hhh"}},
    )
    assert dm.val_source == DataSource(path="synthetic", split="minority")
    assert dm.eval_sources["x"] == DataSource(path="a.jsonl", schema="hhh")
    assert (
        DataSource("org/data", name="cfg", split="test").describe()
        == "org/data name=cfg split=test"
    )
    with pytest.raises(ValueError, match="on_bad_row"):
        PreferenceDataModule(on_bad_row="ignore")
    with pytest.raises(RuntimeError, match="setup"):
        PreferenceDataModule().train_dataloader()


def test_jsonargparse_builds_the_datamodule(tmp_path):
    from jsonargparse import ArgumentParser

    path = write_jsonl(tmp_path / "d.jsonl", good_rows(10))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PreferenceDataModule, "data")
    cfg = parser.parse_args(
        [
            f"--data.train={path}",
            "--data.synthetic.minority_share=0.2",
            "--data.on_bad_row=skip",
            '--data.eval_sets={"m": {"path": "synthetic", "split": "minority"}}',
        ]
    )
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, PreferenceDataModule)
    assert dm.synthetic.minority_share == 0.2 and dm.on_bad_row == "skip"
    assert dm.eval_sources["m"].split == "minority"
    assert dm.hparams["on_bad_row"] == "skip"


def test_fits_a_trainer_with_several_val_loaders(tmp_path):
    import lightning as L

    class Mean(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(2000, 1)
            self.seen = []

        def forward(self, ids, mask):
            return (self.emb(ids).squeeze(-1) * mask).sum(1)

        def training_step(self, batch, _):
            c = self(batch["chosen_input_ids"], batch["chosen_attention_mask"])
            r = self(batch["rejected_input_ids"], batch["rejected_attention_mask"])
            return -torch.nn.functional.logsigmoid(c - r).mean()

        def validation_step(self, batch, _, dataloader_idx=0):
            self.seen.append(dataloader_idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = PreferenceDataModule(synthetic=SMALL, batch_size=8)
    model = Mean()
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    assert sorted(set(model.seen)) == [0, 1, 2]


def test_tiny_train_set_without_val_prompt(tmp_path, caplog):
    path = write_jsonl(tmp_path / "one.jsonl", good_rows(3, prompts=1))
    with caplog.at_level(logging.WARNING, logger="lightning_robust.data.datamodule"):
        dm = dm_for(tmp_path, train=path)
    assert dm.val_set_names == [] and len(dm.datasets["train"]) == 3
    assert "no 'val' set" in caplog.text


def test_hub_source_calls_load_dataset(monkeypatch):
    import datasets

    from lightning_robust.data.source import load_rows

    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        return datasets.Dataset.from_list(good_rows(5))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = DataSource("Anthropic/hh-rlhf", split="test", data_dir="harmless-base")
    rows = load_rows(source, max_rows=3)
    assert len(rows) == 3
    assert calls == [
        (
            "Anthropic/hh-rlhf",
            None,
            {"split": "test", "cache_dir": None, "data_dir": "harmless-base"},
        )
    ]
    assert source.describe() == "Anthropic/hh-rlhf data_dir=harmless-base split=test"


# ------------------------------------------------------------------ speed: padding and tokenisation
def test_dynamic_padding_and_no_retokenisation(tmp_path, monkeypatch):
    dm = dm_for(tmp_path, synthetic=SMALL, batch_size=8, max_length=512)
    train = dm.datasets["train"]
    assert train.lengths == [
        max(len(p.chosen_input_ids), len(p.rejected_input_ids)) for p in train.pairs
    ]
    assert train.max_token_id == max(
        max(p.chosen_input_ids + p.rejected_input_ids) for p in train.pairs
    )

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the loaders re-tokenised text")

    monkeypatch.setattr(type(dm.tokenizer), "__call__", no_tokenizing)
    for batch in dm.train_dataloader():
        rows = batch["index"].tolist()
        width = max(
            train.lengths[i] for i in rows
        )  # the longest pair of THIS batch, not max_length
        assert (
            batch["chosen_input_ids"].shape
            == batch["rejected_input_ids"].shape
            == (len(rows), width)
        )
        assert width < 512
        for k, i in enumerate(rows):  # the stored ids, as tokenised once in setup()
            n = len(train.pairs[i].chosen_input_ids)
            assert batch["chosen_input_ids"][k, :n].tolist() == train.pairs[i].chosen_input_ids


def test_saved_hyperparameters_are_plain_data(tmp_path):
    dm = PreferenceDataModule(
        train=DataSource(path="synthetic"),
        eval_sets={"m": DataSource(path="synthetic", split="minority")},
        synthetic=SMALL,
    )
    assert dm.hparams["train"] == {
        "path": "synthetic",
        "name": None,
        "split": "train",
        "schema": "auto",
        "group_column": None,
        "data_dir": None,
        "source_column": "source",
        "include_sources": None,
        "exclude_sources": None,
        "max_rows": None,
        "seed": 0,
        "mix": None,
        "mix_weights": None,
        "stopping_strategy": "first_exhausted",
    }
    assert dm.hparams["eval_sets"]["m"]["split"] == "minority"
    assert dm.hparams["synthetic"]["num_train"] == 120
    again = PreferenceDataModule(**dm.hparams)  # what a checkpoint restores
    assert again.synthetic == SMALL and again.train_source == dm.train_source
