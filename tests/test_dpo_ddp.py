"""``scope="global"`` and ``"accumulated"`` across processes, through the modules.

``global``: every rank of a 2-process gloo group computes identical
weights: every rank of a 2-process gloo group computes identical
weights, equal to the single-process weights of the full batch, and the gradients averaged over
ranks (what DDP does) are the full-batch robust gradient ``sum_i q_i grad l_i``
(``tests/ddp_dpo_script.py``: the RewardModel's and the DPO module's own ``training_step``).

``accumulated``: a Lightning DDP fit on 2 CPU processes, 8 pairs per rank cut into micro-batches,
ends with the parameters of one process training on the 16 pairs as one batch
(``tests/ddp_accumulated_script.py``). Both scripts run in subprocesses, never in pytest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_dpo_script.py")
sys.path.insert(0, str(SCRIPT.parent))
import ddp_dpo_script as ddp  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_modules")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(ddp.WORLD)]
    for r in results:
        assert "crash" not in r, r.get("crash")
    return results


@pytest.fixture(scope="module")
def full_batch():
    """Single process, whole batch: the reference of every rank."""
    batch = ddp.global_batch()
    return {kind: ddp.step(ddp.build(kind), batch) for kind in ("reward", "dpo")}


@pytest.mark.slow
@pytest.mark.parametrize("label", list(ddp.SPLITS))
@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_every_rank_gets_the_full_batch_weights(ranks, full_batch, kind, label):
    sizes = ddp.SPLITS[label]
    full = full_batch[kind]
    a, b = (r[(kind, label)] for r in ranks)
    assert torch.equal(a["global_weights"], b["global_weights"])  # identical on every rank
    torch.testing.assert_close(a["global_weights"], full["weights"], rtol=0, atol=1e-6)
    assert not torch.allclose(full["weights"], torch.full_like(full["weights"], 1 / 8))  # robust
    for rank, res in enumerate(ranks):
        lo = sum(sizes[:rank])
        got = res[(kind, label)]
        assert torch.equal(got["weights"], got["global_weights"][lo : lo + sizes[rank]])
    # DDP averages gradients over ranks: that average is the full-batch robust gradient
    mean_grad = (a["grad"] + b["grad"]) / ddp.WORLD
    torch.testing.assert_close(mean_grad, full["grad"], rtol=1e-4, atol=1e-6)
    # and the mean of the per-rank losses is the full-batch robust loss
    assert ((a["loss"] + b["loss"]) / 2).item() == pytest.approx(full["loss"].item(), abs=1e-5)


ACC_SCRIPT = SCRIPT.with_name("ddp_accumulated_script.py")


@pytest.mark.slow
def test_accumulated_scope_under_ddp_equals_one_big_batch(tmp_path):
    import ddp_accumulated_script as acc
    from lightning import seed_everything

    from lightning_robust.weighting import TVBall

    proc = subprocess.run(
        [sys.executable, str(ACC_SCRIPT), str(tmp_path), "4"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp_run = torch.load(tmp_path / "params.pt", weights_only=True)
    assert ddp_run["world"] == 2 and ddp_run["steps"] == acc.STEPS
    seed_everything(0)
    single = acc.build(TVBall(0.3, scope="global"))
    trainer = acc.trainer(devices=1)
    trainer.fit(single, datamodule=acc.data(2 * acc.PER_RANK))
    reference = acc.flat_params(single)
    assert (ddp_run["params"] - reference).abs().max().item() < 1e-5
    untrained = acc.build(None)
    untrained.configure_model()
    assert (reference - acc.flat_params(untrained)).abs().max().item() > 1e-3  # it trained
