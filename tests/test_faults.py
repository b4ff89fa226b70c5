"""Faults during a run, through the CLI in this process: a full disk and a read-only file system
while a checkpoint is written (no partial file, the previous checkpoint intact, one error line),
a NaN injected mid-run under ``nonfinite: skip`` and ``error``, and a reward model that returns
NaN during GRPO. (A rank that dies under DDP: ``tests/test_resume.py``, where the surviving
rank must exit with a clear error and the run then resumes exactly.)"""

from __future__ import annotations

import csv
import errno
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_robust.cli import main  # noqa: E402
from lightning_robust.modules import checkpoint_io  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def _config(root: Path, *, callbacks=(), nonfinite="error", max_steps=3) -> str:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(root),
            "logger": {
                "class_path": "lightning_robust.loggers.ResumableCSVLogger",
                "init_args": {"save_dir": str(root), "name": "logs", "version": "run"},
            },
            "callbacks": [
                {
                    "class_path": "lightning_robust.modules.checkpoint_io.RunCheckpoint",
                    "init_args": {"dirpath": str(root / "ckpt"), "every_n_train_steps": 1},
                },
                *callbacks,
            ],
        },
        "model": {
            "class_path": "lightning_robust.modules.RewardModel",
            "init_args": {
                "model_name_or_path": "tiny",
                "tiny_config": TINY,
                "nonfinite": nonfinite,
                "learning_rate": 1.0e-3,
            },
        },
        "data": {
            "class_path": "lightning_robust.data.PreferenceDataModule",
            "init_args": {
                "train": "synthetic",
                "batch_size": 4,
                "max_length": 48,
                "val_fraction": 0.0,
                "synthetic": {"num_train": 16, "num_eval": 4, "seed": 1},
            },
        },
    }
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _error_line(capsys, args) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err[-3000:]
    return err.splitlines()[-1]


def _fail_on_second_write(monkeypatch, make_error):
    """The second checkpoint write fails after half of the bytes reached the temp file."""
    calls = {"n": 0}
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            import io

            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise make_error()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", save)


@pytest.mark.parametrize(
    "fault, message",
    [
        (
            lambda: OSError(errno.ENOSPC, "No space left on device"),
            r"OSError: \[Errno 28\] No space left on device",
        ),
        (
            lambda: OSError(errno.EROFS, "Read-only file system"),
            r"OSError: \[Errno 30\] Read-only file system",
        ),
    ],
    ids=["disk full", "read-only"],
)
def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(
    fault, message, tmp_path, capsys, monkeypatch
):
    import re

    config = _config(tmp_path)
    _fail_on_second_write(monkeypatch, fault)
    line = _error_line(capsys, ["fit", "--config", config])
    assert re.search(message, line), line
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["epoch=0-step=1.ckpt"] or files == ["epoch=0-step=1.ckpt", "last.ckpt"], files
    for name in files:  # whole, loadable, the step-1 state: no partial file, no temp file left
        state = torch.load(tmp_path / "ckpt" / name, weights_only=True, map_location="cpu")
        assert state["global_step"] == 1


def _metrics(root: Path) -> list[dict]:
    with open(root / "logs" / "run" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_nan_mid_run_under_error_names_the_step(tmp_path, capsys):
    inject = [{"class_path": "fault_helpers.InjectNaN", "init_args": {"step": 1}}]
    line = _error_line(capsys, ["fit", "--config", _config(tmp_path, callbacks=inject)])
    assert line.startswith("error: ") and "non-finite" in line and "step 1" in line, line
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 1  # the step before the fault is what a resume starts from
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


def test_nan_mid_run_under_skip_drops_that_step_only(tmp_path):
    inject = [{"class_path": "fault_helpers.InjectNaN", "init_args": {"step": 1}}]
    main(["fit", "--config", _config(tmp_path, callbacks=inject, nonfinite="skip")])
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["global_step"] == 3 and state["nonfinite_skipped_steps"] == 1
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )
    skipped = [
        float(r["train/skipped_steps"]) for r in _metrics(tmp_path) if r.get("train/skipped_steps")
    ]
    assert skipped == [0.0, 1.0, 1.0]
    losses = [float(r["train/loss"]) for r in _metrics(tmp_path) if r.get("train/loss")]
    assert len(losses) == 3 and all(
        torch.isfinite(torch.tensor(losses))
    )  # the skipped step logs 0.0


def test_grpo_reward_model_returning_nan_is_one_line(tmp_path, capsys, monkeypatch):
    from lightning_robust.modules import online, reward_loading

    real = reward_loading.load_reward_scorer

    class NaNOnSecondCall:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def score(self, prompts, responses):
            self.calls += 1
            scores = self.inner.score(prompts, responses)
            return scores * float("nan") if self.calls == 2 else scores

    def load(spec, *args, **kwargs):
        scorer = real(spec, *args, **kwargs)
        return NaNOnSecondCall(scorer) if spec == "synthetic:proxy" else scorer

    monkeypatch.setattr(online, "load_reward_scorer", load)  # the name the online module calls
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "grpo" / "tiny_grpo.yaml"),
        "--trainer.max_steps=3",
        "--trainer.logger=false",
        "--trainer.callbacks=null",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.max_new_tokens=4",
        "--data.init_args.synthetic.num_train=12",
    ]
    line = _error_line(capsys, args)
    assert line.startswith(
        "error: proxy reward model 'synthetic:proxy' returned non-finite scores at rows [0, 1"
    ), line
