"""Throughput of our RewardModel vs TRL's RewardTrainer on variable-length hh-rlhf rows.

    pip install --no-deps trl      # only for this benchmark
    python benchmarks/reward_vs_trl.py [--model tiny|minilm|both] [--rows 640] [--batch-size 16]
                                       [--max-length 512] [--epochs 2] [--rounds 2] [--threads K]
                                       [--runs ours,ours_random,ours_ckpt,trl,trl_nockpt,...]

Same backbone with identical initial weights (the tiny random-init Llama sequence classifier,
hidden 128 / 2 layers, the size of docs/ENVIRONMENT.md's speed reference; ``--model minilm`` the
offline all-MiniLM-L6-v2 encoder), the same token ids (the hh-rlhf harmless-base rows of
``../shared/data`` tokenised once by ``PreferenceDataModule`` and handed to TRL pre-tokenised, so
neither side truncates or filters differently), the same batch size, max length, AdamW with
lr 1e-5 and no weight decay, fp32 on CPU (``bf16=False``: RewardConfig defaults to bf16).
Ours runs through a plain Lightning ``Trainer`` as a user runs it; TRL through
``RewardTrainer.train()``. RewardConfig turns gradient checkpointing ON by default (less
activation memory, one more forward per step), so TRL runs both as configured by default and
without it (like for like with ours), and ours runs with it too (equal-memory comparison). Every run is a fresh subprocess; runs alternate in one invocation and
the median over rounds is reported (single runs on this CPU spread 5-20 %).

Measured per run, over the LAST epoch only (the first warms up allocator and optimiser state):
steps/s, tokens/s (non-pad tokens of chosen + rejected; every epoch sees every row once, so both
sides process the same tokens), tokens per CPU-second of the process (``time.process_time``: on a
shared machine the wall clock also counts time spent waiting for a core; with ``--threads 1`` the
CPU time is the work itself), the padding share of the model's input cells (counted by a
wrapper around each side's collator), and memory: the process's peak RSS (``ru_maxrss``) and the
peak RSS increase during training over the RSS at the start of training, sampled by a thread
every 5 ms from ``/proc/self/statm``.

Measured 2026-11-25 on the shared 2-core CPU (load average 15-20 from other jobs, so compare the
tok/CPU-s column; wall-clock figures swing up to 3x between rounds), TRL 1.16, torch 2.13:

    python benchmarks/reward_vs_trl.py --rows 256 --epochs 2 --rounds 2 --max-length 512 --threads 1
    (tiny Llama, 252 rows, batch 16; medians of 2 rounds)
    run                        tok/CPU-s  vs TRL  pad share  train +RSS MB
    ours, length-grouped           14047   1.72x      26.1%          703.8
    ours, random order             10201   1.25x      44.4%          701.9
    ours, grouped + grad ckpt      11256   1.38x      26.1%          592.5
    TRL defaults (grad ckpt)        8174   1.00x      44.1%          525.9
    TRL, no grad ckpt               9227   1.13x      44.1%          605.4
    TRL, no ckpt, grouped          13822   1.69x      24.8%          598.4

    python benchmarks/reward_vs_trl.py --model minilm --rows 128 --batch-size 8 --epochs 2 \
        --rounds 1 --max-length 256 --threads 1 --runs ours,ours_ckpt,trl,trl_nockpt
    ours, length-grouped             958   1.86x      25.5%         1407.7
    ours, grouped + grad ckpt        752   1.46x      25.5%         1142.3
    TRL defaults (grad ckpt)         514   1.00x      45.5%          896.4
    TRL, no grad ckpt                666   1.29x      45.5%         1158.6

Reading: the throughput gain is length grouping (padding 44-46 % -> 25-26 %); with equal padding
and equal checkpointing the two trainers do the same work (TRL with its own group_by_length
matches ours). TRL turns gradient checkpointing on by default: against that, ours with
checkpointing is 1.4x (tiny: 1.38x and 1.42x in two invocations, training RSS 593 and 499 MB vs
TRL's 526 and 527 MB: equal within the run-to-run spread of RSS), but on MiniLM our training RSS
is 21-27 % higher than TRL's at equal settings (cause not found yet).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

HH_RLHF = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "hh_rlhf_harmless_base"
    / "harmless_base_test_shared.jsonl"
)
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}
LEARNING_RATE = 1e-5
# name -> (label, group_by_length, gradient checkpointing); "trl" is TRL as a user runs it
RUNS = {
    "ours": ("ours, length-grouped", True, False),
    "ours_random": ("ours, random order", False, False),
    "ours_ckpt": ("ours, grouped + grad ckpt", True, True),
    "trl": ("TRL defaults (grad ckpt)", False, True),
    "trl_nockpt": ("TRL, no grad ckpt", False, False),
    "trl_nockpt_grouped": ("TRL, no ckpt, grouped", True, False),
    "ours_tworows": ("ours, prompt in both rows", False, False),
    "ours_compile": ("ours, speed.compile (opt-in)", False, False),
}
FIXED_RUNS = "ours_random,ours_tworows,trl,trl_nockpt"


# ---------------------------------------------------------------------- measurement helpers
class RssSampler:
    """Peak resident set size of this process, sampled by a daemon thread (bytes)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self.peak, self.start, self._stop = interval_s, 0, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


class StepClock:
    """Wall-clock and process CPU times at the begin and end of every optimiser step."""

    def __init__(self):
        self.begins: list[tuple[float, float]] = []
        self.ends: list[tuple[float, float]] = []

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def begin(self):
        self.begins.append(self.now())

    def end(self):
        self.ends.append(self.now())

    def first_epoch_cpu(self, steps_per_epoch: int) -> float:
        """CPU seconds of this process over the first ``steps_per_epoch`` steps (compilation,
        when there is one, falls here)."""
        return self.ends[steps_per_epoch - 1][1] - self.begins[0][1]

    def last_epoch(self, steps_per_epoch: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of the last ``steps_per_epoch`` steps."""
        (w1, c1), (w0, c0) = self.ends[-1], self.begins[-steps_per_epoch]
        return w1 - w0, c1 - c0


class PadCounter:
    """Wraps a collator and counts the model's input cells and the non-pad ones."""

    def __init__(self, collate, ids_keys, mask_keys):
        self.collate, self.ids_keys, self.mask_keys = collate, ids_keys, mask_keys
        self.cells = self.real = 0

    def __call__(self, features):
        batch = self.collate(features)
        self.cells += sum(batch[k].numel() for k in self.ids_keys)
        self.real += sum(int(batch[k].sum()) for k in self.mask_keys)
        return batch


# ---------------------------------------------------------------------- data and model
def fixed_rows_file(rows: int) -> str:
    """The anchor's fixed-length rows (64 prompt + 64 answer tokens with EOS, tiny tokenizer; the
    same generator as benchmarks/dpo_vs_trl.py), written once per process to a temp file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dpo_vs_trl import anchor_rows

    path = os.path.join(tempfile.mkdtemp(), "fixed.jsonl")
    with open(path, "w") as f:
        for row in anchor_rows(rows):
            f.write(json.dumps(row) + "\n")
    return path


def datamodule(
    model: str, rows: int, batch_size: int, max_length: int, group_by_length: bool, fixed: int = 0
):
    from lightning_robust.data import PreferenceDataModule

    source = (
        {"path": fixed_rows_file(fixed)} if fixed else {"path": str(HH_RLHF), "schema": "hh_rlhf"}
    )
    dm = PreferenceDataModule(
        train=source,
        chat_template=False if fixed else None,
        tokenizer=model,
        max_length=max_length,
        batch_size=batch_size,
        on_bad_row="skip",
        val_fraction=0.0,
        max_rows=rows,
        append_eos=model == "tiny",  # causal backbone: score the eos position (TRL adds eos too)
        group_by_length=group_by_length,
        seed=0,
    )
    dm.setup("fit")
    return dm


def backbone(model: str, tokenizer):
    from lightning_robust.models import load_sequence_classifier

    return load_sequence_classifier(
        model, tokenizer, tiny_config=TINY if model == "tiny" else None, seed=0
    )


# ---------------------------------------------------------------------- the two sides
def run_ours(a, group_by_length: bool, checkpointing: bool) -> dict:
    from lightning import Callback, Trainer

    from lightning_robust.modules import RewardModel

    dm = datamodule(a.model, a.rows, a.batch_size, a.max_length, group_by_length, a.fixed)
    counter = PadCounter(
        dm.collator,
        ("chosen_input_ids", "rejected_input_ids"),
        ("chosen_attention_mask", "rejected_attention_mask"),
    )
    type(dm).collator = property(lambda self: counter)  # count what the model sees
    clock = StepClock()

    class Clock(Callback):
        def on_train_batch_start(self, *args):
            clock.begin()

        def on_train_batch_end(self, *args):
            clock.end()

    module = RewardModel(
        backbone={
            "name_or_path": a.model,
            "tiny_config": TINY if a.model == "tiny" else None,
            "init_seed": 0,
            "gradient_checkpointing": checkpointing,
        },
        optimizer={"learning_rate": LEARNING_RATE, "warmup_ratio": 0.0, "lr_schedule": "linear"},
        # the opt-in speed.compile option: the decoder stack compiled in place (inductor); the
        # compilation falls in epoch 1 (not timed; its CPU time is the "epoch 1" column)
        speed={"compile": a.worker == "ours_compile"},
    )
    module.configure_model()  # load the backbone before the memory baseline, as TRL gets a built model
    if a.worker == "ours_tworows":
        module.share_prompt = False  # chosen and rejected as two rows, each with the prompt
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_epochs=a.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        callbacks=[Clock()],
    )
    with RssSampler() as rss:
        trainer.fit(module, datamodule=dm)
    return summarize(a, dm.datasets["train"], clock, counter, rss)


def run_trl(a, group_by_length: bool, checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    dm = datamodule(
        a.model, a.rows, a.batch_size, a.max_length, group_by_length=False, fixed=a.fixed
    )
    train = dm.datasets["train"]
    data = Dataset.from_dict(
        {
            "chosen_ids": [p.chosen_input_ids for p in train.pairs],
            "rejected_ids": [p.rejected_input_ids for p in train.pairs],
            "length": train.lengths,
        }
    )
    tokenizer = dm.tokenizer
    model = backbone(a.model, tokenizer)
    counter = PadCounter(
        DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id),
        ("input_ids",),
        ("attention_mask",),
    )
    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            clock.begin()

        def on_step_end(self, *args, **kwargs):
            clock.end()

    args = RewardConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=a.batch_size,
        num_train_epochs=a.epochs,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        warmup_steps=0,
        lr_scheduler_type="linear",
        max_length=a.max_length,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=checkpointing,  # RewardConfig's default is True
        report_to="none",
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        remove_unused_columns=False,  # keep 'length' for the length-grouped sampler
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=counter,
        callbacks=[Clock()],
    )
    if len(trainer.train_dataset) != len(train):
        raise RuntimeError("TRL filtered rows: the two sides would not see the same data")
    with RssSampler() as rss:
        trainer.train()
    return summarize(a, train, clock, counter, rss)


def summarize(a, train, clock: StepClock, counter: PadCounter, rss: RssSampler) -> dict:
    steps_per_epoch = -(-len(train) // a.batch_size)
    if len(clock.ends) != steps_per_epoch * a.epochs:
        raise RuntimeError(f"expected {steps_per_epoch * a.epochs} steps, timed {len(clock.ends)}")
    seconds, cpu_seconds = clock.last_epoch(steps_per_epoch)
    tokens = sum(len(p.chosen_input_ids) + len(p.rejected_input_ids) for p in train.pairs)
    return {
        "rows": len(train),
        "steps_per_s": steps_per_epoch / seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "pad_share": 1.0 - counter.real / counter.cells,
        "first_epoch_cpu_s": clock.first_epoch_cpu(steps_per_epoch),
        "last_epoch_cpu_s": cpu_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_rss_increase_mb": (rss.peak - rss.start) / 2**20,
    }


# ---------------------------------------------------------------------- driver
def worker(a) -> None:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    _, grouped, checkpointing = RUNS[a.worker]
    run = run_ours if a.worker.startswith("ours") else run_trl
    print("RESULT " + json.dumps(run(a, grouped, checkpointing)), flush=True)


def spawn(a, run: str, model: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        run,
        "--model",
        model,
        "--rows",
        str(a.rows),
        "--batch-size",
        str(a.batch_size),
        "--max-length",
        str(a.max_length),
        "--epochs",
        str(a.epochs),
        "--threads",
        str(a.threads),
        "--fixed",
        str(a.fixed),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{run} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def report(a, model: str, results: dict[str, list[dict]]) -> None:
    def med(run, key):
        return statistics.median(r[key] for r in results[run])

    base = med("trl", "tokens_per_s")
    rows = next(iter(results.values()))[0]["rows"]
    print(
        f"\nReward model vs TRL 1.16 RewardTrainer: backbone {model}"
        f"{' ' + str(TINY) if model == 'tiny' else ''}, {rows} "
        f"{'fixed-length (64+64 token) rows' if a.fixed else 'hh-rlhf harmless-base rows'}, batch {a.batch_size}, "
        f"max_length {a.max_length}, fp32 CPU ({os.cpu_count()} cores, "
        f"{a.threads or 'default'} torch threads), last of {a.epochs} epochs timed, "
        f"median of {a.rounds} interleaved rounds"
    )
    base_cpu = med("trl", "tokens_per_cpu_s")
    print(
        f"{'run':28s} {'steps/s':>8s} {'tokens/s':>9s} {'vs TRL':>7s} {'tok/CPU-s':>9s} {'vs TRL':>7s} "
        f"{'pad share':>9s} {'peak RSS MB':>11s} {'train +RSS MB':>13s} {'CPU-s epoch 1 / last':>20s}"
    )
    for run, (label, _, _) in RUNS.items():
        if run not in results:
            continue
        print(
            f"{label:28s} {med(run, 'steps_per_s'):8.2f} {med(run, 'tokens_per_s'):9.0f} "
            f"{med(run, 'tokens_per_s') / base:6.2f}x {med(run, 'tokens_per_cpu_s'):9.0f} "
            f"{med(run, 'tokens_per_cpu_s') / base_cpu:6.2f}x {med(run, 'pad_share'):9.1%} "
            f"{med(run, 'peak_rss_mb'):11.0f} {med(run, 'train_rss_increase_mb'):13.1f} "
            f"{med(run, 'first_epoch_cpu_s'):10.1f} / {med(run, 'last_epoch_cpu_s'):7.1f}"
        )
    print(
        "tokens = non-pad tokens of chosen + rejected; tok/CPU-s = the same tokens over the process's CPU "
        "time (user + sys), robust to other load on the machine when each run uses one thread"
    )
    print(
        "memory: peak RSS = ru_maxrss of the run's own subprocess; train +RSS = peak RSS during fit/train "
        "minus RSS at its start, sampled every 5 ms by a thread"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=["tiny", "minilm", "both"])
    p.add_argument(
        "--rows", type=int, default=640, help="hh-rlhf rows read (before bad rows are skipped)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads per run (0: torch's default)"
    )
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {list(RUNS)}")
    p.add_argument(
        "--fixed",
        type=int,
        default=0,
        help="N fixed-length rows (64 prompt + 64 answer tokens, the DPO anchor's) instead of hh-rlhf; "
        f"default runs then {FIXED_RUNS}",
    )
    p.add_argument("--worker", choices=list(RUNS), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if a.fixed and a.runs == ",".join(RUNS):
        a.runs = FIXED_RUNS
    if not a.fixed and not HH_RLHF.exists():
        sys.exit(f"needs {HH_RLHF} (../shared/data beside the repository)")
    runs = [r for r in a.runs.split(",") if r]
    if "trl" not in runs:
        sys.exit("--runs must include 'trl' (the baseline of the ratio)")
    print("command: python benchmarks/reward_vs_trl.py " + " ".join(sys.argv[1:]))
    for model in ["tiny", "minilm"] if a.model == "both" else [a.model]:
        results: dict[str, list[dict]] = {r: [] for r in runs}
        for k in range(a.rounds):
            for run in runs:  # interleaved
                results[run].append(spawn(a, run, model))
                r = results[run][-1]
                print(
                    f"  round {k + 1} {model} {run:12s} {r['steps_per_s']:.2f} steps/s "
                    f"{r['tokens_per_s']:.0f} tok/s {r['tokens_per_cpu_s']:.0f} tok/CPU-s "
                    f"pad {r['pad_share']:.1%}",
                    flush=True,
                )
        report(a, model, results)


if __name__ == "__main__":
    main()
