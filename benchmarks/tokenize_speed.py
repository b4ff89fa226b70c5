"""Tokenisation speed of the hh-rlhf harmless-base rows (the offline data folder): the per-launch
path (``encode_examples``, what ``setup()`` ran on every rank at every launch) against the
datasets-native cached path (``encode_examples_cached``: ``Dataset.map`` once, then loaded).

    python benchmarks/tokenize_speed.py --data ../shared/data [--tokenizer minilm] [--repeats 3]

Each measurement runs in its own process (one torch/OMP thread), the modes interleaved; the
figure is pairs per second of wall time (``num_proc=2`` spends CPU in child processes, so
process CPU time would undercount it; CPU seconds of the parent are printed beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODES = ("per_launch", "cached_miss_proc1", "cached_miss_proc2", "cached_hit")


def measure(mode: str, data: str, tokenizer_name: str, max_length: int, cache: str) -> dict:
    from lightning_robust.data.reading import adapt_rows
    from lightning_robust.data.schemas import get_schema
    from lightning_robust.data.source import DataSource, load_rows
    from lightning_robust.data.tokenize import encode_examples, encode_examples_cached
    from lightning_robust.models import load_tokenizer

    source = DataSource(
        path=os.path.join(data, "hh_rlhf_harmless_base/harmless_base_test_shared.jsonl"),
        schema="hh_rlhf",
    )
    rows = load_rows(source)
    schema = get_schema(source.schema, rows.column_names, rows[0])
    examples = adapt_rows(rows, schema, None, "skip", source.describe()).examples
    tokenizer = load_tokenizer(tokenizer_name)
    if mode == "cached_hit":  # fill the cache first, outside the timing
        encode_examples_cached(examples, tokenizer, max_length, cache_dir=cache)
    wall, cpu = time.perf_counter(), time.process_time()
    if mode == "per_launch":
        out = encode_examples(examples, tokenizer, max_length)
    else:
        num_proc = 2 if mode == "cached_miss_proc2" else None
        out = encode_examples_cached(
            examples, tokenizer, max_length, cache_dir=cache, num_proc=num_proc
        )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "mode": mode,
        "pairs": len(out),
        "wall_s": wall,
        "cpu_s": cpu,
        "pairs_per_s": len(out) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data"))
    parser.add_argument("--tokenizer", default="minilm")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.data, args.tokenizer, args.max_length, args.cache)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            with tempfile.TemporaryDirectory() as cache:  # every miss is a real miss
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        mode,
                        "--data",
                        args.data,
                        "--tokenizer",
                        args.tokenizer,
                        "--max-length",
                        str(args.max_length),
                        "--cache",
                        cache,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                )
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"tokeniser={args.tokenizer} max_length={args.max_length} rows=hh-rlhf harmless-base "
        f"({results[MODES[0]][0]['pairs']} pairs); OMP_NUM_THREADS=1; {args.repeats} interleaved "
        f"runs per mode, one process each; {os.cpu_count()} CPUs shared with other jobs (loaded machine)"
    )
    print(
        f"{'mode':<20} {'pairs/s (median)':>16} {'wall s (median)':>16} {'parent cpu s':>13}  all pairs/s"
    )
    for mode, runs in results.items():
        rates = sorted(r["pairs_per_s"] for r in runs)
        walls = sorted(r["wall_s"] for r in runs)
        cpus = sorted(r["cpu_s"] for r in runs)
        mid = len(runs) // 2
        print(
            f"{mode:<20} {rates[mid]:>16.0f} {walls[mid]:>16.3f} {cpus[mid]:>13.3f}  "
            + ", ".join(f"{r:.0f}" for r in rates)
        )


if __name__ == "__main__":
    main()
