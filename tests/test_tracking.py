"""The logger overlays apply on top of a full config, and every GPU recipe names a logger."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from lightning_robust.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GPU_RECIPES = [
    "reward/btl.yaml",
    "reward/dr_tv.yaml",
    "reward/dr_chi2.yaml",
    "dpo/dpo.yaml",
    "dpo/dr_dpo_tv.yaml",
    "dpo/kldpo.yaml",
    "dpo/wdpo.yaml",
    "grpo/drro_grpo.yaml",
    "ppo/dr_ppo.yaml",
]


@pytest.mark.parametrize(
    "name,expected", [("tensorboard", "TensorBoardLogger"), ("csv", "ResumableCSVLogger")]
)
def test_logger_overlay_applies(name, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            "--config",
            str(CONFIGS / "logger" / f"{name}.yaml"),
        ],
        run=False,
    )
    assert type(cli.trainer.logger).__name__ == expected


def test_wandb_overlay_names_an_existing_logger():
    # constructing it needs the 'tracking' extra (wandb); check the class it names instead
    spec = yaml.safe_load((CONFIGS / "logger" / "wandb.yaml").read_text())["trainer"]["logger"]
    module, _, cls = spec["class_path"].rpartition(".")
    assert cls == "WandbLogger" and hasattr(importlib.import_module(module), cls)
    assert spec["init_args"]["log_model"] is False


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipes_log_somewhere(recipe):
    trainer = yaml.safe_load((CONFIGS / recipe).read_text())["trainer"]
    assert trainer["logger"]["class_path"].endswith("TensorBoardLogger")
    assert trainer["logger"]["init_args"]["save_dir"] == trainer["default_root_dir"]
