"""Optimiser and learning-rate schedule shared by the modules (AdamW + warmup + decay)."""

from __future__ import annotations

import math
from typing import Literal

import torch

Schedule = Literal["cosine", "linear", "constant"]

#: the learning-rate schedules :func:`lr_lambda` knows
SCHEDULES = ("cosine", "linear", "constant")


def validate_optimizer_options(learning_rate: float, lr_schedule: str) -> None:
    """Reject a non-positive (or NaN / non-numeric) ``learning_rate`` and an unknown
    ``lr_schedule`` at construction, before any model is loaded; shared by every module."""
    try:
        positive = float(learning_rate) > 0
    except (TypeError, ValueError):
        positive = False
    if not positive:
        raise ValueError(f"learning_rate must be > 0, got learning_rate={learning_rate!r}")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule={lr_schedule!r}; expected one of {list(SCHEDULES)}")


def lr_lambda(step: int, total_steps: int, warmup_steps: int, schedule: Schedule, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup, then cosine/linear decay to
    ``min_lr_ratio`` (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def build_optimizer(
    parameters,
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_ratio: float,
    schedule: Schedule,
    min_lr_ratio: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
):
    """AdamW over trainable parameters and a per-step LambdaLR, in Lightning's dict form.

    ``betas``: AdamW's ``(beta1, beta2)`` (torch default ``(0.9, 0.999)``; S002's LLaMA runs
    use ``(0.9, 0.95)``).
    """
    params = [p for p in parameters if p.requires_grad]
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"adam_betas must be two numbers in [0, 1), got {list(betas)}")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, betas=betas)
    warmup = int(math.ceil(warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total_steps, warmup, schedule, min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
