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

    OMP_NUM_THREADS=1 python scripts/smollm2_e2e.py --config configs/dpo/smollm2_dr_dpo.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
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


def run(
    config: str,
    overrides: list[str],
    output_dir: str | None = None,
    export: bool = True,
    benchmarks: bool = True,
    bench_max_rows: int | None = None,
) -> dict:
    import torch

    from lightning_robust.callbacks import BenchmarkCallback
    from lightning_robust.cli import build_cli

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cli = build_cli(["--config", config, *overrides], run=False)
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    callbacks = [c for c in trainer.callbacks if isinstance(c, BenchmarkCallback)]
    bench_cb = callbacks[0] if callbacks else None
    if bench_cb is not None:  # the script measures before and after itself
        trainer.callbacks.remove(bench_cb)
    if not benchmarks:
        bench_cb = None
    if bench_cb is not None and bench_max_rows is not None:
        cap_benchmark_rows(bench_cb, bench_max_rows)
    output_dir = output_dir or trainer.default_root_dir
    os.makedirs(output_dir, exist_ok=True)
    t0 = time.perf_counter()
    module.configure_model()
    dm.setup("fit")
    report = {
        "config": config,
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "train_pairs": len(dm.datasets["train"]),
        "heldout_pairs": len(dm.datasets.get("val", [])),
    }
    before = heldout_margins(module, dm)
    report["benchmarks_before"] = benchmark_figures(module, bench_cb)
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    report["fit_s"] = round(time.perf_counter() - t_fit, 1)
    after = heldout_margins(module, dm)
    report["benchmarks_after"] = benchmark_figures(module, bench_cb)
    report["heldout"] = paired_margin_stats(before, after)
    report["train_loss_last"] = float(trainer.callback_metrics.get("train/loss", float("nan")))
    report["wall_s_before_export"] = round(time.perf_counter() - t0, 1)
    path = os.path.join(output_dir, "e2e.json")
    with open(path, "w", encoding="utf-8") as f:  # the figures first: an export failure keeps them
        json.dump(report, f, indent=1)
    if export:
        report["export_dir"] = module.export(os.path.join(output_dir, "export"))
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return report


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
    p.add_argument("overrides", nargs="*", help="extra CLI flags, e.g. --trainer.max_steps=20")
    args, extra = p.parse_known_args(argv)
    report = run(
        args.config,
        [*args.overrides, *extra],
        args.output_dir,
        export=not args.no_export,
        benchmarks=not args.no_benchmarks,
        bench_max_rows=args.bench_max_rows,
    )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
