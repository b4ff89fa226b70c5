"""Run benchmark evaluators during training and log ``eval/<benchmark>/<subset>``.

:class:`BenchmarkCallback` evaluates ``lightning_robust.evals`` evaluators (RewardBench,
HHH-Alignment, MT-Bench human agreement, in-distribution accuracy, the Open LLM Leaderboard) on
the module being trained:

- at the end of validation every ``every_n_epochs`` epochs during ``fit`` (logged with
  ``pl_module.log_dict``, so checkpoint monitors and the progress bar see them), at every
  ``validate`` run (``python cli.py validate --config ... --ckpt_path ...``), and at the end of
  ``fit`` (logged to the trainer's loggers directly: ``log_dict`` is not allowed there);
- writes ``<output_dir>/benchmarks.json`` (every run's numbers and details) and one PNG bar chart
  per benchmark (``<output_dir>/<benchmark>.png``), next to a previous run's numbers when
  ``previous`` is given.

The scorer is built from the module once and kept, so the benchmark rows (read once by the
evaluators) are tokenised once for the whole run (the scorer's :class:`TokenCache`). Scorer
choice (``scorer``): ``"auto"`` uses ``pl_module.benchmark_scorer()`` when the module defines it,
otherwise a :class:`RewardModelScorer` for a module with ``pair_rewards`` and ``backbone``
(``RewardModel``), otherwise a :class:`DPOImplicitRewardScorer` on ``policy`` / ``reference``
(``DPO``: ``.backbone`` and ``.reference_model``; a LoRA policy without one uses its
adapters-disabled base; beta from ``hparams.beta``).

Every rank evaluates (same wall time as rank 0 alone, and safe with sharded models); only rank 0
writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Literal

import torch
from lightning.pytorch import Callback

from lightning_robust.callbacks.tracking import log_image_file
from lightning_robust.evals.common import Evaluator
from lightning_robust.models.scorers import (
    DPOImplicitRewardScorer,
    LikelihoodScorer,
    RewardModelScorer,
    TokenCache,
)

log = logging.getLogger(__name__)

ScorerKind = Literal["auto", "reward", "dpo", "likelihood"]


def _first_attr(obj, names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _previous_metrics(previous) -> dict[str, dict[str, float]]:
    """``{benchmark: {key: value}}`` from a benchmarks.json path, its dict, or flat ``eval/`` keys."""
    if previous is None:
        return {}
    if isinstance(previous, str | os.PathLike):
        with open(previous, encoding="utf-8") as f:
            previous = json.load(f)
    if "runs" in previous:  # a benchmarks.json written by this callback: its last run
        runs = previous["runs"]
        return {b: dict(v["metrics"]) for b, v in runs[-1]["benchmarks"].items()} if runs else {}
    out: dict[str, dict[str, float]] = {}
    for key, value in previous.items():
        if isinstance(value, dict):
            out[key] = {k: float(v) for k, v in value.items()}
        elif key.startswith("eval/"):
            bench, _, sub = key[len("eval/") :].partition("/")
            out.setdefault(bench, {})[sub] = float(value)
    return out


def _at_epoch_end(trainer) -> bool:
    """Whether this validation runs after the last training batch of the epoch."""
    progress = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "batch_progress", None)
    return bool(getattr(progress, "is_last_batch", True))


def plot_benchmark(
    path: str,
    name: str,
    metrics: dict[str, float],
    previous: dict[str, float] | None = None,
    title: str = "",
) -> None:
    """Horizontal bar chart of ``metrics`` (and ``previous`` beside them) saved as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(metrics)
    height = 1.0 + 0.35 * len(keys)
    fig = Figure(figsize=(7, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(keys)))
    if previous:
        prev = [previous.get(k, math.nan) for k in keys]
        ax.barh([y + 0.2 for y in ys], prev, height=0.4, color="#bbbbbb", label="previous")
        ax.barh(
            [y - 0.2 for y in ys],
            [metrics[k] for k in keys],
            height=0.4,
            color="#1f77b4",
            label="current",
        )
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.barh(ys, [metrics[k] for k in keys], height=0.6, color="#1f77b4")
    ax.set_yticks(ys)
    ax.set_yticklabels(keys, fontsize=8)
    ax.invert_yaxis()
    values = [v for v in metrics.values() if math.isfinite(v)]
    if values and min(values) >= 0 and max(values) <= 1:
        ax.set_xlim(0, 1)
        ax.axvline(0.5, color="#888888", linewidth=0.8, linestyle="--")
    ax.set_title(title or name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class BenchmarkCallback(Callback):
    """Evaluate benchmarks during ``fit`` / ``validate`` and log ``eval/<benchmark>/<subset>``.

    Args:
        benchmarks: evaluators (``lightning_robust.evals.RewardBench(...)`` ...).
        scorer: ``"auto"``, ``"reward"``, ``"dpo"`` or ``"likelihood"`` (see module docstring).
        every_n_epochs: during ``fit``, evaluate after the epoch-end validation of every n-th
            epoch (mid-epoch validations of ``val_check_interval < 1`` are skipped); ``0``: never
            on validation (only ``at_fit_end``).
        at_fit_end: evaluate at the end of ``fit`` (skipped when the last validation of the same
            step already did).
        output_dir: where the JSON and PNGs go (default ``<trainer.log_dir>/benchmarks``).
        previous: numbers of an earlier run for the charts: a ``benchmarks.json`` path, its
            dict, ``{benchmark: {subset: value}}`` or flat ``{"eval/<b>/<s>": value}``.
        max_length, batch_size, chat_template, append_eos: scorer options (``append_eos=None``:
            off for reward models, on for policies, as in their training).
        beta: DPO beta (default: the module's ``hparams.beta``, else 0.1).
        plot: write the PNG charts.
    """

    def __init__(
        self,
        benchmarks: list[Evaluator],
        scorer: ScorerKind = "auto",
        every_n_epochs: int = 1,
        at_fit_end: bool = True,
        output_dir: str | None = None,
        previous: str | dict | None = None,
        max_length: int = 1024,
        batch_size: int = 16,
        chat_template: bool | None = None,
        append_eos: bool | None = None,
        beta: float | None = None,
        plot: bool = True,
    ):
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        names = [b.name for b in benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique, got {names} (set name=...)")
        self.benchmarks = list(benchmarks)
        self.scorer_kind = scorer
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self.output_dir = output_dir
        self.previous = _previous_metrics(previous)
        self.max_length = max_length
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.append_eos = append_eos
        self.beta = beta
        self.plot = plot
        self.history: list[dict] = []
        self._scorer = None
        self._scorer_key = None
        self._caches: dict[tuple, TokenCache] = {}
        self._last_step: int | None = None

    # ------------------------------------------------------------------ scorer
    def _cache(self, tokenizer, append_eos: bool) -> TokenCache:
        key = (id(tokenizer), append_eos)
        if key not in self._caches:
            self._caches[key] = TokenCache(
                tokenizer, self.max_length, self.chat_template, append_eos
            )
        return self._caches[key]

    def build_scorer(self, pl_module):
        """The scorer for ``pl_module`` (kept while the module's models stay the same objects)."""
        kind = self.scorer_kind
        if kind == "auto" and callable(getattr(pl_module, "benchmark_scorer", None)):
            return pl_module.benchmark_scorer()
        backbone = getattr(pl_module, "backbone", None)
        tokenizer = getattr(pl_module, "tokenizer", None)
        if kind == "reward" or (
            kind == "auto" and backbone is not None and hasattr(pl_module, "pair_rewards")
        ):
            eos = bool(self.append_eos)
            key = ("reward", id(backbone))
            if key != self._scorer_key:
                self._scorer = RewardModelScorer(
                    backbone,
                    tokenizer,
                    batch_size=self.batch_size,
                    cache=self._cache(tokenizer, eos),
                )
                self._scorer_key = key
            return self._scorer
        policy = _first_attr(pl_module, ("policy", "backbone", "model"))
        if policy is None or tokenizer is None:
            raise TypeError(
                f"cannot build a scorer for {type(pl_module).__name__}: define benchmark_scorer(), or "
                "expose .policy (or .backbone) and .tokenizer"
            )
        eos = True if self.append_eos is None else self.append_eos
        if kind == "likelihood":
            key = ("likelihood", id(policy))
            if key != self._scorer_key:
                self._scorer = LikelihoodScorer(
                    policy, tokenizer, batch_size=self.batch_size, cache=self._cache(tokenizer, eos)
                )
                self._scorer_key = key
            return self._scorer
        hparams = getattr(pl_module, "hparams", None) or {}
        reference = _first_attr(pl_module, ("reference_model", "ref_model"))
        if reference is None and callable(getattr(policy, "disable_adapter", None)):
            reference = "lora_disabled"  # DPO(reference="lora_disabled" / "precomputed") with LoRA
        elif reference is None:
            log.warning(
                "no reference model on %s: benchmark scores are RewardBench's reference-free "
                "average log-probs",
                type(pl_module).__name__,
            )
        beta = self.beta if self.beta is not None else hparams.get("beta")
        key = ("dpo", id(policy), reference if isinstance(reference, str) else id(reference))
        if key != self._scorer_key:
            self._scorer = DPOImplicitRewardScorer(
                policy,
                tokenizer,
                reference=reference,
                beta=0.1 if beta is None else float(beta),
                batch_size=self.batch_size,
                cache=self._cache(tokenizer, eos),
            )
            self._scorer_key = key
        return self._scorer

    # ------------------------------------------------------------------ running
    def evaluate(self, pl_module) -> dict[str, dict]:
        """``{benchmark: {"metrics": {...}, "details": {...}}}`` for the module as it is now."""
        scorer = self.build_scorer(pl_module)
        out = {}
        for bench in self.benchmarks:
            metrics = bench.evaluate(scorer)
            out[bench.name] = {"metrics": metrics, "details": bench.details}
        return out

    @staticmethod
    def flat_metrics(results: dict[str, dict]) -> dict[str, float]:
        """``{"eval/<benchmark>/<subset>": value}`` of finite values."""
        return {
            f"eval/{b}/{k}": float(v)
            for b, r in results.items()
            for k, v in r["metrics"].items()
            if math.isfinite(float(v))
        }

    def _run(self, trainer, pl_module, stage: str) -> dict[str, float]:
        results = self.evaluate(pl_module)
        self._last_step = trainer.global_step
        record = {
            "stage": stage,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "benchmarks": results,
        }
        self.history.append(record)
        if trainer.is_global_zero:
            self._write(trainer, record)
        return self.flat_metrics(results)

    def _directory(self, trainer) -> str:
        if self.output_dir:
            return self.output_dir
        base = trainer.log_dir or trainer.default_root_dir
        return os.path.join(base, "benchmarks")

    def _write(self, trainer, record: dict) -> None:
        directory = self._directory(trainer)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "benchmarks.json"), "w", encoding="utf-8") as f:
            json.dump(
                {"runs": self.history, "previous": self.previous or None}, f, indent=1, default=str
            )
        if not self.plot:
            return
        for name, result in record["benchmarks"].items():
            if result["metrics"]:
                path = os.path.join(directory, f"{name}.png")
                plot_benchmark(
                    path,
                    name,
                    result["metrics"],
                    self.previous.get(name),
                    title=f"{name} (epoch {record['epoch']}, step {record['global_step']})",
                )
                log_image_file(trainer, f"eval/{name}", path, step=record["global_step"])

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and (
            self.every_n_epochs == 0 or (trainer.current_epoch + 1) % self.every_n_epochs
        ):
            return
        if fitting and not _at_epoch_end(trainer):  # val_check_interval < 1: only the epoch's last
            return
        metrics = self._run(trainer, pl_module, "fit" if fitting else str(trainer.state.fn))
        if metrics:
            pl_module.log_dict(metrics, add_dataloader_idx=False, sync_dist=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.at_fit_end or self._last_step == trainer.global_step:
            return
        metrics = self._run(trainer, pl_module, "fit_end")
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
