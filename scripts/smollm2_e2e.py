#!/usr/bin/env python
"""Before/after evaluation of a DPO-family fit of a real policy (or the tiny one), with paired
statistics; used for the SmolLM2 end-to-end runs (configs/dpo/smollm2_*.yaml).

Given a fit config (the CLI's YAML), it

1. builds model, data and trainer from the config (``lightning_robust.cli.build_cli``);
2. measures, BEFORE training, the held-out in-distribution pair margins
   ``m_i = log pi(y+_i|x_i) - log pi(y-_i|x_i)`` (summed response-token log-probs, the data
   module's own tokenisation, the prompt-split ``val`` set never trained on) and the accuracy of
   every benchmark of the config's ``BenchmarkCallback`` with a :class:`LikelihoodScorer`
   (S000's criterion pi(y+|x) > pi(y-|x));
3. fits, measures the same AFTER, and exports the policy as a Hugging Face directory
   (LoRA merged);
4. reports per-pair margin changes ``d_i = m_i(after) - m_i(before)``: a two-sided exact sign
   test on ``d`` and a percentile-bootstrap 95 % CI of ``mean(d)``; held-out accuracy
   (``m_i > 0``) before/after with Wilson 95 % CIs and an exact McNemar test on the pairs whose
   verdict changed; benchmark accuracies with Wilson CIs.

Everything goes to ``<output_dir>/e2e.json`` (``--output-dir``, default the config's
``trainer.default_root_dir``) and is printed.

Learning rate chosen on validation (``--tune-fraction F --tune-lrs a,b,c``): a ``tune`` split of
``F`` of the TRAIN prompts (drawn with ``--tune-seed``; never the held-out ``val`` split the
figures are reported on) is carved off and not trained on; one fit per learning rate (same
steps, same seed, fresh LoRA) is scored by the mean ``tune`` margin after training (the same
base model for every candidate, so this ranks the mean margin change), and the best fit is
the one reported, with every candidate's ``tune`` figures and CPU seconds in ``tuning``. The
before-training figures do not depend on the method or the learning rate: ``--before-cache
FILE`` stores them (keyed by the held-out/tune rows and benchmark settings) for the next run,
and ``--before-last`` measures them after the fits with the adapter disabled (the base model:
LoRA starts at B = 0, so this equals the untrained policy).

    OMP_NUM_THREADS=1 python scripts/smollm2_e2e.py --config configs/dpo/smollm2_dr_dpo.yaml
    OMP_NUM_THREADS=1 python scripts/smollm2_e2e.py --config configs/dpo/smollm2_dpo.yaml \
        --tune-fraction 0.2 --tune-lrs 1e-3,3e-3,1e-2 --before-cache runs/e2e/before.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- statistics
def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial test of ``k`` successes in ``n`` trials at p = 1/2."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def bootstrap_mean_ci(values: list[float], seed: int = 0, draws: int = 4000) -> tuple[float, float]:
    """Percentile-bootstrap 95 % CI of the mean."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(draws, len(x)))].mean(1)
    return (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))


def paired_margin_stats(before: list[float], after: list[float], seed: int = 0) -> dict:
    """Sign test and bootstrap CI on ``after - before``; accuracies and McNemar on ``m > 0``."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need paired, non-empty margins, got {len(before)} and {len(after)}")
    d = [a - b for a, b in zip(after, before, strict=True)]
    up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
    acc_b, acc_a = sum(m > 0 for m in before), sum(m > 0 for m in after)
    gained = sum(a > 0 >= b for a, b in zip(after, before, strict=True))
    lost = sum(b > 0 >= a for a, b in zip(after, before, strict=True))
    n = len(d)
    return {
        "pairs": n,
        "mean_margin_before": sum(before) / n,
        "mean_margin_after": sum(after) / n,
        "mean_delta": sum(d) / n,
        "mean_delta_ci95": bootstrap_mean_ci(d, seed),
        "sign_test": {"up": up, "down": down, "p_two_sided": binom_two_sided(up, up + down)},
        "accuracy_before": acc_b / n,
        "accuracy_before_ci95": wilson(acc_b, n),
        "accuracy_after": acc_a / n,
        "accuracy_after_ci95": wilson(acc_a, n),
        "mcnemar": {
            "gained": gained,
            "lost": lost,
            "p_two_sided": binom_two_sided(gained, gained + lost),
        },
    }


# ---------------------------------------------------------------- measurements
def heldout_margins(module, datamodule, split: str = "val") -> list[float]:
    """``log pi(y+|x) - log pi(y-|x)`` of every held-out pair under the module's current policy."""
    import torch

    from lightning_robust.models.logprobs import sequence_logprobs

    loader = datamodule.val_dataloader()
    if isinstance(loader, (list, tuple)):
        loader = loader[datamodule.val_set_names.index(split)]
    policy = module.backbone
    was = policy.training
    policy.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            for side in ("chosen", "rejected"):
                batch[f"_{side}"], _ = sequence_logprobs(
                    policy,
                    batch[f"{side}_input_ids"],
                    batch[f"{side}_attention_mask"],
                    batch[f"{side}_prompt_len"],
                )
            out += (batch["_chosen"] - batch["_rejected"]).double().tolist()
    policy.train(was)
    return out


def cap_benchmark_rows(callback, max_rows: int) -> None:
    """Keep the first ``max_rows`` rows of every benchmark subset (a quick, documented subset)."""
    for bench in callback.benchmarks:
        rows = bench.rows()
        if isinstance(rows, dict):
            bench._rows = {k: list(v)[:max_rows] for k, v in rows.items()}
        else:
            bench._rows = list(rows)[:max_rows]


def benchmark_figures(module, callback) -> dict:
    """Accuracy and Wilson CI of each benchmark under ``LikelihoodScorer`` (pi(y+|x) > pi(y-|x))."""
    from lightning_robust.models.scorers import LikelihoodScorer

    if callback is None:
        return {}
    scorer = LikelihoodScorer(
        module.backbone,
        module.tokenizer,
        max_length=callback.max_length,
        batch_size=callback.batch_size,
        append_eos=True,
    )
    was = module.backbone.training
    module.backbone.eval()
    figures = {}
    for bench in callback.benchmarks:
        metrics = bench.evaluate(scorer)
        key = "score" if "score" in metrics else "overall"
        n = int(sum((bench.details or {}).get("counts", {}).values()))
        value = float(metrics[key])
        figures[bench.name] = {
            "metric": key,
            "accuracy": value,
            "n": n,
            "ci95": wilson(round(value * n), n) if n else None,
        }
    module.backbone.train(was)
    return figures


def carve_tune_split(datamodule, fraction: float, seed: int) -> None:
    """Move ``fraction`` of the TRAIN prompts (all their pairs, ``split_by_prompt`` with ``seed``)
    into a ``tune`` set appended to the data module's evaluation sets; they are not trained on."""
    from lightning_robust.data.dataset import TokenizedPreferenceDataset
    from lightning_robust.data.split import split_by_prompt

    train = datamodule.datasets["train"]
    if train.examples is None:
        raise ValueError("--tune-fraction needs the train split's examples (prompts) to split by")
    kept, held = split_by_prompt(train.examples, fraction, seed)
    if not held or not kept:
        raise ValueError(f"--tune-fraction {fraction} leaves an empty train or tune split")

    def subset(pos):
        return TokenizedPreferenceDataset(
            [train.pairs[i] for i in pos],
            [train.groups[i] for i in pos],
            [train.source_index[i] for i in pos],
            [train.examples[i] for i in pos],
        )

    datamodule.datasets["train"] = subset(kept)
    datamodule.datasets["tune"] = subset(held)
    datamodule.val_set_names = [*datamodule.val_set_names, "tune"]


@dataclass
class Tuning:
    """Learning-rate choice on a ``tune`` split carved from the train prompts."""

    fraction: float = 0.0  # share of the train prompts held out for tuning (0: no tune split)
    seed: int = 1  # split seed (the data module's own val split uses its ``seed``)
    lrs: list[float] = field(default_factory=list)  # candidates; empty: the config's own


@dataclass
class BeforeOptions:
    """Where the before-training figures come from."""

    cache: str | None = None  # JSON file shared by runs on the same rows (e.g. DPO and DR-DPO)
    last: bool = False  # measure them after the fits, with the LoRA adapter disabled


def _adapter_off(module):
    """The base model's outputs: the LoRA adapter disabled (``nullcontext`` without LoRA)."""
    disable = getattr(module.backbone, "disable_adapter", None)
    return disable() if disable is not None else contextlib.nullcontext()


def _before_key(module, dm, bench_cb, bench_max_rows) -> str:
    spec = {
        "backbone": str(getattr(module.hparams, "backbone", "")),
        "max_length": dm.max_length,
        **{n: list(dm.datasets[n].source_index) for n in dm.val_set_names},
        "bench": None
        if bench_cb is None
        else [[b.name for b in bench_cb.benchmarks], bench_cb.max_length, bench_max_rows],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def before_figures(module, dm, bench_cb, bench_max_rows, options: BeforeOptions) -> dict:
    """Held-out (and tune) margins and benchmark figures of the base model, from the cache when
    its key matches, else measured with the adapter disabled (and cached)."""
    key = _before_key(module, dm, bench_cb, bench_max_rows)
    if options.cache and os.path.exists(options.cache):
        with open(options.cache, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return {**cached, "from_cache": options.cache}
    cpu = time.process_time()
    with _adapter_off(module):
        figures = {
            "key": key,
            "margins": {n: heldout_margins(module, dm, n) for n in dm.val_set_names},
            "benchmarks": benchmark_figures(module, bench_cb),
        }
    figures["cpu_s"] = round(time.process_time() - cpu, 1)
    if options.cache:
        os.makedirs(os.path.dirname(os.path.abspath(options.cache)), exist_ok=True)
        tmp = f"{options.cache}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(figures, f)
        os.replace(tmp, options.cache)
    return figures


def _build(config: str, overrides: list[str], tuning: Tuning, benchmarks: bool, bench_max_rows):
    """Model, data (set up, tune split carved), trainer and the benchmark callback (taken out of
    the trainer: the script measures before and after itself)."""
    from lightning_robust.callbacks import BenchmarkCallback
    from lightning_robust.cli import build_cli

    cli = build_cli(["--config", config, *overrides], run=False)
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    callbacks = [c for c in trainer.callbacks if isinstance(c, BenchmarkCallback)]
    bench_cb = callbacks[0] if callbacks else None
    if bench_cb is not None:
        trainer.callbacks.remove(bench_cb)
    if not benchmarks:
        bench_cb = None
    if bench_cb is not None and bench_max_rows is not None:
        cap_benchmark_rows(bench_cb, bench_max_rows)
    module.configure_model()
    dm.setup("fit")
    if tuning.fraction > 0:
        carve_tune_split(dm, tuning.fraction, tuning.seed)
    return module, dm, trainer, bench_cb


def _fit_and_score(module, dm, trainer) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.fit(module, datamodule=dm)
    out = {
        "fit_s": round(time.perf_counter() - wall, 1),
        "fit_cpu_s": round(time.process_time() - cpu, 1),
        "train_loss_last": float(trainer.callback_metrics.get("train/loss", float("nan"))),
    }
    if "tune" in dm.datasets:
        cpu = time.process_time()
        margins = heldout_margins(module, dm, "tune")
        out["tune_mean_margin"] = sum(margins) / len(margins)
        out["tune_accuracy"] = sum(m > 0 for m in margins) / len(margins)
        out["tune_margins"] = margins
        out["tune_eval_cpu_s"] = round(time.process_time() - cpu, 1)
    return out


def run_tuned(
    config: str,
    overrides: list[str],
    output_dir: str | None = None,
    export: bool = True,
    benchmarks: bool = True,
    bench_max_rows: int | None = None,
    tuning: Tuning | None = None,
    before: BeforeOptions | None = None,
) -> dict:
    """:func:`run` with a learning rate chosen on a tune split carved from the train prompts
    (see the module docstring); ``report["tuning"]`` lists every candidate."""
    import torch

    tuning = tuning or Tuning()
    before = before or BeforeOptions()
    if tuning.lrs and tuning.fraction <= 0:
        raise ValueError("--tune-lrs needs --tune-fraction > 0 (a tune split carved from train)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cpu0, t0 = time.process_time(), time.perf_counter()
    lrs = tuning.lrs or [None]
    best, candidates, figures0 = None, [], None
    for lr in lrs:
        extra = [] if lr is None else [f"--model.init_args.optimizer.learning_rate={lr}"]
        cpu = time.process_time()
        module, dm, trainer, bench_cb = _build(
            config, [*overrides, *extra], tuning, benchmarks, bench_max_rows
        )
        build_cpu = round(time.process_time() - cpu, 1)
        if figures0 is None and not before.last:
            figures0 = before_figures(module, dm, bench_cb, bench_max_rows, before)
        result = {
            "learning_rate": lr if lr is not None else _config_lr(module),
            **_fit_and_score(module, dm, trainer),
        }
        result["build_cpu_s"] = build_cpu
        candidates.append(result)
        score = result.get("tune_mean_margin", 0.0)
        if best is None or score > best[0]:
            best = (score, result, module, dm, trainer, bench_cb)
        else:
            del module, dm, trainer, bench_cb
        gc.collect()
    _, chosen, module, dm, trainer, bench_cb = best
    if figures0 is None:
        figures0 = before_figures(module, dm, bench_cb, bench_max_rows, before)
    output_dir = output_dir or trainer.default_root_dir
    os.makedirs(output_dir, exist_ok=True)
    cpu = time.process_time()
    after = heldout_margins(module, dm, "val")
    bench_after = benchmark_figures(module, bench_cb)
    after_cpu = round(time.process_time() - cpu, 1)
    report = {
        "config": config,
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "train_pairs": len(dm.datasets["train"]),
        "heldout_pairs": len(dm.datasets.get("val", [])),
        "tune_pairs": len(dm.datasets.get("tune", [])),
        "learning_rate": chosen["learning_rate"],
        "tuning": {
            "fraction": tuning.fraction,
            "seed": tuning.seed,
            "criterion": "mean tune-split margin log pi(y+|x) - log pi(y-|x) after training (max)",
            "candidates": [{k: v for k, v in c.items() if k != "tune_margins"} for c in candidates],
        }
        if tuning.fraction > 0
        else None,
        "benchmarks_before": figures0["benchmarks"],
        "benchmarks_after": bench_after,
        "before_from_cache": figures0.get("from_cache"),
        "heldout": paired_margin_stats(figures0["margins"]["val"], after),
        "heldout_margins": {
            "source_index": list(dm.datasets["val"].source_index),
            "before": figures0["margins"]["val"],
            "after": after,
        },
        "fit_s": chosen["fit_s"],
        "train_loss_last": chosen["train_loss_last"],
    }
    if "tune" in dm.datasets:
        report["tune"] = paired_margin_stats(figures0["margins"]["tune"], chosen["tune_margins"])
    report["cpu_s"] = {
        "chosen_fit": chosen["fit_cpu_s"],
        "chosen_build": chosen["build_cpu_s"],
        "chosen_tune_eval": chosen.get("tune_eval_cpu_s", 0.0),
        "before_eval": figures0.get("cpu_s", 0.0) if not figures0.get("from_cache") else 0.0,
        "before_eval_measured": figures0.get("cpu_s"),
        "after_eval": after_cpu,
        "process_total_before_export": round(time.process_time() - cpu0, 1),
    }
    # one final run = build + fit at the chosen lr + its evaluations (before figures measured)
    report["cpu_s"]["final_run_estimate"] = round(
        chosen["build_cpu_s"]
        + chosen["fit_cpu_s"]
        + chosen.get("tune_eval_cpu_s", 0.0)
        + (figures0.get("cpu_s") or 0.0)
        + after_cpu,
        1,
    )
    report["wall_s_before_export"] = round(time.perf_counter() - t0, 1)
    path = os.path.join(output_dir, "e2e.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    if export:
        cpu = time.process_time()
        report["export_dir"] = module.export(os.path.join(output_dir, "export"))
        report["cpu_s"]["export"] = round(time.process_time() - cpu, 1)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return report


def _config_lr(module):
    opt = getattr(module.hparams, "optimizer", None)
    return getattr(opt, "learning_rate", None) if opt is not None else None


def compare_methods(a: dict, b: dict, seed: int = 0) -> dict:
    """Paired comparison of two reports on the same held-out pairs: ``d_i = m_i(a) - m_i(b)``
    of the after-training margins (the before margins are the same base model's, so this is
    also the difference of the margin changes); sign test, bootstrap CI, McNemar on verdicts."""
    ma, mb = a["heldout_margins"], b["heldout_margins"]
    if ma["source_index"] != mb["source_index"]:
        raise ValueError("the two reports were measured on different held-out pairs")
    if max(abs(x - y) for x, y in zip(ma["before"], mb["before"], strict=True)) > 1e-6:
        raise ValueError("the two reports start from different before-training margins")
    s = paired_margin_stats(mb["after"], ma["after"], seed)  # "after" = a, "before" = b
    return {
        "pairs": s["pairs"],
        "mean_margin_a": s["mean_margin_after"],
        "mean_margin_b": s["mean_margin_before"],
        "mean_difference": s["mean_delta"],
        "mean_difference_ci95": s["mean_delta_ci95"],
        "sign_test": s["sign_test"],
        "accuracy_a": s["accuracy_after"],
        "accuracy_b": s["accuracy_before"],
        "mcnemar": {
            "a_only_correct": s["mcnemar"]["gained"],
            "b_only_correct": s["mcnemar"]["lost"],
            "p_two_sided": s["mcnemar"]["p_two_sided"],
        },
    }


def run(
    config: str,
    overrides: list[str],
    output_dir: str | None = None,
    export: bool = True,
    benchmarks: bool = True,
    bench_max_rows: int | None = None,
) -> dict:
    """One fit of the config as it is (no tune split, before figures measured first)."""
    return run_tuned(config, overrides, output_dir, export, benchmarks, bench_max_rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--output-dir")
    p.add_argument("--no-export", action="store_true")
    p.add_argument(
        "--no-benchmarks",
        action="store_true",
        help="held-out pairs only (skip the benchmark callbacks)",
    )
    p.add_argument(
        "--bench-max-rows", type=int, help="first N rows of every benchmark subset (quick runs)"
    )
    p.add_argument(
        "--tune-fraction",
        type=float,
        default=0.0,
        help="share of the TRAIN prompts carved off as a tune split (not trained on)",
    )
    p.add_argument("--tune-seed", type=int, default=1, help="seed of the tune split")
    p.add_argument(
        "--tune-lrs",
        type=lambda v: [float(x) for x in v.split(",") if x],
        default=[],
        help="comma-separated learning rates; the one with the best mean tune margin is reported",
    )
    p.add_argument("--before-cache", help="JSON cache of the before-training figures")
    p.add_argument(
        "--before-last",
        action="store_true",
        help="measure the before figures after the fits (adapter disabled)",
    )
    p.add_argument("overrides", nargs="*", help="extra CLI flags, e.g. --trainer.max_steps=20")
    args, extra = p.parse_known_args(argv)
    report = run_tuned(
        args.config,
        [*args.overrides, *extra],
        args.output_dir,
        export=not args.no_export,
        benchmarks=not args.no_benchmarks,
        bench_max_rows=args.bench_max_rows,
        tuning=Tuning(args.tune_fraction, args.tune_seed, args.tune_lrs),
        before=BeforeOptions(args.before_cache, args.before_last),
    )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
