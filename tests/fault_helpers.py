"""Callbacks that inject faults into a CLI run (named by ``class_path`` in the fault tests'
configs; importable from ``tests/``)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class InjectNaN(Callback):
    """Make the backbone's input embeddings NaN for the training batch of global step ``step``
    only (a forward hook, removed after the batch), as a corrupted batch or an overflow would.
    The embedding layer is hooked (not the backbone's top-level forward) because every scoring
    path goes through it, the prompt-shared packed rows included."""

    def __init__(self, step: int) -> None:
        self.step = step
        self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:

            def poison(module, args, output):
                return _map_tensors(
                    output, lambda t: t * float("nan") if t.is_floating_point() else t
                )

            self._handle = pl_module.backbone.get_input_embeddings().register_forward_hook(poison)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return type(value)(_map_tensors(v, fn) for v in value)
    if hasattr(value, "logits") and isinstance(getattr(value, "logits", None), torch.Tensor):
        value.logits = fn(value.logits)
        return value
    return value
