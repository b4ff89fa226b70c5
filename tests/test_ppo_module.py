"""PPO / DR-PPO LightningModule (docs/ALGORITHMS.md §4) on the synthetic prompt task."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch

from lightning_robust.data import PromptDataModule
from lightning_robust.data.synthetic_prompts import SyntheticPromptConfig
from lightning_robust.models.rollout import Rollout
from lightning_robust.modules import PPO
from lightning_robust.objectives.rl import kl_regularised_returns, ppo_advantages, ppo_token_rewards
from lightning_robust.weighting import TVBall

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny-model steps gain nothing from intra-op threads, and on a loaded machine two threads
    make them tens of times slower (spin-waiting); scoped to each test here, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def data(num_train=8, num_val=4, batch_size=4, seed=0):
    return PromptDataModule(
        batch_size=batch_size,
        max_prompt_length=32,
        synthetic=SyntheticPromptConfig(num_train=num_train, num_val=num_val, seed=seed),
    )


def module(**kwargs):
    options = dict(
        max_new_tokens=6,
        learning_rate=1e-2,
        tiny_config=TINY,
        gold_reward_model="synthetic:gold",
        ppo_epochs=2,
        num_minibatches=2,
        temperature=1.0,
    )
    options.update(kwargs)
    return PPO(**options)


def fit(model, datamodule, tmp_path, val=False, **trainer_kwargs):
    L.seed_everything(0, verbose=False)
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs", version="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val else 0,
        default_root_dir=tmp_path,
        deterministic=True,
        log_every_n_steps=1,
    )
    options.update(trainer_kwargs)
    trainer = L.Trainer(**options)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def parameters(model) -> dict[str, torch.Tensor]:
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state.update({f"value_head.{k}": v for k, v in model.value_head.state_dict().items()})
    return {k: v.detach().clone() for k, v in state.items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rho_zero_dr_ppo_is_ppo_exactly(tmp_path):
    """docs/ALGORITHMS.md §4 edge case: rho = 0 gives standard PPO exactly (both versions)."""
    ppo = module()
    fit(ppo, data(), tmp_path / "ppo")
    expected = parameters(ppo)
    fresh = module()
    fresh.configure_model()
    assert not same(expected, parameters(fresh)), "no training happened"
    assert float(expected["value_head.weight"].abs().sum()) > 0  # the value head learned
    for i, kwargs in enumerate(
        [dict(dr_version="A"), dict(dr_version="B"), dict(scale_at="advantages")]
    ):
        dr = module(weighting=TVBall(rho=0.0), **kwargs)
        fit(dr, data(), tmp_path / f"dr{i}")
        assert same(expected, parameters(dr)), kwargs


def test_positive_rho_changes_the_update(tmp_path):
    ppo = module(ppo_epochs=1, num_minibatches=1)
    fit(ppo, data(num_train=4), tmp_path / "ppo")
    dr = module(ppo_epochs=1, num_minibatches=1, weighting=TVBall(rho=0.5))
    fit(dr, data(num_train=4), tmp_path / "dr")
    assert not same(parameters(ppo), parameters(dr))


def synthetic_rollout(n=4, width=2, length=3) -> Rollout:
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)[:n, :length]
    return Rollout(
        input_ids=torch.zeros(n, width + length, dtype=torch.long),
        attention_mask=torch.ones(n, width + length, dtype=torch.long),
        prompt_width=width,
        response_mask=mask,
        has_eos=torch.tensor([True, True, False, True])[:n],
        prompt_index=torch.arange(n),
    )


@pytest.mark.parametrize(
    "version, scale_at", [("A", "rewards"), ("A", "advantages"), ("B", "rewards")]
)
def test_dr_ppo_targets_follow_algorithm_2(version, scale_at):
    """prepare(): TV weights on -v (v = KL-regularised returns after the EOS penalty), n q applied
    where the version says (§4), computed independently here from the objectives."""
    model = module(weighting=TVBall(rho=0.2), dr_version=version, scale_at=scale_at, beta=0.02)
    rollout = synthetic_rollout()
    mask = rollout.response_mask
    torch.manual_seed(0)
    old = -torch.rand(4, 3) * mask
    ref = -torch.rand(4, 3) * mask
    values = torch.randn(4, 3) * mask
    scores = torch.tensor([1.0, -0.5, 0.3, 2.0])
    targets, stats = model.prepare(rollout, scores, old, values, ref)

    penalised = scores - torch.tensor(
        [0.0, 0.0, 1.0, 0.0]
    )  # row 2 has no EOS: missing-EOS penalty 1
    v = kl_regularised_returns(ppo_token_rewards(old, ref, penalised, mask, 0.02), mask)
    nq = 4 * TVBall(rho=0.2)(-v).weights
    assert not torch.allclose(nq, torch.ones(4))
    scales = nq if version == "A" else None
    advantages, returns, _ = ppo_advantages(
        old, ref, penalised, values, mask, 0.02, sample_scales=scales, scale_at=scale_at
    )
    assert torch.allclose(targets["advantages"], advantages, atol=1e-6)
    assert torch.allclose(targets["returns"], returns, atol=1e-6)
    if version == "B":
        assert torch.allclose(targets["sample_weights"], nq)
    else:
        assert "sample_weights" not in targets
    assert stats["robust/max_weight"] == pytest.approx(float(nq.max() / 4), rel=1e-6)


def test_logs_value_metrics_and_rewards(tmp_path):
    model = module()
    trainer = fit(model, data(), tmp_path, val=True)
    m = trainer.callback_metrics
    for key in (
        "train/reward/proxy",
        "train/reward/gold",
        "train/kl",
        "train/kl_k1",
        "train/value/loss",
        "train/value/explained_variance",
        "train/policy/clip_fraction",
        "train/response_length",
        "train/eos_fraction",
        "val/reward/proxy",
        "val/reward/gold",
        "val/kl",
    ):
        assert key in m and math.isfinite(float(m[key])), key
    # global_step counts optimiser updates: 2 rollouts x ppo_epochs 2 x 2 minibatches
    assert trainer.global_step == 8
    assert 0.0 <= float(m["train/policy/clip_fraction"]) <= 1.0


def test_bad_options_name_the_option():
    for kwargs, name in [
        (dict(dr_version="C"), "dr_version"),
        (dict(scale_at="returns"), "scale_at"),
        (dict(beta=-1.0), "beta"),
        (dict(lam=1.5), "lam"),
        (dict(num_minibatches=0), "num_minibatches"),
    ]:
        with pytest.raises(ValueError, match=name):
            PPO(**kwargs)


@pytest.mark.slow
def test_ppo_raises_the_gold_reward(tmp_path):
    """Seeded learning check: the mean gold reward of the last rollouts beats the first ones'."""
    model = module(
        tiny_config=None, max_new_tokens=8, learning_rate=5e-3, ppo_epochs=2, num_minibatches=1
    )
    fit(model, data(num_train=16 * 30, batch_size=16), tmp_path)
    with open(tmp_path / "logs" / "run" / "metrics.csv") as f:
        gold = [
            float(r["train/reward/gold"]) for r in csv.DictReader(f) if r.get("train/reward/gold")
        ]
    assert len(gold) == 30
    first, last = sum(gold[:5]) / 5, sum(gold[-5:]) / 5
    assert last > first + 0.2, (first, last)


def test_robust_scales_use_the_size_of_the_solved_batch():
    """n q_i with n the batch the weights were solved on (all ranks under scope='global'), so
    DDP's gradient averaging over ranks gives sum_i q_i grad l_i; uniform q gives no scale."""
    from lightning_robust.weighting import WeightingOutput

    local = WeightingOutput(loss=torch.tensor(0.0), weights=torch.tensor([0.1, 0.3, 0.2, 0.4]))
    assert torch.allclose(local.sample_scales(), torch.tensor([0.4, 1.2, 0.8, 1.6]))
    gathered = WeightingOutput(
        loss=torch.tensor(0.0),
        weights=torch.tensor([0.1, 0.3]),
        global_weights=torch.tensor([0.1, 0.3, 0.2, 0.4]),
    )
    assert torch.allclose(gathered.sample_scales(), torch.tensor([0.4, 1.2]))
    uniform = WeightingOutput(loss=torch.tensor(0.0), weights=torch.full((3,), 1 / 3))
    assert uniform.sample_scales() is None
