"""configs/strategy/*.yaml: DeepSpeed ZeRO-2/3 (+ CPU offload) and multi-node overlays.

Lightning's DeepSpeed strategy needs CUDA to *run*; on CPU these tests construct the strategy
from each YAML (deepspeed is installed) and check that the stage and offload settings arrive in
the DeepSpeed config it would hand to ``deepspeed.initialize``, and that each overlay parses on
top of a tiny DPO and a tiny reward-model recipe through the CLI (accelerator forced to CPU).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from lightning_robust.cli import build_cli

pytest.importorskip("deepspeed")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STRATEGIES = sorted((CONFIGS / "strategy").glob("*.yaml"))
RECIPES = {"dpo": CONFIGS / "dpo" / "tiny_dpo.yaml", "reward": CONFIGS / "quickstart.yaml"}
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1"]

# what each overlay must put into DeepSpeed's zero_optimization section
EXPECTED = {
    "deepspeed_zero2": {"stage": 2, "offload_optimizer": None, "offload_param": None},
    "deepspeed_zero3": {"stage": 3, "offload_optimizer": None, "offload_param": None},
    "deepspeed_zero3_offload": {"stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"},
    "multi_node": {"stage": 3, "offload_optimizer": None, "offload_param": None},
}


def _trainer_section(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["trainer"]


def _construct(spec: dict):
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


def _check_zero(config: dict, expected: dict) -> None:
    zero = config["zero_optimization"]
    assert zero["stage"] == expected["stage"]
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device")
        assert device == expected[key], f"{key}: {device!r}"


def test_every_strategy_overlay_is_covered():
    assert {p.stem for p in STRATEGIES} == set(EXPECTED)


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.stem)
def test_strategy_constructs_with_the_configured_zero_settings(path):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    trainer = _trainer_section(path)
    assert trainer["precision"] == "bf16-mixed"
    strategy = _construct(trainer["strategy"])
    assert isinstance(strategy, DeepSpeedStrategy)
    _check_zero(strategy.config, EXPECTED[path.stem])
    if path.stem == "deepspeed_zero3_offload":
        # torch AdamW next to CPU offload: DeepSpeed refuses it unless told otherwise
        assert strategy.config["zero_force_ds_cpu_optimizer"] is False


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.stem)
def test_overlay_parses_on_a_recipe_through_the_cli(path, recipe, tmp_path, monkeypatch):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(RECIPES[recipe]), "--config", str(path), *CPU], run=False)
    assert isinstance(cli.trainer.strategy, DeepSpeedStrategy)
    _check_zero(cli.trainer.strategy.config, EXPECTED[path.stem])
    assert cli.trainer.precision == "bf16-mixed"
    assert getattr(cli.model, "backbone", None) is None  # nothing loaded while parsing


def test_multi_node_overlay_sets_nodes_and_devices(tmp_path, monkeypatch):
    trainer = _trainer_section(CONFIGS / "strategy" / "multi_node.yaml")
    assert trainer["num_nodes"] == 2 and trainer["devices"] == 8 and trainer["accelerator"] == "gpu"
    # ZeRO-2 after it keeps the nodes and devices and switches the stage
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "--config",
            str(RECIPES["dpo"]),
            "--config",
            str(CONFIGS / "strategy" / "multi_node.yaml"),
            "--config",
            str(CONFIGS / "strategy" / "deepspeed_zero2.yaml"),
            *CPU[:2],
        ],
        run=False,
    )
    assert cli.trainer.num_nodes == 2
    _check_zero(cli.trainer.strategy.config, EXPECTED["deepspeed_zero2"])


@pytest.mark.parametrize("cls_name", ["RewardModel", "DPO"])
def test_gradient_checkpointing_switch(cls_name):
    from lightning_robust import modules

    model = getattr(modules, cls_name)(
        gradient_checkpointing=True,
        tiny_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
    )
    model.configure_model()
    assert model.backbone.is_gradient_checkpointing
