"""Online RL throughput on CPU: rollout tokens/s, update steps/s, and the DRRO/DRO shaping cost.

Runs the tiny GRPO and PPO configs (``configs/grpo/tiny_*.yaml``, ``configs/ppo/tiny_*.yaml``)
through the CLI's parser for ``--steps`` rollouts each and times, per training batch:

- the rollout (``generate`` with the KV cache): response tokens generated per second;
- the updates (``ppo_epochs x num_minibatches`` clipped-surrogate steps): optimiser steps/s;
- the whole training step (callback hooks around each batch);
- for GRPO, the reward-shaping call (``shaped_rewards`` + ``group_advantages``, timed inside
  ``GRPO.prepare`` and accumulated in ``GRPO.shaping_seconds``): its share of the step time is
  the measured shaping time over the measured step time, summed over many steps (docs/DESIGN.md
  settled point; goal <= 1 %). GRPO (``shaping: none``) times the same call (group
  advantages only) as the baseline.

    python benchmarks/rl_throughput.py [--steps 20] [--warmup 2] [--threads K] [--max-new-tokens 12]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning import Callback

from lightning_robust.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = [
    ("GRPO", "grpo/tiny_grpo.yaml"),
    ("DRRO-GRPO soft+dynamic", "grpo/tiny_drro_soft_dynamic.yaml"),
    ("DRRO-GRPO hard", "grpo/tiny_drro_hard.yaml"),
    ("DRO-GRPO", "grpo/tiny_dro.yaml"),
    ("PPO", "ppo/tiny_ppo.yaml"),
    ("DR-PPO (TV 0.4, vA)", "ppo/tiny_dr_ppo.yaml"),
]


class _Timer(Callback):
    """Wall time of every training batch after ``warmup`` batches, and the module's timed parts."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.step = self.rollout = self.update = self.shaping = 0.0
        self.step_times: list[float] = []
        self.shaping_times: list[float] = []
        self.tokens = self.updates = self.batches = 0
        self._start = 0.0
        self._shaping_start = 0.0

    def wrap(self, module) -> None:
        """Time ``module.rollout`` and ``module.update`` (instance attributes shadow the methods)."""
        rollout, update = module.rollout, module.update

        def timed_rollout(*args, **kwargs):
            start = time.perf_counter()
            out = rollout(*args, **kwargs)
            if module.training and self._counting(module):
                self.rollout += time.perf_counter() - start
                self.tokens += int(out.response_lengths.sum())
            return out

        def timed_update(*args, **kwargs):
            start = time.perf_counter()
            out = update(*args, **kwargs)
            if self._counting(module):
                self.update += time.perf_counter() - start
                self.updates += module.hparams.ppo_epochs * module.hparams.num_minibatches
            return out

        module.rollout, module.update = timed_rollout, timed_update

    def _counting(self, module) -> bool:
        return self.batches >= self.warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._shaping_start = getattr(pl_module, "shaping_seconds", 0.0)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        elapsed = time.perf_counter() - self._start
        if self.batches >= self.warmup:
            shaping = getattr(pl_module, "shaping_seconds", 0.0) - self._shaping_start
            self.step += elapsed
            self.shaping += shaping
            self.step_times.append(elapsed)
            self.shaping_times.append(shaping)
        self.batches += 1


def run(config: str, steps: int, warmup: int, max_new_tokens: int) -> _Timer:
    timer = _Timer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        cli = build_cli(
            [
                "--config",
                str(CONFIGS / config),
                f"--trainer.limit_train_batches={steps + warmup}",
                "--trainer.limit_val_batches=0",
                "--trainer.logger=false",
                "--trainer.enable_checkpointing=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.callbacks=[]",
                f"--model.init_args.max_new_tokens={max_new_tokens}",
                f"--data.init_args.synthetic.num_train={(steps + warmup) * 16}",
            ],
            run=False,
        )
        cli.trainer.callbacks.append(timer)
        timer.wrap(cli.model)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rollouts per config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rollouts first")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads for this run"
    )
    parser.add_argument("--max-new-tokens", type=int, default=12)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI below gets its own argument list
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    here = os.getcwd()
    rows = []
    try:
        for name, config in RUNS:
            t = run(config, args.steps, args.warmup, args.max_new_tokens)
            rows.append((name, t))
    finally:
        os.chdir(here)
    print(
        f"\ntiny configs, {args.steps} timed rollouts each (+{args.warmup} warm-up), max_new_tokens "
        f"{args.max_new_tokens}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        "| run | step (ms, median) | rollout tokens/s | update steps/s | shaping (us/step, median) "
        "| shaping share of step (sum / sum) |"
    )
    print("|---|---|---|---|---|---|")
    for name, t in rows:
        shaping = f"{1e6 * statistics.median(t.shaping_times):.0f}" if t.shaping else "-"
        share = f"{100 * t.shaping / t.step:.3f} %" if t.shaping else "-"
        print(
            f"| {name} | {1e3 * statistics.median(t.step_times):.1f} | {t.tokens / t.rollout:.0f} | "
            f"{t.updates / t.update:.2f} | {shaping} | {share} |"
        )


if __name__ == "__main__":
    main()
