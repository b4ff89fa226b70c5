"""Kill a CLI training run with SIGKILL, resume it from ``last``, get the uninterrupted result.

The harness is ``tests/resume_helpers.py``: a tiny reward model with GroupDRO, ``max_epochs: 2``
with a learning-rate schedule (Lightning then builds the train loader before it reads the
checkpoint), a ``RunCheckpoint`` every 2 steps and at each epoch end, validation at each epoch
end, the ``ResumableCSVLogger``. One run is killed at several points in a chain (each resume is
killed again at the next point): mid-epoch in epoch 1, right after a checkpoint, during
validation, mid-epoch in epoch 2; it must end with exactly the parameters, GroupDRO weights,
AdamW state and every ``metrics.csv`` row of the run that was never interrupted. With 2 gloo
processes (subprocesses of ``tests/resume_run.py`` with a timeout) one rank dies mid-epoch: the
other must exit with a clear error, and the resume must again equal the uninterrupted run (the
other kill points under DDP: ``python tests/resume_helpers.py 2``, output in
docs/results/resume_table.txt). Also in-process: the
sampler's order and sharding, the data module's pending state, the logger's append rule, the
atomic writer.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import resume_helpers as h  # noqa: E402

from lightning_robust.data.resumable import ResumableDataLoader, ResumableSampler  # noqa: E402
from lightning_robust.modules.checkpoint_io import AtomicCheckpointIO, atomic_torch_save  # noqa: E402

CHAIN_1 = list(h.KILL_POINTS.values())


def _kill_chain(root, kills, processes):
    """Run, SIGKILLed at ``kills[0]``; resume, SIGKILLed at ``kills[1]``; ...; resume to the end."""
    for i, kill in enumerate(kills):
        extra = ("--ckpt_path", "last") if i else ()
        code, out = h.wait(h.launch(root, processes, kill, *extra))
        assert code == -signal.SIGKILL, f"kill {kill}: exit {code}\n{out[-3000:]}"
    code, out = h.wait(h.launch(root, processes, None, "--ckpt_path", "last"))
    assert code == 0, out[-4000:]
    assert "Restored all states" in out
    assert "not resumable" not in out  # Lightning's warning for plain loaders
    return out


def _assert_same_run(got_root, expected_root):
    expected, got = h.final_state(expected_root), h.final_state(got_root)
    assert expected["global_step"] == got["global_step"] == h.MAX_EPOCHS * h.STEPS_PER_EPOCH
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs"
    q = got["state_dict"]["weighting.q"]
    assert not torch.allclose(q, torch.full_like(q, 0.5))  # GroupDRO state really moved
    exp_opt, got_opt = expected["optimizer_states"][0]["state"], got["optimizer_states"][0]["state"]
    for idx, slots in exp_opt.items():
        for slot, value in slots.items():
            assert torch.equal(got_opt[idx][slot], value), f"AdamW {slot} of {idx}"
    rows, expected_rows = h.metrics(got_root), h.metrics(expected_root)
    assert len(expected_rows) == h.MAX_EPOCHS * (h.STEPS_PER_EPOCH + 1)  # train rows + val rows
    assert rows == expected_rows  # every logged value, as written


@pytest.mark.slow
def test_one_process_killed_four_times_ends_as_the_uninterrupted_run(tmp_path):
    ref = h.launch(tmp_path / "ref", 1)  # the reference in a subprocess, beside the chain
    _kill_chain(tmp_path / "killed", CHAIN_1, 1)
    code, out = h.wait(ref)
    assert code == 0, out[-3000:]
    _assert_same_run(tmp_path / "killed", tmp_path / "ref")


@pytest.mark.slow
def test_two_gloo_processes_a_rank_dies_the_other_exits_clearly_and_the_run_resumes_exactly(
    tmp_path,
):
    """Rank 1 is SIGKILLed mid-epoch in epoch 2; rank 0 must end (not hang) with a one-line error
    naming the lost peer; ``--ckpt_path last`` then ends as the uninterrupted 2-process run."""
    ref = h.launch(tmp_path / "ref", 2)
    code, out = h.wait(ref)  # one 2-process run at a time: the machine has 2 cores
    assert code == 0, out[-3000:]
    killed = tmp_path / "killed"
    code, out = h.wait(
        h.launch(killed, 2, {**h.KILL_POINTS["epoch 2, mid-epoch (step 7)"], "rank": 1}),
        timeout=180,
    )
    assert code == 1, out[-3000:]
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("error: another process of this distributed run died (")
    ), out[-2000:]
    code, out = h.wait(h.launch(killed, 2, None, "--ckpt_path", "last"))
    assert code == 0, out[-4000:]
    assert "Restored all states" in out
    _assert_same_run(killed, tmp_path / "ref")


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    data = list(range(10))
    a = ResumableSampler(data, seed=5)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert sorted(first) == data and sorted(second) == data and first != second
    g = torch.Generator().manual_seed(5 + 1)  # documented: seed + epoch
    assert second == torch.randperm(10, generator=g).tolist()
    loader = ResumableDataLoader(data, batch_size=3, sampler=ResumableSampler(data, seed=5))
    loader.sampler.set_epoch(1)
    it = iter(loader)
    taken = [next(it), next(it)]
    loader.advance(2)
    state = loader.state_dict()
    assert state["sampler"]["consumed"] == 6 and state["sampler"]["epoch"] == 1
    fresh = ResumableDataLoader(data, batch_size=3, sampler=ResumableSampler(data, seed=5))
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)  # Lightning calls it again after the restore: position kept
    rest = [b.tolist() for b in fresh]
    assert [x for b in taken for x in b.tolist()] + [x for b in rest for x in b] == second
    other = ResumableSampler(list(range(11)), seed=5)
    with pytest.raises(ValueError, match="num_examples"):
        other.load_state_dict(state["sampler"])


def test_sampler_shards_by_rank_like_one_process_with_the_global_batch():
    data = list(range(11))
    one = ResumableSampler(data, seed=2)
    ranks = [ResumableSampler(data, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    assert isinstance(ranks[0], torch.utils.data.DistributedSampler)  # Lightning keeps it as is
    order = list(one)
    padded = order + order[:1]  # 11 -> 12: repeated from the start, as DistributedSampler
    assert list(ranks[0]) == padded[0::2] and list(ranks[1]) == padded[1::2]
    assert len(ranks[0]) == len(ranks[1]) == 6
    # global batch j of 2 ranks x 2 = batch j of one process with 4
    for j in range(2):
        assert sorted(
            list(ranks[0])[2 * j : 2 * j + 2] + list(ranks[1])[2 * j : 2 * j + 2]
        ) == sorted(order[4 * j : 4 * j + 4])
    # 2 ranks stopped after 2 examples each (4 of the epoch) resume on 1 process at example 4
    for r in ranks:
        r.advance(2)
    one.load_state_dict(ranks[0].state_dict())
    assert list(one) == order[4:]
    # 1 process stopped at 3 cannot be split evenly over 2 ranks: refused, naming the count
    one.load_state_dict({**one.state_dict(), "consumed": 3})
    with pytest.raises(ValueError, match="resume with 1"):
        ranks[0].load_state_dict(one.state_dict())


def test_data_module_applies_a_restored_position_whenever_the_loader_is_built():
    from lightning_robust.data import PreferenceDataModule

    def module():
        dm = PreferenceDataModule(
            train="synthetic",
            tokenizer="tiny",
            batch_size=4,
            max_length=48,
            seed=3,
            synthetic={"num_train": 16, "num_eval": 4, "seed": 1},
        )
        dm.setup("fit")
        return dm

    full = [b["chosen_input_ids"].tolist() for b in module().train_dataloader()]
    first = module()
    loader = first.train_dataloader()
    iter(loader)
    loader.advance(2)
    state = first.state_dict()
    assert state["train_sampler"]["consumed"] == 8
    before = module()  # restored before the loader exists (Lightning with max_epochs)
    before.load_state_dict(state)
    assert [b["chosen_input_ids"].tolist() for b in before.train_dataloader()] == full[2:]
    after = module()  # restored after it was built (Lightning with max_steps)
    loader = after.train_dataloader()
    after.load_state_dict(state)
    assert [b["chosen_input_ids"].tolist() for b in loader] == full[2:]
    assert [b["chosen_input_ids"].tolist() for b in loader] == full  # next pass: from the start


def test_resumable_csv_logger_keeps_rows_before_the_resume_point(tmp_path):
    from lightning_robust.loggers import ResumableCSVLogger

    first = ResumableCSVLogger(tmp_path, name="logs", version="run")
    for step in range(5):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.log_metrics({"val/loss": 9.0}, step=4)
    resumed = ResumableCSVLogger(tmp_path, name="logs", version="run")  # resumed at step 4's val
    resumed.log_metrics({"val/loss": 8.0}, step=4)
    resumed.log_metrics({"train/loss": 50.0}, step=5)
    with open(tmp_path / "logs" / "run" / "metrics.csv", newline="") as f:
        rows = [(r["step"], r["train/loss"], r["val/loss"]) for r in csv.DictReader(f)]
    assert rows == [
        ("0", "0.0", ""),
        ("1", "1.0", ""),
        ("2", "2.0", ""),
        ("3", "3.0", ""),
        ("4", "4.0", ""),
        ("4", "", "8.0"),
        ("5", "50.0", ""),
    ]
    fresh = ResumableCSVLogger(tmp_path, name="logs", version="run")  # a new run from step 0
    fresh.log_metrics({"train/loss": 1.5}, step=0)
    with open(tmp_path / "logs" / "run" / "metrics.csv", newline="") as f:
        assert [r["train/loss"] for r in csv.DictReader(f)] == ["1.5"]


def test_atomic_save_replaces_whole_files_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True) == {"step": 1}  # the old file, intact
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True) == {"step": 3}
