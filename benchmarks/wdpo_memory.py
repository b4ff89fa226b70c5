"""WDPO vs DPO at the same micro-batch: step time and peak-memory increase over the loaded model.

    python benchmarks/wdpo_memory.py [--models tiny smollm2] [--batch-sizes 2 8] [--steps 6]

Three runs per setting: DPO, WDPO with the chunked double backward (the default,
``speed.wdpo_chunk_pairs``, default 2) and WDPO over the whole batch at once (``wdpo_chunk_pairs=None``).

Each (model, method, micro-batch) runs in a fresh subprocess (so one run's allocations cannot
hide another's peak): it builds the DPO module (frozen-copy reference for the tiny model, LoRA
r=8 with adapters disabled for SmolLM2-135M), an AdamW optimiser and one fixed batch of synthetic
pairs padded to a width multiple of ``--pad-to`` (64: activations, not weights, dominate the
increase), measures from the loaded model on (no step run yet), runs ``--warmup`` steps, then
``--steps`` timed steps (forward, backward, optimiser step).

Memory method, printed with the results:
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the loaded
  model, minus the allocation at that point;
- CPU: the peak resident set size over the training steps minus the RSS of the loaded model:
  ``VmHWM`` of ``/proc/self/status`` after resetting it (``echo 5 > /proc/self/clear_refs``) when
  the kernel allows it, else the maximum of ``VmRSS`` sampled every millisecond by a thread.
  CPU RSS includes allocator caching, so small differences are noise.
Step time is the median over the timed steps. WDPO runs the policy on ``inputs_embeds`` with the
math SDPA kernel (double backward) and ``create_graph=True`` for the embedding gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class CpuPeak:
    """Peak RSS from now on: VmHWM after a reset when possible, else a sampling thread."""

    def __init__(self):
        self.base = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM after clear_refs reset"
            self._thread = None
        except OSError:
            self.method = "max VmRSS sampled every 1 ms"
            self._max, self._stop = self.base, False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self):
        while not self._stop:
            self._max = max(self._max, _status_kb("VmRSS"))
            time.sleep(0.001)

    def increase_mb(self) -> float:
        if self._thread is None:
            peak = _status_kb("VmHWM")
        else:
            self._stop = True
            self._thread.join()
            peak = self._max
        return (peak - self.base) / 1024


def _batch(model, batch_size: int, max_length: int, pad_to: int):
    from lightning_robust.data import PreferenceCollator, encode_examples
    from lightning_robust.data.example import PreferenceExample
    from lightning_robust.data.synthetic import SyntheticShiftConfig, generate_split

    rows = generate_split(
        "train", SyntheticShiftConfig(num_train=64, seed=0, length_pair_share=0.0)
    )
    examples = [
        PreferenceExample(r["prompt"], r["chosen"], r["rejected"]) for r in rows[:batch_size]
    ]
    encoded = encode_examples(examples, model.tokenizer, max_length, append_eos=True)
    features = [
        {
            "chosen_input_ids": e.chosen_input_ids,
            "rejected_input_ids": e.rejected_input_ids,
            "chosen_prompt_len": e.chosen_prompt_len,
            "rejected_prompt_len": e.rejected_prompt_len,
            "group": -1,
            "index": i,
        }
        for i, e in enumerate(encoded)
    ]
    return PreferenceCollator(model.tokenizer.pad_token_id, pad_to_multiple_of=pad_to)(features)


def child(args) -> dict:
    import torch

    from lightning_robust.models.lora import LoraOptions
    from lightning_robust.modules import DPO

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    backbone = {"gradient_checkpointing": args.gradient_checkpointing}
    options = dict(
        wdpo_rho=0.01 if args.method.startswith("wdpo") else 0.0,
        optimizer={"learning_rate": 1e-5},
    )
    if args.model == "tiny":
        backbone.update(name_or_path="tiny", tiny_config=TINY)
    else:
        backbone.update(name_or_path=args.model, attn_implementation="sdpa")
        options.update(lora=LoraOptions(r=8, alpha=16, dropout=0.0))
    model = DPO(backbone=backbone, **options)
    # "wdpo": the default chunked double backward (speed.wdpo_chunk_pairs pairs per chunk);
    # "wdpo_plain": the whole batch's second-order graph at once (the path before issue 14)
    if args.method == "wdpo_plain":
        model.wdpo_chunk_pairs = None
    model.configure_model()
    model.log = lambda *a, **k: None
    model.log_dict = lambda *a, **k: None
    model.to(device).train()
    batch = {
        k: v.to(device)
        for k, v in _batch(model, args.batch_size, args.max_length, args.pad_to).items()
    }
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step():
        loss = model.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    # the loaded model (before any step): the increase includes gradients and optimiser state,
    # the same for both methods, plus each method's activations and autograd graphs
    if cuda:
        torch.cuda.synchronize()
        loaded = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        peak = CpuPeak()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if cuda:
        increase = (torch.cuda.max_memory_allocated() - loaded) / 2**20
        method = "torch.cuda.max_memory_allocated - allocated at the loaded model"
    else:
        increase = peak.increase_mb()
        method = peak.method + " minus VmRSS of the loaded model"
    width = int(batch["chosen_input_ids"].shape[1])
    return {
        "step_s": statistics.median(times),
        "increase_mb": increase,
        "method": method,
        "width": width,
        "threads": torch.get_num_threads(),
    }


def run(model: str, method: str, batch_size: int, a) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        model,
        "--method",
        method,
        "--batch-size",
        str(batch_size),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        "--max-length",
        str(a.max_length),
        "--pad-to",
        str(a.pad_to),
        "--threads",
        str(a.threads),
    ] + (["--gradient-checkpointing"] if a.gradient_checkpointing else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="tiny")
    p.add_argument("--method", default="dpo")
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 8])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument(
        "--pad-to", type=int, default=64, help="pad the batch width to a multiple of this"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="activation checkpointing (DPO only: the module refuses it with WDPO)",
    )
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return
    rows = []
    for model in a.models:
        for bs in a.batch_sizes:
            res = {m: run(model, m, bs, a) for m in ("dpo", "wdpo", "wdpo_plain")}  # interleaved
            rows.append((model, bs, res))
            d = res["dpo"]
            for name, label in (
                ("wdpo", "WDPO chunked (2 pairs)"),
                ("wdpo_plain", "WDPO whole batch"),
            ):
                w = res[name]
                print(
                    f"{model:8s} micro-batch {bs:2d} (width {d['width']}): "
                    f"DPO {d['step_s'] * 1e3:8.1f} ms/step +{d['increase_mb']:8.1f} MB | "
                    f"{label} {w['step_s'] * 1e3:8.1f} ms/step +{w['increase_mb']:8.1f} MB | "
                    f"time x{w['step_s'] / d['step_s']:.2f}, peak increase "
                    f"x{w['increase_mb'] / max(d['increase_mb'], 1e-9):.2f}",
                    flush=True,
                )
    print(f"memory: {rows[0][2]['dpo']['method']}; threads {rows[0][2]['dpo']['threads']}")


if __name__ == "__main__":
    main()
