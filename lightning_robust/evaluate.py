"""Command ``lightning-robust eval``: benchmark a model without a training config.

    lightning-robust eval --model runs/rm/last.ckpt --benchmarks rewardbench,hhh,mt_bench \\
        --data path/to/offline-data --output runs/eval/rm

``--model`` is a hub id, a local Hugging Face directory (``save_pretrained``), a Lightning
``.ckpt`` of :class:`~lightning_robust.modules.RewardModel` or :class:`~lightning_robust.modules.DPO`,
or ``tiny`` (a random-init model, for smoke tests). A sequence classifier is scored as a reward
model; a causal LM by its DPO implicit reward ``beta * log(pi / pi_ref)`` when ``--reference`` is
given, otherwise by RewardBench's reference-free average log-probability (``--kind`` overrides).

Benchmark data: ``--source NAME=PATH`` per benchmark, or ``--data DIR`` holding the offline
layout of :data:`DATA_LAYOUT`; without either, the evaluators' hub datasets. Prints one table,
writes ``<output>/benchmarks.json`` and one PNG bar chart per benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

log = logging.getLogger(__name__)

BENCHMARKS = ("rewardbench", "hhh", "mt_bench", "pairwise")

# Where ``--data DIR`` finds each benchmark (the layout of the project's offline data folder).
DATA_LAYOUT = {
    "rewardbench": "rewardbench_llmbar/llmbar_rewardbench_format_shared.jsonl",
    "hhh": "hhh_alignment",
    "mt_bench": "mt_bench_human_pairs/llmbar_mtbench_shared.jsonl",
    "pairwise": "hh_rlhf_harmless_base/harmless_base_test_shared.jsonl",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lightning-robust eval", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument(
        "--model", required=True, help="hub id, Hugging Face directory, .ckpt file or 'tiny'"
    )
    parser.add_argument(
        "--benchmarks",
        default="rewardbench,hhh,mt_bench",
        help=f"comma-separated, from {', '.join(BENCHMARKS)} (default: rewardbench,hhh,mt_bench)",
    )
    parser.add_argument(
        "--data", default=None, help="folder with the offline benchmark layout (see docs)"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="data of one benchmark (file, folder or hub id); repeatable; wins over --data",
    )
    parser.add_argument(
        "--kind",
        choices=("auto", "reward", "dpo", "likelihood"),
        default="auto",
        help="how to score: reward model, DPO implicit reward, or likelihood",
    )
    parser.add_argument(
        "--reference", default=None, help="reference policy for --kind dpo (hub id or directory)"
    )
    parser.add_argument(
        "--beta", type=float, default=0.1, help="DPO beta of the implicit reward (0.1)"
    )
    parser.add_argument(
        "--output", default=None, help="output folder (default runs/eval/<model name>)"
    )
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--max-rows", type=int, default=None, help="quick runs: at most this many rows per subset"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG charts")
    return parser.parse_args(argv)


def benchmark_sources(
    names: list[str], data: str | None, sources: list[str]
) -> dict[str, str | None]:
    """``{benchmark: source or None (hub default)}`` from ``--data`` and ``--source`` options."""
    explicit = {}
    for item in sources:
        name, sep, path = item.partition("=")
        if not sep or name not in BENCHMARKS or not path:
            raise SystemExit(
                f"--source {item!r}: expected NAME=PATH with NAME in {', '.join(BENCHMARKS)}"
            )
        explicit[name] = path
    out: dict[str, str | None] = {}
    for name in names:
        if name in explicit:
            out[name] = explicit[name]
        elif data is not None:
            path = os.path.join(data, DATA_LAYOUT[name])
            if not os.path.exists(path):
                raise SystemExit(f"--data {data!r}: no {name} data at {path}")
            out[name] = path
        elif name == "pairwise":
            raise SystemExit("the pairwise benchmark needs --data or --source pairwise=PATH")
        else:
            out[name] = None
    return out


def build_evaluators(sources: dict[str, str | None], max_rows: int | None) -> list:
    """The evaluators of ``sources`` (``None``: the evaluator's hub default)."""
    from lightning_robust.evals import HHHAlignment, MTBenchHuman, PairwiseAccuracy, RewardBench

    out = []
    for name, source in sources.items():
        kwargs = {} if source is None else {"source": source}
        if name == "rewardbench":
            out.append(RewardBench(max_rows_per_subset=max_rows, **kwargs))
        elif name == "hhh":
            out.append(HHHAlignment(**kwargs))
        elif name == "mt_bench":
            out.append(MTBenchHuman(max_rows=max_rows, **kwargs))
        else:
            out.append(PairwiseAccuracy(split="train", max_rows=max_rows, **kwargs))
    return out


def _checkpoint_kind(path: str) -> str:
    """``reward`` when the checkpoint's state dict holds a score head, else ``dpo``."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("state_dict", {})
    return "reward" if any(".score." in k for k in state) else "dpo"


def _is_classifier(name_or_path: str) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    return any("SequenceClassification" in a for a in (config.architectures or []))


def reward_scorer_loader():
    """:func:`lightning_robust.modules.load_reward_scorer` (imported when a command needs it)."""
    from lightning_robust.modules import load_reward_scorer

    return load_reward_scorer


def load_scorer(args: argparse.Namespace):
    """The scorer of ``args.model`` (module docstring) and the kind chosen."""
    load_reward_scorer = reward_scorer_loader()

    model, kind = args.model, args.kind
    if model.endswith(".ckpt"):
        if not os.path.isfile(model):
            raise SystemExit(f"--model {model!r}: checkpoint not found")
        from lightning_robust.callbacks.benchmark import BenchmarkCallback
        from lightning_robust.modules import DPO, RewardModel

        found = _checkpoint_kind(model)
        module_class = RewardModel if found == "reward" else DPO
        module = module_class.load_from_checkpoint(
            model, map_location=args.device, weights_only=True
        )
        module.eval()
        kind = found if kind == "auto" else kind
        callback = BenchmarkCallback(
            [], scorer=kind, max_length=args.max_length, batch_size=args.batch_size, beta=args.beta
        )
        return callback.build_scorer(module), kind
    if kind == "auto":
        kind = (
            "reward"
            if model == "tiny" or _is_classifier(model)
            else ("dpo" if args.reference else "likelihood")
        )
    if kind == "reward":
        scorer = load_reward_scorer(
            model, max_length=args.max_length, batch_size=args.batch_size, device=args.device
        )
        return scorer, kind
    from lightning_robust.models.causal_lm import load_causal_lm, load_causal_tokenizer
    from lightning_robust.models.scorers import DPOImplicitRewardScorer

    tokenizer = load_causal_tokenizer(model)
    policy = load_causal_lm(model, tokenizer, seed=0).to(args.device).eval()
    reference = None
    if kind == "dpo" and args.reference:
        reference = load_causal_lm(args.reference, tokenizer, seed=0).to(args.device).eval()
    scorer = DPOImplicitRewardScorer(
        policy,
        tokenizer,
        reference=reference,
        beta=args.beta,
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    return scorer, kind


def results_table(results: dict[str, dict]) -> str:
    """A ``benchmark | metric | value | n`` text table of ``{benchmark: {metrics, details}}``."""
    from lightning_robust.callbacks.metrics_table import format_table

    rows = []
    for bench, result in results.items():
        counts = result["details"].get("counts", {})
        for key, value in result["metrics"].items():
            n = counts.get(key) if isinstance(counts, dict) else None
            if n is None and key in ("overall", "accuracy", "average"):
                n = result["details"].get(
                    "count", sum(counts.values()) if isinstance(counts, dict) else None
                )
            rows.append([bench, key, f"{value:.4f}", "" if n is None else str(n)])
    return format_table(["benchmark", "metric", "value", "n"], rows)


def main(argv=None) -> dict:
    """Run the command; returns ``{benchmark: {"metrics": ..., "details": ...}}``."""
    import torch

    from lightning_robust.callbacks.benchmark import plot_benchmark

    args = parse_args(argv)
    try:  # one table is the output: no per-file "Generating split" bars
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise SystemExit(
            f"--benchmarks: unknown {unknown or names}; choose from {', '.join(BENCHMARKS)}"
        )
    evaluators = build_evaluators(benchmark_sources(names, args.data, args.source), args.max_rows)
    scorer, kind = load_scorer(args)
    results = {}
    with torch.inference_mode():
        for evaluator in evaluators:
            metrics = evaluator.evaluate(scorer)
            results[evaluator.name] = {"metrics": metrics, "details": evaluator.details}
    output = args.output or os.path.join(
        "runs", "eval", os.path.basename(os.path.normpath(args.model)) or "model"
    )
    os.makedirs(output, exist_ok=True)
    record = {"model": args.model, "kind": kind, "benchmarks": results}
    with open(os.path.join(output, "benchmarks.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, default=str)
    if not args.no_plot:
        for name, result in results.items():
            if result["metrics"]:
                plot_benchmark(
                    os.path.join(output, f"{name}.png"),
                    name,
                    result["metrics"],
                    title=f"{name}: {args.model} ({kind})",
                )
    print(f"== {args.model} ({kind} scorer) ==")
    print(results_table(results))
    print(
        f"wrote {os.path.join(output, 'benchmarks.json')}"
        + ("" if args.no_plot else " and one PNG per benchmark")
    )
    return results


if __name__ == "__main__":
    main()
