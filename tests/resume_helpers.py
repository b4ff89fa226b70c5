"""Kill-and-resume harness for the resume tests and the kill-and-resume table (importable from
``tests/``; ``python tests/resume_helpers.py [1|2 ...]`` prints the table).

A tiny reward model with GroupDRO (whose ``q`` state matters) trains through the CLI for
``max_epochs: 2`` (5 batches per epoch, a learning-rate schedule: the path on which Lightning
builds the train loader before it reads the checkpoint), with a checkpoint every 2 steps plus
``last.ckpt``, validation at each epoch end, and the :class:`ResumableCSVLogger`. A run is
killed with SIGKILL by :class:`KillAt` (the process kills itself at a fixed point: no timing
races), resumed with ``--ckpt_path last``, and compared with the uninterrupted run: every
parameter and every row of ``metrics.csv``.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import Callback

TESTS = Path(__file__).resolve().parent
RUN_SCRIPT = TESTS / "resume_run.py"
MAX_EPOCHS = 2
STEPS_PER_EPOCH = 5  # 40 pairs / batch 8 (one process) or 4 per rank x 2 ranks

# name -> KillAt arguments: the hook and the global step at which the process kills itself
KILL_POINTS = {
    "epoch 1, mid-epoch (step 3)": {"hook": "train_batch_end", "step": 3},
    "right after a checkpoint (step 4)": {"hook": "train_batch_start", "step": 4},
    "during validation (end of epoch 1)": {"hook": "validation_batch_end", "step": 5},
    "epoch 2, mid-epoch (step 7)": {"hook": "train_batch_end", "step": 7},
}


class SlowDown(Callback):
    """Sleep ``seconds`` after each training batch."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class KillAt(Callback):
    """SIGKILL this process at ``hook`` once ``trainer.global_step == step`` (every rank, or only
    rank ``rank``)."""

    def __init__(self, hook: str, step: int, rank: int | None = None) -> None:
        self.hook, self.step, self.rank = hook, step, rank

    def _maybe_kill(self, trainer, hook: str) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if hook == self.hook and trainer.global_step == self.step and not trainer.sanity_checking:
            for logger in trainer.loggers:  # what a real run would have flushed by now
                logger.save()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "train_batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "train_batch_end")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._maybe_kill(trainer, "validation_batch_end")


def config(root: Path, processes: int = 1, kill: dict | None = None) -> dict:
    callbacks = [
        {
            "class_path": "lightning_robust.modules.checkpoint_io.RunCheckpoint",
            "init_args": {
                "dirpath": str(root / "ckpt"),
                "every_n_train_steps": 2,
                "save_top_k": -1,
            },
        },
    ]
    if kill:
        callbacks.append({"class_path": "resume_helpers.KillAt", "init_args": kill})
    trainer = {
        "accelerator": "cpu",
        "devices": processes,
        "max_epochs": MAX_EPOCHS,
        "deterministic": True,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root),
        "logger": {
            "class_path": "lightning_robust.loggers.ResumableCSVLogger",
            "init_args": {"save_dir": str(root), "name": "logs", "version": "run"},
        },
        "callbacks": callbacks,
    }
    if processes > 1:
        trainer["strategy"] = {
            "class_path": "lightning.pytorch.strategies.DDPStrategy",
            "init_args": {"process_group_backend": "gloo"},
        }
    return {
        "seed_everything": 0,
        "trainer": trainer,
        "model": {
            "class_path": "lightning_robust.modules.RewardModel",
            "init_args": {
                "model_name_or_path": "tiny",
                "learning_rate": 3.0e-3,
                "warmup_ratio": 0.2,
                "lr_schedule": "cosine",
                "tiny_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
                "weighting": {
                    "class_path": "lightning_robust.weighting.GroupDRO",
                    "init_args": {"num_groups": 2, "eta": 0.5},
                },
            },
        },
        "data": {
            "class_path": "lightning_robust.data.PreferenceDataModule",
            "init_args": {
                "train": "synthetic",
                "batch_size": 8 // processes,
                "eval_batch_size": 4,
                "max_length": 48,
                "seed": 3,
                "synthetic": {"num_train": 40, "num_eval": 8, "seed": 1, "length_pair_share": 0.0},
            },
        },
    }


def write_config(root: Path, processes: int = 1, kill: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / ("config_kill.yaml" if kill else "config.yaml")
    path.write_text(yaml.safe_dump(config(root, processes, kill)))
    return path


def launch(
    root: Path, processes: int = 1, kill: dict | None = None, *extra: str
) -> subprocess.Popen:
    """``python tests/resume_run.py fit --config ...`` in its own session (so a timeout can end
    every rank it started)."""
    path = write_config(root, processes, kill)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    return subprocess.Popen(
        [sys.executable, str(RUN_SCRIPT), "fit", "--config", str(path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=root,
        start_new_session=True,
    )


def wait(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    """Return code and output; on timeout the whole session is killed and ``TimeoutError`` raised."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise TimeoutError(f"run did not end within {timeout} s:\n{out[-3000:]}") from None
    finally:
        try:  # ranks a killed launcher left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out


def run_in_process(root: Path) -> None:
    """The uninterrupted one-process run in this process (saves a subprocess start)."""
    from lightning_robust.cli import build_cli

    path = write_config(root)
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    cwd = os.getcwd()
    try:
        os.chdir(root)
        build_cli(["fit", "--config", str(path)])
    finally:
        os.chdir(cwd)
        torch.use_deterministic_algorithms(False)  # set by deterministic=True


def kill_and_resume(root: Path, kill: dict, processes: int = 1) -> str:
    """Run with ``kill`` (must die by SIGKILL), then resume from ``last``; the resume's output."""
    code, out = wait(launch(root, processes, kill))
    assert code == -signal.SIGKILL, f"expected SIGKILL, got {code}:\n{out[-3000:]}"
    code, out = wait(launch(root, processes, None, "--ckpt_path", "last"))
    assert code == 0, out[-4000:]
    return out


def final_state(root: Path) -> dict:
    return torch.load(root / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)


def metrics(root: Path) -> list[dict]:
    with open(root / "logs" / "run" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def max_param_diff(a: dict, b: dict) -> float:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    return max(
        (a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item()
        for k in a["state_dict"]
    )


def metric_diffs(got: list[dict], expected: list[dict]) -> dict:
    """``{"rows": (got, expected), "<column>": max |difference|}`` over rows matched by position
    (``inf`` where one run has a value the other lacks)."""
    out: dict = {"rows": (len(got), len(expected))}
    columns = sorted(set().union(*got, *expected)) if got or expected else []
    for col in columns:
        worst = 0.0
        for g, e in zip(got, expected, strict=False):
            a, b = g.get(col, ""), e.get(col, "")
            if a == b:
                continue
            if a == "" or b == "":
                worst = math.inf
                continue
            worst = max(worst, abs(float(a) - float(b)))
        out[col] = worst
    return out


def table(processes_list=(1, 2), base: Path | None = None) -> str:
    """The kill-and-resume table: kill point -> max |param diff|, metric rows and max diff."""
    import tempfile

    base = Path(base or tempfile.mkdtemp(prefix="resume_table_"))
    lines = [
        "| processes | kill point | max abs param diff | metrics.csv rows (resumed/uninterrupted) "
        "| max abs metric diff | differing columns |",
        "|---|---|---|---|---|---|",
    ]
    for processes in processes_list:
        ref = base / f"p{processes}_reference"
        code, out = wait(launch(ref, processes))
        assert code == 0, out[-3000:]
        expected_state, expected_rows = final_state(ref), metrics(ref)
        for i, (name, kill) in enumerate(KILL_POINTS.items()):
            root = base / f"p{processes}_kill{i}"
            kill_and_resume(root, kill, processes)
            diffs = metric_diffs(metrics(root), expected_rows)
            rows = diffs.pop("rows")
            worst = max(diffs.values(), default=0.0)
            bad = [c for c, v in diffs.items() if v] or ["-"]
            lines.append(
                f"| {processes} | {name} | {max_param_diff(final_state(root), expected_state):.3g} "
                f"| {rows[0]}/{rows[1]} | {worst:.3g} | {', '.join(bad)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    counts = tuple(int(a) for a in sys.argv[1:]) or (1, 2)
    print(f"# kill-and-resume table (python tests/resume_helpers.py {' '.join(map(str, counts))})")
    print(
        f"# tiny RewardModel + GroupDRO, max_epochs={MAX_EPOCHS}, {STEPS_PER_EPOCH} steps/epoch, "
        "checkpoint every 2 steps + each epoch end, SIGKILL then --ckpt_path last"
    )
    print(table(counts))
