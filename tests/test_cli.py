"""LightningCLI end to end on the quickstart config (shortened), and validate --ckpt_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_robust.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=20",
    "--data.init_args.synthetic.num_train=320",
    "--data.init_args.synthetic.num_eval=64",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    common = [
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        *SHORT,
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
    ]
    cli = build_cli(["fit", *common])
    return out, common, {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_fit_reports_in_distribution_and_shifted_accuracy(fitted, capsys):
    _, _, metrics = fitted
    for key in (
        "val/accuracy",
        "val/shifted/accuracy",
        "val/minority/accuracy",
        "train/robust/ess",
    ):
        assert key in metrics and 0.0 <= metrics[key] <= 16.0


def test_validate_from_checkpoint_reproduces_fit_metrics(fitted):
    out, common, metrics = fitted
    ckpt = out / "logs" / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    cli = build_cli(["validate", *common, f"--ckpt_path={ckpt}"])
    again = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("val/accuracy", "val/loss", "val/shifted/accuracy", "val/minority/loss"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key
    # the config written next to the logs makes the run reproducible from the CLI alone
    assert any(out.rglob("config.yaml"))


def test_lora_options_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        ["--config", str(CONFIGS / "quickstart.yaml"), "--model.init_args.lora={r: 4, alpha: 8}"],
        run=False,
    )
    cli.model.configure_model()
    assert cli.model.lora_options.r == 4
    assert any("lora_A" in n for n, _ in cli.model.backbone.named_parameters())
