"""Two-process (gloo, CPU) Lightning DDP fit of the RewardModel with ``scope="accumulated"``;
run by test_dpo_ddp.py.

Usage: ``python tests/ddp_accumulated_script.py OUT_DIR MICRO_BATCH_SIZE``. Lightning's DDP
launcher re-runs this script for rank 1. Each rank gets 8 pairs per optimiser step (
optimiser step ``s`` on rank ``r`` takes pairs ``16 s + 8 r .. 16 s + 8 r + 7``), cut into micro-batches of
MICRO_BATCH_SIZE; rank 0 writes the final flat parameters to OUT_DIR/params.pt. The pytest side
trains the same 16 pairs per step in one process, one batch, and compares.
"""

from __future__ import annotations

import os
import sys

import torch
from lightning import Trainer, seed_everything
from lightning.pytorch.strategies import DDPStrategy

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
STEPS = 2
PER_RANK = 8


def build(weighting, micro_batch_size=None):
    from lightning_robust.modules import RewardModel

    return RewardModel(
        weighting=weighting,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        lr_schedule="constant",
        tiny_config=TINY,
        micro_batch_size=micro_batch_size,
    )


def data(batch_size: int, ranks: int = 1):
    """The 32 pairs in order; with ``ranks`` > 1 each rank's loader holds its contiguous share
    of every step (no distributed sampler), so the union over ranks of step ``s`` is
    pairs ``16 s .. 16 s + 15`` -- the single-process batch of 16."""
    from torch.utils.data import DataLoader

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.synthetic import SyntheticShiftConfig

    class RankSlices(PreferenceDataModule):
        def train_dataloader(self):
            if ranks == 1:
                return super().train_dataloader()
            rank = self.trainer.global_rank
            step = ranks * batch_size
            order = [
                s + rank * batch_size + j
                for s in range(0, len(self.datasets["train"]), step)
                for j in range(batch_size)
            ]
            return DataLoader(
                self.datasets["train"],
                batch_size=batch_size,
                sampler=order,
                collate_fn=self.collator,
            )

    return RankSlices(
        train="synthetic",
        batch_size=batch_size,
        max_length=48,
        val_fraction=0.0,
        shuffle=False,
        synthetic=SyntheticShiftConfig(
            num_train=2 * PER_RANK * STEPS, num_eval=8, seed=6, length_pair_share=0.0
        ),
    )


def trainer(**kw) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **kw,
    )


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.backbone.parameters()])


def main(argv: list[str]) -> int:
    from lightning_robust.weighting import TVBall

    out_dir, micro = argv[1], int(argv[2])
    torch.set_num_threads(1)
    seed_everything(0)
    model = build(TVBall(0.3, scope="accumulated"), micro_batch_size=micro)
    t = trainer(
        devices=2, strategy=DDPStrategy(process_group_backend="gloo"), use_distributed_sampler=False
    )
    t.fit(model, datamodule=data(PER_RANK, ranks=2))
    if t.global_rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        torch.save(
            {"params": flat_params(model), "steps": t.global_step, "world": t.world_size},
            os.path.join(out_dir, "params.pt"),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
