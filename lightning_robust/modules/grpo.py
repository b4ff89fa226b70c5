"""GRPO with the DRRO / DRO reward shapings of S003 and robust prompt weighting (docs/ALGORITHMS.md §5).

One step (§5.5): sample ``G`` completions of each of ``B`` prompts from the current (old)
policy, score them with the proxy reward, compute old and reference log-probs, estimate the
batch's sequence-level KL to the initial policy (k3 in float64), set the budget ``delta_t``
(fixed, or dynamic: ``delta0 + c * mean of the last W batch KLs``), shape the rewards of each
group (``shaping``: ``none`` = GRPO, ``drro_hard``, ``drro_soft``, ``dro``), normalise them
within the group, and run ``ppo_epochs`` of clipped-surrogate updates with the completion
advantage broadcast over its tokens. No KL term by default (``kl_coef = 0``, S003 App. C/G).

Named methods as arguments:

==================  ==========================================================================
GRPO                ``shaping="none"``
DRRO-GRPO (final)   ``shaping="drro_soft", budget="dynamic"`` (S003 §4.5, "soft + dynamic")
DRRO hard           ``shaping="drro_hard"`` (fixed or dynamic budget)
DRO baseline        ``shaping="dro"`` (penalises the most probable sampled completion)
robust prompts      ``weighting=TVBall(rho)`` etc.: prompt ``i``'s loss for the weighting is
                    ``-mean_g r_ig``, its policy loss is scaled by ``n q_i`` (docs/DESIGN.md)
==================  ==========================================================================

The math is in :mod:`lightning_robust.objectives.drro` and :mod:`lightning_robust.objectives.rl`.
"""

from __future__ import annotations

import time
from typing import Literal

import torch

from lightning_robust.models.lora import LoraOptions
from lightning_robust.models.rollout import Rollout
from lightning_robust.modules.base import validate_step_options
from lightning_robust.modules.online import LossAggregation, OnlineRLModule
from lightning_robust.modules.optim import Schedule, TorchOptimizer
from lightning_robust.objectives.drro import (
    BONUS_FORMS,
    DEFAULT_TAU,
    SHAPINGS,
    dynamic_budget,
    group_advantages,
    shaped_rewards,
)
from lightning_robust.objectives.rl import (
    aggregate_token_losses,
    missing_eos_penalty,
    policy_surrogate,
    token_kl,
)
from lightning_robust.weighting import RobustWeighting

Shaping = Literal["none", "drro_hard", "drro_soft", "dro"]
KL_HISTORY_KEY = "grpo_kl_history"


class GRPO(OnlineRLModule):
    """GRPO and DRRO-GRPO (S003) as one LightningModule (docs/ALGORITHMS.md §5.3–§5.5).

    Args:
        num_generations: ``G`` completions per prompt (4, chosen here: S003's value was lost in
            extraction). ``G < 2`` is rejected for ``drro_*`` and ``dro``.
        shaping: ``none`` | ``drro_hard`` | ``drro_soft`` | ``dro`` (§5.3).
        budget: ``fixed`` (``delta``) or ``dynamic`` (``delta_t = delta0 + budget_c * mean of the
            last budget_window batch KL estimates``, §5.4; the batch estimate is averaged over
            data-parallel ranks, so every rank uses the same budget; the history is saved in
            checkpoints).
        delta: the fixed budget ``delta~`` in group-normalised coordinates (0.5, chosen here: the
            §5.3 example's value).
        delta0, budget_c, budget_window: dynamic budget (0.1, 0.05, 10: chosen here; S003
            pilot-calibrates ``delta0`` from the proxy-vs-gold gap and tunes ``c``, ``W``).
        tau: soft-bonus temperature (0.2, chosen here; the objective's default).
        bonus_form: soft bonus ``mass`` (``delta G p~ omega``, default) or ``weight``
            (``delta omega``), docs/ALGORITHMS.md §8.5.
        kl_coef: coefficient of a per-token k3 KL(pi || pi_ref) term added to the loss (0: S003
            uses none).
        clip: ratio clip radius (0.2, chosen here; lost in extraction).
        ppo_epochs: update passes per rollout (1, S003 App. G); ``num_minibatches`` per pass (1).
        loss_aggregation: ``token_mean`` (VERL's default, S003 "VERL's token aggregation").
        weighting: a RobustWeighting across the batch's prompts (``None``: plain mean).
        missing_eos_penalty: subtracted from the proxy score of completions without EOS
            (``None``: off, as S003).
        temperature, top_p, top_k, max_new_tokens: sampling (1.0, 1.0, 0, 32; chosen here).
        reward_model, gold_reward_model: proxy (the loss) and gold (logging only) scorer specs.
        learning_rate, lr_schedule, warmup_ratio: AdamW constant lr, no warmup (S003 App. G; the
            lr value, 1e-5, is chosen here).
        nonfinite: ``error`` (default) raises on a non-finite gradient naming the parameters;
            ``skip`` drops that update and counts it (``train/skipped_steps``).
            Other args: see :class:`OnlineRLModule`.
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny",
        reward_model: str = "synthetic:proxy",
        gold_reward_model: str | None = None,
        num_generations: int = 4,
        shaping: Shaping = "none",
        budget: Literal["fixed", "dynamic"] = "fixed",
        delta: float = 0.5,
        delta0: float = 0.1,
        budget_c: float = 0.05,
        budget_window: int = 10,
        tau: float = DEFAULT_TAU,
        bonus_form: Literal["mass", "weight"] = "mass",
        kl_coef: float = 0.0,
        clip: float = 0.2,
        ppo_epochs: int = 1,
        num_minibatches: int = 1,
        loss_aggregation: LossAggregation = "token_mean",
        weighting: RobustWeighting | None = None,
        missing_eos_penalty: float | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        lora: LoraOptions | None = None,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        lr_schedule: Schedule = "constant",
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
        if shaping not in SHAPINGS:
            raise ValueError(f"unknown shaping={shaping!r}; expected one of {list(SHAPINGS)}")
        if shaping != "none" and num_generations < 2:
            raise ValueError(
                f"shaping={shaping!r} needs num_generations >= 2 (a group of one completion has "
                f"p~ = 1, so DRRO/DRO is meaningless), got num_generations={num_generations}"
            )
        if budget not in ("fixed", "dynamic"):
            raise ValueError(f"unknown budget={budget!r}; expected 'fixed' or 'dynamic'")
        if bonus_form not in BONUS_FORMS:
            raise ValueError(
                f"unknown bonus_form={bonus_form!r}; expected one of {list(BONUS_FORMS)}"
            )
        for name, value in {
            "delta": delta,
            "delta0": delta0,
            "budget_c": budget_c,
            "kl_coef": kl_coef,
        }.items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if budget_window < 1:
            raise ValueError(f"budget_window must be >= 1, got {budget_window!r}")
        super().__init__(**OnlineRLModule.common_args(locals()))
        validate_step_options(nonfinite)
        self.save_hyperparameters(ignore=["weighting"])
        #: batch KL estimates (sequence k3, float64 means) of the dynamic budget, newest last
        self.kl_history: list[float] = []
        #: seconds spent in the shaping call (reward shaping + group advantages), accumulated
        self.shaping_seconds = 0.0

    # ------------------------------------------------------------------ budget
    def current_budget(self, batch_kl: float) -> float:
        """``delta_t``: the fixed ``delta``, or (dynamic) append ``batch_kl`` to the history and
        return ``delta0 + c * mean(last W)`` (docs/ALGORITHMS.md §5.4)."""
        hp = self.hparams
        if hp.budget == "fixed":
            return float(hp.delta)
        self.kl_history.append(float(batch_kl))
        del self.kl_history[: max(0, len(self.kl_history) - hp.budget_window)]
        return dynamic_budget(hp.delta0, hp.budget_c, self.kl_history, hp.budget_window)

    # ------------------------------------------------------------------ rollout -> targets
    def prepare(self, rollout: Rollout, scores, old_logps, old_values, ref_logps):
        hp = self.hparams
        G = hp.num_generations
        B = rollout.input_ids.shape[0] // G
        if hp.missing_eos_penalty is not None:
            scores = missing_eos_penalty(scores, rollout.has_eos, hp.missing_eos_penalty)
        rewards = scores.view(B, G)
        seq_old = old_logps.sum(-1).view(B, G)
        stats: dict[str, torch.Tensor] = {}
        batch_kl = self.sequence_kl(old_logps.sum(-1), ref_logps.sum(-1))["kl"]
        if self._trainer is not None and self.trainer.world_size > 1:  # one budget on every rank
            batch_kl = self.trainer.strategy.reduce(batch_kl, reduce_op="mean")
        batch_kl = float(batch_kl)
        delta = self.current_budget(batch_kl)

        start = time.perf_counter()
        shaped, bonus = shaped_rewards(
            rewards, seq_old, delta, hp.shaping, tau=hp.tau, bonus_form=hp.bonus_form
        )
        advantages = group_advantages(shaped)
        self.shaping_seconds += time.perf_counter() - start

        targets = {
            "old_logps": old_logps,
            "ref_logps": ref_logps,
            "advantages": advantages.reshape(-1).to(old_logps.dtype),
        }
        if self.weighting is not None:
            out = self.weighting(-rewards.mean(dim=1))  # prompt loss: minus its mean group reward
            nq = out.sample_scales()  # None for uniform q: exactly GRPO
            if nq is not None:
                targets["sample_weights"] = nq.repeat_interleave(G).to(old_logps.dtype)
            stats.update({f"robust/{k}": v for k, v in out.stats.items()})
        stats["budget/delta"] = torch.tensor(delta)
        stats["reward/shaped"] = shaped.mean()
        if hp.shaping != "none":
            nonzero = bonus != 0
            stats["bonus/mean"] = bonus.mean()
            stats["bonus/max"] = bonus.amax()
            stats["bonus/nonzero"] = nonzero.double().mean()
            if (
                delta > 0
            ):  # docs/ALGORITHMS.md §8.5: max_i b_i / delta and sum_i b_i / delta per group
                stats["bonus/max_over_delta"] = (bonus.abs().amax(dim=1) / delta).mean()
                stats["bonus/sum_over_delta"] = (bonus.sum(dim=1) / delta).mean()
        return targets, stats

    def minibatch_loss(self, rollout: Rollout, targets: dict):
        hp = self.hparams
        mask = rollout.response_mask.bool()
        logps, _ = self.policy_forward(rollout)
        token_losses, clip_fraction = policy_surrogate(
            logps, targets["old_logps"], targets["advantages"], mask, clip=hp.clip
        )
        weights = targets.get("sample_weights")
        loss = aggregate_token_losses(
            token_losses, mask, hp.loss_aggregation, sample_weights=weights
        )
        stats = {"policy/clip_fraction": clip_fraction, "policy/loss": loss.detach()}
        if hp.kl_coef > 0:
            kl = aggregate_token_losses(
                token_kl(logps, targets["ref_logps"], "k3") * mask,
                mask,
                hp.loss_aggregation,
                sample_weights=weights,
            )
            loss = loss + hp.kl_coef * kl
            stats["policy/kl_term"] = kl.detach()
        return loss, stats

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[KL_HISTORY_KEY] = list(self.kl_history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.kl_history = [float(k) for k in checkpoint.get(KL_HISTORY_KEY, [])]
