"""datasets-native cached tokenisation: equal to encode_examples, loaded (not recomputed) on the
next call, keyed by tokenizer/options/text; the data module tokenises in prepare_data."""

from __future__ import annotations

import json

import datasets
import pytest

from lightning_robust.data import PreferenceExample
from lightning_robust.data.example import BadRow
from lightning_robust.data.tokenize import encode_examples, encode_examples_cached
from lightning_robust.models import load_tokenizer


def _examples():
    words = "alpha travel detail simple answer question"
    return [
        PreferenceExample(
            prompt=f"{words} {k}", chosen="good answer " * (k % 3 + 1), rejected="bad answer"
        )
        for k in range(20)
    ] + [
        PreferenceExample(prompt="alpha", chosen="long " * 80, rejected="short"),  # too long at 32
        PreferenceExample(
            prompt=[{"role": "user", "content": "hello there"}], chosen="hi", rejected="go"
        ),
    ]


def _plain(encoded):
    return [
        (type(e).__name__, e.reason, e.field, e.detail) if isinstance(e, BadRow) else vars(e)
        for e in encoded
    ]


def _forbid_map(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again instead of loading the cache")

    monkeypatch.setattr(datasets.Dataset, "map", refuse)


def test_cached_equals_direct_and_is_reused(tmp_path, monkeypatch):
    tokenizer = load_tokenizer("tiny")
    examples = _examples()
    direct = encode_examples(examples, tokenizer, 32, append_eos=True)
    cached = encode_examples_cached(
        examples, tokenizer, 32, append_eos=True, cache_dir=str(tmp_path)
    )
    assert _plain(cached) == _plain(direct)
    assert any(isinstance(e, BadRow) for e in direct)
    assert len(list(tmp_path.glob("pairs-*"))) == 1
    assert encode_examples_cached([], tokenizer, 32, cache_dir=str(tmp_path)) == []
    _forbid_map(monkeypatch)
    again = encode_examples_cached(
        examples, tokenizer, 32, append_eos=True, cache_dir=str(tmp_path)
    )
    assert _plain(again) == _plain(direct)
    # another option or other text is another entry, never a stale hit
    with pytest.raises(AssertionError, match="tokenised again"):
        encode_examples_cached(examples, tokenizer, 33, append_eos=True, cache_dir=str(tmp_path))
    changed = [*examples[:-1], PreferenceExample(prompt="alpha", chosen="hi!", rejected="go")]
    with pytest.raises(AssertionError, match="tokenised again"):
        encode_examples_cached(changed, tokenizer, 32, append_eos=True, cache_dir=str(tmp_path))


def test_datamodule_tokenises_in_prepare_data(tmp_path, monkeypatch):
    from lightning_robust.data import PreferenceDataModule

    rows = [
        {"prompt": f"alpha question {k}", "chosen": "good answer", "rejected": "bad"}
        for k in range(40)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cache = tmp_path / "cache"
    first = PreferenceDataModule(train=str(path), cache_dir=str(cache), max_length=32)
    first.prepare_data()  # what Lightning runs once per node, before setup on every rank
    assert (
        first.datasets and len(list((cache / "lightning_robust_tokenized").glob("pairs-*"))) == 2
    )  # train, val
    _forbid_map(monkeypatch)
    other_rank = PreferenceDataModule(train=str(path), cache_dir=str(cache), max_length=32)
    other_rank.setup("fit")
    for name in ("train", "val"):
        assert [other_rank.datasets[name][i] for i in range(len(other_rank.datasets[name]))] == [
            first.datasets[name][i] for i in range(len(first.datasets[name]))
        ]
    uncached = PreferenceDataModule(
        train=str(path), cache_dir=str(cache), max_length=32, tokenize_cache=False
    )
    uncached.setup("fit")
    assert len(uncached.datasets["train"]) == len(first.datasets["train"])


def test_unwritable_cache_keeps_the_result(tmp_path, monkeypatch, caplog):
    def refuse(self, path, **kwargs):
        raise PermissionError(13, "read-only file system", path)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", refuse)
    tokenizer = load_tokenizer("tiny")
    examples = _examples()
    out = encode_examples_cached(examples, tokenizer, 32, cache_dir=str(tmp_path))
    assert _plain(out) == _plain(encode_examples(examples, tokenizer, 32))
    assert "could not cache the tokenised pairs" in caplog.text
