"""Command: score preference pairs with reward models for d-/dp-/e-DPO (ALGORITHMS.md §3.4).

    python -m lightning_robust.annotate --data pairs.jsonl \\
        --reward-model runs/rm/last.ckpt --reward-model my-hf-rm-dir --output scored.jsonl

Writes the canonical rows plus ``chosen_scores`` / ``rejected_scores`` (one entry per
``--reward-model``, in order); a second run with the same inputs does nothing (see
:mod:`lightning_robust.data.annotate`).
"""

from __future__ import annotations

import argparse
import logging

from lightning_robust.data.annotate import annotate_pairs
from lightning_robust.data.source import DataSource


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lightning_robust.annotate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="hub id, local .json/.jsonl/.parquet file or synthetic[:split]")
    parser.add_argument("--split", default="train", help="split of a hub dataset or directory")
    parser.add_argument("--name", default=None, help="hub configuration name")
    parser.add_argument("--data-dir", default=None, help="hub sub-folder (e.g. harmless-base)")
    parser.add_argument("--schema", default="auto", help="data schema (default: detected)")
    parser.add_argument(
        "--reward-model", action="append", required=True, dest="reward_models",
        help="HF sequence-classifier dir / hub id or RewardModel .ckpt; repeat for an ensemble (e-DPO)",
    )
    parser.add_argument("--output", required=True, help=".jsonl or .parquet file to write")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    parser.add_argument("--group-column", default=None)
    parser.add_argument("--force", action="store_true", help="rescore even when the cache matches")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = args.data
    if not args.data.startswith("synthetic"):
        source = DataSource(
            path=args.data, name=args.name, split=args.split, schema=args.schema, data_dir=args.data_dir
        )
    path = annotate_pairs(
        source,
        args.reward_models,
        args.output,
        batch_size=args.batch_size,
        max_length=args.max_length,
        on_bad_row=args.on_bad_row,
        max_rows=args.max_rows,
        group_column=args.group_column,
        force=args.force,
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
