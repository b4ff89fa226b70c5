"""BenchmarkCallback: logs eval/<benchmark>/<subset> during a tiny fit, writes JSON and PNG."""

from __future__ import annotations

import csv
import json

import pytest
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger

from lightning_robust.callbacks import BenchmarkCallback
from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.evals import HHHAlignment, RewardBench
from lightning_robust.modules import RewardModel


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def benchmarks(tmp_path):
    rb = _write(
        tmp_path / "rb.jsonl",
        [
            {
                "prompt": "tell me about the weather",
                "chosen": "it is warm and sunny today",
                "rejected": "no",
                "subset": "alpacaeval-easy",
            },
            {
                "prompt": "how do i cook rice",
                "chosen": "use water and salt then wait",
                "rejected": "bad food",
                "subset": "alpacaeval-easy",
            },
            {
                "prompt": "write code",
                "chosen": "here is the program",
                "rejected": "sorry no",
                "subset": "hep-python",
            },
            {
                "prompt": "is it safe",
                "chosen": "yes it is safe",
                "rejected": "maybe",
                "subset": "donotanswer",
            },
        ],
    )
    hhh = _write(
        tmp_path / "hhh.jsonl",
        [
            {
                "input": "help me",
                "targets": {"choices": ["sure i can help", "no"], "labels": [1, 0]},
                "category": "helpful",
            },
            {
                "input": "is it true",
                "targets": {"choices": ["i do not know", "yes always"], "labels": [1, 0]},
                "category": "honest",
            },
        ],
    )
    return [RewardBench(rb), HHHAlignment(hhh, configs=["helpful", "honest"])]


def test_tiny_fit_logs_keys_and_writes_json_and_png(tmp_path, benchmarks):
    out = tmp_path / "bench"
    previous = {"eval/rewardbench/alpacaeval-easy": 0.5, "eval/hhh/overall": 0.25}
    callback = BenchmarkCallback(benchmarks, output_dir=str(out), previous=previous, max_length=64)
    dm = PreferenceDataModule(
        train="synthetic",
        tokenizer="tiny",
        batch_size=16,
        max_length=64,
        synthetic=SyntheticShiftConfig(num_train=64, num_eval=32),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path, name="logs", version="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    model = RewardModel("tiny", learning_rate=1e-3)
    trainer.fit(model, datamodule=dm)

    expected = {
        "eval/rewardbench/alpacaeval-easy",
        "eval/rewardbench/hep-python",
        "eval/rewardbench/donotanswer",
        "eval/rewardbench/chat",
        "eval/rewardbench/reasoning",
        "eval/rewardbench/safety",
        "eval/rewardbench/score",
        "eval/hhh/helpful",
        "eval/hhh/honest",
        "eval/hhh/overall",
    }
    assert expected <= set(trainer.callback_metrics)
    assert "eval/rewardbench/chat_hard" not in trainer.callback_metrics  # missing, not 0
    with open(tmp_path / "logs" / "run" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert expected <= set(header)

    data = json.loads((out / "benchmarks.json").read_text())
    assert len(data["runs"]) == 1  # validation at the last step; fit end does not repeat it
    run = data["runs"][0]
    assert run["stage"] == "fit" and run["global_step"] == 2
    assert set(run["benchmarks"]) == {"rewardbench", "hhh"}
    assert "Chat Hard" in run["benchmarks"]["rewardbench"]["details"]["missing_sections"]
    assert data["previous"]["hhh"] == {"overall": 0.25}
    for name in ("rewardbench", "hhh"):
        assert (out / f"{name}.png").stat().st_size > 1000

    # a second validate run reuses the scorer and its token cache: nothing is re-tokenised
    encoded = callback._scorer.cache.encoded
    trainer.validate(model, datamodule=dm, verbose=False)
    assert callback._scorer.cache.encoded == encoded
    assert len(json.loads((out / "benchmarks.json").read_text())["runs"]) == 2


def test_at_fit_end_only_logs_to_the_loggers(tmp_path, benchmarks):
    callback = BenchmarkCallback(
        benchmarks[1:], every_n_epochs=0, output_dir=str(tmp_path / "b"), plot=False
    )
    dm = PreferenceDataModule(
        train="synthetic",
        tokenizer="tiny",
        batch_size=16,
        max_length=64,
        synthetic=SyntheticShiftConfig(num_train=32, num_eval=16),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path, name="logs", version="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    trainer.fit(RewardModel("tiny"), datamodule=dm)
    runs = json.loads((tmp_path / "b" / "benchmarks.json").read_text())["runs"]
    assert [r["stage"] for r in runs] == ["fit_end"]
    assert "eval/hhh/overall" in trainer.callback_metrics
    with open(tmp_path / "logs" / "run" / "metrics.csv") as f:
        assert "eval/hhh/overall" in next(csv.reader(f))
    assert not (tmp_path / "b" / "hhh.png").exists()


def test_rejects_duplicate_names(benchmarks):
    with pytest.raises(ValueError, match="unique"):
        BenchmarkCallback([benchmarks[0], benchmarks[0]])


@pytest.mark.parametrize(
    "name", ["seed000_reward.yaml", "seed000_policy.yaml", "offline_shared.yaml"]
)
def test_eval_configs_build_the_callback_without_loading(name, tmp_path, monkeypatch):
    from pathlib import Path

    from lightning_robust.cli import build_cli
    from lightning_robust.evals import MTBenchHuman

    config = Path(__file__).resolve().parents[1] / "configs" / "eval" / name
    monkeypatch.chdir(tmp_path)
    cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
    cli = build_cli(["--config", str(config), *cpu], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, BenchmarkCallback)]
    names = [b.name for b in callback.benchmarks]
    assert names[:3] == ["rewardbench", "hhh", "mt_bench"]
    assert isinstance(callback.benchmarks[2], MTBenchHuman)
    assert all(b._rows is None for b in callback.benchmarks)  # nothing read or downloaded yet


def test_policy_modules_get_the_dpo_scorer():
    """A DPO module (``.backbone`` policy, ``.reference_model``) is scored by its implicit reward;
    with LoRA and no frozen copy the adapters-disabled base is the reference."""
    dpo_module = pytest.importorskip("lightning_robust.modules.dpo")
    from lightning_robust.models.scorers import DPOImplicitRewardScorer

    module = dpo_module.DPO("tiny", beta=0.2)
    module.configure_model()
    scorer = BenchmarkCallback([]).build_scorer(module)
    assert isinstance(scorer, DPOImplicitRewardScorer) and scorer.beta == 0.2
    assert scorer.policy is module.backbone and scorer.reference is module.reference_model
    scores = scorer.score(["tell me"], ["the weather is good"])
    assert scores.abs().max() < 1e-4  # policy == reference before training

    pytest.importorskip("peft")
    from lightning_robust.models.lora import LoraOptions

    lora = dpo_module.DPO("tiny", lora=LoraOptions(r=4, alpha=8, dropout=0.0))
    lora.configure_model()
    scorer = BenchmarkCallback([]).build_scorer(lora)
    assert scorer.reference == "lora_disabled"
    assert scorer.score(["tell me"], ["the weather is good"]).abs().max() < 1e-4  # LoRA B = 0


def test_leaderboard_config_builds_offline(tmp_path, monkeypatch):
    from pathlib import Path

    from lightning_robust.cli import build_cli
    from lightning_robust.evals import OpenLLMLeaderboard

    config = Path(__file__).resolve().parents[1] / "configs" / "eval" / "seed002_leaderboard.yaml"
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        [
            "--config",
            str(config),
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
        ],
        run=False,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, BenchmarkCallback)]
    (bench,) = callback.benchmarks
    assert isinstance(bench, OpenLLMLeaderboard) and bench.tasks == ["leaderboard"]
    assert bench.apply_chat_template and bench.fewshot_as_multiturn and callback.every_n_epochs == 0


def test_mid_epoch_validations_are_skipped(tmp_path, benchmarks):
    callback = BenchmarkCallback(benchmarks[1:], output_dir=str(tmp_path / "b"), plot=False)
    dm = PreferenceDataModule(
        train="synthetic",
        tokenizer="tiny",
        batch_size=16,
        max_length=64,
        synthetic=SyntheticShiftConfig(num_train=48, num_eval=16),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        val_check_interval=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    trainer.fit(RewardModel("tiny"), datamodule=dm)  # 3 training batches, 3 validations
    assert [(r["stage"], r["global_step"]) for r in callback.history] == [("fit", 3)]
