#!/usr/bin/env python
"""GPU readiness check: a few training steps of every method family on one GPU, one JSON.

Runs (each a few optimiser steps of a random-init Llama with a real architecture's shape --
SmolLM2-135M's by default: hidden 576, 30 layers, 9 heads / 3 KV heads, MLP 1536 -- on the
built-in synthetic data, so nothing is downloaded):

    reward      RewardModel, TV ball                      bf16-mixed, SDPA (flash-attn when importable)
    dpo         DPO, frozen-copy reference
    dr_dpo      DPO + TV ball (S000's DR-DPO)
    wdpo        DPO + WDPO gradient penalty (double backward: SDPA)
    drro_grpo   GRPO with the soft DRRO bonus and the dynamic budget (HF generate rollouts)
    zero2       DPO under DeepSpeed ZeRO-2                 (skipped without deepspeed)
    zero3       RewardModel under DeepSpeed ZeRO-3         (skipped without deepspeed)

For each it prints and records steps/s, tokens/s (attention-mask tokens of the training batches,
after one warm-up step; GRPO adds the generated tokens), peak GPU memory and the attention kernel,
and writes everything to one JSON (``--output``). A failing run is recorded with its error and
the exit status is 1. The project need not be installed: the repository this file lives in is
put on ``sys.path``; only torch, lightning, transformers, peft and torchmetrics are needed
(numpy and tokenizers come with them).

    python scripts/gpu_check.py --output gpu_check.json          # on a GPU (<= 8 minutes)
    python scripts/gpu_check.py --cpu-smoke --output smoke.json  # a few seconds, any machine
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RUNS = ("reward", "dpo", "dr_dpo", "wdpo", "drro_grpo", "zero2", "zero3")

#: SmolLM2-135M's shape (the vocabulary is the built-in tokenizer's)
REAL_ARCH = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
)
SMOKE_ARCH = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="gpu_check.json", help="JSON file to write")
    p.add_argument(
        "--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per run (default 6; smoke 2)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="pairs / prompts per step (default 8; smoke 2)"
    )
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny model on CPU in fp32: checks the wiring in seconds",
    )
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run the full-size check on CPU when no GPU is found",
    )
    args = p.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        p.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    args.runs = runs
    for name in ("steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.steps is None:
        args.steps = 2 if args.cpu_smoke else 6
    if args.batch_size is None:
        args.batch_size = 2 if args.cpu_smoke else 8
    if args.max_length < 16:
        p.error(f"--max-length must be >= 16, got {args.max_length}")
    return args


def environment(cuda: bool) -> dict:
    import lightning
    import torch
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
        "cuda": cuda,
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "deepspeed": importlib.util.find_spec("deepspeed") is not None,
    }
    if cuda:
        env["device"] = torch.cuda.get_device_name(0)
        env["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return env


def _counter_callback():
    import lightning as L
    import torch

    class Throughput(L.Callback):
        """Tokens and wall time of the training batches after the first (warm-up) one."""

        def __init__(self):
            self.tokens = 0
            self.steps = 0
            self.start = None
            self.elapsed = 0.0
            self.extra_per_batch = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx < 1:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.start
            self.steps += 1
            self.tokens += (
                sum(
                    int(v.sum())
                    for k, v in batch.items()
                    if k.endswith("attention_mask") and hasattr(v, "sum")
                )
                + self.extra_per_batch
            )

    return Throughput()


def build_run(name: str, args, arch: dict, attn: str, dtype_note: str):
    """``(module, datamodule, strategy)`` of one run."""
    from lightning_robust.data import PreferenceDataModule, PromptDataModule
    from lightning_robust.data.synthetic import SyntheticShiftConfig
    from lightning_robust.data.synthetic_prompts import SyntheticPromptConfig
    from lightning_robust.modules import DPO, GRPO, RewardModel
    from lightning_robust.weighting import TVBall

    n = args.batch_size * (args.steps + 1)
    tiny = dict(arch, attn_implementation=attn)
    pref = PreferenceDataModule(
        batch_size=args.batch_size,
        max_length=args.max_length,
        synthetic=SyntheticShiftConfig(num_train=n, num_eval=args.batch_size, seed=0),
    )
    common = dict(tiny_config=tiny, learning_rate=1e-5, warmup_ratio=0.0, lr_schedule="constant")
    strategy = "auto"
    if name == "reward":
        module = RewardModel(weighting=TVBall(rho=0.4), **common)
    elif name == "dpo":
        module = DPO(reference="frozen_copy", **common)
    elif name == "dr_dpo":
        module = DPO(reference="frozen_copy", weighting=TVBall(rho=0.4), **common)
    elif name == "wdpo":
        module = DPO(
            reference="frozen_copy",
            wdpo_rho=0.01,
            **dict(common, tiny_config=dict(arch, attn_implementation="sdpa")),
            attn_implementation="sdpa",
        )
    elif name == "drro_grpo":
        module = GRPO(
            shaping="drro_soft",
            budget="dynamic",
            bonus_form="weight",
            num_generations=4,
            max_new_tokens=32,
            reward_model="synthetic:proxy",
            gold_reward_model="synthetic:gold",
            **common,
        )
        pref = PromptDataModule(
            batch_size=args.batch_size,
            max_prompt_length=min(args.max_length, 256),
            synthetic=SyntheticPromptConfig(num_train=n, num_val=0, seed=0),
        )
    elif name in ("zero2", "zero3"):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        stage = 2 if name == "zero2" else 3
        strategy = DeepSpeedStrategy(stage=stage)
        module = DPO(reference="frozen_copy", **common) if stage == 2 else RewardModel(**common)
    else:  # pragma: no cover - parse_args rejects it
        raise ValueError(name)
    return module, pref, strategy


def run_one(name: str, args, cuda: bool, arch: dict) -> dict:
    import lightning as L
    import torch

    attn = "flash_attention_2" if (cuda and importlib.util.find_spec("flash_attn")) else "sdpa"
    record = {"run": name, "attn_requested": "sdpa" if name == "wdpo" else attn}
    if name in ("zero2", "zero3"):
        if not cuda:
            return {**record, "status": "skipped", "reason": "DeepSpeed needs a CUDA GPU"}
        if importlib.util.find_spec("deepspeed") is None:
            return {
                **record,
                "status": "skipped",
                "reason": "deepspeed is not importable (install its wheel)",
            }
    precision = "bf16-mixed" if cuda else "32-true"
    L.seed_everything(0, verbose=False)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    module, datamodule, strategy = build_run(name, args, arch, attn, precision)
    counter = _counter_callback()
    if name == "drro_grpo":
        counter.extra_per_batch = (
            args.batch_size * 4 * 32
        )  # at most G x max_new_tokens generated per prompt
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision=precision,
        strategy=strategy,
        max_steps=args.steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[counter],
        default_root_dir=os.path.join(
            os.path.dirname(os.path.abspath(args.output)) or ".", "gpu_check_runs", name
        ),
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    backbone = getattr(module, "backbone", None)
    config = getattr(backbone, "config", None)
    params = sum(p.numel() for p in backbone.parameters()) if backbone is not None else None
    record.update(
        status="ok",
        precision=precision,
        strategy=type(trainer.strategy).__name__,
        attn_used=getattr(config, "_attn_implementation", None),
        parameters=params,
        steps_timed=counter.steps,
        seconds_timed=round(counter.elapsed, 4),
        wall_s=round(time.perf_counter() - t0, 2),
        steps_per_s=round(counter.steps / counter.elapsed, 3) if counter.elapsed else None,
        tokens_per_s=round(counter.tokens / counter.elapsed, 1) if counter.elapsed else None,
        peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        final_loss=float(trainer.callback_metrics["train/loss"])
        if "train/loss" in trainer.callback_metrics
        else None,
    )
    if not cuda:
        import resource

        record["peak_rss_gib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3
        )
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke and not args.allow_cpu:
        print(
            "gpu_check: no CUDA GPU found; use --cpu-smoke (tiny model) or --allow-cpu",
            file=sys.stderr,
        )
        return 2
    if not cuda:
        torch.set_num_threads(
            max(1, min(torch.get_num_threads(), int(os.environ.get("OMP_NUM_THREADS", "1"))))
        )
    arch = SMOKE_ARCH if args.cpu_smoke else REAL_ARCH
    report = {
        "mode": "cpu-smoke" if args.cpu_smoke else ("gpu" if cuda else "cpu"),
        "arch": arch,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "environment": environment(cuda),
        "runs": [],
    }
    start = time.perf_counter()
    for name in args.runs:
        try:
            record = run_one(name, args, cuda, arch)
        except Exception as err:  # record every failure and go on with the next run
            record = {
                "run": name,
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=8),
            }
        report["runs"].append(record)
        shown = {
            k: record.get(k)
            for k in (
                "status",
                "tokens_per_s",
                "steps_per_s",
                "peak_memory_gib",
                "attn_used",
                "reason",
                "error",
            )
            if record.get(k) is not None
        }
        print(f"gpu_check {name:10s} {json.dumps(shown)}", flush=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"gpu_check: wrote {args.output} in {report['total_s']} s")
    return 1 if any(r["status"] == "failed" for r in report["runs"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
