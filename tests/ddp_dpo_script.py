"""Two-process (gloo, CPU) run of the modules' training steps with ``scope="global"``; run by
test_dpo_ddp.py.

Usage: ``python tests/ddp_dpo_script.py OUT_DIR``. Spawns 2 processes with a ``file://``
rendezvous in OUT_DIR. Every rank builds the same tiny RewardModel and DPO (same init seed) and
the same global batch of 8 pairs, keeps its slice (equal 4/4 and unequal 5/3 splits), runs the
module's ``training_step`` (logging silenced), captures the weighting's output with a forward
hook, back-propagates, and writes ``rank<r>.pt``. The pytest side recomputes the full batch in
one process and compares.
"""

from __future__ import annotations

import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
SPLITS = {"equal": (4, 4), "unequal": (5, 3)}
TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
RHO = 0.3


def global_batch():
    """The same 8 pairs on every rank (tokenised for a causal LM: DPO needs the EOS)."""
    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.synthetic import SyntheticShiftConfig

    dm = PreferenceDataModule(
        train="synthetic",
        batch_size=8,
        max_length=40,
        val_fraction=0.0,
        shuffle=False,
        append_eos=True,
        synthetic=SyntheticShiftConfig(num_train=8, num_eval=4, seed=5, length_pair_share=0.0),
    )
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=8, collate_fn=dm.collator)
    return next(iter(loader))


def slice_batch(batch: dict, lo: int, hi: int) -> dict:
    return {
        k: v[lo:hi] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()
    }


def build(kind: str):
    from lightning_robust.modules import DPO, RewardModel
    from lightning_robust.weighting import TVBall

    cls = RewardModel if kind == "reward" else DPO
    model = cls(weighting=TVBall(RHO, scope="global"), tiny_config=TINY)
    model.configure_model()
    if kind == "dpo":  # move the policy off its reference, else every DPO loss is log 2
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.log = lambda *a, **k: None  # no Trainer here
    model.log_dict = lambda *a, **k: None
    if kind == "reward":
        from lightning_robust.modules.metrics import PairwiseMetrics

        model.train_metrics = PairwiseMetrics()
    return model


def step(model, batch: dict) -> dict:
    """One training step; the weighting's output, the loss and the flat backbone gradient."""
    captured = {}
    hook = model.weighting.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    loss = model.training_step(batch, 0)
    hook.remove()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.backbone.parameters() if p.grad is not None])
    out = captured["out"]
    return {
        "weights": out.weights,
        "global_weights": out.global_weights,
        "loss": loss.detach(),
        "grad": grad,
    }


def run_rank(rank: int, out_dir: str) -> None:
    init = "file://" + os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    results: dict = {}
    try:
        batch = global_batch()
        for kind in ("reward", "dpo"):
            for label, sizes in SPLITS.items():
                lo = sum(sizes[:rank])
                results[(kind, label)] = step(build(kind), slice_batch(batch, lo, lo + sizes[rank]))
        dist.barrier()
    except Exception:  # report, never hang the other rank silently
        results["crash"] = traceback.format_exc()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    out_dir = os.path.abspath(argv[1])
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    mp.spawn(run_rank, args=(out_dir,), nprocs=WORLD, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
