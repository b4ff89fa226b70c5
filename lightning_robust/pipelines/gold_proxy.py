"""S003's gold/proxy setup: label pairs with a gold reward model, train a proxy reward model on
them, and pilot-calibrate DRRO's initial budget ``delta~_0`` (docs/ALGORITHMS.md §5.4-5.5).

1. :func:`label_with_gold`: score both answers of every pair of a preference source with the
   gold reward model and order them by it (``chosen`` = the answer the gold model prefers; ties
   keep the source's order and are counted); the rows keep ``gold_chosen`` / ``gold_rejected``
   and whether the source agreed (``source_agrees``). S003: 20,000 gold-labelled hh-rlhf pairs.
2. :func:`train_proxy`: fit :class:`~lightning_robust.modules.RewardModel` on those rows and
   export a Hugging Face directory; the proxy-vs-gold agreement on a held-out part of the
   labelled pairs is reported (S003 reports 85.7 %). S003: 1 epoch, batch 16, max length 512.
3. :func:`calibrate_delta0` (optional): on a small pilot set, sample ``G`` completions per prompt
   from the initial policy (:func:`~lightning_robust.pipelines.build_pairs.build_pairs`), score
   them with proxy and gold, normalise each reward within its group as GRPO does
   (``(r - mean) / (std + 1e-6)``, unbiased std) and take the discrepancy
   ``delta~_0 = mean over groups of mean_i |z_proxy_i - z_gold_i|``. S003 derives ``delta~_0``
   "from the proxy-vs-gold discrepancy on a pilot set, after group normalisation"; its exact
   statistic was lost in extraction, so the mean absolute gap is **chosen here**
   (``statistic="rms"`` / ``"max"`` are offered).

:func:`gold_proxy_pipeline` runs 1-3 and writes ``summary.json`` with the GRPO/DRRO overrides
(``model.reward_model`` = the proxy, ``model.gold_reward_model`` = the gold model,
``model.delta0``). Command: ``python -m lightning_robust.pipelines.gold_proxy --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_robust.annotate import annotate_pairs
from lightning_robust.data.source import DataSource
from lightning_robust.models.backbone import ModelOptions
from lightning_robust.models.lora import LoraOptions
from lightning_robust.modules.optim import OptimizerOptions

log = logging.getLogger(__name__)

STATISTICS = ("mean_abs", "rms", "max")


def label_with_gold(
    source: DataSource | str,
    gold_reward_model,
    output: str | os.PathLike,
    *,
    max_rows: int | None = None,
    on_bad_row: str = "error",
    batch_size: int = 16,
    max_length: int = 512,
) -> dict:
    """Order each pair of ``source`` by the gold reward model; returns counts
    (``rows``, ``source_agreement``, ``ties``) and writes ``output`` (``.jsonl``)."""
    output = os.fspath(output)
    if not output.endswith(".jsonl"):
        raise ValueError(f"output {output!r}: label_with_gold writes a .jsonl file")
    scored = output + ".gold_scores.jsonl"
    annotate_pairs(
        source,
        [gold_reward_model],
        scored,
        max_rows=max_rows,
        on_bad_row=on_bad_row,
        batch_size=batch_size,
        max_length=max_length,
    )
    rows, agree, ties = [], 0, 0
    with open(scored, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            g_c, g_r = row.pop("chosen_scores")[0], row.pop("rejected_scores")[0]
            ties += g_c == g_r
            if g_r > g_c:
                row["chosen"], row["rejected"], g_c, g_r = row["rejected"], row["chosen"], g_r, g_c
                row["source_agrees"] = False
            else:
                row["source_agrees"] = True
                agree += g_c > g_r
            row.pop("margin", None)
            row["gold_chosen"], row["gold_rejected"] = g_c, g_r
            rows.append(row)
    with open(output, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats = {"rows": len(rows), "source_agreement": agree / max(len(rows), 1), "ties": ties}
    log.info("gold labels: %s", stats)
    return stats


@dataclass(frozen=True)
class ProxyTrainingOptions:
    """How the proxy reward model is trained (S003: 1 epoch, batch 16, max length 512).

    Attributes:
        max_epochs, max_steps: Lightning's training length (``max_steps=-1``: by epochs).
        batch_size: pairs per optimiser step.
        max_length: token budget of prompt + answer (also used to score with the gold model).
        val_fraction: share of the labelled pairs held out (by prompt) for the proxy-vs-gold
            agreement.
        accelerator: Lightning's ``accelerator`` (one device).
    """

    max_epochs: int = 1
    max_steps: int = -1
    batch_size: int = 16
    max_length: int = 512
    val_fraction: float = 0.1
    accelerator: str = "auto"

    @classmethod
    def coerce(cls, value) -> ProxyTrainingOptions:
        """``None`` (the defaults), a ``ProxyTrainingOptions`` or a (partial) dict."""
        if value is None:
            return cls()
        return cls(**value) if isinstance(value, dict) else value


@dataclass(frozen=True)
class PilotOptions:
    """The pilot calibration of ``delta~_0`` (module docstring, step 3).

    Attributes:
        num_generations: ``G``, completions sampled per pilot prompt (>= 2).
        max_prompts: pilot prompts used (the first ones of the pilot source).
        max_new_tokens, temperature: sampling settings of the initial policy.
        statistic: ``mean_abs`` (chosen here) | ``rms`` | ``max`` of the per-group gap.
    """

    num_generations: int = 8
    max_prompts: int = 32
    max_new_tokens: int = 64
    temperature: float = 1.0
    statistic: Literal["mean_abs", "rms", "max"] = "mean_abs"

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(
                f"unknown statistic={self.statistic!r}; expected one of {list(STATISTICS)}"
            )

    @classmethod
    def coerce(cls, value) -> PilotOptions:
        """``None`` (the defaults), a ``PilotOptions`` or a (partial) dict."""
        if value is None:
            return cls()
        return cls(**value) if isinstance(value, dict) else value


def train_proxy(
    labelled: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    backbone: ModelOptions | dict | str | None = None,
    optimizer: OptimizerOptions | dict | None = None,
    lora: LoraOptions | dict | None = None,
    training: ProxyTrainingOptions | dict | None = None,
    seed: int = 0,
    on_bad_row: Literal["error", "skip"] = "error",
    default_root_dir: str | None = None,
) -> dict:
    """Train the proxy :class:`~lightning_robust.modules.RewardModel` on gold-labelled rows, export
    it to ``output_dir`` and return the held-out proxy-vs-gold agreement (``val/accuracy`` on the
    labelled pairs held out by prompt).

    ``backbone``, ``optimizer`` and ``lora`` are the reward model's own groups (defaults: the
    ``tiny`` model; ``OptimizerOptions()``: lr 1e-5, cosine, warm-up 0.03; no LoRA);
    ``training`` is :class:`ProxyTrainingOptions` (S003: 1 epoch, batch 16, max length 512).
    ``on_bad_row`` is the data module's (``skip``: rows longer than ``max_length`` are counted
    and dropped)."""
    from lightning import Trainer, seed_everything

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.modules import RewardModel

    backbone = ModelOptions.coerce(backbone)
    training = ProxyTrainingOptions.coerce(training)
    seed_everything(seed, workers=True)
    module = RewardModel(backbone=backbone, optimizer=optimizer, lora=lora)
    dm = PreferenceDataModule(
        train=os.fspath(labelled),
        tokenizer=backbone.name_or_path,
        batch_size=training.batch_size,
        max_length=training.max_length,
        val_fraction=training.val_fraction,
        seed=seed,
        on_bad_row=on_bad_row,
    )
    trainer = Trainer(
        accelerator=training.accelerator,
        devices=1,
        max_epochs=training.max_epochs,
        max_steps=training.max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=default_root_dir or os.fspath(output_dir),
    )
    trainer.fit(module, datamodule=dm)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    module.export(output_dir)
    result = {
        "proxy": os.fspath(output_dir),
        "heldout_gold_agreement": float(metrics.get("val/accuracy", float("nan"))),
        "heldout_pairs": len(dm.datasets.get("val", [])),
        "train_pairs": len(dm.datasets["train"]),
    }
    log.info("proxy reward model: %s", result)
    return result


def group_normalise(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's within-group normalisation of ``[groups, G]`` rewards: ``(r - mean) / (std + eps)``
    with the unbiased std (VERL's convention, docs/ALGORITHMS.md §5.3)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, unbiased=True, keepdim=True)
    return (rewards - mean) / (std + eps)


def delta0_from_scores(
    proxy: torch.Tensor, gold: torch.Tensor, statistic: str = "mean_abs"
) -> float:
    """``delta~_0`` from ``[groups, G]`` proxy and gold rewards of the same completions: the
    per-group ``mean |z_p - z_g|`` (``rms``: root mean square; ``max``: largest) of the
    group-normalised rewards, averaged over groups (statistic chosen here; module docstring)."""
    if proxy.shape != gold.shape or proxy.dim() != 2 or proxy.shape[1] < 2:
        raise ValueError(
            f"proxy and gold must be [groups, G >= 2] of one shape, got {tuple(proxy.shape)}, {tuple(gold.shape)}"
        )
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic={statistic!r}; expected one of {list(STATISTICS)}")
    gap = (group_normalise(proxy.double()) - group_normalise(gold.double())).abs()
    per_group = {"mean_abs": gap.mean(-1), "rms": gap.pow(2).mean(-1).sqrt(), "max": gap.amax(-1)}[
        statistic
    ]
    return float(per_group.mean())


def calibrate_delta0(
    prompts,
    policy,
    proxy,
    gold,
    work_dir: str | os.PathLike,
    pilot: PilotOptions | dict | None = None,
    *,
    seed: int = 0,
    **sampling,
) -> dict:
    """Pilot calibration of ``delta~_0`` (module docstring): ``G = pilot.num_generations``
    completions of ``pilot.max_prompts`` pilot prompts from the initial ``policy``, scored by
    ``proxy`` and ``gold``. ``sampling``: further :func:`~lightning_robust.pipelines.build_pairs.
    build_pairs` settings (``top_p``, ``batch_size``, ...)."""
    from lightning_robust.pipelines.build_pairs import build_pairs

    pilot = PilotOptions.coerce(pilot)
    os.makedirs(work_dir, exist_ok=True)
    out = os.path.join(os.fspath(work_dir), "pilot_pairs.jsonl")
    try:
        build_pairs(
            prompts,
            policy,
            [proxy, gold],
            out,
            num_samples=pilot.num_generations,
            max_prompts=pilot.max_prompts,
            max_new_tokens=pilot.max_new_tokens,
            temperature=pilot.temperature,
            seed=seed,
            **sampling,
        )
    except ValueError as err:
        if "no pair was formed" not in str(err):  # the pilot needs the samples, not the pairs
            raise
    with open(out + ".samples.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    scores = torch.tensor([r["scores"] for r in records], dtype=torch.float64)  # [groups, G, 2]
    delta0 = delta0_from_scores(scores[..., 0], scores[..., 1], pilot.statistic)
    result = {
        "delta0": delta0,
        "statistic": pilot.statistic,
        "pilot_prompts": len(records),
        "G": pilot.num_generations,
    }
    log.info("pilot calibration: %s", result)
    return result


def gold_proxy_pipeline(
    source,
    gold_reward_model,
    work_dir: str | os.PathLike,
    *,
    backbone: ModelOptions | dict | str | None = None,
    optimizer: OptimizerOptions | dict | None = None,
    lora: LoraOptions | dict | None = None,
    training: ProxyTrainingOptions | dict | None = None,
    max_rows: int | None = None,
    on_bad_row: Literal["error", "skip"] = "error",
    seed: int = 0,
    pilot_prompts=None,
    policy: str | None = None,
    pilot: PilotOptions | dict | None = None,
) -> dict:
    """Label with gold, train the proxy, optionally calibrate ``delta~_0``; writes
    ``<work_dir>/summary.json`` holding the GRPO/DRRO overrides.

    Args:
        source: the preference pairs to label (file, hub id, ``"synthetic"``, a ``DataSource``).
        gold_reward_model: the gold reward model spec (``load_reward_scorer``).
        work_dir: folder of the labelled rows, the proxy export, the pilot and the summary.
        backbone, optimizer, lora: the proxy reward model's groups (:func:`train_proxy`).
        training: :class:`ProxyTrainingOptions`; its ``max_length`` also bounds gold scoring.
        max_rows, on_bad_row: rows of ``source`` read, and what to do with a bad one.
        seed: seed of the proxy's training split and the pilot's sampling.
        pilot_prompts, policy: with both, calibrate ``delta~_0`` on ``pilot_prompts`` sampled
            from the initial ``policy`` (:class:`PilotOptions` ``pilot``).
    """
    training = ProxyTrainingOptions.coerce(training)
    work_dir = os.fspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    labelled = os.path.join(work_dir, "gold_labelled.jsonl")
    summary = {
        "labels": label_with_gold(
            source,
            gold_reward_model,
            labelled,
            max_rows=max_rows,
            on_bad_row=on_bad_row,
            max_length=training.max_length,
        )
    }
    proxy_dir = os.path.join(work_dir, "proxy")
    summary["proxy"] = train_proxy(
        labelled,
        proxy_dir,
        backbone=backbone,
        optimizer=optimizer,
        lora=lora,
        training=training,
        seed=seed,
        on_bad_row=on_bad_row,
        default_root_dir=os.path.join(work_dir, "proxy_run"),
    )
    overrides = {
        "model.reward_model": proxy_dir,
        "model.gold_reward_model": os.fspath(gold_reward_model),
    }
    if pilot_prompts is not None:
        if policy is None:
            raise ValueError(
                "pilot_prompts needs `policy` (the initial policy to sample the pilot from)"
            )
        summary["pilot"] = calibrate_delta0(
            pilot_prompts,
            policy,
            proxy_dir,
            gold_reward_model,
            os.path.join(work_dir, "pilot"),
            pilot,
            seed=seed,
        )
        overrides["model.delta0"] = summary["pilot"]["delta0"]
    summary["grpo_overrides"] = overrides
    with open(os.path.join(work_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightning_robust.pipelines.gold_proxy --pairs SRC --gold SPEC --work-dir DIR
    [--proxy-base NAME] [--pilot-prompts SRC --policy SPEC]``; prints the GRPO flags."""
    p = argparse.ArgumentParser(prog="gold_proxy", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--pairs", required=True, help="preference source to label (file, hub id, 'synthetic')"
    )
    p.add_argument("--gold", required=True, help="gold reward model spec")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--proxy-base", default="tiny")
    p.add_argument("--max-rows", type=int)
    p.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    p.add_argument("--proxy-epochs", type=int, default=1)
    p.add_argument("--proxy-max-steps", type=int, default=-1)
    p.add_argument("--proxy-batch-size", type=int, default=16)
    p.add_argument("--proxy-max-length", type=int, default=512)
    p.add_argument("--proxy-learning-rate", type=float, default=1e-5)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pilot-prompts")
    p.add_argument("--policy")
    p.add_argument("--pilot-size", type=int, default=32)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--statistic", choices=STATISTICS, default="mean_abs")
    a = p.parse_args(argv)
    try:
        summary = gold_proxy_pipeline(
            a.pairs,
            a.gold,
            a.work_dir,
            backbone=ModelOptions(name_or_path=a.proxy_base),
            optimizer=OptimizerOptions(learning_rate=a.proxy_learning_rate),
            training=ProxyTrainingOptions(
                max_epochs=a.proxy_epochs,
                max_steps=a.proxy_max_steps,
                batch_size=a.proxy_batch_size,
                max_length=a.proxy_max_length,
                accelerator=a.accelerator,
            ),
            max_rows=a.max_rows,
            on_bad_row=a.on_bad_row,
            seed=a.seed,
            pilot_prompts=a.pilot_prompts,
            policy=a.policy,
            pilot=PilotOptions(
                num_generations=a.num_generations,
                max_prompts=a.pilot_size,
                max_new_tokens=a.max_new_tokens,
                statistic=a.statistic,
            ),
        )
    except (ValueError, FileNotFoundError) as err:
        p.exit(2, f"gold_proxy: error: {err}\n")
    print(" ".join(f"--{k}={v}" for k, v in summary["grpo_overrides"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
