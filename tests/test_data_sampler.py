"""LengthGroupedSampler: permutation per epoch, seeded order, sorted megabatches, DDP sharding,
and its use by PreferenceDataModule(group_by_length=True) under a Lightning Trainer."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_robust.data import PreferenceDataModule, SyntheticShiftConfig
from lightning_robust.data.sampler import LengthGroupedSampler, default_megabatch_factor


def random_lengths(n, seed=0, low=1, high=200):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n,), generator=g).tolist()


def batches(order, size):
    order = list(order)
    return [order[k : k + size] for k in range(0, len(order), size)]


def padded_cells(lengths, order, size):
    """Cells of the padded batches: every batch is padded to its longest item."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches(order, size))


# ------------------------------------------------------------------ one process
def test_each_epoch_is_a_permutation_and_the_order_is_seeded():
    lengths = random_lengths(103)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert sorted(orders[-1]) == list(range(103)) and len(sampler) == 103
    assert orders[0] != orders[1] != orders[2]
    again = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    again.set_epoch(1)
    assert list(again) == orders[1]
    other = LengthGroupedSampler(lengths, batch_size=8, seed=4)
    other.set_epoch(1)
    assert list(other) != orders[1]


def test_one_megabatch_gives_the_sorted_lengths_cut_into_batches():
    """With a megabatch holding the whole data, the batches are exactly the length-sorted items
    cut into consecutive chunks of batch_size (in some order), and the short one is last."""
    lengths = random_lengths(50, seed=1)
    sampler = LengthGroupedSampler(lengths, batch_size=8, megabatch_factor=7)  # 56 >= 50
    got = batches(sampler, 8)
    expected = batches(sorted(lengths, reverse=True), 8)
    assert sorted(sorted((lengths[i] for i in b), reverse=True) for b in got[:-1]) == sorted(
        expected[:-1]
    )
    assert sorted((lengths[i] for i in got[-1]), reverse=True) == expected[-1] and len(got[-1]) == 2


def test_grouping_cuts_padding_against_random_order():
    lengths = random_lengths(640, seed=2)
    random_order = torch.randperm(640, generator=torch.Generator().manual_seed(0)).tolist()
    grouped = LengthGroupedSampler(lengths, batch_size=16)
    real = sum(lengths)
    random_waste = padded_cells(lengths, random_order, 16) / real - 1
    grouped_waste = padded_cells(lengths, grouped, 16) / real - 1
    # uniform lengths on [1, 200): random batches of 16 pad to ~the maximum (waste ~ 0.85);
    # sorted megabatches of 160 items leave gaps of ~200/160 per neighbour (waste < 0.15)
    assert random_waste > 0.6 and grouped_waste < 0.15


def test_no_shuffle_is_file_order_sorted_within_megabatches():
    lengths = [5, 1, 4, 2, 3, 9, 7, 8]
    sampler = LengthGroupedSampler(lengths, batch_size=2, megabatch_factor=2, shuffle=False)
    # megabatches of 4 items in file order, each sorted longest first: [5, 1, 4, 2] -> items
    # 0, 2, 3, 1; [3, 9, 7, 8] -> items 5, 7, 6, 4; batch order kept
    assert list(sampler) == [0, 2, 3, 1, 5, 7, 6, 4]


def test_default_megabatch_factor_rule():
    assert default_megabatch_factor(10_000, 16) == 50
    assert default_megabatch_factor(640, 16) == 10
    assert default_megabatch_factor(20, 16) == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"num_replicas": 2, "rank": 2}, "rank"),
        ({"megabatch_factor": 0}, "megabatch_factor"),
    ],
)
def test_invalid_options(kwargs, match):
    kwargs = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        LengthGroupedSampler([3, 1, 2], **kwargs)
    with pytest.raises(ValueError, match="at least one item"):
        LengthGroupedSampler([], batch_size=4)


# ------------------------------------------------------------------ data parallel
@pytest.mark.parametrize("n,drop_last", [(96, False), (101, False), (101, True)])
def test_ranks_split_the_data_evenly_and_step_together(n, drop_last):
    lengths = random_lengths(n, seed=5)
    world, bs = 3, 4
    samplers = [
        LengthGroupedSampler(lengths, bs, num_replicas=world, rank=r, seed=7, drop_last=drop_last)
        for r in range(world)
    ]
    for s in samplers:
        s.set_epoch(2)
    orders = [list(s) for s in samplers]
    per_rank = n // world if drop_last else -(-n // world)
    assert [len(o) for o in orders] == [per_rank] * world == [len(s) for s in samplers]
    flat = [i for o in orders for i in o]
    if n % world == 0:
        assert sorted(flat) == list(range(n))  # disjoint and complete
    elif drop_last:
        assert len(set(flat)) == len(flat) == per_rank * world  # disjoint, tail dropped
    else:
        assert (
            set(flat) == set(range(n)) and len(flat) - n == world - n % world
        )  # padded by repeats
    # step k of every rank comes from the same global batch (similar lengths on all ranks)
    global_batches = samplers[0].global_batches()
    for k, gb in enumerate(global_batches):
        members = set(gb.tolist())
        for o in orders:
            assert set(batches(o, bs)[k]) <= members


def test_is_a_distributed_sampler_so_lightning_does_not_rewrap_it():
    # Lightning only injects its own distributed sampler when the loader's sampler is not a
    # DistributedSampler (DataConnector._requires_distributed_sampler); ours shards itself.
    assert isinstance(LengthGroupedSampler([1, 2], 1), DistributedSampler)


# ------------------------------------------------------------------ the data module
SMALL = SyntheticShiftConfig(num_train=96, num_eval=16)


def dm_for(tmp_path, **kw):
    dm = PreferenceDataModule(synthetic=SMALL, cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup("fit")
    return dm


def test_datamodule_group_by_length_shards_by_the_trainer_rank(tmp_path):
    dm = dm_for(tmp_path, batch_size=8, group_by_length=True, megabatch_factor=2, seed=1)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, LengthGroupedSampler) and loader.sampler.num_replicas == 1
    seen = [i for b in loader for i in b["index"].tolist()]
    assert sorted(seen) == list(range(len(dm.datasets["train"])))
    ranks = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, lightning_module=None)
        sampler = dm.train_dataloader().sampler
        assert (sampler.num_replicas, sampler.rank) == (2, rank)
        ranks.append(set(sampler))
    assert not ranks[0] & ranks[1] and len(ranks[0] | ranks[1]) == len(dm.datasets["train"])


def test_datamodule_grouped_batches_pad_less(tmp_path):
    def total_cells(**kw):
        dm = dm_for(tmp_path, batch_size=8, max_length=64, **kw)
        return sum(b["chosen_input_ids"].numel() for b in dm.train_dataloader())

    assert total_cells(group_by_length=True) < total_cells(group_by_length=False)


def test_trainer_sets_the_epoch_and_every_epoch_covers_the_data(tmp_path):
    from lightning import Callback, LightningModule, Trainer

    class Tiny(LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, i):
            return self.w * batch["chosen_attention_mask"].float().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    epochs: list[list[int]] = [[], []]

    class Record(Callback):
        def on_train_batch_start(self, trainer, module, batch, i):
            epochs[trainer.current_epoch].extend(batch["index"].tolist())

    dm = dm_for(tmp_path, batch_size=8, group_by_length=True, megabatch_factor=2)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Record()],
    )
    trainer.fit(Tiny(), datamodule=dm)
    n = len(dm.datasets["train"])
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(n))
    assert epochs[0] != epochs[1]  # set_epoch reached our sampler
    assert isinstance(trainer.train_dataloader.sampler, LengthGroupedSampler)
