"""Length-grouped sampling: batches of similar length, so dynamic padding wastes little.

Per epoch (order fixed by ``seed + epoch``):

1. shuffle all indices; pad the order by repeating its start so every rank gets the same count
   (or drop the tail with ``drop_last``), as ``DistributedSampler`` does;
2. cut it into *megabatches* of ``megabatch_factor x batch_size x num_replicas`` indices and sort
   each megabatch by length, longest first;
3. cut every megabatch into *global batches* of ``batch_size x num_replicas`` indices and shuffle
   the order of the global batches (a short final batch stays last, so the DataLoader's batch
   boundaries match the sampler's);
4. rank ``r`` takes every ``num_replicas``-th index of each global batch, starting at ``r``: the
   ranks' batches of one step have similar lengths too (no rank waits on a long one).

The sampler is a ``DistributedSampler`` subclass that shards itself, so Lightning does not wrap
it in another distributed sampler (which would undo the grouping); Lightning calls
``set_epoch`` at every epoch start. With ``num_replicas=1`` it is a plain single-process
sampler. The default megabatch factor is transformers' ``LengthGroupedSampler`` rule
``min(n // (4 x global batch), 50)``, at least 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler


def default_megabatch_factor(num_items: int, global_batch: int) -> int:
    """``min(num_items // (4 * global_batch), 50)``, at least 1 (transformers' rule)."""
    return max(1, min(num_items // (4 * global_batch), 50))


class LengthGroupedSampler(DistributedSampler):
    """Yields indices so that consecutive ``batch_size`` indices have similar lengths.

    Args:
        lengths: length of every item (for a pair: the longer of chosen and rejected, since
            both are padded to one width).
        batch_size: per-rank batch size (the DataLoader's ``batch_size``).
        megabatch_factor: global batches per sorted megabatch; ``None``:
            :func:`default_megabatch_factor`. Larger: less padding, less randomness.
        shuffle: ``False`` keeps file order before the megabatch sort and does not shuffle
            the batches (deterministic, for debugging).
        seed: base seed; epoch ``e`` uses ``seed + e``.
        num_replicas, rank: data-parallel world size and this process's rank (``1``, ``0``:
            one process). Every rank must pass the same ``lengths``, ``seed`` and epoch.
        drop_last: drop the tail that does not divide evenly across ranks instead of repeating
            indices from the start to fill it.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        megabatch_factor: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ):
        Sampler.__init__(self)  # DistributedSampler.__init__ would require torch.distributed
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )
        if megabatch_factor is not None and megabatch_factor < 1:
            raise ValueError(f"megabatch_factor must be positive, got {megabatch_factor}")
        if len(lengths) == 0:
            raise ValueError("LengthGroupedSampler needs at least one item")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        n = len(self.lengths)
        if drop_last and n >= num_replicas:
            self.num_samples = n // num_replicas
        else:
            self.num_samples = -(-n // num_replicas)
        self.total_size = self.num_samples * num_replicas
        global_batch = batch_size * num_replicas
        self.megabatch_factor = megabatch_factor or default_megabatch_factor(n, global_batch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (Lightning calls it every epoch)."""
        self.epoch = epoch

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (index tensors of ``batch_size x num_replicas``, the last
        possibly shorter), in yield order, identical on every rank."""
        n = len(self.lengths)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.total_size > n:  # fill up by repeating the start (as DistributedSampler)
            reps = -(-self.total_size // n)
            order = order.repeat(reps)
        order = order[: self.total_size]
        global_batch = self.batch_size * self.num_replicas
        mega = self.megabatch_factor * global_batch
        batches: list[torch.Tensor] = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            # stable sort, longest first (descending lengths; ties keep the shuffled order)
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            batches.extend(chunk.split(global_batch))
        tail = [batches.pop()] if len(batches[-1]) < global_batch else []
        if self.shuffle:
            batches = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
        return batches + tail

    def __iter__(self) -> Iterator[int]:
        for batch in self.global_batches():
            yield from batch[self.rank :: self.num_replicas].tolist()

    def __len__(self) -> int:
        return self.num_samples
