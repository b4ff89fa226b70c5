"""A training loader that resumes exactly mid-epoch, in one process or under DDP.

Lightning 2.6 restores its loop counters from a checkpoint but restarts a plain ``DataLoader``
at the *first* batch of the interrupted epoch (it warns "your dataloader is not resumable"),
and a ``RandomSampler`` whose generator is seeded once draws a different order for every later
epoch after a restart. This module provides:

* :class:`ResumableSampler`: the order of epoch ``e`` is a function of ``(seed, e)`` alone
  (a permutation from a generator seeded with ``seed + e``; ``set_epoch`` is called by
  Lightning each epoch), and it remembers how many examples of the epoch were consumed. It is
  a ``DistributedSampler`` that shards itself by rank (as ``DistributedSampler`` does: the
  order is padded by repeating its start to a multiple of ``num_replicas`` and rank ``r``
  takes every ``num_replicas``-th index from ``r``), so Lightning does not wrap it in its
  ``DistributedSamplerWrapper`` (which would drop the state);
* :class:`ResumableDataLoader`: a ``DataLoader`` whose state is its sampler's. The consumer
  reports each batch it takes with :meth:`ResumableDataLoader.advance` (``BackboneModule``
  does so in ``on_train_batch_start``), because Lightning prefetches one batch ahead: counting
  the batches the iterator yielded would skip the prefetched batch on resume.

Where the state is restored: Lightning restores a stateful loader only when the fit loop builds
it *after* reading the checkpoint, which is not the case with ``max_epochs`` and a learning-rate
schedule (``trainer.estimated_stepping_batches`` builds the train loader first). The data
module therefore also saves the sampler state through its own ``state_dict`` hook, and its
``load_state_dict`` (called before any loader is built) keeps it *pending*: the sampler takes it
when it is created (:meth:`ResumableSampler.load_state_dict`), and a pending state given to an
existing sampler applies at its next ``__iter__``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

__all__ = ["ResumableDataLoader", "ResumableSampler", "ResumableTrainData"]


class ResumableSampler(DistributedSampler):
    """Indices of ``data_source`` in an order fixed by ``(seed, epoch)``, resumable mid-epoch.

    Args:
        data_source: a sized dataset.
        seed: seed of the shuffle; epoch ``e`` uses a generator seeded with ``seed + e``.
        shuffle: ``False`` gives ``0 .. n-1`` every epoch (still resumable).
        num_replicas, rank: data-parallel world size and this process's rank (``1``, ``0``:
            one process). With ``k`` ranks and per-rank batch ``b``, the ``j``-th global batch
            is the same set of examples as the ``j``-th batch of one process with batch ``k*b``.
    """

    def __init__(
        self,
        data_source: Sized,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        Sampler.__init__(self)  # DistributedSampler.__init__ would require torch.distributed
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )
        self.num_examples = len(data_source)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = False
        self.num_samples = -(-self.num_examples // self.num_replicas)  # per rank
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0
        self.consumed = 0  # examples of this epoch (on this rank) handed to the training step
        self._resume_at = 0

    def __len__(self) -> int:
        return self.num_samples

    def order(self, epoch: int) -> list[int]:
        """The full (unsharded) order of ``epoch``."""
        if not self.shuffle:
            return list(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def shard(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch`` (the order padded to ``total_size`` by repeating
        its start, then every ``num_replicas``-th index from ``rank``)."""
        order = self.order(epoch)
        if self.total_size > len(order) and order:
            order = (order * -(-self.total_size // len(order)))[: self.total_size]
        return order[self.rank :: self.num_replicas]

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
        yield from self.shard(self.epoch)[start:]

    def advance(self, examples: int) -> None:
        self.consumed = min(self.num_samples, self.consumed + int(examples))

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "num_examples": self.num_examples,
            "shuffle": self.shuffle,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s epoch and position (the next ``__iter__`` starts there).

        Raises ``ValueError`` naming the differing setting when the checkpoint was written with
        other data, seed or shuffle, or mid-epoch with another number of processes."""
        for key in ("seed", "num_examples", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data order: the checkpoint's sampler has {key}="
                    f"{state[key]!r}, this run's has {getattr(self, key)!r} (same data and seed?)"
                )
        consumed = int(state["consumed"])
        replicas = int(state.get("num_replicas", 1))
        if replicas != self.num_replicas and 0 < consumed:
            global_position = consumed * replicas
            if global_position % self.num_replicas:
                raise ValueError(
                    f"cannot resume mid-epoch with {self.num_replicas} processes: the checkpoint "
                    f"was written by {replicas} at example {global_position} of the epoch, which "
                    f"{self.num_replicas} processes cannot split evenly; resume with {replicas}"
                )
            consumed = global_position // self.num_replicas
        self.epoch = int(state["epoch"])
        self.consumed = self._resume_at = consumed


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


class ResumableTrainData:
    """Mixin for a ``LightningDataModule`` whose training loader is a :class:`ResumableDataLoader`:
    the sampler position goes into every checkpoint through the data module's ``state_dict`` and
    comes back through ``load_state_dict``, whichever of loader construction and checkpoint
    restore Lightning does first (see the module docstring)."""

    def resumable_train_loader(
        self, dataset, batch_size: int, *, seed: int, shuffle: bool, **loader_kwargs
    ):
        """A :class:`ResumableDataLoader` over ``dataset`` sharded by the attached Trainer's rank,
        at the restored position when a checkpoint was loaded before it was built."""
        trainer = getattr(self, "trainer", None)
        num_replicas, rank = (
            (1, 0) if trainer is None else (int(trainer.world_size), int(trainer.global_rank))
        )
        sampler = ResumableSampler(
            dataset, seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank
        )
        pending = getattr(self, "_pending_sampler_state", None)
        if pending:
            sampler.load_state_dict(pending)  # applies at its first __iter__
            self._pending_sampler_state = None  # a later rebuilt loader starts its own epoch
        self._train_sampler = sampler
        return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_kwargs)

    def state_dict(self) -> dict:
        """The training sampler's position (``{}`` before a resumable train loader exists), saved
        in every checkpoint so a resume continues at the next unseen batch."""
        sampler = getattr(self, "_train_sampler", None)
        if sampler is None:
            pending = getattr(self, "_pending_sampler_state", None)
            return {"train_sampler": pending} if pending else {}
        return {"train_sampler": sampler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep the saved position; it is applied to the training sampler now if it exists and
        otherwise when the training loader is built (Lightning may build the loader before or
        after it reads the checkpoint)."""
        pending = state_dict.get("train_sampler") if state_dict else None
        sampler = getattr(self, "_train_sampler", None)
        if pending and sampler is not None:
            sampler.load_state_dict(pending)
        else:
            self._pending_sampler_state = pending
