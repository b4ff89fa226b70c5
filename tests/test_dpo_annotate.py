"""Reward annotation for d-/dp-/e-DPO (docs/ALGORITHMS.md §3.4): scores equal a direct scorer call, the
file is what the data module reads for distillation, the cache skips unchanged inputs, and a short
d-DPO / e-DPO fit from the annotated file lowers the distillation loss."""

from __future__ import annotations

import json
import os

import pytest
import torch
from lightning import Trainer

from lightning_robust.annotate import META_SUFFIX, annotate_pairs, read_examples
from lightning_robust.data import PreferenceDataModule
from lightning_robust.models import tiny_llama_config, tiny_tokenizer
from lightning_robust.models.scorers import RewardModelScorer
from lightning_robust.modules import DPO
from tests.conftest import SHARED_DATA, needs_shared_data

SOURCE = "synthetic:train"


def _reward_model(seed: int, tokenizer):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_llama_config(len(tokenizer), tokenizer.pad_token_id, num_labels=1)
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():  # scores of order 1, so the distillation target is not trivially ~0
        model.score.weight.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def reward_models(tokenizer, tmp_path_factory):
    """Two tiny random-init sequence classifiers, saved as Hugging Face directories."""
    root = tmp_path_factory.mktemp("rms")
    out = []
    for seed in (0, 1):
        model = _reward_model(seed, tokenizer)
        path = root / f"rm{seed}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out.append((model, str(path)))
    return out


def _scorer(model, tokenizer):
    return RewardModelScorer(model, tokenizer, max_length=64, batch_size=8)


def _read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_scores_equal_a_direct_scorer_call_and_two_models_give_e_dpo_columns(
    tmp_path, tokenizer, reward_models
):
    (m0, _), (m1, _) = reward_models
    out = annotate_pairs(
        SOURCE, [_scorer(m0, tokenizer), _scorer(m1, tokenizer)], tmp_path / "a.jsonl", max_rows=12
    )
    rows = _read_jsonl(out)
    examples = read_examples(SOURCE, max_rows=12).examples
    assert len(rows) == len(examples) == 12
    prompts = [ex.prompt for ex in examples]
    for k, model in enumerate((m0, m1)):
        direct = _scorer(model, tokenizer)  # a fresh scorer, scoring chosen then rejected lists
        chosen = direct.score(prompts, [ex.chosen for ex in examples])
        rejected = direct.score(prompts, [ex.rejected for ex in examples])
        torch.testing.assert_close(torch.tensor([r["chosen_scores"][k] for r in rows]), chosen)
        torch.testing.assert_close(torch.tensor([r["rejected_scores"][k] for r in rows]), rejected)
    assert all(len(r["chosen_scores"]) == 2 == len(r["rejected_scores"]) for r in rows)
    assert [r["prompt"] for r in rows] == prompts and all("group" in r for r in rows)
    # the data module reads them as the [B, K] score tensors of distillation
    dm = PreferenceDataModule(train=str(out), val_fraction=0.0, batch_size=12, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["chosen_scores"].shape == (12, 2)
    expected = torch.tensor([rows[i]["chosen_scores"] for i in batch["index"].tolist()])
    torch.testing.assert_close(batch["chosen_scores"], expected)


def test_cache_skips_unchanged_inputs_and_rewrites_changed_ones(tmp_path, tokenizer, reward_models):
    (m0, _), (m1, _) = reward_models
    calls = []

    class Counting(RewardModelScorer):
        def score(self, prompts, responses):
            calls.append(len(responses))
            return super().score(prompts, responses)

    out = tmp_path / "cache.parquet"
    annotate_pairs(SOURCE, [Counting(m0, tokenizer, max_length=64)], out, max_rows=6)
    stamp, meta = os.stat(out).st_mtime_ns, json.load(open(str(out) + META_SUFFIX))
    assert calls == [12]
    annotate_pairs(SOURCE, [Counting(m0, tokenizer, max_length=64)], out, max_rows=6)
    assert calls == [12] and os.stat(out).st_mtime_ns == stamp  # no-op: nothing scored or written
    import pyarrow.parquet as pq

    stored = pq.read_schema(out).metadata[b"lightning_robust.annotation_fingerprint"].decode()
    assert stored == meta["fingerprint"]
    # other data -> rescored
    annotate_pairs(SOURCE, [Counting(m0, tokenizer, max_length=64)], out, max_rows=5)
    assert calls == [12, 10] and len(pq.read_table(out)) == 5
    # other reward model (same data) -> rescored
    annotate_pairs(SOURCE, [Counting(m1, tokenizer, max_length=64)], out, max_rows=5)
    assert calls == [12, 10, 10]
    # an edited output file is not trusted
    with open(out, "ab") as f:
        f.write(b"x")
    annotate_pairs(SOURCE, [Counting(m1, tokenizer, max_length=64)], out, max_rows=5)
    assert calls == [12, 10, 10, 10]


def test_bad_arguments_are_named(tmp_path, tokenizer, reward_models):
    scorer = _scorer(reward_models[0][0], tokenizer)
    with pytest.raises(ValueError, match="output"):
        annotate_pairs(SOURCE, [scorer], tmp_path / "x.csv", max_rows=2)
    with pytest.raises(ValueError, match="at least one"):
        annotate_pairs(SOURCE, [], tmp_path / "x.jsonl", max_rows=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": ""}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*row 0"):
        annotate_pairs(str(bad), [scorer], tmp_path / "x.jsonl")


def test_command_with_saved_reward_model_dirs(tmp_path, tokenizer, reward_models):
    pytest.importorskip("lightning_robust.modules.reward_loading")
    from lightning_robust.annotate import main

    (m0, p0), (_, p1) = reward_models
    out = str(tmp_path / "cli.jsonl")
    main(
        [
            "--data",
            SOURCE,
            "--reward-model",
            p0,
            "--reward-model",
            p1,
            "--output",
            out,
            "--max-rows",
            "4",
            "--max-length",
            "64",
        ]
    )
    rows = _read_jsonl(out)
    examples = read_examples(SOURCE, max_rows=4).examples
    direct = _scorer(m0, tokenizer).score(
        [e.prompt for e in examples], [e.chosen for e in examples]
    )
    torch.testing.assert_close(torch.tensor([r["chosen_scores"][0] for r in rows]), direct)


def _distill_val_loss(model, path, tmp_path):
    dm = PreferenceDataModule(train=path, val=path, batch_size=16, max_length=64, append_eos=True)
    trainer = _trainer(tmp_path)
    return trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"], dm


def _trainer(tmp_path, **kw):
    return Trainer(
        accelerator="cpu",
        max_epochs=kw.pop("max_epochs", 3),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=2,
        **kw,
    )


@pytest.mark.parametrize("k", [1, 2], ids=["d_dpo", "e_dpo"])
def test_fit_from_the_annotated_file_lowers_the_distillation_loss(
    tmp_path, tokenizer, reward_models, k
):
    scorers = [_scorer(m, tokenizer) for m, _ in reward_models[:k]]
    path = str(annotate_pairs(SOURCE, scorers, tmp_path / "scored.jsonl", max_rows=32))
    torch.manual_seed(0)
    model = DPO(loss_type="distill", learning_rate=2e-3, warmup_ratio=0.0, beta=0.1)
    before, dm = _distill_val_loss(model, path, tmp_path)
    _trainer(tmp_path).fit(model, datamodule=dm)
    after, _ = _distill_val_loss(model, path, tmp_path)
    assert after < 0.8 * before, (before, after)


@needs_shared_data
def test_real_hh_rlhf_rows(tmp_path, tokenizer, reward_models):
    source = str(SHARED_DATA / "hh_rlhf_harmless_base" / "harmless_base_test_shared.jsonl")
    model = reward_models[0][0]
    out = annotate_pairs(source, [_scorer(model, tokenizer)], tmp_path / "hh.jsonl", max_rows=4)
    rows = _read_jsonl(out)
    raw = [json.loads(line) for line in open(source, encoding="utf-8")][:4]
    assert [r["source_row"] for r in rows] == list(range(len(rows)))
    for r, src in zip(rows, raw, strict=False):
        assert (
            src["chosen"] == r["prompt"] + r["chosen"]
        )  # hh-rlhf transcripts split at the last turn
    direct = _scorer(model, tokenizer).score(
        [r["prompt"] for r in rows], [r["rejected"] for r in rows]
    )
    torch.testing.assert_close(torch.tensor([r["rejected_scores"][0] for r in rows]), direct)
