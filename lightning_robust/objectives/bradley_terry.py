"""Bradley–Terry reward-model losses (docs/ALGORITHMS.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_losses(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss ``l_i = -log sigma(r(x_i, y_i^+) - r(x_i, y_i^-) - m_i)`` (docs/ALGORITHMS.md §2).

    ``margin`` (optional, per pair) is the margin of Llama-2 / TRL's RewardTrainer; evaluated
    stably as ``softplus(-(diff))``. Returns a tensor of shape ``[n]``.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return F.softplus(-diff)


def reward_centering_penalty(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """``mean((r^+ + r^-)^2)``: pushes rewards towards zero mean (Eisenstein et al. 2023, as TRL's
    ``center_rewards_coefficient``). Added to the robust loss times a coefficient."""
    return ((chosen_rewards + rejected_rewards) ** 2).mean()


def pairwise_correct(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Strict pairwise accuracy indicator per pair: 1 when ``r^+ > r^-`` (ties count as wrong)."""
    return (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype)
