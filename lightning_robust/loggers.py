"""``ResumableCSVLogger``: a ``CSVLogger`` whose ``metrics.csv`` survives a resumed run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its version directory is
reused ("Previous log files in this directory will be deleted"), so a run resumed with
``--ckpt_path last`` into the configs' fixed ``version: run`` loses every row written before the
interruption; and it writes rows to disk only every 100 steps, so a killed run loses the rows
since the last flush. This logger

* keeps the existing file and appends to it;
* drops, before the first row of the resumed run, the rows whose ``step`` is after that row's
  step, or equal to it with a metric name in common: they were logged after the checkpoint the
  run resumed from, and the resumed run logs them again (the schedule of logged rows is a
  function of the step, so every row the killed run wrote after the checkpoint has a step >=
  the first step logged after the resume);
* flushes after every logged row and after every checkpoint by default, so what a checkpoint
  covers is on disk before the run can be killed.

A row logged in the instant between a checkpoint and the flush that follows it can still be
lost when the process is killed exactly there (the resumed run does not redo that step).
"""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

__all__ = ["ResumableCSVLogger"]


class _AppendingWriter(ExperimentWriter):
    """An ``ExperimentWriter`` that keeps an existing ``metrics.csv`` (see the module docstring)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._resumed = False

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        return None

    def log_metrics(self, metrics_dict, step=None) -> None:
        if not self._resumed:
            self._resumed = True
            if step is not None:
                self._drop_rows_from(int(step), set(metrics_dict))
        super().log_metrics(metrics_dict, step)

    def _drop_rows_from(self, step: int, names: set) -> None:
        """Keep the rows of ``metrics.csv`` logged before ``step`` (and those of ``step`` that
        share no metric name with the new row ``names``: a training row of the step whose
        validation the resumed run repeats); adopt the file's header."""
        path = self.metrics_file_path
        if not self._fs.isfile(path):
            return
        with self._fs.open(path, "r", newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)

        def before(row: dict) -> bool:
            if not row.get("step"):
                return True
            row_step = int(float(row["step"]))
            if row_step != step:
                return row_step < step
            return not any(row.get(name) not in (None, "") for name in names)

        kept = [r for r in rows if before(r)]
        self.metrics_keys = sorted(set(self.metrics_keys) | set(header))
        if len(kept) != len(rows) or header != self.metrics_keys:
            tmp = f"{path}.tmp-{os.getpid()}"
            with self._fs.open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(tmp, path)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends on resume (see the module docstring). Same arguments as
    ``CSVLogger``; ``flush_logs_every_n_steps`` defaults to 1 (write each row at once)."""

    def __init__(self, *args, flush_logs_every_n_steps: int = 1, **kwargs) -> None:
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()
