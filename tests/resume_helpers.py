"""Helpers that the resume test names in its CLI config (importable from ``tests/``).

* :class:`ResumablePreferenceDataModule`: the project's ``PreferenceDataModule`` whose training
  loader is a :class:`~lightning_robust.data.resumable.ResumableDataLoader` (the change proposed
  for ``PreferenceDataModule.train_dataloader`` itself).
* :class:`SlowDown`: sleeps after every training batch so that a test can kill the run mid-way.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.resumable import ResumableDataLoader, ResumableSampler


class ResumablePreferenceDataModule(PreferenceDataModule):
    def train_dataloader(self) -> ResumableDataLoader:
        self._require_setup()
        dataset = self.datasets["train"]
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler(dataset, seed=self.seed, shuffle=self.shuffle),
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )


class SlowDown(Callback):
    """Sleep ``seconds`` after each training batch."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
