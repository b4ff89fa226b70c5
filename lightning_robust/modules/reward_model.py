"""Distributionally robust reward model (docs/ALGORITHMS.md §2; S000 Algorithm 1).

Per minibatch: Bradley–Terry losses of the pairs -> a RobustWeighting (ERM, TV ball, chi-square
ball, ...) -> robust loss ``sum(q * l)`` (+ optional reward centering). The math lives in
``lightning_robust.objectives`` and ``lightning_robust.weighting``; this module wires them,
owns the backbone and logs metrics.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from lightning_robust.models.backbone import ModelOptions, load_backbone
from lightning_robust.models.logprobs import pair_scores, supports_pair_scores
from lightning_robust.models.lora import LoraOptions, freeze_parameters, prepare_for_training
from lightning_robust.modules.base import BackboneModule, StepTerms, validate_step_options
from lightning_robust.modules.metrics import PairwiseMetrics
from lightning_robust.modules.optim import OptimizerOptions
from lightning_robust.modules.speed import SpeedOptions
from lightning_robust.objectives import (
    bradley_terry_losses,
    pairwise_correct,
    reward_centering_penalty,
)
from lightning_robust.weighting import ERM, RobustWeighting

log = logging.getLogger(__name__)


class RewardModel(BackboneModule):
    """Scalar reward model trained with a (robust) Bradley–Terry objective.

    Args:
        backbone: how the backbone loads (:class:`~lightning_robust.models.backbone.ModelOptions`:
            ``name_or_path`` ``"tiny"`` (random-init tiny Llama, offline), ``"minilm"`` (the
            offline all-MiniLM-L6-v2 encoder), a local directory or a hub id (e.g.
            ``google/gemma-2b-it``, the paper's backbone); ``tiny_config``, ``dtype``,
            ``attn_implementation``, ``gradient_checkpointing``, ``dropout`` (``False``, default,
            as TRL's ``disable_dropout=True``), ``trust_remote_code``, ``init_seed``).
        weighting: robust weighting of the per-pair losses; ``None`` is ERM (plain BT).
        lora: LoRA options (paper: r=32, alpha=64, dropout 0.05); ``None`` trains all weights.
        optimizer: the optimiser (:class:`~lightning_robust.modules.optim.OptimizerOptions`):
            ``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``lr_schedule``,
            ``min_lr_ratio`` (defaults as the paper: 1e-5, 0, 0.03, cosine, 0), the
            ``torch.optim`` class ``name`` (AdamW) and its ``kwargs``; fields left out of a
            partial group take these defaults. Weight decay skips biases and normalisation
            weights (as HF Trainer / TRL).
        use_margin: subtract a per-pair ``margin`` column from the reward difference (TRL).
        center_rewards_coefficient: weight of ``mean((r+ + r-)^2)`` (TRL); ``None`` disables.
        frozen_parameters: regexes of parameter names to freeze (e.g. ``["embeddings",
            "layer\\.[0-3]\\."]``: train only the top of an encoder); ignored with LoRA.
        nonfinite: ``"error"`` (default): a non-finite loss, reward or gradient raises naming the
            step and what was not finite; ``"skip"``: the optimiser step is dropped (parameters
            and AdamW state untouched) and counted in ``train/skipped_steps``
            (:class:`~lightning_robust.modules.base.BackboneModule`).
        micro_batch_size: with a weighting of ``scope="accumulated"``, the size of the chunks
            each batch (the whole per-device optimiser batch) is split into; ``None``: one chunk.
        atomic_checkpoints: write checkpoints through
            :class:`~lightning_robust.modules.checkpoint_io.AtomicCheckpointIO` (default) unless
            the trainer has a checkpoint plugin of its own.
        speed: exact speed choices (:class:`~lightning_robust.modules.speed.SpeedOptions`):
            ``share_prompt`` (default ``True``: one ``[prompt | chosen | rejected]`` row per
            pair, the score read at each answer's last token), ``compile`` (default ``False``:
            ``torch.compile`` the decoder stack) and ``compile_kwargs``;
            ``wdpo_chunk_pairs`` does not apply.
    """

    def __init__(
        self,
        backbone: ModelOptions | None = None,
        weighting: RobustWeighting | None = None,
        lora: LoraOptions | None = None,
        optimizer: OptimizerOptions | None = None,
        use_margin: bool = False,
        center_rewards_coefficient: float | None = None,
        frozen_parameters: list[str] | None = None,
        nonfinite: Literal["error", "skip"] = "error",
        micro_batch_size: int | None = None,
        atomic_checkpoints: bool = True,
        speed: SpeedOptions | None = None,
    ):
        super().__init__()
        validate_step_options(nonfinite, micro_batch_size)
        backbone, optimizer = self.coerce_options(backbone, optimizer)
        SpeedOptions.coerce(speed)  # a bad value is a named error before anything is built
        self.save_hyperparameters(ignore=["weighting"])
        self.store_options(backbone, optimizer)
        self.store_speed_options(speed)
        self.check_options()
        self.weighting = weighting if weighting is not None else ERM()
        # LightningCLI hands nested dataclasses over as plain dicts
        self.lora_options = LoraOptions.coerce(lora)
        self.backbone = None
        self.tokenizer = None
        self.train_metrics = None
        self.val_metrics = torch.nn.ModuleDict()
        self._val_names: list[str] = []
        # whether the data carries group ids, set once in ``setup`` from the data module's
        # ``group_names`` (None without a data module: then decided per batch)
        self._data_has_groups: bool | None = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        """Load tokenizer and backbone (deferred so configs construct without downloading)."""
        if self.backbone is not None:
            return
        hp = self.hparams
        self.tokenizer, model = load_backbone(
            self.model_options, "sequence_classifier", quantization_config=self._quantization()
        )
        if self.lora_options is None and hp.frozen_parameters:
            freeze_parameters(model, hp.frozen_parameters)
        self.backbone = prepare_for_training(
            model, self.model_options.gradient_checkpointing, self.lora_options, task_type="SEQ_CLS"
        )
        self.compile_backbone()

    def setup(self, stage: str) -> None:
        self.configure_model()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        group_names = list(getattr(datamodule, "group_names", []) or [])
        if datamodule is not None:
            self._data_has_groups = bool(group_names)
        if self.train_metrics is None:
            self.train_metrics = PairwiseMetrics(group_names)
        names = list(getattr(datamodule, "val_set_names", []) or ["val"])
        for name in names:
            if name not in self.val_metrics:
                self.val_metrics[name] = PairwiseMetrics(group_names)
        self._val_names = names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scalar reward per sequence, shape ``[batch]`` (float32)."""
        return (
            self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        )

    def uses_pair_rows(self) -> bool:
        """Prompt-shared pair rows for decoder-only classifiers with eager/sdpa attention. The
        packed path calls the decoder and the score head, not the classifier's ``forward``: a
        backbone with forward hooks (which expect that call) keeps two rows."""
        hooked = self.backbone._forward_hooks or self.backbone._forward_pre_hooks
        return not hooked and supports_pair_scores(self.backbone)

    def pair_rewards(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of chosen and rejected sequences in one forward pass: one prompt-shared row per
        pair when the batch has them (:func:`~lightning_robust.models.logprobs.pair_scores`),
        else ``[2B, L]``."""
        if "pair_input_ids" in batch:
            return pair_scores(
                self.backbone,
                batch["pair_input_ids"],
                batch["chosen_prompt_len"],
                batch["pair_chosen_end"],
                batch["pair_length"],
            ).chunk(2)
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        return self(ids, mask).chunk(2)

    # ------------------------------------------------------------------ steps
    def _losses(self, batch: dict):
        chosen, rejected = self.pair_rewards(batch)
        margin = batch.get("margin") if self.hparams.use_margin else None
        if self.hparams.use_margin and margin is None:
            raise ValueError("use_margin=True but the batch has no 'margin' column")
        return chosen, rejected, bradley_terry_losses(chosen, rejected, margin)

    def _groups_present(self, groups: torch.Tensor) -> bool:
        """Whether the batch's ``group`` column holds real ids: known once from the data module
        (no host sync per step); without one, from the batch itself (``any(g >= 0)``)."""
        if self._data_has_groups is not None:
            return self._data_has_groups
        return bool((groups >= 0).any())

    def step_terms(self, batch: dict) -> StepTerms:
        """Per-pair BT losses, group ids and the centering term of a (micro-)batch."""
        chosen, rejected, losses = self._losses(batch)
        groups = batch.get("group")
        extra = None
        if self.hparams.center_rewards_coefficient:
            extra = self.hparams.center_rewards_coefficient * reward_centering_penalty(
                chosen, rejected
            )
        if groups is not None and not self._groups_present(groups):
            groups = None  # every row is -1 (no group column): GroupDRO then says it needs groups
        return StepTerms(
            losses=losses,
            groups=groups,
            extra=extra,
            checked={"chosen rewards": chosen, "rejected rewards": rejected},
            aux={"chosen": chosen.detach(), "rejected": rejected.detach()}
            | ({} if groups is None else {"group": groups}),
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        return self.robust_training_step(batch, batch_idx, self.step_terms, self.log_step)

    def log_step(self, terms: StepTerms, out, loss: torch.Tensor) -> None:
        chosen, rejected = terms.aux["chosen"], terms.aux["rejected"]
        losses = terms.losses.detach()
        correct = pairwise_correct(chosen, rejected)
        batch_size = losses.shape[0]
        both = torch.cat([chosen, rejected])
        logged = {
            "train/loss": loss.detach(),
            "train/accuracy": correct.mean(),
            "train/margin": (chosen - rejected).mean(),
            "train/reward_mean": both.mean(),
            "train/reward_std": both.std(),
        }
        logged |= {f"train/robust/{k}": v for k, v in out.stats.items()}
        self.log_train_window(logged, batch_size=batch_size)  # means every log_every_n_steps
        self.train_metrics.update(losses, correct, chosen, rejected, terms.aux.get("group"))

    def on_train_epoch_end(self) -> None:
        self.flush_train_window()
        if self.train_metrics is not None and self.train_metrics.group_names:
            values = self.train_metrics.compute("train/epoch_")
            self.log_dict({k: v for k, v in values.items() if "/group/" in k})
        if self.train_metrics is not None:
            self.train_metrics.reset()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        chosen, rejected, losses = self._losses(batch)
        name = (
            self._val_names[dataloader_idx]
            if dataloader_idx < len(self._val_names)
            else str(dataloader_idx)
        )
        self.val_metrics[name].update(
            losses, pairwise_correct(chosen, rejected), chosen, rejected, batch.get("group")
        )

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)
