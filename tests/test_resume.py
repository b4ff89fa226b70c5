"""Kill a CLI training run (SIGKILL, SIGTERM), resume it from ``last``, get the uninterrupted result.

A tiny reward model with GroupDRO (whose ``q`` state matters) trains for 12 steps through the
CLI in a subprocess (deterministic, seeded data order, 5 batches per epoch so the kills fall
mid-epoch, a checkpoint every 2 steps with ``save_last``). The killed runs resume with
``--ckpt_path last`` and must end with exactly the parameters, GroupDRO weights and AdamW state
of the run that was never interrupted. Also: the plain ``torch.save`` writer of
``AtomicCheckpointIO`` never exposes a partial file, and the resumable sampler's order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_robust.data.resumable import ResumableDataLoader, ResumableSampler
from lightning_robust.modules.checkpoint_io import AtomicCheckpointIO, atomic_torch_save

TESTS = Path(__file__).resolve().parent
MAX_STEPS = 12


def _config(root: Path, slow: float) -> dict:
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(root / "ckpt"), "every_n_train_steps": 2,
                          "save_top_k": -1, "save_last": True},
        },
    ]
    if slow:
        callbacks.append({"class_path": "resume_helpers.SlowDown", "init_args": {"seconds": slow}})
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": MAX_STEPS, "deterministic": True,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "limit_val_batches": 0, "num_sanity_val_steps": 0, "default_root_dir": str(root),
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "lightning_robust.modules.RewardModel",
            "init_args": {
                "model_name_or_path": "tiny", "learning_rate": 3.0e-3, "warmup_ratio": 0.0,
                "tiny_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
                "weighting": {"class_path": "lightning_robust.weighting.GroupDRO",
                              "init_args": {"num_groups": 2, "eta": 0.5}},
            },
        },
        "data": {
            "class_path": "lightning_robust.data.PreferenceDataModule",
            "init_args": {
                "train": "synthetic", "batch_size": 8, "max_length": 48, "val_fraction": 0.0,
                "seed": 3,
                "synthetic": {"num_train": 40, "num_eval": 8, "seed": 1, "length_pair_share": 0.0},
            },
        },
    }


def _launch(root: Path, slow: float, *extra: str) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(_config(root, slow)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    code = "from lightning_robust.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "fit", "--config", str(path), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root,
    )


def _finish(proc: subprocess.Popen, timeout: float = 150) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _kill_after(proc: subprocess.Popen, ckpt_dir: Path, step: int, sig: int) -> None:
    """Send ``sig`` once the checkpoint of ``step`` exists (the run is then mid-way); Lightning
    stops a run on SIGTERM at the next batch (exit status 0 here), SIGKILL ends it at once."""
    deadline = time.monotonic() + 120
    while not list(ckpt_dir.glob(f"*step={step}.ckpt")):
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed:\n" + proc.stdout.read()[-4000:])
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint of step {step} within 120 s")
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    assert not list(ckpt_dir.glob(f"*step={MAX_STEPS}.ckpt")), "the run was not interrupted"


def _run_in_process(root: Path) -> None:
    """The same CLI run in this process (saves a subprocess start)."""
    from lightning_robust.cli import build_cli

    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(_config(root, 0.0)))
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    cwd = os.getcwd()
    try:
        os.chdir(root)
        build_cli(["fit", "--config", str(path)])
    finally:
        os.chdir(cwd)
        torch.use_deterministic_algorithms(False)  # set by deterministic=True


def _final_state(root: Path) -> dict:
    return torch.load(root / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    killed = _launch(tmp_path / "sigkill", 0.8)
    termed = _launch(tmp_path / "sigterm", 0.8)
    _kill_after(killed, tmp_path / "sigkill" / "ckpt", 4, signal.SIGKILL)  # epoch 0, batch 4 of 5
    _kill_after(termed, tmp_path / "sigterm" / "ckpt", 6, signal.SIGTERM)  # epoch 1, batch 1 of 5
    resumes = [
        _launch(tmp_path / name, 0.0, "--ckpt_path", "last")
        for name in ("sigkill", "sigterm")
    ]
    _run_in_process(tmp_path / "full")  # the uninterrupted reference, while they run
    outputs = [_finish(p) for p in resumes]
    for out in outputs:
        assert "Restored all states" in out
        assert "not resumable" not in out  # Lightning's warning for plain loaders
    expected = _final_state(tmp_path / "full")
    assert expected["global_step"] == MAX_STEPS
    for name in ("sigkill", "sigterm"):
        got = _final_state(tmp_path / name)
        assert got["global_step"] == MAX_STEPS
        assert got["state_dict"].keys() == expected["state_dict"].keys()
        for key, value in expected["state_dict"].items():
            assert torch.equal(got["state_dict"][key], value), f"{name}: {key} differs"
        q = got["state_dict"]["weighting.q"]
        assert not torch.allclose(q, torch.full_like(q, 0.5))  # GroupDRO state really moved
        exp_opt, got_opt = expected["optimizer_states"][0]["state"], got["optimizer_states"][0]["state"]
        for idx, slots in exp_opt.items():
            for slot, value in slots.items():
                assert torch.equal(got_opt[idx][slot], value), f"{name}: AdamW {slot} of {idx}"


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
