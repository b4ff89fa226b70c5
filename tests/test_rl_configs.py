"""Every configs/grpo and configs/ppo YAML parses and constructs through the CLI; tiny ones run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lightning_robust.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted([*(CONFIGS / "grpo").glob("*.yaml"), *(CONFIGS / "ppo").glob("*.yaml")])
TINY = [p for p in ALL if p.stem.startswith("tiny_")]
# one tiny config runs in the fast suite, the others under `slow`
FAST_RUNS = {"tiny_drro_soft_dynamic"}  # PPO fits are covered fast by tests/test_ppo_module.py
CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",
]


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny-model steps gain nothing from intra-op threads, and on a loaded machine two threads
    make them tens of times slower (spin-waiting); scoped to each test here, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_every_method_has_its_configs():
    names = {f"{p.parent.name}/{p.stem}" for p in ALL}
    assert {
        "grpo/tiny_grpo",
        "grpo/tiny_drro_soft_dynamic",
        "grpo/tiny_drro_hard",
        "grpo/tiny_dro",
        "grpo/drro_grpo",
        "ppo/tiny_ppo",
        "ppo/tiny_dr_ppo",
        "ppo/dr_ppo",
    } <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_constructs_on_cpu_without_weights(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(path), *CPU], run=False)
    assert type(cli.model).__name__ == {"grpo": "GRPO", "ppo": "PPO"}[path.parent.name]
    assert type(cli.datamodule).__name__ == "PromptDataModule"
    assert cli.model.backbone is None  # weights load in configure_model, never here
    assert cli.model.automatic_optimization is False
    # the CLI links the policy name to the data module's tokenizer
    assert cli.datamodule.hparams.tokenizer == cli.model.model_options.name_or_path


def test_drro_grpo_recipe_names_s003s_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(CONFIGS / "grpo" / "drro_grpo.yaml"), *CPU], run=False)
    hp = cli.model.hparams
    assert cli.model.model_options.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cli.model.lora_options.target_modules == "all-linear"
    assert hp.shaping == "drro_soft" and hp.budget == "dynamic" and hp.bonus_form == "weight"
    assert hp.kl_coef == 0.0 and hp.ppo_epochs == 1
    opt = cli.model.optimizer_options
    assert opt.lr_schedule == "constant" and opt.warmup_ratio == 0.0
    assert hp.reward_model == "OpenAssistant/reward-model-deberta-v3-base"
    assert hp.gold_reward_model == "sileod/deberta-v3-large-tasksource-rlhf-reward-model"
    data = cli.datamodule.hparams
    assert data.chat_template is False
    assert str(data.val["split"]).endswith("[:512]")


def test_dr_ppo_recipe_names_s000s_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(CONFIGS / "ppo" / "dr_ppo.yaml"), *CPU], run=False)
    model, hp = cli.model, cli.model.hparams
    assert model.model_options.name_or_path == "google/gemma-2b-it"
    assert (
        hp.beta == 0.02
        and model.optimizer_options.learning_rate == 1e-5
        and hp.lam == 0.95
        and hp.gamma == 1.0
    )
    assert hp.clip == 0.2 and hp.value_clip == 0.2 and hp.missing_eos_penalty == 1.0
    assert model.lora_options.r == 32 and model.lora_options.alpha == 64
    assert type(model.weighting).__name__ == "TVBall" and model.weighting.rho == 0.4
    assert hp.dr_version == "A" and hp.scale_at == "rewards"
    assert cli.datamodule.hparams.batch_size == 8
    train = cli.datamodule.hparams.train
    assert train["path"] == "llm-blender/Unified-Feedback" and train["split"] == "train[:5000]"


@pytest.mark.parametrize(
    "path",
    [p if p.stem in FAST_RUNS else pytest.param(p, marks=pytest.mark.slow) for p in TINY],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_tiny_config_fits_two_steps_through_the_cli(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(path),
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=null",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.max_new_tokens=6",
        "--data.init_args.batch_size=2",
    ]
    cli = build_cli(args)
    metrics = cli.trainer.callback_metrics
    updates = cli.model.hparams.ppo_epochs * cli.model.hparams.num_minibatches
    assert (
        cli.trainer.global_step == 2 * updates
    )  # two rollouts, each ppo_epochs x minibatches updates
    folder = Path(cli.trainer.log_dir)
    assert (folder / "reward_kl_frontier.png").exists() and (
        folder / "reward_kl_frontier.csv"
    ).exists()
    for key in (
        "train/loss",
        "train/reward/proxy",
        "train/reward/gold",
        "train/kl",
        "val/reward/gold",
        "val/kl",
    ):
        assert key in metrics and math.isfinite(float(metrics[key])), key
