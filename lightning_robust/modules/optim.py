"""Optimiser and learning-rate schedule shared by the modules (AdamW + warmup + decay).

:class:`OptimizerOptions` groups every optimiser setting with its checks; :func:`build_optimizer`
turns it into Lightning's ``{"optimizer", "lr_scheduler"}`` dict for every module's
``configure_optimizers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class called ``name`` (``"AdamW"``, ``"SGD"``, ...), or a named error."""
    cls = getattr(torch.optim, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        known = sorted(
            n
            for n, c in vars(torch.optim).items()
            if isinstance(c, type)
            and issubclass(c, torch.optim.Optimizer)
            and c is not torch.optim.Optimizer
        )
        raise ValueError(f"unknown optimizer={name!r}; expected a torch.optim class: {known}")
    return cls


@dataclass(frozen=True)
class TorchOptimizer:
    """Which ``torch.optim`` class a module trains with (the ``optimizer`` option of every
    module): ``name`` (default ``AdamW``) and its further constructor arguments ``kwargs``, e.g.
    ``{betas: [0.9, 0.95], eps: 1.0e-6, fused: true}`` (fused AdamW needs the parameters on a
    CPU or CUDA device) or ``{name: SGD, kwargs: {momentum: 0.9}}``. The learning rate, weight decay
    and schedule stay the module's ``learning_rate``, ``weight_decay``, ``warmup_ratio``,
    ``lr_schedule`` and ``min_lr_ratio``."""

    name: str = "AdamW"
    kwargs: dict | None = None

    def __post_init__(self):
        OptimizerOptions(name=self.name, kwargs=dict(self.kwargs or {}))  # the same checks

    @classmethod
    def coerce(cls, value) -> TorchOptimizer:
        """``None`` (AdamW), a ``TorchOptimizer`` or the plain dict LightningCLI hands over."""
        if value is None:
            return cls()
        return cls(**value) if isinstance(value, dict) else value


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([TorchOptimizer])


@dataclass(frozen=True)
class OptimizerOptions:
    """Every optimiser setting of a module, checked on construction.

    Attributes:
        learning_rate: peak learning rate (> 0).
        weight_decay: decoupled weight decay (>= 0).
        warmup_ratio: share of the optimiser steps with a linear warmup, in ``[0, 1]``.
        lr_schedule: ``cosine`` | ``linear`` | ``constant`` after the warmup.
        min_lr_ratio: the decay's floor as a share of the peak, in ``[0, 1]``.
        name: a ``torch.optim`` class (default ``AdamW``).
        kwargs: further arguments of that class (``betas``, ``eps``, ``fused``, ``momentum``...).
    """

    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.0
    name: str = "AdamW"
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        validate_optimizer_options(self.learning_rate, self.lr_schedule)
        checks = {
            "weight_decay": self.weight_decay >= 0,
            "warmup_ratio": 0 <= self.warmup_ratio <= 1,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}")
        optimizer_class(self.name)
        if "betas" in self.kwargs and isinstance(self.kwargs["betas"], list):  # YAML lists
            object.__setattr__(
                self, "kwargs", {**self.kwargs, "betas": tuple(self.kwargs["betas"])}
            )
        for reserved in ("lr", "weight_decay", "params"):
            if reserved in self.kwargs:
                raise ValueError(
                    f"optimizer kwargs must not set {reserved!r}: use learning_rate / weight_decay"
                )

    @classmethod
    def coerce(cls, value) -> OptimizerOptions:
        """``None`` (this class's defaults), an ``OptimizerOptions`` (kept) or the plain dict
        LightningCLI hands over, whose missing fields take this class's defaults (each module
        has its own subclass: GRPO's constant schedule, PPO's linear one)."""
        if value is None:
            return cls()
        return cls(**value) if isinstance(value, dict) else value


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([OptimizerOptions])


def lr_lambda(
    step: int, total_steps: int, warmup_steps: int, schedule: Schedule, min_lr_ratio: float
) -> float:
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


def no_weight_decay_ids(module: torch.nn.Module) -> set[int]:
    """``id``s of the parameters that take no weight decay, as Hugging Face's ``Trainer`` and
    TRL exclude them: every bias, and every parameter of a normalisation layer (a module whose
    class name contains ``Norm``: ``LayerNorm``, ``LlamaRMSNorm``, ``RMSNorm``, ...)."""
    ids = set()
    for sub in module.modules():
        norm = "Norm" in type(sub).__name__
        for name, p in sub.named_parameters(recurse=False):
            if norm or name == "bias" or name.endswith("_bias"):
                ids.add(id(p))
    return ids


def parameter_groups(params: list, weight_decay: float, no_decay: set[int]) -> list[dict]:
    """One group when ``weight_decay`` is 0 (nothing to exclude), else the decayed parameters
    and the others (``weight_decay=0``), empty groups left out."""
    if not weight_decay or not no_decay:
        return [{"params": params}]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


#: ``torch.optim`` classes whose fused implementation :func:`build_optimizer` may pick by default
FUSED_BY_DEFAULT = ("Adam", "AdamW")


def fused_by_default(name: str, kwargs: dict, params: list) -> bool:
    """Whether ``fused=True`` is added to the optimiser's arguments: an Adam/AdamW whose
    ``kwargs`` choose no implementation (``fused`` / ``foreach``) over floating-point, dense
    parameters on CPU or CUDA. The fused kernel does the same update as the default ``foreach``
    one (Kingma & Ba 2015; decoupled decay, Loshchilov & Hutter 2019), equal up to float
    rounding, in one pass over each parameter: on one CPU thread a step over SmolLM2-135M's
    134.5 M parameters takes 0.16 s instead of 0.70 s (benchmarks/README.md). Hugging Face's
    ``Trainer`` (and so TRL) defaults to ``adamw_torch_fused`` likewise."""
    if name not in FUSED_BY_DEFAULT or "fused" in kwargs or "foreach" in kwargs:
        return False
    return bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point and p.layout == torch.strided
        for p in params
    )


def build_optimizer(
    parameters,
    options: OptimizerOptions,
    total_steps: int,
    no_decay: set[int] | None = None,
    fused: bool = False,
):
    """The optimiser of ``options`` over the trainable parameters and a per-step LambdaLR
    (warmup, then the schedule), in Lightning's dict form. ``no_decay``: ids of parameters that
    take no weight decay (:func:`no_weight_decay_ids`: biases and norm weights). ``fused``: use
    the fused Adam/AdamW kernel where :func:`fused_by_default` allows it (the caller knows
    whether its training loop takes one: Lightning refuses gradient clipping of a fused
    optimiser under fp16 loss scaling)."""
    params = [p for p in parameters if p.requires_grad]
    kwargs = dict(options.kwargs)
    if fused and fused_by_default(options.name, kwargs, params):
        kwargs["fused"] = True
    optimizer = optimizer_class(options.name)(
        parameter_groups(params, options.weight_decay, no_decay or set()),
        lr=options.learning_rate,
        weight_decay=options.weight_decay,
        **kwargs,
    )
    warmup = int(math.ceil(options.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(s, total_steps, warmup, options.lr_schedule, options.min_lr_ratio),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
