"""Weighting overhead inside a real training step (issue: closed forms cost <= 1% of a step).

Runs the tiny reward model on the synthetic data for a number of steps with a given weighting,
timing every weighting call (forward hooks on the strategy module) and every training step
(callback hooks). The overhead is the *measured* weighting time as a fraction of the step time
over many steps, not a difference of two noisy step times (docs/DESIGN.md, further choices).

    python benchmarks/step_overhead.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from lightning import Callback, Trainer, seed_everything

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.modules import RewardModel
from lightning_robust.weighting import ERM, ChiSquareBall, CVaR, KLBall, KLPenalty, TVBall


class _StepTimer(Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self._start = warmup, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


HH_RLHF = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "hh_rlhf_harmless_base"
    / "harmless_base_test_shared.jsonl"
)
# The model size of docs/ENVIRONMENT.md's speed reference (hidden 128, 2 layers), on real
# variable-length hh-rlhf rows cut to 128 tokens.
REFERENCE = {"tiny_config": {"hidden_size": 128, "intermediate_size": 512}, "max_length": 128}


def _data(batch_size: int, rows: int, max_length: int, real: bool) -> PreferenceDataModule:
    if real:
        return PreferenceDataModule(
            train={"path": str(HH_RLHF), "schema": "hh_rlhf"},
            on_bad_row="skip",
            val_fraction=0.0,
            batch_size=batch_size,
            max_length=max_length,
            max_rows=rows,
        )
    return PreferenceDataModule(
        train="synthetic",
        batch_size=batch_size,
        max_length=max_length,
        synthetic=SyntheticShiftConfig(num_train=rows, num_eval=16),
    )


def measure(
    weighting,
    steps: int = 120,
    warmup: int = 10,
    batch_size: int = 16,
    tiny_config: dict | None = None,
    max_length: int = 64,
    real: bool = False,
) -> dict:
    """Train ``steps`` steps; return mean step time and the weighting time per call."""
    seed_everything(0, verbose=False)
    calls: list[float] = []
    start = {}

    def before(module, args):
        start["t"] = time.perf_counter()

    def after(module, args, output):
        calls.append(time.perf_counter() - start["t"])

    weighting.register_forward_pre_hook(before)
    weighting.register_forward_hook(after)
    timer = _StepTimer(warmup)
    data = _data(batch_size, batch_size * (steps + warmup), max_length, real)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
        log_every_n_steps=10,
    )
    model = RewardModel(weighting=weighting, learning_rate=1e-3, tiny_config=tiny_config)
    trainer.fit(model, datamodule=data)
    steps_done = len(timer.times)
    step = sum(timer.times) / steps_done
    weigh = sum(calls[warmup:]) / len(calls[warmup:])
    return {"step_ms": 1e3 * step, "weighting_ms": 1e3 * weigh}


def overhead_table(steps: int = 120, reference: bool = False) -> str:
    """Per weighting: step time, weighting time per call, its share of the step, and the
    step-time ratio against ERM implied by the measured extra weighting time:
    ``1 + (w - w_ERM) / step_ERM``."""
    rows = [
        ("ERM", ERM()),
        ("TVBall(0.4)", TVBall(rho=0.4)),
        ("ChiSquareBall(0.5)", ChiSquareBall(rho=0.5)),
        ("KLBall(0.2)", KLBall(rho=0.2)),
        ("KLPenalty(0.5)", KLPenalty(tau=0.5)),
        ("CVaR(0.25)", CVaR(alpha=0.25)),
    ]
    options = dict(REFERENCE, real=True) if reference else {}
    results = {name: measure(strategy, steps=steps, **options) for name, strategy in rows}
    erm = results["ERM"]
    what = (
        "reference-size tiny Llama (hidden 128, 2 layers), hh-rlhf rows <= 128 tokens"
        if reference
        else "quickstart tiny Llama (hidden 64, 2 layers), synthetic rows"
    )
    lines = [
        f"{what}, batch 16, {steps} timed steps, torch threads={torch.get_num_threads()}",
        f"{'weighting':<20}{'step ms':>10}{'weighting ms':>14}{'share %':>10}{'ratio vs ERM':>14}",
    ]
    for name, r in results.items():
        share = 100 * r["weighting_ms"] / r["step_ms"]
        ratio = 1 + (r["weighting_ms"] - erm["weighting_ms"]) / erm["step_ms"]
        lines.append(
            f"{name:<20}{r['step_ms']:>10.2f}{r['weighting_ms']:>14.3f}{share:>10.2f}{ratio:>14.4f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(overhead_table())
    if HH_RLHF.exists():
        print()
        print(overhead_table(reference=True))
