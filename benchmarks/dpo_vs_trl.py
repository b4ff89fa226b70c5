"""Throughput of our DPO module vs TRL's DPOTrainer on the same tiny model, data and batch,
with a breakdown of which of our choices buys what.

    pip install --no-deps trl      # only for this benchmark
    python benchmarks/dpo_vs_trl.py [--steps 30] [--rounds 2] [--batch-size 8] [--no-breakdown]

Breakdown rows (each changes one choice of the default "ours (frozen copy)" run): reference
precomputed on disk; LM head on every position (``fast_head=False``) instead of response positions
only; separate chosen / rejected forwards (each trimmed to its own width) instead of one
concatenated ``[2B, L]`` forward; length-grouped batches (``group_by_length``). LoRA rows (r=8,
all linear layers) compare the three references: adapters disabled, a frozen copy, precomputed;
they train adapters only, so they are not like for like with TRL's full fine-tuning.

Both train the same random-init tiny Llama (hidden 128, 2 layers; identical initial weights) on
the same synthetic preference rows, batch 8, fp32, plain DPO with beta 0.1, a frozen reference copy
(full fine-tuning). Runs alternate in one invocation (single runs on this CPU spread 5-20 %).
Step time is measured between the starts of consecutive optimiser steps after ``--warmup``
steps, so model loading, tokenisation and reference precomputation are excluded (the one-off
precompute is reported separately). Peak memory: CUDA peak allocation on a GPU; on CPU
``ru_maxrss`` is process-wide and not per run, so it is not reported.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}


def rows(num_train: int):
    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.synthetic import SyntheticShiftConfig

    dm = PreferenceDataModule(
        train="synthetic",
        batch_size=8,
        max_length=128,
        append_eos=True,
        synthetic=SyntheticShiftConfig(num_train=num_train, num_eval=8, seed=0),
    )
    dm.setup("fit")
    ex = dm.datasets["train"].examples
    return dm, [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in ex]


class StepTimer:
    def __init__(self, warmup: int):
        self.warmup, self.stamps = warmup, []

    def stamp(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def steps_per_s(self) -> float:
        t = self.stamps[self.warmup :]
        return (len(t) - 1) / (t[-1] - t[0])


def separate_forwards_dpo(**kwargs):
    """Our DPO module with the concatenated forward replaced by one forward per side."""
    from lightning_robust.models.logprobs import sequence_logprobs
    from lightning_robust.modules import DPO
    from lightning_robust.modules.reference import reference_logps

    class SeparateForwards(DPO):
        def concatenated_logps(self, batch, split="train", embeddings=False):
            policy, ref = [], []
            for side in ("chosen", "rejected"):
                mask = batch[f"{side}_attention_mask"]
                width = int(mask.sum(1).max())  # each side padded to its own width, as TRL
                ids, mask = batch[f"{side}_input_ids"][:, :width], mask[:, :width]
                plen = batch[f"{side}_prompt_len"]
                fast = self.hparams.fast_head
                policy.append(sequence_logprobs(self.backbone, ids, mask, plen, fast_head=fast)[0])
                ref.append(
                    reference_logps(self.backbone, self.reference_model, ids, mask, plen, fast)
                )
            return torch.cat(policy), torch.cat(ref), None

    return SeparateForwards(**kwargs)


def run_ours(
    dm,
    steps,
    warmup,
    batch_size,
    reference,
    fast_head=True,
    separate=False,
    group_by_length=False,
    lora=None,
):
    from lightning import Callback, Trainer

    from lightning_robust.models.lora import LoraOptions
    from lightning_robust.modules import DPO

    timer = StepTimer(warmup)

    class Hook(Callback):
        def on_train_batch_start(self, *a):
            timer.stamp()

    dm.batch_size = batch_size
    dm.group_by_length = group_by_length
    options = dict(
        tiny_config=TINY,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        reference=reference,
        reference_cache_dir=tempfile.mkdtemp(),
        fast_head=fast_head,
        lora=LoraOptions(r=8, alpha=16, dropout=0.0) if lora else None,
    )
    model = separate_forwards_dpo(**options) if separate else DPO(**options)
    t0 = time.perf_counter()
    trainer = Trainer(
        accelerator="auto",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[Hook()],
        log_every_n_steps=10,
    )
    trainer.fit(model, datamodule=dm)
    return timer.steps_per_s(), time.perf_counter() - t0


def run_trl(data, steps, warmup, batch_size, precompute):
    from datasets import Dataset
    from transformers import LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from lightning_robust.models import tiny_llama_config, tiny_tokenizer

    timer = StepTimer(warmup)

    class Hook(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.stamp()

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id, **TINY))
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=1e-4,
        beta=0.1,
        report_to="none",
        logging_steps=10,
        save_strategy="no",
        max_length=128,
        precompute_ref_log_probs=precompute,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    t0 = time.perf_counter()
    ref = None if precompute else copy.deepcopy(model).eval()  # a frozen copy, as ours
    trainer = DPOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=tok,
        callbacks=[Hook()],
    )
    trainer.train()
    return timer.steps_per_s(), time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-breakdown", action="store_true", help="only the four headline runs")
    p.add_argument(
        "--threads", type=int, default=0,
        help="torch intra-op threads (0: torch's default); 1 on a CPU shared with other jobs",
    )
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dm, data = rows(num_train=max(64, a.batch_size * (a.steps + 2)))
    lengths = [len(r["chosen_input_ids"]) for r in dm.datasets["train"]]
    print(f"rows: chosen lengths {min(lengths)}..{max(lengths)} tokens (median {statistics.median(lengths)})")

    def ours(reference="frozen_copy", **kw):
        return lambda: run_ours(dm, a.steps, a.warmup, a.batch_size, reference, **kw)

    runs = {
        "ours (frozen copy)": ours(),
        "ours (precomputed ref)": ours("precomputed"),
        "TRL DPOTrainer": lambda: run_trl(data, a.steps, a.warmup, a.batch_size, False),
        "TRL (precompute_ref_log_probs)": lambda: run_trl(
            data, a.steps, a.warmup, a.batch_size, True
        ),
    }
    if not a.no_breakdown:
        runs.update(
            {
                "  - LM head on all positions": ours(fast_head=False),
                "  - separate chosen/rejected fwd": ours(separate=True),
                "  + length-grouped batches": ours(group_by_length=True),
                "LoRA, adapters disabled (ref)": ours("lora_disabled", lora=True),
                "LoRA, frozen copy (ref)": ours("frozen_copy", lora=True),
                "LoRA, precomputed (ref)": ours("precomputed", lora=True),
            }
        )
    results = {k: [] for k in runs}
    for _ in range(a.rounds):
        for name, fn in runs.items():  # interleaved
            results[name].append(fn()[0])
    base = statistics.median(results["TRL DPOTrainer"])
    ours_base = statistics.median(results["ours (frozen copy)"])
    print(
        f"\nDPO steps/s, tiny Llama {TINY}, batch {a.batch_size}, fp32, "
        f"{a.steps} steps ({a.warmup} warm-up), {a.rounds} interleaved rounds, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'} ({torch.get_num_threads()} threads)"
    )
    print(f"{'run':34s} {'steps/s (median)':>17s} {'vs TRL':>8s} {'vs ours':>8s}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:34s} {med:17.2f} {med / base:7.2f}x {med / ours_base:7.2f}x")


if __name__ == "__main__":
    main()
