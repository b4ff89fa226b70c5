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
from typing import Literal

import torch

from lightning_robust.annotate import annotate_pairs
from lightning_robust.data.source import DataSource

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


def train_proxy(
    labelled: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    model_name_or_path: str = "tiny",
    max_epochs: int = 1,
    max_steps: int = -1,
    batch_size: int = 16,
    max_length: int = 512,
    learning_rate: float = 1e-5,
    val_fraction: float = 0.1,
    seed: int = 0,
    accelerator: str = "auto",
    default_root_dir: str | None = None,
    on_bad_row: Literal["error", "skip"] = "error",
) -> dict:
    """Train the proxy :class:`~lightning_robust.modules.RewardModel` on gold-labelled rows
    (S003: 1 epoch, batch 16, max length 512), export it to ``output_dir`` and return the
    held-out proxy-vs-gold agreement (``val/accuracy`` on the labelled pairs held out by prompt).
    ``on_bad_row`` is the data module's (``skip``: rows longer than ``max_length`` are counted and
    dropped)."""
    from lightning import Trainer, seed_everything

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.modules import RewardModel

    seed_everything(seed, workers=True)
    module = RewardModel(
        backbone={"name_or_path": model_name_or_path},
        optimizer={"learning_rate": learning_rate, "lr_schedule": "cosine", "warmup_ratio": 0.03},
    )
    dm = PreferenceDataModule(
        train=os.fspath(labelled),
        tokenizer=model_name_or_path,
        batch_size=batch_size,
        max_length=max_length,
        val_fraction=val_fraction,
        seed=seed,
        on_bad_row=on_bad_row,
    )
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=max_epochs,
        max_steps=max_steps,
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
    *,
    num_generations: int = 8,
    max_prompts: int = 32,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    statistic: Literal["mean_abs", "rms", "max"] = "mean_abs",
    **sampling,
) -> dict:
    """Pilot calibration of ``delta~_0`` (module docstring): ``G = num_generations`` completions of
    ``max_prompts`` pilot prompts from the initial ``policy``, scored by ``proxy`` and ``gold``."""
    from lightning_robust.pipelines.build_pairs import build_pairs

    os.makedirs(work_dir, exist_ok=True)
    out = os.path.join(os.fspath(work_dir), "pilot_pairs.jsonl")
    try:
        build_pairs(
            prompts,
            policy,
            [proxy, gold],
            out,
            num_samples=num_generations,
            max_prompts=max_prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            **sampling,
        )
    except ValueError as err:
        if "no pair was formed" not in str(err):  # the pilot needs the samples, not the pairs
            raise
    with open(out + ".samples.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    scores = torch.tensor([r["scores"] for r in records], dtype=torch.float64)  # [groups, G, 2]
    delta0 = delta0_from_scores(scores[..., 0], scores[..., 1], statistic)
    result = {
        "delta0": delta0,
        "statistic": statistic,
        "pilot_prompts": len(records),
        "G": num_generations,
    }
    log.info("pilot calibration: %s", result)
    return result


def gold_proxy_pipeline(
    source,
    gold_reward_model,
    work_dir: str | os.PathLike,
    *,
    proxy_base: str = "tiny",
    max_rows: int | None = None,
    on_bad_row: str = "error",
    proxy_epochs: int = 1,
    proxy_max_steps: int = -1,
    proxy_batch_size: int = 16,
    proxy_max_length: int = 512,
    proxy_learning_rate: float = 1e-5,
    seed: int = 0,
    accelerator: str = "auto",
    pilot_prompts=None,
    policy: str | None = None,
    pilot_size: int = 32,
    num_generations: int = 8,
    max_new_tokens: int = 64,
    statistic: Literal["mean_abs", "rms", "max"] = "mean_abs",
) -> dict:
    """Label with gold, train the proxy, optionally calibrate ``delta~_0`` (with ``pilot_prompts``
    and ``policy``); writes ``<work_dir>/summary.json`` holding the GRPO/DRRO overrides."""
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
            max_length=proxy_max_length,
        )
    }
    proxy_dir = os.path.join(work_dir, "proxy")
    summary["proxy"] = train_proxy(
        labelled,
        proxy_dir,
        model_name_or_path=proxy_base,
        max_epochs=proxy_epochs,
        max_steps=proxy_max_steps,
        batch_size=proxy_batch_size,
        max_length=proxy_max_length,
        learning_rate=proxy_learning_rate,
        seed=seed,
        accelerator=accelerator,
        default_root_dir=os.path.join(work_dir, "proxy_run"),
        on_bad_row=on_bad_row,
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
            num_generations=num_generations,
            max_prompts=pilot_size,
            max_new_tokens=max_new_tokens,
            seed=seed,
            statistic=statistic,
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
            proxy_base=a.proxy_base,
            max_rows=a.max_rows,
            on_bad_row=a.on_bad_row,
            proxy_epochs=a.proxy_epochs,
            proxy_max_steps=a.proxy_max_steps,
            proxy_batch_size=a.proxy_batch_size,
            proxy_max_length=a.proxy_max_length,
            proxy_learning_rate=a.proxy_learning_rate,
            seed=a.seed,
            accelerator=a.accelerator,
            pilot_prompts=a.pilot_prompts,
            policy=a.policy,
            pilot_size=a.pilot_size,
            num_generations=a.num_generations,
            max_new_tokens=a.max_new_tokens,
            statistic=a.statistic,
        )
    except (ValueError, FileNotFoundError) as err:
        p.exit(2, f"gold_proxy: error: {err}\n")
    print(" ".join(f"--{k}={v}" for k, v in summary["grpo_overrides"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
