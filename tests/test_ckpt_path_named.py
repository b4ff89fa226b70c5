"""``--ckpt_path last|best`` on the command line (lightning_robust.cli_errors.resolve_named_checkpoint):
found in the folder of the configured run's checkpoint callbacks (RunCheckpoint's last.ckpt, a
monitored ModelCheckpoint's best, recorded in the last checkpoint), checked like a file, and a
missing one is one line naming the option."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_bad_inputs import _base_config

MONITORED = {
    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
    "init_args": {"save_last": False, "save_top_k": 1, "monitor": "val/accuracy", "mode": "max"},
}
RUN_CHECKPOINT = {
    "class_path": "lightning_robust.modules.checkpoint_io.RunCheckpoint",
    "init_args": {"every_n_train_steps": 100, "save_top_k": 0},
}


def _config(root: Path, callbacks: list[dict], name: str = "run.yaml") -> str:
    # (not config.yaml: LightningCLI saves the run's configuration there)
    config = copy.deepcopy(_base_config(root))
    config["trainer"].update(max_steps=-1, max_epochs=1, callbacks=callbacks)
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch run of the configs' pattern: a monitored ModelCheckpoint (best) and
    RunCheckpoint (last.ckpt)."""
    from lightning_robust.cli import main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("named_ckpt")
    config = _config(root, [MONITORED, RUN_CHECKPOINT])
    main(["fit", "--config", config])
    torch.use_deterministic_algorithms(False)
    folder = root / "checkpoints"
    (best,) = [p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"]
    return {"config": config, "last": str(folder / "last.ckpt"), "best": str(best)}


def _error_line(args, capsys) -> str:
    from lightning_robust.cli import main

    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize("name", ["last", "best"])
def test_validate_finds_the_named_checkpoint_of_the_run(run, name):
    from lightning_robust.cli import build_cli

    cli = build_cli(["validate", "--config", run["config"], f"--ckpt_path={name}"])
    assert cli.trainer.ckpt_path == run[name]  # the file Lightning restored
    # the same figures as validating that file by name
    named = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    cli = build_cli(["validate", "--config", run["config"], f"--ckpt_path={run[name]}"])
    assert named == {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_fit_from_last_of_a_finished_run_says_it_would_train_nothing(run, capsys):
    line = _error_line(["fit", "--config", run["config"], "--ckpt_path=last"], capsys)
    assert "last.ckpt has completed 1 epoch(s), and trainer.max_epochs=1: fit would train" in line


def test_missing_named_checkpoints_are_one_line_naming_the_option(tmp_path, capsys):
    from lightning_robust.cli import main

    config = _config(tmp_path, [RUN_CHECKPOINT])
    line = _error_line(["validate", "--config", config, "--ckpt_path=last"], capsys)
    assert line.startswith("error: --ckpt_path last: no last checkpoint in ")
    assert str(tmp_path / "checkpoints") in line  # (Lightning would validate the untrained model)
    line = _error_line(["validate", "--config", config, "--ckpt_path=best"], capsys)
    assert line.startswith("error: --ckpt_path best: no checkpoint callback of this configuration")
    line = _error_line(
        ["validate", "--config", config, f"--ckpt_path={tmp_path / 'x.ckpt'}"], capsys
    )
    assert line.startswith("error: --ckpt_path: Checkpoint file not found: ")
    line = _error_line(
        ["validate", "--config", config, "--ckpt_path=last", "--trust_checkpoint_config=true"],
        capsys,
    )
    assert "--trust_checkpoint_config needs --ckpt_path as a file" in line
    # a monitored callback but no run yet
    monitored = _config(tmp_path, [MONITORED, RUN_CHECKPOINT], "monitored.yaml")
    line = _error_line(["test", "--config", monitored, "--ckpt_path=best"], capsys)
    assert line.startswith("error: --ckpt_path best: no checkpoint of the configured run in ")
    # fit --ckpt_path last before any checkpoint starts from the beginning (set-and-forget resume)
    assert main(["fit", "--config", config, "--ckpt_path=last", "--trainer.max_steps=1"]) is None
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    torch.use_deterministic_algorithms(False)
