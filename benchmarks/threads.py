"""Tiny-DPO training speed (it/s) by torch thread count, alone and with one busy process beside it.

    python benchmarks/threads.py [--steps 60] [--repeats 2]

Each run is its own process: ``configs/dpo/tiny_dpo.yaml`` for ``--steps`` steps (no validation),
timed from step 10 on (model loading and warm-up excluded). Thread settings: ``1`` and ``2``
(``OMP_NUM_THREADS`` and ``torch.set_num_threads``) and ``default`` (nothing set: torch uses one
thread per core). ``busy``: a pure-Python loop runs in another process during the measurement.
Runs are interleaved; the figure is the median it/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("1", "2", "default")


def one(steps: int) -> dict:
    import torch
    from lightning.pytorch import Callback

    from lightning_robust.cli import build_cli

    class Clock(Callback):
        def __init__(self):
            self.start = None
            self.end = None

        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 10:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, *args):
            self.end = time.perf_counter()

    clock = Clock()
    cli = build_cli(
        [
            "--config",
            os.path.join(ROOT, "configs/dpo/tiny_dpo.yaml"),
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.default_root_dir=/tmp/lr_threads",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {"threads": torch.get_num_threads(), "it_s": (steps - 10) / (clock.end - clock.start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        threads = os.environ.get("BENCH_THREADS")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        print(json.dumps(one(args.steps)))
        return
    results: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for busy in (False, True):
            for setting in SETTINGS:
                env = {
                    k: v
                    for k, v in os.environ.items()
                    if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                }
                env["LIGHTNING_ROBUST_THREADS"] = (
                    "off"  # measure the raw settings, not the CLI's policy
                )
                if setting != "default":
                    env.update(OMP_NUM_THREADS=setting, BENCH_THREADS=setting)
                burner = (
                    subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                )
                try:
                    out = subprocess.run(
                        [sys.executable, __file__, "--one", "--steps", str(args.steps)],
                        check=True,
                        capture_output=True,
                        text=True,
                        env=env,
                        cwd=ROOT,
                    )
                finally:
                    if burner is not None:
                        burner.kill()
                        burner.wait()
                record = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((setting, busy), []).append(record["it_s"])
    print(
        f"tiny DPO (configs/dpo/tiny_dpo.yaml), {args.steps} steps timed from step 10, "
        f"{args.repeats} interleaved runs per cell, {os.cpu_count()} CPUs shared with other jobs"
    )
    print(f"{'threads':<10} {'alone it/s':>12} {'+1 busy it/s':>14}   (all runs)")
    for setting in SETTINGS:
        alone, busy = sorted(results[(setting, False)]), sorted(results[(setting, True)])
        print(
            f"{setting:<10} {alone[len(alone) // 2]:>12.1f} {busy[len(busy) // 2]:>14.1f}   "
            f"{[round(x, 1) for x in alone]} / {[round(x, 1) for x in busy]}"
        )


if __name__ == "__main__":
    main()
