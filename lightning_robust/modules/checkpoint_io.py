"""Atomic checkpoint writes: a checkpoint file is either the old one or the complete new one.

Lightning 2.6's ``TorchCheckpointIO`` serialises into memory, then writes through an fsspec
transaction: the bytes go to a ``tempfile.mkstemp()`` file in the *system* temp directory and
are moved over the target with ``shutil.move``. When the temp directory and the checkpoint
directory are different file systems (a tmpfs ``/tmp``, a network or scratch volume -- the
common case on clusters) the move is a copy, so a process killed during it leaves a truncated
``last.ckpt``; nothing is fsynced, and a killed run leaves its temp file behind in ``/tmp``.
:class:`AtomicCheckpointIO` writes to a temp file beside the target, fsyncs it, ``os.replace``s
it over the target (atomic on POSIX within one file system) and fsyncs the directory. Its
reads check first that a local file is a torch zip archive, so a truncated or corrupt checkpoint
fails with an error naming the file instead of a bare ``PytorchStreamReader`` failure.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = [
    "AtomicCheckpointIO",
    "RunCheckpoint",
    "atomic_torch_save",
    "check_torch_archive",
    "install_atomic_checkpoint_io",
]


def check_torch_archive(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Raise ``ValueError("<what> <path> is unreadable (...)")`` when the local file ``path``
    is not a zip archive (the format of ``torch.save`` since torch 1.6): a truncated copy has
    lost its central directory at the end of the file. Missing paths and directories pass, so
    the caller's own not-found handling still applies."""
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{what} {os.fspath(path)} is unreadable (truncated or corrupt: not a torch zip archive)"
        )


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through ``<path>.tmp-<pid>`` + fsync + ``os.replace``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (see the module docstring); remote
    (fsspec URL) paths keep Lightning's own transaction."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path)
        path = str(path).removeprefix("file://")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's load, after :func:`check_torch_archive` for a local file."""
        if "://" not in str(path) or str(path).startswith("file://"):
            check_torch_archive(str(path).removeprefix("file://"))
        if map_location is None:
            return super().load_checkpoint(path, weights_only=weights_only)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def install_atomic_checkpoint_io(strategy) -> bool:
    """Give ``strategy`` an :class:`AtomicCheckpointIO` when it would use Lightning's plain
    ``TorchCheckpointIO`` (a plugin the user configured is kept). Returns whether it did."""
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False


class RunCheckpoint(ModelCheckpoint):
    """The periodic checkpoint every training config carries: ``last.ckpt`` every
    ``every_n_train_steps`` steps *and* at the end of every training epoch (after its
    validation), so a killed run loses at most ``every_n_train_steps`` steps; resume it with
    ``--ckpt_path last``. Lightning's ``ModelCheckpoint`` saves at one of the two only (the
    triggers are exclusive) and two of them with ``save_last`` write ``last.ckpt`` and
    ``last-v1.ckpt``. Other arguments as ``ModelCheckpoint`` (default ``save_top_k=1``: the
    newest step checkpoint besides ``last.ckpt``)."""

    def __init__(self, every_n_train_steps: int = 500, save_last: bool = True, **kwargs) -> None:
        if every_n_train_steps is None or every_n_train_steps < 1:
            raise ValueError(
                f"RunCheckpoint: every_n_train_steps must be >= 1, got {every_n_train_steps!r}"
            )
        super().__init__(every_n_train_steps=every_n_train_steps, save_last=save_last, **kwargs)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        from lightning.pytorch.trainer.states import TrainerFn

        # unlike ModelCheckpoint, also when a step checkpoint was written at this very step: that
        # one was taken before the epoch's validation, this one after it
        if self.save_last and not (
            trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
