"""Every tiny DPO-family config under configs/dpo/ runs a couple of steps through the CLI (offline)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lightning_robust.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dpo"
TINY = sorted(CONFIGS.glob("tiny_*.yaml"))


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_dpo_config_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(path),
        "--trainer.fast_dev_run=2",
        "--trainer.enable_progress_bar=false",
    ]
    cli = build_cli(args)
    m = cli.trainer.callback_metrics
    assert math.isfinite(float(m["train/loss"])) and "val/rewards/accuracies" in m


def test_paper_recipes_name_the_papers_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
    dr = build_cli(["--config", str(CONFIGS / "dr_dpo_tv.yaml"), *cpu], run=False).model
    assert dr.model_options.name_or_path == "google/gemma-2b-it" and dr.hparams.beta == 0.1
    assert dr.lora_options.r == 32 and dr.lora_options.alpha == 64
    assert dr.hparams.reference == "lora_disabled"
    assert type(dr.weighting).__name__ == "TVBall"
    kl = build_cli(["--config", str(CONFIGS / "kldpo.yaml"), *cpu], run=False)
    assert kl.model.weighting.tau == 0.05 and kl.model.weighting.form == "seed"
    assert kl.model.hparams.beta == 0.01 and kl.model.optimizer_options.min_lr_ratio == 0.1
    assert kl.datamodule.batch_size * kl.trainer.accumulate_grad_batches * 8 == 128
    wd = build_cli(["--config", str(CONFIGS / "wdpo.yaml"), *cpu], run=False)
    assert wd.model.hparams.wdpo_rho == 0.01 and wd.datamodule.batch_size == 1
    assert wd.datamodule.batch_size * wd.trainer.accumulate_grad_batches * 8 == 128


def test_lora_from_a_config_builds_adapters(tmp_path, monkeypatch):
    """The CLI hands LoRA options over as the dataclass; hparams hold the config's dict."""
    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        str(CONFIGS / "tiny_dpo.yaml"),
        "--model.init_args.lora={r: 4, alpha: 8, dropout: 0.0}",
    ]
    model = build_cli(args, run=False).model
    model.configure_model()
    assert model.hparams.reference == "lora_disabled" and model.reference_model is None
    assert any("lora_" in n for n, _ in model.backbone.named_parameters())
