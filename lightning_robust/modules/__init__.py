"""LightningModules: they own the models and wire objectives, weighting and logging."""

from lightning_robust.modules.dpo import DPO
from lightning_robust.modules.grpo import GRPO
from lightning_robust.modules.ppo import PPO
from lightning_robust.modules.reward_loading import load_reward_scorer
from lightning_robust.modules.reward_model import RewardModel

__all__ = ["DPO", "GRPO", "PPO", "RewardModel", "load_reward_scorer"]
