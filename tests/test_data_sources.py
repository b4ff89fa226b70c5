"""Source filtering, seeded row caps and weighted mixing of preference and prompt data
(lightning_robust.data.source)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.prompt_datamodule import PromptDataModule
from lightning_robust.data.source import DataSource, as_source, check_mix_weights, load_rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _pairs(tag: str, n: int, sources=("a", "b", "c")):
    return [
        {
            "prompt": f"{tag} question {i}",
            "chosen": f"good answer {i}",
            "rejected": f"bad answer {i}",
            "source": sources[i % len(sources)],
        }
        for i in range(n)
    ]


@pytest.fixture()
def files(tmp_path):
    return {
        "x": _write(tmp_path / "x.jsonl", _pairs("x", 30)),
        "y": _write(tmp_path / "y.jsonl", _pairs("y", 10)),
    }


def test_include_and_exclude_sources(files):
    kept = load_rows(DataSource(files["x"], include_sources=["a", "b"]))
    assert Counter(kept["source"]) == {"a": 10, "b": 10}
    dropped = load_rows(DataSource(files["x"], exclude_sources=["a"]))
    assert set(dropped["source"]) == {"b", "c"} and len(dropped) == 20
    both = load_rows(DataSource(files["x"], include_sources=["a", "b"], exclude_sources=["b"]))
    assert set(both["source"]) == {"a"}


def test_filter_removing_every_row_names_the_option(files):
    with pytest.raises(ValueError, match="include_sources removed every row"):
        load_rows(DataSource(files["x"], include_sources=["zzz"]))
    with pytest.raises(ValueError, match="exclude_sources removed every row"):
        load_rows(DataSource(files["x"], exclude_sources=["a", "b", "c"]))
    with pytest.raises(ValueError, match="source_column 'origin'"):
        load_rows(DataSource(files["x"], source_column="origin", include_sources=["a"]))


def test_max_rows_is_a_seeded_random_subset(files):
    first = load_rows(DataSource(files["x"], max_rows=7, seed=3))["prompt"]
    again = load_rows(DataSource(files["x"], max_rows=7, seed=3))["prompt"]
    other = load_rows(DataSource(files["x"], max_rows=7, seed=4))["prompt"]
    assert first == again and len(first) == 7 and len(set(first)) == 7
    assert first != other
    assert first != [f"x question {i}" for i in range(7)]  # not the head of the file
    with pytest.raises(ValueError, match="max_rows must be a positive integer"):
        DataSource(files["x"], max_rows=0)


def test_mixing_follows_the_weights(tmp_path):
    big_x = _write(tmp_path / "bx.jsonl", _pairs("x", 2000))
    big_y = _write(tmp_path / "by.jsonl", _pairs("y", 2000))
    src = as_source(
        {"path": "mix", "mix": [big_x, {"path": big_y}], "mix_weights": [3, 1], "seed": 0}
    )
    rows = load_rows(src)
    tags = Counter(p.split()[0] for p in rows["prompt"])
    share = tags["x"] / (tags["x"] + tags["y"])
    # first_exhausted stops when x runs out: ~2000 x rows and ~667 y rows (share 0.75)
    assert abs(share - 0.75) < 0.03, tags
    assert load_rows(src)["prompt"] == rows["prompt"]  # seeded
    full = load_rows(
        DataSource("mix", mix=[big_x, big_y], mix_weights=[3, 1], stopping_strategy="all_exhausted")
    )
    assert Counter(p.split()[0] for p in full["prompt"])["y"] >= 2000  # every y row seen
    assert "mix(" in src.describe()


def test_bad_mixing_weights_name_the_option(files):
    for weights, match in [
        ([1, -1], "finite and >= 0"),
        ([0, 0], "sum to zero"),
        ([1], "2 `mix` sources"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            DataSource("mix", mix=[files["x"], files["y"]], mix_weights=weights)
        assert "mix_weights" in str(err.value)
    assert check_mix_weights([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(ValueError, match="need path: 'mix'"):
        DataSource(files["x"], mix=[files["y"]])
    with pytest.raises(ValueError, match="stopping_strategy"):
        DataSource("mix", mix=[files["x"]], stopping_strategy="never")


def test_mixing_sources_with_different_columns_is_an_error(tmp_path, files):
    other = _write(tmp_path / "o.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    with pytest.raises(ValueError, match="same columns"):
        load_rows(DataSource("mix", mix=[files["x"], other]))


def test_preference_and_prompt_datamodules_read_filtered_mixtures(files):
    train = {
        "path": "mix",
        "mix": [{"path": files["x"], "exclude_sources": ["c"]}, files["y"]],
        "mix_weights": [1, 1],
        "stopping_strategy": "all_exhausted",
    }
    dm = PreferenceDataModule(train=train, val=files["y"], max_length=64, batch_size=4)
    dm.setup("fit")
    n_train = len(dm.datasets["train"])
    assert n_train >= 20 + 10  # all 20 kept x rows and every y row (oversampled)
    pm = PromptDataModule(train=train, val=files["y"], batch_size=4)
    pm.setup("fit")
    assert len(pm.datasets["train"]) == n_train
    with pytest.raises(ValueError, match="include_sources removed every row"):
        PromptDataModule(
            train={"path": files["x"], "include_sources": ["nope"]}, val=files["y"]
        ).setup("fit")


def test_a_filter_value_that_never_occurs_is_logged(files, caplog):
    with caplog.at_level("WARNING", logger="lightning_robust.data.source"):
        rows = load_rows(DataSource(files["x"], exclude_sources=["a", "hh-rlhf"]))
    assert len(rows) == 20
    assert "exclude_sources values ['hh-rlhf'] never occur" in caplog.text


def test_a_mixture_parses_from_a_cli_config(tmp_path, files, monkeypatch):
    from lightning_robust.cli import build_cli

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "mix.yaml"
    config.write_text(
        "model: {class_path: lightning_robust.modules.RewardModel}\n"
        "data:\n  class_path: lightning_robust.data.PreferenceDataModule\n  init_args:\n    train:\n"
        f"      path: mix\n      mix:\n        - {{path: {files['x']}, exclude_sources: [c]}}\n"
        f"        - {{path: {files['y']}, max_rows: 5, seed: 1}}\n"
        "      mix_weights: [0.3, 0.7]\n      stopping_strategy: all_exhausted\n"
    )
    cli = build_cli(["--config", str(config), "--trainer.accelerator=cpu"], run=False)
    src = cli.datamodule.train_source
    assert src.is_mix and src.mix[0].exclude_sources == ["c"] and src.mix[1].max_rows == 5
    assert src.mix_weights == [0.3, 0.7] and src.stopping_strategy == "all_exhausted"
    assert cli.datamodule.hparams["train"]["mix"][1]["max_rows"] == 5  # saved as plain data
