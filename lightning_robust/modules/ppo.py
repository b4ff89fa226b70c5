"""PPO and DR-PPO (S000 Algorithm 2 and §5.2; docs/ALGORITHMS.md §4) as one LightningModule.

Per batch of prompts: sample completions, score them with the proxy reward model (minus the
missing-EOS penalty), form TRL-style per-token rewards ``-beta (log pi_old - log pi_ref)`` plus
the score at the last token, GAE (``gamma``, ``lam``) on the value head's values, whitened
advantages, then ``ppo_epochs`` passes of clipped-surrogate and clipped value-loss updates.

**Value head.** A ``Linear(hidden_size, 1)`` on the policy's last hidden state (after the
final norm), evaluated at the position that predicts each response token, i.e. the state
before the token is emitted; it shares the policy's forward pass (one backbone, no separate
critic model as TRL has), is initialised to zero (values start at 0) and is trained by the
clipped value loss scaled by ``vf_coef``.

**DR-PPO.** ``weighting`` (S000: ``TVBall(rho)``) is applied to ``-v`` with ``v_i`` the
KL-regularised return of completion ``i`` (sum of its per-token rewards), so the adversary lowers
the value; its weights ``q`` give ``n q_i`` per completion:

* ``dr_version="A"`` (default, S000's better variant): ``n q_i`` scales completion ``i``'s
  per-token rewards before GAE (``scale_at="rewards"``) or its GAE advantages before whitening
  (``scale_at="advantages"``);
* ``dr_version="B"``: ``n q_i`` scales completion ``i``'s per-token policy loss; the value loss
  is not scaled.

With ``weighting=None``, or weights that come out uniform (``rho = 0``), no scale is applied
at all, so the run is exactly PPO.
"""

from __future__ import annotations

from typing import Literal

import torch

from lightning_robust.models.lora import LoraOptions
from lightning_robust.models.rollout import Rollout, token_logprobs_and_values
from lightning_robust.modules.base import validate_step_options
from lightning_robust.modules.online import LossAggregation, OnlineRLModule
from lightning_robust.modules.optim import Schedule, TorchOptimizer
from lightning_robust.objectives.rl import (
    aggregate_token_losses,
    clipped_value_loss,
    explained_variance,
    kl_regularised_returns,
    missing_eos_penalty,
    policy_surrogate,
    ppo_advantages,
    ppo_token_rewards,
)
from lightning_robust.weighting import RobustWeighting


class PPO(OnlineRLModule):
    """PPO with a value head and its distributionally robust form DR-PPO (docs/ALGORITHMS.md §4).

    Args:
        beta: per-token KL coefficient in the reward (0.02, S000 Table 13).
        gamma, lam: GAE discount and lambda (1.0 and 0.95, S000 Table 13).
        clip, value_clip: ratio clip and value clip (0.2 and 0.2, S000 Table 13).
        vf_coef: value-loss coefficient (0.1, TRL's ``PPOConfig`` default).
        missing_eos_penalty: subtracted from the score of completions without EOS (1.0, S000).
        ppo_epochs: update passes per rollout (4, TRL's ``num_ppo_epochs``); ``num_minibatches``
            per pass (1, TRL's ``num_mini_batches``).
        whiten: whiten the advantages over the batch's response tokens (True, TRL).
        weighting: DR-PPO's RobustWeighting on ``-v`` (S000: ``TVBall(rho)``, rho as the reward
            model's); ``None`` is PPO.
        dr_version: ``A`` (default) or ``B`` (see the module docstring).
        scale_at: version A's ``rewards`` (default) or ``advantages``.
        num_generations: completions per prompt (1, PPO's usual setting).
        temperature, top_p, top_k, max_new_tokens: sampling (0.7: TRL's default temperature;
            1.0, 0, 32 chosen here).
        learning_rate, lr_schedule, warmup_ratio: 1e-5 (S000 Table 13), linear decay, no warmup
            (chosen here). Other args: see :class:`OnlineRLModule`.
        nonfinite: ``error`` (default) raises on a non-finite gradient naming the parameters;
            ``skip`` drops that update and counts it (``train/skipped_steps``).
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny",
        reward_model: str = "synthetic:proxy",
        gold_reward_model: str | None = None,
        beta: float = 0.02,
        gamma: float = 1.0,
        lam: float = 0.95,
        clip: float = 0.2,
        value_clip: float = 0.2,
        vf_coef: float = 0.1,
        missing_eos_penalty: float | None = 1.0,
        ppo_epochs: int = 4,
        num_minibatches: int = 1,
        whiten: bool = True,
        weighting: RobustWeighting | None = None,
        dr_version: Literal["A", "B"] = "A",
        scale_at: Literal["rewards", "advantages"] = "rewards",
        loss_aggregation: LossAggregation = "token_mean",
        num_generations: int = 1,
        max_new_tokens: int = 32,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        lora: LoraOptions | None = None,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        lr_schedule: Schedule = "linear",
        min_lr_ratio: float = 0.0,
        optimizer: TorchOptimizer | None = None,
        max_grad_norm: float | None = 1.0,
        reward_batch_size: int = 16,
        reward_max_length: int = 1024,
        val_do_sample: bool = True,
        rollout_backend: Literal["hf", "vllm"] = "hf",
        tiny_config: dict | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        dropout: bool = False,
        trust_remote_code: bool = False,
        init_seed: int = 0,
        nonfinite: Literal["error", "skip"] = "error",
    ):
        if dr_version not in ("A", "B"):
            raise ValueError(f"unknown dr_version={dr_version!r}; expected 'A' or 'B'")
        if scale_at not in ("rewards", "advantages"):
            raise ValueError(f"unknown scale_at={scale_at!r}; expected 'rewards' or 'advantages'")
        for name, value in {"beta": beta, "value_clip": value_clip, "vf_coef": vf_coef}.items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not (0 <= lam <= 1 and 0 <= gamma <= 1):
            raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma!r}, lam={lam!r}")
        super().__init__(**OnlineRLModule.common_args(locals()))
        validate_step_options(nonfinite)
        self.save_hyperparameters(ignore=["weighting"])
        self.value_head = None

    # ------------------------------------------------------------------ value head
    def build_extra_modules(self, model) -> None:
        hidden = model.config.get_text_config().hidden_size
        head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        self.value_head = head

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return super().trainable_parameters() + list(self.value_head.parameters())

    def needs_values(self) -> bool:
        return True

    def policy_forward(self, rollout: Rollout):
        return token_logprobs_and_values(
            self.backbone, rollout, self.hparams.temperature, value_head=self.value_head
        )

    # ------------------------------------------------------------------ rollout -> targets
    def prepare(self, rollout: Rollout, scores, old_logps, old_values, ref_logps):
        hp = self.hparams
        mask = rollout.response_mask.bool()
        if hp.missing_eos_penalty is not None:
            scores = missing_eos_penalty(scores, rollout.has_eos, hp.missing_eos_penalty)
        stats: dict[str, torch.Tensor] = {}
        scales = None
        if self.weighting is not None:
            returns_v = kl_regularised_returns(
                ppo_token_rewards(old_logps, ref_logps, scores, mask, hp.beta), mask
            )
            out = self.weighting(-returns_v)  # the adversary lowers the value: TV ball on -v
            scales = out.sample_scales()  # None for uniform q: exactly PPO
            stats.update({f"robust/{k}": v for k, v in out.stats.items()})
        advantages, returns, token_rewards = ppo_advantages(
            old_logps,
            ref_logps,
            scores,
            old_values,
            mask,
            hp.beta,
            gamma=hp.gamma,
            lam=hp.lam,
            sample_scales=scales if hp.dr_version == "A" else None,
            scale_at=hp.scale_at,
            whiten=hp.whiten,
        )
        targets = {
            "old_logps": old_logps,
            "old_values": old_values,
            "advantages": advantages,
            "returns": returns,
        }
        if scales is not None and hp.dr_version == "B":
            targets["sample_weights"] = scales
        stats["reward/score"] = scores.mean()
        stats["reward/kl_regularised"] = kl_regularised_returns(token_rewards, mask).mean()
        stats["value/explained_variance"] = explained_variance(old_values, returns, mask)
        return targets, stats

    def minibatch_loss(self, rollout: Rollout, targets: dict):
        hp = self.hparams
        mask = rollout.response_mask.bool()
        logps, values = self.policy_forward(rollout)
        token_losses, clip_fraction = policy_surrogate(
            logps, targets["old_logps"], targets["advantages"], mask, clip=hp.clip
        )
        policy_loss = aggregate_token_losses(
            token_losses, mask, hp.loss_aggregation, sample_weights=targets.get("sample_weights")
        )
        value_losses = clipped_value_loss(
            values, targets["old_values"], targets["returns"], mask, clip=hp.value_clip
        )
        value_loss = aggregate_token_losses(value_losses, mask, hp.loss_aggregation)
        loss = policy_loss + hp.vf_coef * value_loss
        stats = {
            "policy/loss": policy_loss.detach(),
            "policy/clip_fraction": clip_fraction,
            "value/loss": value_loss.detach(),
        }
        return loss, stats
