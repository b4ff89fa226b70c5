"""A training loader that resumes exactly mid-epoch (Lightning's stateful-loader protocol).

Lightning 2.6 restores its loop counters from a checkpoint but restarts a plain ``DataLoader``
at the *first* batch of the interrupted epoch (it warns "your dataloader is not resumable"),
and a ``RandomSampler`` whose generator is seeded once draws a different order for every later
epoch after a restart. A loader that has ``state_dict``/``load_state_dict`` is saved with the
fit loop and restored before its first ``iter()``; this module provides one:

* :class:`ResumableSampler`: the order of epoch ``e`` is a function of ``(seed, e)`` alone
  (a permutation from a generator seeded with ``seed + e``; ``set_epoch`` is called by
  Lightning each epoch), and it remembers how many examples of the epoch were consumed;
* :class:`ResumableDataLoader`: a ``DataLoader`` whose state is its sampler's. The consumer
  reports each batch it takes with :meth:`ResumableDataLoader.advance` (``BackboneModule``
  does so in ``on_train_batch_start``), because Lightning prefetches one batch ahead: counting
  the batches the iterator yielded would skip the prefetched batch on resume.

Exact for a single process. Under DDP Lightning wraps a custom sampler in its
``DistributedSamplerWrapper``; the loader then reports no state (Lightning's own behaviour).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["ResumableSampler", "ResumableDataLoader"]


class ResumableSampler(Sampler[int]):
    """Indices of ``data_source`` in an order fixed by ``(seed, epoch)``, resumable mid-epoch.

    Args:
        data_source: a sized dataset.
        seed: seed of the shuffle; epoch ``e`` uses a generator seeded with ``seed + e``.
        shuffle: ``False`` gives ``0 .. n-1`` every epoch (still resumable).
    """

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True) -> None:
        self.num_examples = len(data_source)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.consumed = 0  # examples of this epoch handed to the training step
        self._resume_at = 0

    def __len__(self) -> int:
        return self.num_examples

    def order(self, epoch: int) -> list[int]:
        """The full order of ``epoch``."""
        if not self.shuffle:
            return list(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch (also right after a resume: the
        restored position is kept when the epoch does not change)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.consumed = 0
            self._resume_at = 0

    def __iter__(self) -> Iterator[int]:
        start, self._resume_at = self._resume_at, 0
        self.consumed = start
        yield from self.order(self.epoch)[start:]

    def advance(self, examples: int) -> None:
        self.consumed = min(self.num_examples, self.consumed + int(examples))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_examples": self.num_examples, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_examples", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data order: the checkpoint's sampler has {key}="
                    f"{state[key]!r}, this run's has {getattr(self, key)!r} (same data and seed?)"
                )
        self.epoch = int(state["epoch"])
        self.consumed = self._resume_at = int(state["consumed"])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` with Lightning's stateful-loader protocol, for a :class:`ResumableSampler`.

    Construct it like a ``DataLoader`` with ``sampler=ResumableSampler(...)``; anything else as
    the sampler makes the state empty (a plain loader's behaviour).
    """

    def _resumable(self) -> ResumableSampler | None:
        sampler = self.sampler
        return sampler if isinstance(sampler, ResumableSampler) else None

    def advance(self, batches: int = 1) -> None:
        """Record that the consumer took ``batches`` more batches of this epoch."""
        sampler = self._resumable()
        if sampler is not None:
            sampler.advance(batches * (self.batch_size or 1))

    def state_dict(self) -> dict:
        sampler = self._resumable()
        return {} if sampler is None else {"sampler": sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        sampler = self._resumable()
        if sampler is not None and state.get("sampler"):
            sampler.load_state_dict(state["sampler"])
