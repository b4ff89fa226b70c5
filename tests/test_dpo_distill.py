"""Reward-model distillation (d-/dp-/e-DPO, docs/ALGORITHMS.md §3.4): score columns reach the batch and
the DPO module's loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_robust.data import PreferenceDataModule
from lightning_robust.modules import DPO
from lightning_robust.objectives.dpo import (
    distillation_losses,
    ensemble_distillation_loss,
    preference_margin,
)


def _rows(k):
    rows = []
    for i in range(8):
        c = [0.5 * i + j for j in range(k)] if k > 1 else 0.5 * i
        r = [0.1 * i - j for j in range(k)] if k > 1 else 0.1 * i
        rows.append(
            {
                "prompt": f"question {i}",
                "chosen": "good answer",
                "rejected": "bad answer",
                "chosen_scores": c,
                "rejected_scores": r,
            }
        )
    return rows


def _datamodule(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = PreferenceDataModule(
        train=str(path), val_fraction=0.0, batch_size=8, shuffle=False, append_eos=True
    )
    dm.setup("fit")
    return dm, next(iter(dm.train_dataloader()))


def _capture(model):
    logged = {}
    model.log = lambda k, v, **kw: logged.__setitem__(k, v)
    model.log_dict = lambda d, **kw: logged.update(d)
    return logged


def test_score_columns_reach_the_batch_and_bad_scores_are_named(tmp_path):
    rows = _rows(3)
    dm, batch = _datamodule(tmp_path, rows)
    assert batch["chosen_scores"].shape == (8, 3) and batch["rejected_scores"].shape == (8, 3)
    src = dm.datasets["train"].source_index
    expected = torch.tensor([rows[src[i]]["chosen_scores"] for i in batch["index"]])
    torch.testing.assert_close(batch["chosen_scores"], expected)
    rows[2]["rejected_scores"] = "high"
    with pytest.raises(ValueError, match=r"row 2.*rejected_scores"):
        _datamodule(tmp_path, rows)
    rows[2]["rejected_scores"] = [1.0]  # length differs from chosen_scores
    with pytest.raises(ValueError, match=r"row 2"):
        _datamodule(tmp_path, rows)


def test_d_dpo_and_dp_dpo_losses(tmp_path):
    _, batch = _datamodule(tmp_path, _rows(1))
    assert batch["chosen_scores"].shape == (8, 1)
    model = DPO(loss_type="distill", lora=None, learning_rate=1e-3)
    model.configure_model()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    _capture(model)
    loss = model.training_step(batch, 0)
    policy, ref, _ = model.concatenated_logps(batch)
    h = preference_margin(*policy.chunk(2), *ref.chunk(2))
    expected = distillation_losses(
        batch["chosen_scores"][:, 0], batch["rejected_scores"][:, 0], h, 0.1
    ).mean()
    torch.testing.assert_close(loss, expected)
    # dp-DPO adds gamma * KL_hat (on the data's responses)
    dp = DPO(loss_type="distill", kl_gamma_start=0.5, kl_samples="data")
    dp.configure_model()
    dp.backbone.load_state_dict(model.backbone.state_dict())
    logged = _capture(dp)
    loss_dp = dp.training_step(batch, 0)
    kl = (ref - policy).reshape(2, -1).mean(0).mean()
    torch.testing.assert_close(loss_dp, expected + 0.5 * kl, rtol=1e-5, atol=1e-6)
    assert logged["train/kl/forward"].item() == pytest.approx(kl.item(), rel=1e-5)


def test_e_dpo_takes_the_minimum_over_the_ensemble_per_batch(tmp_path):
    _, batch = _datamodule(tmp_path, _rows(3))
    model = DPO(loss_type="distill")
    model.configure_model()
    logged = _capture(model)
    loss = model.training_step(batch, 0)
    policy, ref, _ = model.concatenated_logps(batch)
    h = preference_margin(*policy.chunk(2), *ref.chunk(2))
    expected, selected = ensemble_distillation_loss(
        batch["chosen_scores"].T, batch["rejected_scores"].T, h, 0.1
    )
    torch.testing.assert_close(loss, expected)
    assert logged["train/ensemble/selected"].item() == selected.item()
    from lightning_robust.weighting import TVBall

    robust = DPO(loss_type="distill", weighting=TVBall(rho=0.2))
    robust.configure_model()
    _capture(robust)
    with pytest.raises(ValueError, match="e-DPO"):
        robust.training_step(batch, 0)


def test_distill_evaluation_without_scores_reports_the_dpo_loss(tmp_path):
    rows = [{k: v for k, v in r.items() if "scores" not in k} for r in _rows(1)]
    _, batch = _datamodule(tmp_path, rows)
    model = DPO(loss_type="distill")
    model.configure_model()
    model.eval()
    policy, ref, _ = model.concatenated_logps(batch)
    losses, _, _ = model._losses(batch, policy, ref)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
    model.train()
    with pytest.raises(KeyError, match="chosen_scores"):
        model._losses(batch, policy, ref)
