"""A helper that the resume test names in its CLI config (importable from ``tests/``):
:class:`SlowDown` sleeps after every training batch so that a test can kill the run mid-way."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class SlowDown(Callback):
    """Sleep ``seconds`` after each training batch."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
