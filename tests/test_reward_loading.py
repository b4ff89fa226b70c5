"""load_reward_scorer: synthetic specs, a saved Hugging Face classifier, a RewardModel checkpoint."""

from __future__ import annotations

import pytest
import torch

from lightning_robust.data.synthetic_prompts import (
    SyntheticGoldReward,
    SyntheticProxyReward,
    gold_reward,
)
from lightning_robust.models import load_tokenizer, tiny_llama_config
from lightning_robust.models.scorers import RewardModelScorer, Scorer
from lightning_robust.modules import load_reward_scorer

PROMPTS = ["please give me a cooking list", [{"role": "user", "content": "a music list"}]]
RESPONSES = ["apple tea rice", "song song"]


def _direct_scores(model, tok, prompts, responses):
    """Score by hand: plain prompt text (message lists as hh text) + response tokens, one at a time."""
    from lightning_robust.data.dialogue import messages_to_plain

    out = []
    for p, r in zip(prompts, responses, strict=True):
        text = p if isinstance(p, str) else messages_to_plain(p)
        ids = (
            tok(text, add_special_tokens=False)["input_ids"]
            + tok(r, add_special_tokens=False)["input_ids"]
        )
        with torch.no_grad():
            out.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return torch.tensor(out)


def test_synthetic_specs():
    gold, proxy = load_reward_scorer("synthetic:gold"), load_reward_scorer("synthetic:proxy")
    assert isinstance(gold, SyntheticGoldReward) and isinstance(proxy, SyntheticProxyReward)
    assert isinstance(gold, Scorer)
    scores = gold.score(PROMPTS, RESPONSES)
    assert scores.tolist() == pytest.approx(
        [gold_reward(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    )
    with pytest.raises(ValueError, match="synthetic:silver"):
        load_reward_scorer("synthetic:silver")


def test_missing_specs_are_named(tmp_path):
    for spec in [str(tmp_path / "nope"), str(tmp_path / "model.ckpt"), "./no/such/dir"]:
        with pytest.raises(ValueError, match=spec.replace(".", r"\.")):
            load_reward_scorer(spec)
    with pytest.raises(ValueError, match="non-empty"):
        load_reward_scorer("")


def test_saved_sequence_classifier_directory(tmp_path):
    from transformers import LlamaForSequenceClassification

    tok = load_tokenizer("tiny")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(
        tiny_llama_config(len(tok), tok.pad_token_id, num_labels=1)
    ).eval()
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = load_reward_scorer(str(tmp_path / "rm"), batch_size=2)
    assert isinstance(scorer, RewardModelScorer)
    assert scorer.model.config.pad_token_id == tok.pad_token_id
    assert not scorer.model.training
    got = scorer.score(PROMPTS, RESPONSES)
    assert got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(
        got, _direct_scores(model, tok, PROMPTS, RESPONSES), rtol=1e-4, atol=1e-5
    )


def test_reward_model_checkpoint(tmp_path):
    from lightning import Trainer

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.synthetic import SyntheticShiftConfig
    from lightning_robust.modules import RewardModel

    module = RewardModel(learning_rate=1e-3)
    dm = PreferenceDataModule(
        batch_size=8,
        max_length=48,
        synthetic=SyntheticShiftConfig(num_train=16, num_eval=8, seed=0),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "rm.ckpt"
    trainer.save_checkpoint(path)
    scorer = load_reward_scorer(str(path))
    assert isinstance(scorer, RewardModelScorer)
    expected = _direct_scores(module.backbone.eval(), module.tokenizer, PROMPTS, RESPONSES)
    torch.testing.assert_close(scorer.score(PROMPTS, RESPONSES), expected, rtol=1e-4, atol=1e-5)


def test_tiny_spec_scores_batches_of_the_prompt_datamodule():
    from lightning_robust.data import PromptDataModule, SyntheticPromptConfig

    dm = PromptDataModule(batch_size=4, synthetic=SyntheticPromptConfig(num_train=8, num_val=0))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    scorer = load_reward_scorer("tiny")
    scores = scorer.score(batch["prompts"], ["apple"] * 4)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
