"""The shared base of the online RL modules (GRPO and PPO; docs/ALGORITHMS.md §4, §5; issue 5).

One training batch of prompts is one *rollout* followed by several optimiser updates, so the
modules use Lightning's manual optimisation (``automatic_optimization = False``):

1. **generate** ``num_generations`` completions per prompt (no grad, eval mode, KV cache);
2. **score** them with the proxy reward model (no grad, batched); the gold reward model, when
   configured, is scored for logging only and never enters the loss;
3. **old and reference log-probs** per response token (no grad): the reference is the policy
   with its LoRA adapters disabled when LoRA is on, else a frozen copy of the initial policy
   made before LoRA;
4. the subclass turns the rollout into per-completion training targets (:meth:`prepare`);
5. ``ppo_epochs`` passes over ``num_minibatches`` minibatches of completions, each a clipped
   surrogate update: ``manual_backward``, ``clip_gradients`` (norm ``max_grad_norm``), the
   optimiser step and the per-update learning-rate schedule step.

Note that Lightning counts ``global_step`` per optimiser step, so one batch advances it by
``ppo_epochs * num_minibatches`` and ``trainer.max_steps`` counts updates, not rollouts.

Every random draw (sampling, minibatch shuffles) comes from the global torch generator seeded by
``seed_everything``, so a run is deterministic given its seed; validation samples under a forked
generator (seeded from ``init_seed``, the step, the batch and the evaluation set) and so never
shifts the training stream.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Literal

import torch

from lightning_robust.models.backbone import ModelOptions, load_backbone
from lightning_robust.models.lora import LoraOptions, prepare_for_training
from lightning_robust.models.rollout import (
    Rollout,
    generate_rollouts,
    select_rows,
    token_logprobs_and_values,
)
from lightning_robust.models.vllm_rollout import VLLMRolloutEngine
from lightning_robust.modules.base import BackboneModule
from lightning_robust.modules.metrics import FiniteMean
from lightning_robust.modules.optim import (
    OptimizerOptions,
    build_optimizer,
    no_weight_decay_ids,
)
from lightning_robust.modules.reference import ReferencePolicy
from lightning_robust.modules.reward_loading import load_reward_scorer
from lightning_robust.objectives.rl import sequence_kl_k3

log = logging.getLogger(__name__)

LossAggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
#: tokenisations a reward scorer keeps: rollouts bring new responses every step (bounded memory)
SCORER_CACHE_SIZE = 4096
EVAL_METRICS = ("reward/proxy", "reward/gold", "kl", "kl_k1", "response_length")


class OnlineEvalMetrics(torch.nn.Module):
    """Means over a validation set of the online metrics (``EVAL_METRICS``; gold when scored)."""

    def __init__(self):
        super().__init__()
        self.means = torch.nn.ModuleDict({n.replace("/", "__"): FiniteMean() for n in EVAL_METRICS})

    @property
    def count(self) -> int:
        return int(self.means["kl"].update_count)

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self.means[name.replace("/", "__")].update(value)

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}{n}": self.means[n.replace("/", "__")].compute()
            for n in EVAL_METRICS
            if self.means[n.replace("/", "__")].update_count
        }

    def reset(self) -> None:
        with torch.inference_mode(False):
            for m in self.means.values():
                m.reset()


class OnlineRLModule(BackboneModule):
    """Rollout, scoring, reference and the manual-optimisation update loop of GRPO and PPO.

    Subclasses implement :meth:`prepare` (the rollout's training targets and its stats) and
    :meth:`minibatch_loss` (the loss of a minibatch of completions), and may extend
    :meth:`build_extra_modules` (the PPO value head) and :meth:`trainable_parameters`.

    Common args (subclasses document their defaults):
        backbone: how the policy loads (:class:`~lightning_robust.models.backbone.ModelOptions`;
            ``name_or_path`` ``"tiny"``, a local directory or a hub id; see ``DPO``).
        reward_model: proxy reward scorer spec for ``load_reward_scorer`` (``"synthetic:proxy"``,
            a Hugging Face sequence-classifier directory or hub id, or a RewardModel ``.ckpt``).
        gold_reward_model: gold scorer spec, for logging (``train/reward/gold``, ``val/reward/gold``)
            only; ``None`` skips it.
        num_generations: completions per prompt.
        max_new_tokens, temperature, top_p, top_k: sampling (``top_p=1, top_k=0``: the old
            log-probs are those of the sampling distribution).
        ppo_epochs, num_minibatches: update passes over the rollout and minibatches per pass.
        clip: PPO clip radius of the ratio.
        loss_aggregation: VERL's ``token_mean`` | ``seq_mean_token_mean`` | ``seq_mean_token_sum``.
        weighting: a RobustWeighting (see the subclass for what it weights); ``None``: none.
        lora: LoRA options; ``None`` trains every weight (reference = frozen copy).
        optimizer: the optimiser and its per-update schedule
            (:class:`~lightning_robust.modules.optim.OptimizerOptions`, the subclass's defaults).
            Weight decay skips biases and normalisation weights (as HF Trainer / TRL).
        max_grad_norm: gradient-norm clip of each update (``None``: off).
        reward_batch_size, reward_max_length: batching and truncation of the reward scorers.
        val_do_sample: validation completions sampled at ``temperature`` (default: the KL
            estimate then is a sample estimate of the current policy, docs/ALGORITHMS.md §5.4) or greedy.
        rollout_backend: ``hf`` (Hugging Face ``generate``, default, tested) or ``vllm``
            (UNTESTED: :mod:`lightning_robust.models.vllm_rollout`; needs the ``vllm`` extra and a
            GPU; the policy's weights are pushed to the engine after each rollout's updates).
    """

    def __init__(
        self,
        *,
        backbone: ModelOptions,
        reward_model: str,
        gold_reward_model: str | None,
        num_generations: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        ppo_epochs: int,
        num_minibatches: int,
        clip: float,
        loss_aggregation: LossAggregation,
        weighting,
        lora: LoraOptions | None,
        optimizer: OptimizerOptions,
        max_grad_norm: float | None,
        reward_batch_size: int,
        reward_max_length: int,
        val_do_sample: bool,
        rollout_backend: Literal["hf", "vllm"],
    ):
        super().__init__()
        checks = {
            "num_generations": num_generations >= 1,
            "max_new_tokens": max_new_tokens >= 1,
            "temperature": temperature > 0,
            "ppo_epochs": ppo_epochs >= 1,
            "num_minibatches": num_minibatches >= 1,
            "clip": clip > 0,
            "top_p": 0 < top_p <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}={locals()[name]!r}")
        if rollout_backend not in ("hf", "vllm"):
            raise ValueError(
                f"unknown rollout_backend={rollout_backend!r}; expected 'hf' or 'vllm'"
            )
        if loss_aggregation not in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
            raise ValueError(f"unknown loss_aggregation={loss_aggregation!r}")
        self.automatic_optimization = False
        self.weighting = weighting
        # LightningCLI stores the config's plain dict in hparams: keep the dataclass here
        self.lora_options = LoraOptions.coerce(lora)
        # the reference: the LoRA policy with its adapters disabled, else a frozen initial copy
        self.reference_policy = ReferencePolicy(
            None,
            lora=self.lora_options is not None,
            name=f"{backbone.name_or_path}|{backbone.dtype}",
            allowed=("lora_disabled", "frozen_copy"),
        )
        self.backbone = None
        self.reference_model = None
        self.tokenizer = None
        self.val_metrics = torch.nn.ModuleDict()
        self._val_names: list[str] = []
        self._scorers: dict[str, object] = {}
        self._vllm_engine = None

    @classmethod
    def common_args(cls, values: dict) -> dict:
        """The arguments of :class:`OnlineRLModule` taken from a subclass's ``locals()``: the
        subclass lists them in its own signature (for its defaults and LightningCLI's help) and
        hands them on with ``super().__init__(**OnlineRLModule.common_args(locals()))``."""
        names = [n for n in inspect.signature(OnlineRLModule.__init__).parameters if n != "self"]
        return {n: values[n] for n in names}

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load tokenizer, policy, the frozen reference (without LoRA) and extra modules;
        deferred here so configs construct offline without weights."""
        if self.backbone is not None:
            return
        self.tokenizer, model = load_backbone(
            self.model_options,
            "causal_lm",
            padding_side="left",
            quantization_config=self._quantization(),
        )
        # the frozen copy (no LoRA) before LoRA: get_peft_model edits in place
        self.reference_model = self.reference_policy.build(model)
        self.backbone = prepare_for_training(
            model,
            self.model_options.gradient_checkpointing,
            self.lora_options,
            task_type="CAUSAL_LM",
        )
        self.reference_policy.attach(self.backbone)
        self.build_extra_modules(self.backbone)

    def build_extra_modules(self, model) -> None:
        """Hook for modules built beside the policy (PPO's value head)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        names = list(getattr(datamodule, "val_set_names", []) or ["val"])
        for name in names:
            if name not in self.val_metrics:
                self.val_metrics[name] = OnlineEvalMetrics()
        self._val_names = names

    def configure_optimizers(self):
        hp = self.hparams
        trainer = self.trainer
        updates = hp.ppo_epochs * hp.num_minibatches
        total = float(trainer.estimated_stepping_batches) * updates
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        return build_optimizer(
            self.trainable_parameters(),
            self.optimizer_options,
            total_steps=int(total) if total != float("inf") else 10**9,
            no_decay=no_weight_decay_ids(self),
        )

    # ------------------------------------------------------------------ scoring
    def scorer(self, which: Literal["proxy", "gold"]):
        """The proxy or gold scorer, loaded on first use (``None`` when gold is not configured)."""
        if which not in self._scorers:
            spec = self.hparams.reward_model if which == "proxy" else self.hparams.gold_reward_model
            self._scorers[which] = (
                None
                if spec is None
                else load_reward_scorer(
                    spec,
                    max_length=self.hparams.reward_max_length,
                    batch_size=self.hparams.reward_batch_size,
                    device=self.device,
                    cache_size=SCORER_CACHE_SIZE,
                )
            )
        return self._scorers[which]

    def decode_responses(self, rollout: Rollout) -> list[str]:
        ids = rollout.response_ids.masked_fill(
            ~rollout.response_mask.bool(), self.tokenizer.pad_token_id
        )
        return self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)

    @torch.no_grad()
    def score(
        self, which: Literal["proxy", "gold"], prompts: list, rollout: Rollout, responses: list[str]
    ):
        """``[N]`` float32 scores of the completions on this device (``None`` without a scorer)."""
        scorer = self.scorer(which)
        if scorer is None:
            return None
        expanded = [prompts[int(i)] for i in rollout.prompt_index.tolist()]
        scores = scorer.score(expanded, responses).to(self.device, torch.float32)
        if not bool(torch.isfinite(scores).all()):
            bad = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
            spec = self.hparams.reward_model if which == "proxy" else self.hparams.gold_reward_model
            raise ValueError(
                f"{which} reward model {spec!r} returned non-finite scores at rows {bad}"
            )
        return scores

    # ------------------------------------------------------------------ rollout
    def vllm_engine(self):
        """The vLLM engine of ``rollout_backend="vllm"``, built on first use (untested path)."""
        if self._vllm_engine is None:
            options = self.model_options
            self._vllm_engine = VLLMRolloutEngine(
                options.name_or_path, dtype=options.dtype or "bfloat16", seed=options.init_seed
            )
            self._vllm_engine.push_weights(self.backbone)
        return self._vllm_engine

    def rollout(self, batch: dict, num_generations: int, do_sample: bool = True) -> Rollout:
        hp = self.hparams
        if hp.rollout_backend == "vllm":
            generate = self.vllm_engine().generate
        else:
            generate = functools.partial(generate_rollouts, self.backbone)
        return generate(
            batch["prompt_input_ids"],
            batch["prompt_attention_mask"],
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            num_generations=num_generations,
            max_new_tokens=hp.max_new_tokens,
            temperature=hp.temperature,
            top_p=hp.top_p,
            top_k=hp.top_k,
            do_sample=do_sample,
        )

    def reference_token_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """``[N, R]`` reference log-probs (LoRA disabled, or the frozen copy), no graph."""
        return self.reference_policy.token_logprobs(rollout, self.hparams.temperature)

    def policy_forward(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(log-probs [N, R], values [N, R] or None)`` of the current policy (grad if enabled)."""
        return token_logprobs_and_values(self.backbone, rollout, self.hparams.temperature)

    @staticmethod
    def sequence_kl(
        seq_logps: torch.Tensor, seq_ref_logps: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Mean sequence-level KL(pi || pi_ref) estimates over the completions: ``kl`` (k3 in
        float64, docs/ALGORITHMS.md §5.4) and ``kl_k1`` (mean of ``log pi - log pi_ref``)."""
        return {
            "kl": sequence_kl_k3(seq_logps, seq_ref_logps).mean(),
            "kl_k1": (seq_logps.double() - seq_ref_logps.double()).mean(),
        }

    # ------------------------------------------------------------------ subclass hooks
    def prepare(self, rollout: Rollout, scores: torch.Tensor, old_logps, old_values, ref_logps):
        """Return ``(targets, stats)``: ``targets`` a dict of tensors with first dimension ``N``
        (one row per completion, sliced per minibatch) and ``stats`` scalars to log."""
        raise NotImplementedError

    def minibatch_loss(self, rollout: Rollout, targets: dict) -> tuple[torch.Tensor, dict]:
        """Loss of a minibatch of completions (``rollout`` and ``targets`` sliced alike) and stats."""
        raise NotImplementedError

    def needs_values(self) -> bool:
        return False

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        rollout = self.rollout(batch, hp.num_generations)
        responses = self.decode_responses(rollout)
        scores = self.score("proxy", batch["prompts"], rollout, responses)
        gold = self.score("gold", batch["prompts"], rollout, responses)
        mask = rollout.response_mask
        with torch.no_grad():
            head = getattr(self, "value_head", None) if self.needs_values() else None
            old_logps, old_values = token_logprobs_and_values(
                self.backbone, rollout, hp.temperature, value_head=head
            )
            ref_logps = self.reference_token_logprobs(rollout)
        targets, stats = self.prepare(rollout, scores, old_logps, old_values, ref_logps)
        stats.update(self.sequence_kl(old_logps.sum(-1), ref_logps.sum(-1)))
        stats["reward/proxy"] = scores.mean()
        if gold is not None:
            stats["reward/gold"] = gold.mean()
        stats["response_length"] = rollout.response_lengths.float().mean()
        stats["eos_fraction"] = rollout.has_eos.float().mean()

        update_stats = self.update(rollout, targets)
        stats.update(update_stats)
        if hp.rollout_backend == "vllm":
            self.vllm_engine().push_weights(self.backbone)
        n = int(mask.shape[0])
        self.log("train/loss", stats.pop("loss"), prog_bar=True, batch_size=n)
        self.log_dict(
            {f"train/{k}": torch.as_tensor(v).float() for k, v in stats.items()}, batch_size=n
        )

    def update(self, rollout: Rollout, targets: dict) -> dict[str, torch.Tensor]:
        """``ppo_epochs`` passes of ``num_minibatches`` clipped-surrogate updates; mean stats."""
        hp = self.hparams
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        n = rollout.input_ids.shape[0]
        if hp.num_minibatches > n:
            raise ValueError(
                f"num_minibatches={hp.num_minibatches} exceeds the {n} completions of the batch"
            )
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for _ in range(hp.ppo_epochs):
            order = (
                torch.randperm(n, device=rollout.input_ids.device)
                if hp.num_minibatches > 1
                else None
            )
            for rows in order.chunk(hp.num_minibatches) if order is not None else [None]:
                sub = rollout if rows is None else select_rows(rollout, rows)
                sub_targets = targets if rows is None else {k: v[rows] for k, v in targets.items()}
                loss, stats = self.minibatch_loss(sub, sub_targets)
                optimizer.zero_grad()
                self.manual_backward(loss)
                if hp.max_grad_norm is not None:
                    self.clip_gradients(
                        optimizer,
                        gradient_clip_val=hp.max_grad_norm,
                        gradient_clip_algorithm="norm",
                    )
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                stats["loss"] = loss.detach()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).detach().float()
                count += 1
        return {k: v / count for k, v in sums.items()}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        hp = self.hparams
        name = (
            self._val_names[dataloader_idx]
            if dataloader_idx < len(self._val_names)
            else str(dataloader_idx)
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # each evaluation set its own stream: two sets must not share random numbers
            torch.manual_seed(
                self.model_options.init_seed * 1_000_003
                + self.global_step * 1009
                + batch_idx
                + 7919 * dataloader_idx
            )
            rollout = self.rollout(batch, 1, do_sample=hp.val_do_sample)
        responses = self.decode_responses(rollout)
        values = {"reward/proxy": self.score("proxy", batch["prompts"], rollout, responses)}
        gold = self.score("gold", batch["prompts"], rollout, responses)
        if gold is not None:
            values["reward/gold"] = gold
        logps = self.policy_forward(rollout)[0].sum(-1)
        ref = self.reference_token_logprobs(rollout).sum(-1)
        values["kl"] = sequence_kl_k3(logps, ref).float()
        values["kl_k1"] = (logps - ref).float()
        values["response_length"] = rollout.response_lengths.float()
        self.val_metrics[name].update(values)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        self.reference_policy.drop_from_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.configure_model()
        self.reference_policy.fill_checkpoint(checkpoint)
