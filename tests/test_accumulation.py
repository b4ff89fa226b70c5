"""Accumulation invariance (issue 6): ERM with Lightning's accumulation equals the full batch, and
``scope="accumulated"`` makes a robust objective invariant to the micro-batch split.

TRL's invariance idea: the same optimiser batch of 8 pairs, delivered as 4 x 2, 2 x 4 or 1 x 8,
must give the same parameters. For ERM Lightning's ``accumulate_grad_batches`` already does (the
mean of means of equal chunks is the mean); for a robust weighting the worst case of each
micro-batch is not the worst case of the batch (``local``/``global`` scope differ), while the
``accumulated`` scope computes the weights over all 8 and must match the full batch.
"""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer, seed_everything

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.modules import RewardModel
from lightning_robust.modules.base import StepTerms, concat_terms, split_batch
from lightning_robust.weighting import ERM, GroupDRO, TVBall

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}


class RecordingRewardModel(RewardModel):
    """Records the loss of every logged step (one per optimiser step under ``accumulated``)."""

    def log_step(self, terms: StepTerms, out, loss: torch.Tensor) -> None:
        super().log_step(terms, out, loss)
        self.recorded.append(float(loss.detach()))


def _fit(weighting, batch_size: int, accumulate: int = 1, micro_batch_size=None, epochs: int = 2):
    seed_everything(0)
    model = RecordingRewardModel(
        weighting=weighting,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        lr_schedule="constant",
        tiny_config=TINY,
        micro_batch_size=micro_batch_size,
    )
    model.recorded = []
    data = PreferenceDataModule(
        train="synthetic",
        batch_size=batch_size,
        max_length=48,
        val_fraction=0.0,
        shuffle=True,
        synthetic=SyntheticShiftConfig(num_train=16, num_eval=8, seed=2, length_pair_share=0.0),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    try:
        trainer.fit(model, datamodule=data)
    finally:
        torch.use_deterministic_algorithms(False)
    assert trainer.global_step == epochs * 16 // (batch_size * accumulate)
    params = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
    return params, model.recorded, model


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def full_batch_tv():
    return _fit(TVBall(0.3, scope="global"), batch_size=8)


def test_erm_accumulation_4x2_equals_1x8():
    full, full_losses, _ = _fit(ERM(), batch_size=8)
    accumulated, micro_losses, _ = _fit(ERM(), batch_size=2, accumulate=4)
    assert _max_diff(accumulated, full) < 1e-5
    # the loss trajectory: each optimiser step's loss is the mean of its 4 micro-batch losses
    per_step = torch.tensor(micro_losses).view(-1, 4).mean(1)
    torch.testing.assert_close(per_step, torch.tensor(full_losses), rtol=0, atol=1e-5)
    # and training moved the parameters well beyond that tolerance
    seed_everything(0)
    start = RewardModel(tiny_config=TINY)
    start.configure_model()
    initial = torch.cat([p.detach().flatten() for p in start.backbone.parameters()])
    assert _max_diff(full, initial) > 1e-3


@pytest.mark.parametrize("micro", [2, 4, 8])
def test_accumulated_scope_is_invariant_to_the_split(full_batch_tv, micro):
    full, full_losses, _ = full_batch_tv
    params, losses, model = _fit(
        TVBall(0.3, scope="accumulated"), batch_size=8, micro_batch_size=micro
    )
    assert model.automatic_optimization is False
    assert _max_diff(params, full) < 1e-5
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(full_losses), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_local_scope_depends_on_the_split(full_batch_tv):
    full, _, _ = full_batch_tv
    params, _, _ = _fit(TVBall(0.3, scope="local"), batch_size=2, accumulate=4)
    assert _max_diff(params, full) > 1e-3


@pytest.mark.slow
def test_accumulated_group_dro_updates_once_per_optimiser_step():
    """GroupDRO under ``accumulated`` sees all 8 pairs at once: its q equals the full batch's."""
    _, _, full = _fit(GroupDRO(2, eta=0.5, scope="global"), batch_size=8, epochs=1)
    _, _, split = _fit(
        GroupDRO(2, eta=0.5, scope="accumulated"), batch_size=8, micro_batch_size=2, epochs=1
    )
    torch.testing.assert_close(split.weighting.q, full.weighting.q, rtol=0, atol=1e-7)
    assert not torch.allclose(full.weighting.q, torch.full((2,), 0.5, dtype=torch.float64))


def test_split_batch_and_concat_terms():
    batch = {
        "a": torch.arange(5),
        "b": torch.ones(5, 3),
        "names": list("vwxyz"),
        "scalar": torch.tensor(2.0),
    }
    chunks = split_batch(batch, 2)
    assert [c["a"].tolist() for c in chunks] == [[0, 1], [2, 3], [4]]
    assert chunks[2]["names"] == ["z"] and all(c["scalar"] is batch["scalar"] for c in chunks)
    assert split_batch(batch, 5) == [batch]
    with pytest.raises(ValueError, match="micro_batch_size"):
        split_batch(batch, 0)
    parts = [
        StepTerms(torch.tensor([1.0, 2.0]), extra=torch.tensor(3.0)),
        StepTerms(torch.tensor([4.0]), extra=torch.tensor(6.0)),
    ]
    joined = concat_terms(parts)
    assert joined.losses.tolist() == [1.0, 2.0, 4.0]
    assert joined.extra.item() == pytest.approx((2 * 3.0 + 1 * 6.0) / 3)  # mean over the union


def test_micro_batch_size_needs_the_accumulated_scope():
    with pytest.raises(ValueError, match="micro_batch_size"):
        RewardModel(micro_batch_size=0)
    model = RewardModel(weighting=TVBall(0.3), micro_batch_size=2, tiny_config=TINY)
    model.configure_model()
    with pytest.raises(ValueError, match="scope='accumulated'"):
        model.robust_training_step({"x": torch.zeros(2)}, 0, model.step_terms)


def test_chunk_losses_sum_to_the_robust_loss():
    """W * sum over chunks of sum q_i l_i is the robust loss (W = 1 in one process)."""
    losses = torch.tensor([0.3, 1.2, 0.7, 2.0, 0.1, 0.9], dtype=torch.float64)
    tv = TVBall(0.3, scope="accumulated")
    out = tv(losses)
    parts = [tv.chunk_loss(out.weights[i : i + 2], losses[i : i + 2]) for i in range(0, 6, 2)]
    assert sum(parts).item() == pytest.approx(out.loss.item(), abs=1e-12)
    masked = TVBall(0.3, scope="accumulated", nan_policy="mask")
    bad = losses.clone()
    bad[1] = float("nan")
    out = masked(bad)
    assert out.weights[1] == 0
    assert torch.isfinite(masked.chunk_loss(out.weights[:2], bad[:2]))


def _fit_dpo(weighting, micro_batch_size=None):
    from lightning_robust.modules import DPO

    seed_everything(0)
    model = DPO(
        weighting=weighting,
        tiny_config=TINY,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        lr_schedule="constant",
        micro_batch_size=micro_batch_size,
    )
    model.configure_model()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # move the policy off its reference (else every loss is log 2)
        for p in model.backbone.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    data = PreferenceDataModule(
        train="synthetic",
        batch_size=8,
        max_length=40,
        val_fraction=0.0,
        append_eos=True,
        synthetic=SyntheticShiftConfig(num_train=16, num_eval=8, seed=2, length_pair_share=0.0),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    return torch.cat([p.detach().flatten() for p in model.backbone.parameters()])


@pytest.mark.slow
def test_dpo_through_the_generic_step_is_invariant_to_the_split():
    full = _fit_dpo(TVBall(0.3, scope="global"))
    split = _fit_dpo(TVBall(0.3, scope="accumulated"), micro_batch_size=2)
    assert _max_diff(split, full) < 1e-5
