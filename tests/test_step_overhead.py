"""Per-step overhead cuts keep the numbers exact (issue 14): the ERM fast path equals the
weighting call, clipping with the screened total norm equals Lightning's ``clip_grad_norm_``, and
the on-device metric window logs the means of the steps it saw."""

from __future__ import annotations

import torch
from lightning import LightningModule, Trainer

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.modules import RewardModel
from lightning_robust.modules.metrics import StepWindow
from lightning_robust.weighting import ERM

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}


def test_erm_fast_path_equals_the_weighting_call():
    model = RewardModel(tiny_config=TINY)
    losses = torch.randn(7, dtype=torch.float64, requires_grad=True)
    fast = model._weigh(losses, None)
    full = ERM()(losses)
    assert torch.equal(fast.loss, full.loss)
    assert torch.equal(fast.weights, full.weights)
    assert fast.stats.keys() == full.stats.keys()
    for k in full.stats:
        torch.testing.assert_close(fast.stats[k], full.stats[k], rtol=0, atol=1e-12)
    (g_fast,) = torch.autograd.grad(fast.loss, losses)
    (g_full,) = torch.autograd.grad(full.loss, losses)
    assert torch.equal(g_fast, g_full)


def _fit_params(lightning_clipping: bool, steps: int = 3, clip: float | None = 0.05):
    torch.manual_seed(0)
    model = RewardModel(tiny_config=TINY, learning_rate=1e-2, warmup_ratio=0.0)
    if lightning_clipping:  # Lightning's own clip_grad_norm_ (a second norm pass)
        model.configure_gradient_clipping = lambda *a, **k: (
            LightningModule.configure_gradient_clipping(model, *a, **k)
        )
    dm = PreferenceDataModule(
        train="synthetic",
        batch_size=4,
        max_length=32,
        val_fraction=0.0,
        shuffle=False,
        synthetic=SyntheticShiftConfig(num_train=4 * steps, num_eval=4, seed=1),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=clip,
        log_every_n_steps=2,
    )
    trainer.fit(model, datamodule=dm)
    return {n: p.detach().clone() for n, p in model.backbone.named_parameters()}, trainer


def test_clipping_with_the_screened_norm_equals_lightning_clipping():
    ours, trainer = _fit_params(False)
    plain, _ = _fit_params(True)
    assert ours.keys() == plain.keys()
    assert all(torch.equal(ours[k], plain[k]) for k in ours)
    unclipped, _ = _fit_params(False, clip=None)  # the clipping was active
    assert not all(torch.equal(ours[k], unclipped[k]) for k in ours)
    # the windowed metrics were logged (3 steps, every 2: a window of 2 and the last one)
    assert (
        "train/loss" in trainer.callback_metrics and "train/robust/ess" in trainer.callback_metrics
    )


def test_step_window_means():
    window = StepWindow()
    window.add({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    window.add({"a": torch.tensor(3.0)})
    assert window.steps == 2
    means = window.flush()
    assert means["a"].item() == 2.0 and means["b"].item() == 4.0
    assert window.steps == 0 and window.flush() == {}


def test_dpo_prompt_shared_rows_equal_two_rows_policy_and_reference():
    """DPO's concatenated log-probs (policy and frozen reference) from the packed pair rows that
    ``on_before_batch_transfer`` adds equal those of the two-row forward."""
    from lightning_robust.data.collator import pack_shared_prompts
    from lightning_robust.modules import DPO
    from tests.test_logprobs import _pair_batch

    model = DPO(tiny_config=TINY)
    model.configure_model()
    with torch.no_grad():  # policy != reference, so the two are told apart
        for p in model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _pair_batch()
    policy, ref, _ = model.concatenated_logps(batch)
    packed = pack_shared_prompts(batch)
    policy_packed, ref_packed, _ = model.concatenated_logps({**batch, **packed})
    torch.testing.assert_close(policy_packed, policy, rtol=0, atol=1e-4)
    torch.testing.assert_close(ref_packed, ref, rtol=0, atol=1e-4)
    assert not torch.allclose(policy, ref, atol=1e-3)


def test_reward_model_prompt_shared_rows_equal_two_rows():
    """Rewards read at each answer's last token of the packed row equal the classifier's
    two-row rewards (full fine-tuning and LoRA)."""
    from lightning_robust.data.collator import pack_shared_prompts
    from lightning_robust.models.lora import LoraOptions
    from tests.test_logprobs import _pair_batch

    batch = _pair_batch()
    packed = {**batch, **pack_shared_prompts(batch)}
    for lora in (None, LoraOptions(r=4, dropout=0.0)):
        torch.manual_seed(0)
        model = RewardModel(tiny_config=TINY, lora=lora)
        model.configure_model()
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(0.05 * torch.randn_like(p))
        assert model.uses_pair_rows()
        chosen, rejected = model.pair_rewards(batch)
        chosen_p, rejected_p = model.pair_rewards(packed)
        torch.testing.assert_close(chosen_p, chosen, rtol=0, atol=1e-5)
        torch.testing.assert_close(rejected_p, rejected, rtol=0, atol=1e-5)
