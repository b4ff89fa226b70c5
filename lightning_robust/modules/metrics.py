"""torchmetrics containers for pairwise preference metrics, overall and per group."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class GroupedMean(Metric):
    """Mean of a per-example value within each group id (``0 <= g < num_groups``; ``g < 0`` ignored).

    States are sums and counts, reduced by summation across processes.
    """

    full_state_update = False

    def __init__(self, num_groups: int):
        super().__init__()
        self.num_groups = num_groups
        self.add_state(
            "total", default=torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "count", default=torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, values: torch.Tensor, groups: torch.Tensor) -> None:
        # fixed shapes (rows of group -1 add zero): no boolean indexing, so no host sync per step
        keep = groups >= 0
        values = values.detach().to(torch.float64)
        self.total.index_add_(
            0, groups.clamp_min(0), torch.where(keep, values, torch.zeros_like(values))
        )
        self.count.index_add_(0, groups.clamp_min(0), keep.to(torch.float64))

    def compute(self) -> torch.Tensor:
        """Per-group means; NaN for groups never seen."""
        return self.total / self.count


class FiniteMean(Metric):
    """Mean of the finite entries of all updates; non-finite entries are left out.

    Replaces ``MeanMetric`` for per-step metrics: ``MeanMetric``'s NaN screen
    (``nan_strategy="warn"``) costs a host sync per update, and its ``"disable"`` lets one NaN
    of a step skipped under ``nonfinite="skip"`` poison the epoch mean. Here the screen is a
    fixed-shape ``where`` (no sync): ``total = sum of finite x``, ``count = number of finite x``,
    ``compute() = total / count`` (NaN before any finite value).
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().to(torch.float64)
        finite = torch.isfinite(values)
        self.total += torch.where(finite, values, torch.zeros_like(values)).sum()
        self.count += finite.sum()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


class PairwiseMetrics(torch.nn.Module):
    """Loss, strict accuracy, reward margin and reward mean/std of one evaluation set."""

    def __init__(self, group_names: list[str] | None = None):
        super().__init__()
        self.loss = FiniteMean()
        self.accuracy = FiniteMean()
        self.margin = FiniteMean()
        self.reward = FiniteMean()
        self.reward_sq = FiniteMean()
        self.group_names = list(group_names or [])
        if self.group_names:
            self.group_accuracy = GroupedMean(len(self.group_names))
            self.group_loss = GroupedMean(len(self.group_names))

    def update(self, losses, correct, chosen, rejected, groups=None) -> None:
        self.loss.update(losses)
        self.accuracy.update(correct)
        self.margin.update(chosen - rejected)
        rewards = torch.cat([chosen, rejected])
        self.reward.update(rewards)
        self.reward_sq.update(rewards**2)
        if self.group_names and groups is not None:
            self.group_accuracy.update(correct, groups)
            self.group_loss.update(losses, groups)

    @property
    def count(self) -> int:
        """Number of updates since the last reset."""
        return int(self.loss.update_count)

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        mean = self.reward.compute()
        values = {
            f"{prefix}loss": self.loss.compute(),
            f"{prefix}accuracy": self.accuracy.compute(),
            f"{prefix}margin": self.margin.compute(),
            f"{prefix}reward_mean": mean,
            f"{prefix}reward_std": (self.reward_sq.compute() - mean**2).clamp_min(0).sqrt(),
        }
        if self.group_names:
            accuracy, loss = self.group_accuracy.compute(), self.group_loss.compute()
            for g, name in enumerate(self.group_names):
                if not torch.isnan(accuracy[g]):
                    values[f"{prefix}group/{name}/accuracy"] = accuracy[g].float()
                    values[f"{prefix}group/{name}/loss"] = loss[g].float()
        return values

    def reset(self) -> None:
        # Fresh states must be normal tensors even when reset inside an evaluation loop's
        # inference mode, or the next training-time update could not modify them in place.
        with torch.inference_mode(False):
            for child in self.children():
                child.reset()


class TrainGroupMetrics(torch.nn.Module):
    """Per-group means of the per-example loss, accuracy and margin over a training epoch,
    accumulated on device each step and logged once per epoch as ``train/group/<name>/...``."""

    NAMES = ("loss", "rewards/accuracies", "rewards/margins")

    def __init__(self, group_names: list[str]):
        super().__init__()
        self.group_names = list(group_names)
        self.means = torch.nn.ModuleDict(
            {n.replace("/", "__"): GroupedMean(len(self.group_names)) for n in self.NAMES}
        )

    def update(self, values: dict[str, torch.Tensor], groups: torch.Tensor) -> None:
        for name in self.NAMES:
            self.means[name.replace("/", "__")].update(values[name], groups)

    def compute(self, prefix: str = "train/") -> dict[str, torch.Tensor]:
        out = {}
        for name in self.NAMES:
            means = self.means[name.replace("/", "__")].compute().float()
            for g, group in enumerate(self.group_names):
                if not torch.isnan(means[g]):
                    out[f"{prefix}group/{group}/{name}"] = means[g]
        return out

    def reset(self) -> None:
        for m in self.means.values():
            m.reset()


class StepWindow:
    """Per-step training scalars summed on device between two logging steps.

    ``add`` costs one in-place add per metric (no ``self.log`` call, no host sync); ``flush``
    returns the mean of each metric over the steps that reported it and starts a new window.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value).detach().reshape(()).to(torch.float32)
            if name in self.sums:
                self.sums[name].add_(value)
                self.counts[name] += 1
            else:
                self.sums[name] = value.clone()
                self.counts[name] = 1
        self.steps += 1

    def flush(self) -> dict[str, torch.Tensor]:
        means = {name: total / self.counts[name] for name, total in self.sums.items()}
        self.sums, self.counts, self.steps = {}, {}, 0
        return means
