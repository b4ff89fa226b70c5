"""The shared base of modules that own one trainable Hugging Face ``backbone`` and ``tokenizer``.

Besides the optimiser and ``export``, :class:`BackboneModule` holds the generic training-step
machinery every robust module shares (docs/DESIGN.md, "Scope of the worst case" and "Non-finite
losses"); a subclass supplies the per-example terms of a (micro-)batch and gets:

* the robust step for the ``global``/``local`` scopes (automatic optimisation);
* the ``accumulated`` scope (manual optimisation: no-grad pre-pass over every micro-batch,
  weights over all of them, weighted backward per micro-batch);
* the non-finite policy (``nonfinite="error"`` raises naming the step and what was not finite;
  ``"skip"`` drops the optimiser step, counted in ``train/skipped_steps``);
* atomic checkpoint writes and exact mid-epoch resume with a resumable data loader.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lightning import LightningModule

from lightning_robust.data.collator import pack_shared_prompts
from lightning_robust.models.backbone import ModelOptions, translate_legacy_hparams
from lightning_robust.models.lora import export_pretrained
from lightning_robust.modules.checkpoint_io import install_atomic_checkpoint_io
from lightning_robust.modules.metrics import StepWindow
from lightning_robust.modules.optim import (
    OptimizerOptions,
    build_optimizer,
    no_weight_decay_ids,
)
from lightning_robust.modules.speed import SpeedOptions, compile_in_place
from lightning_robust.weighting import ERM, WeightingOutput, weight_stats

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("error", "skip")


class NonFiniteError(FloatingPointError):
    """A non-finite loss, reward or gradient met ``nonfinite="error"``."""


@dataclass
class StepTerms:
    """What a subclass computes for one (micro-)batch of ``n`` examples.

    Attributes:
        losses: per-example losses ``[n]`` (the input of the RobustWeighting).
        groups: group ids ``[n]`` for GroupDRO, or ``None``.
        extra: a scalar added to the robust loss unweighted (a regulariser that is a *mean over
            the examples*, e.g. reward centering), or ``None``. Under the accumulated scope each
            micro-batch adds its own mean times its share ``n_k / n`` of the batch.
        checked: named per-example tensors that must be finite besides the losses (rewards).
        aux: detached per-example tensors the subclass logs (concatenated over micro-batches).
    """

    losses: torch.Tensor
    groups: torch.Tensor | None = None
    extra: torch.Tensor | None = None
    checked: dict[str, torch.Tensor] = field(default_factory=dict)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


def concat_terms(parts: list[StepTerms]) -> StepTerms:
    """Concatenate the terms of micro-batches into the terms of their union (``extra``: the
    example-weighted mean of the micro-batch means, i.e. the mean over the union)."""
    if len(parts) == 1:
        return parts[0]
    sizes = [p.losses.shape[0] for p in parts]
    total = sum(sizes)
    extra = None
    if parts[0].extra is not None:
        extra = sum(p.extra * (s / total) for p, s in zip(parts, sizes, strict=True))
    groups = None if parts[0].groups is None else torch.cat([p.groups for p in parts])
    return StepTerms(
        losses=torch.cat([p.losses for p in parts]),
        groups=groups,
        extra=extra,
        checked={k: torch.cat([p.checked[k] for p in parts]) for k in parts[0].checked},
        aux={k: torch.cat([p.aux[k] for p in parts]) for k in parts[0].aux},
    )


def split_batch(batch: dict, micro_batch_size: int) -> list[dict]:
    """Split a collated batch into micro-batches of ``micro_batch_size`` examples (the last one
    may be smaller). The number of examples ``n`` is the first dimension of the first tensor;
    every tensor or list whose first dimension is ``n`` is sliced, other values are shared."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    if first is None:
        raise ValueError("cannot split a batch without tensors into micro-batches")
    n = first.shape[0]
    if micro_batch_size >= n:
        return [batch]
    chunks = []
    for lo in range(0, n, micro_batch_size):
        hi = min(n, lo + micro_batch_size)
        chunk = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                sliceable = value.dim() > 0 and value.shape[0] == n
            else:
                sliceable = isinstance(value, (list, tuple)) and len(value) == n
            chunk[key] = value[lo:hi] if sliceable else value
        chunks.append(chunk)
    return chunks


def validate_step_options(nonfinite: str, micro_batch_size: int | None = None) -> None:
    """Constructor check of the robust-step options every module takes (named errors)."""
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(
            f"unknown nonfinite={nonfinite!r}; expected one of {list(NONFINITE_POLICIES)}"
        )
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got micro_batch_size={micro_batch_size}")


def legacy_checkpoint_groups(path: str | os.PathLike) -> dict:
    """``{"backbone": {...}, "optimizer": {...}}`` of a checkpoint file whose hyperparameters are
    the flat ones written before the grouped options (``{}`` for a grouped or hparams-less one);
    the file is read with ``weights_only=True`` and its tensors memory-mapped (not loaded)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, pickle.UnpicklingError):  # Lightning's loader reports it
        return {}
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    translated = translate_legacy_hparams(hparams)
    if translated == hparams:
        return {}
    return {"backbone": translated["backbone"], "optimizer": translated["optimizer"]}


class BackboneModule(LightningModule):
    """AdamW with the warmup/decay schedule of the module's hparams, ``export``, and the robust step.

    Subclasses set ``self.backbone``, ``self.tokenizer`` and ``self.weighting`` and take the
    hparams ``learning_rate``, ``weight_decay``, ``warmup_ratio``, ``lr_schedule``,
    ``min_lr_ratio``; optionally ``nonfinite`` (``"error"`` default | ``"skip"``),
    ``micro_batch_size`` (``scope="accumulated"`` only) and ``atomic_checkpoints`` (default
    ``True``). For evaluation logging they keep ``self._val_names`` (the data module's
    ``val_set_names``) and ``self.val_metrics[name]`` containers with ``count``,
    ``compute(prefix)`` and ``reset()``.

    A subclass's ``training_step`` may return ``self.robust_training_step(batch, batch_idx,
    self.step_terms, self.log_step)``, where ``step_terms(batch) -> StepTerms`` computes the
    per-example losses of a (micro-)batch and ``log_step(terms, output, loss)`` logs; the scope
    of ``self.weighting`` then picks the path:

    * ``global`` / ``local``: one forward, the weighting, the loss returned to Lightning (which
      handles ``accumulate_grad_batches``: the worst case is per micro-batch).
    * ``accumulated``: the data loader delivers the whole per-device optimiser batch and the
      module splits it into ``micro_batch_size`` chunks under manual optimisation: a no-grad
      pre-pass computes the per-example losses of every chunk, the weights are computed over
      all of them (and all ranks), then each chunk runs forward and backward with loss
      ``W * sum_{i in chunk} q_i l_i``; the summed gradients are those of the robust loss of the
      full batch (Danskin), at the cost of one extra forward. Manual optimisation is chosen
      over Lightning's ``accumulate_grad_batches`` because the weights of the first
      micro-batch depend on the losses of the later ones, which Lightning's loop has not
      fetched yet. Constraints (checked): ``trainer.accumulate_grad_batches == 1`` and no
      ``gradient_clip_val`` (Lightning's manual optimisation rejects both).

    Non-finite policy (``nonfinite``): per-example losses and ``checked`` values get on-device
    finiteness flags before the weighting (which receives zeros in place of bad losses, so every
    rank still joins its collectives), and before each optimiser step those flags, the total
    loss and the total gradient norm are read in one host sync (the gradient part is skipped
    under fp16 loss scaling, whose scaler already skips inf steps, and under DeepSpeed, whose
    engine owns the gradients); gradient clipping by norm reuses that total norm. ``"error"``
    raises :class:`NonFiniteError` naming the global step and the positions or parameters;
    ``"skip"`` drops every gradient
    before the optimiser runs: parameters and optimiser state (AdamW moments and step count)
    stay untouched, the learning-rate schedule and ``global_step`` advance, as with a step that
    ``torch.amp.GradScaler`` skips. The decision is OR-reduced over ranks. Weightings with
    ``nan_policy="mask"`` keep masking bad per-example losses themselves.
    """

    # ------------------------------------------------------------------ options
    def _option(self, name: str, default):
        return self.hparams.get(name, default) if hasattr(self, "_hparams") else default

    @property
    def nonfinite(self) -> str:
        """Policy for non-finite losses, rewards and gradients: ``"error"`` or ``"skip"``."""
        value = getattr(self, "_nonfinite_override", None) or self._option("nonfinite", "error")
        validate_step_options(value)
        return value

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        validate_step_options(value)
        self._nonfinite_override = value

    @property
    def micro_batch_size(self) -> int | None:
        """Micro-batch size of the ``accumulated`` scope (``None``: the whole batch)."""
        return getattr(self, "_micro_batch_override", None) or self._option(
            "micro_batch_size", None
        )

    @micro_batch_size.setter
    def micro_batch_size(self, value: int | None) -> None:
        self._micro_batch_override = value

    @property
    def uses_accumulated_scope(self) -> bool:
        """True when ``self.weighting`` takes the worst case over all micro-batches of a step."""
        return getattr(getattr(self, "weighting", None), "scope", None) == "accumulated"

    @property
    def automatic_optimization(self) -> bool:
        """Lightning's automatic optimisation, except under ``scope="accumulated"`` (manual)."""
        return self._automatic_optimization and not self.uses_accumulated_scope

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    @property
    def skipped_steps(self) -> int:
        """Optimiser steps dropped by ``nonfinite="skip"`` so far (saved in checkpoints)."""
        return getattr(self, "_skipped_steps", 0)

    # ------------------------------------------------------------------ robust step
    def robust_training_step(
        self,
        batch: dict,
        batch_idx: int,
        step_terms: Callable[[dict], StepTerms],
        log_step: Callable[[StepTerms, object, torch.Tensor], None] | None = None,
    ) -> torch.Tensor | None:
        """The training step of a robust module (see the class docstring); returns the loss for
        Lightning (automatic optimisation) or ``None`` after stepping (accumulated scope)."""
        if self.uses_accumulated_scope:
            return self._accumulated_step(batch, batch_idx, step_terms, log_step)
        if self._option("micro_batch_size", None) and not self.uses_accumulated_scope:
            raise ValueError(
                "micro_batch_size applies to weighting scope='accumulated' only; with the "
                "'global' or 'local' scope use trainer.accumulate_grad_batches"
            )
        terms = step_terms(batch)
        out = self._weigh(self._screen(terms, batch_idx), terms.groups)
        loss = out.loss if terms.extra is None else out.loss + terms.extra
        self._screen_loss(loss, batch_idx)
        if log_step is not None:
            log_step(terms, out, loss)
        return loss

    def _weigh(self, losses: torch.Tensor, groups: torch.Tensor | None) -> WeightingOutput:
        """``self.weighting(losses, groups)``; for plain :class:`ERM` in one process the call is
        skipped: its loss is ``losses.mean()`` bit for bit (the weighting's uniform fast path)
        and its stats depend on ``n`` only (cached), so no weighting ops or host sync run."""
        weighting = self.weighting
        plain = (
            type(weighting) is ERM
            and weighting.nan_policy != "mask"
            and (self._trainer is None or self.trainer.world_size == 1)
        )
        if not plain:
            return weighting(losses, groups=groups)
        n = losses.shape[0]
        cache = self.__dict__.setdefault("_erm_stats", {})
        if n not in cache:
            q = torch.full((n,), 1.0 / n, dtype=torch.float64)
            cache[n] = (q, weight_stats(q))
        q, stats = cache[n]
        return WeightingOutput(
            loss=losses.mean(),
            weights=q.to(device=losses.device, dtype=losses.dtype),
            stats=dict(stats),
        )

    def _accumulated_step(self, batch, batch_idx, step_terms, log_step) -> None:
        trainer = self.trainer
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "scope='accumulated' splits each batch itself (micro_batch_size): set "
                "trainer.accumulate_grad_batches=1 and data batch_size to the per-device "
                "optimiser batch"
            )
        chunks = split_batch(batch, self.micro_batch_size or 10**18)
        with torch.no_grad():
            pre = concat_terms([step_terms(c) for c in chunks])
        out = self.weighting(self._screen(pre, batch_idx), groups=pre.groups)
        q = out.weights
        n = q.shape[0]
        offset = 0
        for chunk in chunks:
            terms = step_terms(chunk)
            k = terms.losses.shape[0]
            loss = self.weighting.chunk_loss(q[offset : offset + k], terms.losses)
            if terms.extra is not None:
                loss = loss + terms.extra * (k / n)
            offset += k
            self.manual_backward(loss)
        if offset != n:
            raise RuntimeError(f"micro-batches covered {offset} examples, the pre-pass {n}")
        total = out.loss.detach() if pre.extra is None else out.loss.detach() + pre.extra
        self._screen_loss(total, batch_idx)
        optimizer = self.optimizers()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        if log_step is not None:
            log_step(pre, out, total)
        return None

    # ------------------------------------------------------------------ non-finite policy
    def _where(self, batch_idx: int) -> str:
        return f"global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"

    def _screen(self, terms: StepTerms, batch_idx: int) -> torch.Tensor:
        """The losses for the weighting, after the non-finite policy, without a host sync.

        Non-finite losses are replaced by zeros (the values and gradient are unchanged when all
        are finite) and the finiteness flags of the losses and ``checked`` tensors are kept on
        device; :meth:`on_before_optimizer_step` reads them together with the gradient norm in
        one host sync and raises (``"error"``) or skips the step (``"skip"``)."""
        losses = terms.losses
        if getattr(self.weighting, "nan_policy", "error") == "mask":
            return losses  # the weighting masks and counts them itself
        named = {
            "per-example losses": losses.detach(),
            **{k: v.detach() for k, v in terms.checked.items()},
        }
        flags = torch.stack([torch.isfinite(v).all() for v in named.values()])
        self._pending_screen = (named, flags, batch_idx)
        return torch.where(torch.isfinite(losses.detach()), losses, torch.zeros_like(losses))

    def _screen_loss(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Remember the step's total loss; checked with the gradients (one sync per step)."""
        self._pending_loss = (loss.detach(), batch_idx)

    def _pending_reason(self) -> str | None:
        """What the pending loss screens found non-finite (clears them), naming the step, batch
        and positions; ``None`` when everything was finite. Only called on the failure path."""
        screen = self.__dict__.pop("_pending_screen", None)
        pending = self.__dict__.pop("_pending_loss", None)
        if screen is not None:
            named, flags, batch_idx = screen
            parts = []
            for (name, value), ok in zip(named.items(), flags.tolist(), strict=True):
                if not ok:
                    bad = torch.nonzero(~torch.isfinite(value)).flatten().tolist()
                    parts.append(f"{name} at positions {bad}")
            if parts:
                return f"values at {self._where(batch_idx)}: " + "; ".join(parts)
        if pending is not None:
            loss, batch_idx = pending
            if not bool(torch.isfinite(loss)):
                return f"loss {loss.item()} at {self._where(batch_idx)}"
        return None

    def _checks_gradients(self) -> bool:
        trainer = self.trainer
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return False  # fp16 loss scaling: the GradScaler skips inf steps itself
        return "deepspeed" not in type(trainer.strategy).__name__.lower()

    def on_before_optimizer_step(self, optimizer) -> None:
        """The non-finite policy for the step: the pending loss screens and the gradients in one
        host sync. The total gradient norm computed here (over the optimiser's parameters, as
        ``clip_grad_norm_``) is reused by :meth:`configure_gradient_clipping`."""
        reason = getattr(self, "_nonfinite_reason", None)
        self._nonfinite_reason = None
        self._grad_norm = None
        screen = self.__dict__.get("_pending_screen")
        pending = self.__dict__.get("_pending_loss")
        checks = []
        if screen is not None:
            checks.append(screen[1].all())
        if pending is not None:
            checks.append(torch.isfinite(pending[0]))
        params = []
        if reason is None and self._checks_gradients():
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if params:
                total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
                self._grad_norm = (optimizer, params, total)
                checks.append(torch.isfinite(total))
        if reason is None and checks:
            if not bool(
                torch.stack([c.to(torch.bool).reshape(()) for c in checks]).all()
            ):  # one sync
                where = f"global step {self.global_step} (epoch {self.current_epoch})"
                reason = self._pending_reason() or f"{self._gradient_reason(params)} at {where}"
        self.__dict__.pop("_pending_screen", None)
        self.__dict__.pop("_pending_loss", None)
        bad_step = reason is not None
        if self.trainer.world_size > 1:
            bad_step = self.trainer.strategy.reduce_boolean_decision(bad_step, all=False)
            reason = reason or f"values on another rank at global step {self.global_step}"
        if bad_step:
            where = f"global step {self.global_step} (epoch {self.current_epoch})"
            if self.nonfinite == "error":
                raise NonFiniteError(
                    f"non-finite {reason} (set nonfinite='skip' to skip such steps)"
                )
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._grad_norm = None
            self._skipped_steps = self.skipped_steps + 1
            log.warning("skipped the optimiser step at %s: non-finite %s", where, reason)
        # a host-side count (no device sync); logged every step so that a resumed run writes
        # exactly the rows of the uninterrupted one
        self.log("train/skipped_steps", float(self.skipped_steps))

    def _gradient_reason(self, params: list) -> str:
        """Name the parameters whose gradient is not finite (the failure path only)."""
        names = {id(p): n for n, p in self.named_parameters()}
        norms = torch._foreach_norm([p.grad for p in params]) if params else []
        bad = [
            names.get(id(p), "?")
            for p, v in zip(params, norms, strict=True)
            if not torch.isfinite(v)
        ]
        if not bad:
            return "total gradient norm"
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return f"gradients of {bad[:5]}{more}"

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by norm with the total norm :meth:`on_before_optimizer_step` already computed
        (``torch.nn.utils.clip_grads_with_norm_``: the same arithmetic as ``clip_grad_norm_``,
        one norm pass per step); other cases go to Lightning's implementation."""
        cached = getattr(self, "_grad_norm", None)
        self._grad_norm = None
        if (
            cached is not None
            and cached[0] is optimizer
            and gradient_clip_val
            and gradient_clip_algorithm in (None, "norm")
        ):
            _, params, total = cached
            torch.nn.utils.clip_grads_with_norm_(params, float(gradient_clip_val), total)
            return
        if not any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
            return  # a skipped step (nonfinite="skip" dropped every gradient): nothing to clip
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ step logging
    def log_train_window(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        """Accumulate the step's scalar training metrics on device and log their means every
        ``trainer.log_every_n_steps`` steps (and at the last batch of the epoch or fit), so the
        per-step cost is a few in-place adds: no ``self.log`` call or host sync per step.
        ``train/loss`` goes to the progress bar."""
        window = self.__dict__.get("_train_window")
        if window is None:
            window = self._train_window = StepWindow()
        window.add(values)
        if self._window_due(window):
            self.flush_train_window(batch_size)

    def _window_due(self, window: StepWindow) -> bool:
        trainer = self._trainer
        if trainer is None:
            return True
        every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))
        if window.steps >= every or trainer.is_last_batch:
            return True
        max_steps = getattr(trainer, "max_steps", -1)
        return max_steps is not None and max_steps > 0 and trainer.global_step + 1 >= max_steps

    def flush_train_window(self, batch_size: int | None = None) -> None:
        """Log the means of the accumulated training metrics now (no-op when empty)."""
        window = self.__dict__.get("_train_window")
        if window is None or not window.steps:
            return
        means = window.flush()
        if "train/loss" in means:
            self.log("train/loss", means.pop("train/loss"), prog_bar=True, batch_size=batch_size)
        if means:
            self.log_dict(means, batch_size=batch_size)

    # ------------------------------------------------------------------ speed options
    @property
    def speed_options(self) -> SpeedOptions:
        """The ``speed`` group (:class:`~lightning_robust.modules.speed.SpeedOptions`; defaults
        for a module without one)."""
        return SpeedOptions.coerce(self._option("speed", None))

    def store_speed_options(self, speed) -> SpeedOptions:
        """Check the ``speed`` argument and keep the complete group in ``hparams``."""
        options = SpeedOptions.coerce(speed)
        self.hparams.speed = asdict(options)
        return options

    def compile_backbone(self, *models) -> None:
        """With ``speed.compile``: ``torch.compile`` the decoder stack of ``self.backbone`` and of
        ``models`` (e.g. a frozen reference copy) in place."""
        options = self.speed_options
        if not options.compile:
            return
        for model in (self.backbone, *models):
            if model is not None and not compile_in_place(model, options.compile_kwargs):
                log.warning(
                    "speed.compile: %s has no decoder stack to compile", type(model).__name__
                )

    # ------------------------------------------------------------------ prompt-shared rows
    @property
    def share_prompt(self) -> bool:
        """Run each pair as one ``[prompt | chosen | rejected]`` row when the pair's prompts are
        equal and the subclass's model supports it (:meth:`uses_pair_rows`); exact
        (tests/test_logprobs.py). ``speed.share_prompt`` (default ``True``); assignable."""
        override = getattr(self, "_share_prompt_override", None)
        return self.speed_options.share_prompt if override is None else override

    @share_prompt.setter
    def share_prompt(self, value: bool) -> None:
        self._share_prompt_override = bool(value)

    def uses_pair_rows(self) -> bool:
        """Whether this module computes with prompt-shared pair rows (subclasses say)."""
        return False

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Add the prompt-shared pair rows (:func:`~lightning_robust.data.collator.
        pack_shared_prompts`) on the host, before the batch moves to the device."""
        if (
            self.share_prompt
            and isinstance(batch, dict)
            and "chosen_input_ids" in batch
            and "pair_input_ids" not in batch
            and self.uses_pair_rows()
        ):
            packed = pack_shared_prompts(batch)
            if packed is not None:
                batch = {**batch, **packed}
        return batch

    # ------------------------------------------------------------------ fit plumbing
    def configure_callbacks(self):
        """No callbacks; the earliest hook Lightning calls on every rank, before a resumed
        checkpoint is read, so the atomic checkpoint IO (whose reads name a truncated or corrupt
        file) is installed here rather than in ``on_fit_start``, which runs after the restore."""
        if self._option("atomic_checkpoints", True) and self._trainer is not None:
            install_atomic_checkpoint_io(self._trainer.strategy)
        return []

    def on_fit_start(self) -> None:
        trainer = self.trainer
        if self.nonfinite == "skip" and "deepspeed" in type(trainer.strategy).__name__.lower():
            raise ValueError(
                "nonfinite='skip' is not supported under DeepSpeed (its engine owns the "
                "gradients); use nonfinite='error'"
            )
        if self._option("atomic_checkpoints", True):
            install_atomic_checkpoint_io(trainer.strategy)  # no-op when configure_callbacks did

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # tell a resumable loader (lightning_robust.data.resumable) one more batch was consumed,
        # so a checkpoint saved at the end of this batch resumes at the next one
        loader = self.trainer.train_dataloader
        advance = getattr(loader, "advance", None)
        if callable(advance):
            advance(1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nonfinite_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._skipped_steps = int(checkpoint.get("nonfinite_skipped_steps", 0))

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _log_evaluation(self, stage: str) -> None:
        """Log ``<stage>/<metric>`` for the first set, ``<stage>/<set>/<metric>`` for the others."""
        for i, name in enumerate(self._val_names):
            metrics = self.val_metrics[name]
            if metrics.count == 0:
                continue
            prefix = f"{stage}/" if i == 0 else f"{stage}/{name}/"
            self.log_dict(metrics.compute(prefix), add_dataloader_idx=False)
            metrics.reset()

    # ------------------------------------------------------------------ grouped options
    #: the optimiser-options class whose defaults a module takes (GRPO, PPO: their own subclass)
    OPTIMIZER_OPTIONS: type[OptimizerOptions] = OptimizerOptions

    @classmethod
    def coerce_options(cls, backbone, optimizer) -> tuple[ModelOptions, OptimizerOptions]:
        """The ``backbone`` and ``optimizer`` arguments as checked dataclasses: ``None`` or the
        plain dict LightningCLI hands over (missing fields take the module's defaults,
        ``cls.OPTIMIZER_OPTIONS``); a dataclass is kept."""
        return ModelOptions.coerce(backbone), cls.OPTIMIZER_OPTIONS.coerce(optimizer)

    def store_options(self, backbone: ModelOptions, optimizer: OptimizerOptions) -> None:
        """Keep the complete groups in ``hparams`` (plain dicts: LightningCLI stores the config's
        values there, which may leave a group out), so checkpoints hold every field."""
        self.hparams.backbone = asdict(backbone)
        self.hparams.optimizer = asdict(optimizer)

    @property
    def model_options(self) -> ModelOptions:
        """The backbone-loading options (``hparams.backbone``) as one :class:`ModelOptions`."""
        return ModelOptions.coerce(self.hparams.get("backbone"))

    @property
    def optimizer_options(self) -> OptimizerOptions:
        """The optimiser options (``hparams.optimizer``) as one :class:`OptimizerOptions`, missing
        fields taken from the module's defaults."""
        return self.OPTIMIZER_OPTIONS.coerce(self.hparams.get("optimizer"))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``; a checkpoint written before the grouped options
        (flat ``model_name_or_path``, ``learning_rate``, ... hyperparameters) has them translated
        into ``backbone`` / ``optimizer`` (:func:`translate_legacy_hparams`) first."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and Path(checkpoint_path).is_file():
            stored = legacy_checkpoint_groups(checkpoint_path)
            kwargs = {**stored, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def _quantization(self):
        """QLoRA's ``BitsAndBytesConfig`` when ``lora.load_in_4bit``, else ``None``."""
        lora = getattr(self, "lora_options", None)
        return lora.quantization_config() if lora is not None else None

    def check_options(self) -> None:
        """Build the grouped options once at construction, so a bad value is a named error
        before any model is loaded."""
        self.model_options  # noqa: B018
        self.optimizer_options  # noqa: B018

    def configure_optimizers(self):
        """AdamW (or ``optimizer.name``) with the schedule; Adam/AdamW take the fused kernel
        (:func:`~lightning_robust.modules.optim.fused_by_default`) unless the trainer scales fp16
        losses or clips by value (Lightning's mixed-precision plugins refuse to clip a fused
        optimiser's gradients; clipping by norm runs in :meth:`configure_gradient_clipping`) or
        DeepSpeed owns the optimiser step."""
        trainer = self._trainer
        by_value = bool(getattr(trainer, "gradient_clip_val", None)) and str(
            getattr(trainer, "gradient_clip_algorithm", "norm")
        ).lower().endswith("value")
        fused = trainer is not None and not (
            by_value
            or getattr(trainer.precision_plugin, "scaler", None) is not None
            or "deepspeed" in type(trainer.strategy).__name__.lower()
        )
        return build_optimizer(
            self.backbone.parameters(),
            self.optimizer_options,
            total_steps=int(self.trainer.estimated_stepping_batches),
            no_decay=no_weight_decay_ids(self),
            fused=fused,
        )

    def export(self, path: str | os.PathLike, merge_lora: bool = True) -> str:
        """Write a Hugging Face directory (``save_pretrained``: weights, config, tokenizer) that the
        matching ``AutoModel*`` class loads; LoRA adapters are merged unless ``merge_lora=False``."""
        self.configure_model()
        return export_pretrained(self.backbone, self.tokenizer, path, merge_lora=merge_lora)
