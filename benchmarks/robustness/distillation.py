"""Experiment 3 (issue 7; seed S004): distillation under a spurious length correlation.

    python -m benchmarks.robustness.distillation            # full: 3 seeds, 2 noise levels
    python -m benchmarks.robustness.distillation --quick    # smoke version (CI)

Data (a small generator here, over the tiny tokenizer's words, so every word is one token):
prompt ``"<topic> w1 w2 w3"``; each response holds 4-12 filler words and either the good word
``helpful``, the bad word ``bad`` or neither (the two responses of a pair differ). The true reward
does NOT depend on length::

    r*(y) = [helpful in y] - [bad in y]                (gap 0, 1 or 2 within a pair)

In training half of the pairs (``tie_share``) have equal true reward (both responses share the
keyword status): their label is a coin flip, i.e. the true preference is weak there, as in much
real preference data. Other labels are Bradley-Terry with temperature ``T`` (0: the better
response is chosen). Lengths are drawn with a gap of at least 2 words, then ordered so that the
CHOSEN response is the longer one with probability ``length_bias`` (0.9 in training: length
correlates with the label) and 0.5 in the test split (length independent of the label; no ties;
noise-free labels).

Methods, all the project's ``DPO`` module on a tiny random-init Llama (frozen-copy reference):
DPO and IPO on the labels; d-DPO distilling the oracle ``r*``; d-DPO distilling one biased reward
model (``r* + 0.15 n(y)`` plus noise: what a reward model fit on length-biased data may learn);
e-DPO over an ensemble of three imperfect reward models ``r* + b_k (n(y) - 8) + noise``,
``b = (0.15, 0.05, -0.05)`` (min over the ensemble per minibatch); optionally dp-DPO (oracle +
forward-KL pessimism on the data's responses).

Metrics on the length-independent test split, from the DPO implicit reward
``beta (log pi - log pi_ref)`` (the project's ``DPOImplicitRewardScorer``): preference accuracy,
accuracy on the pairs where the better answer is the shorter one, and the share of pairs where
the policy prefers the longer answer (0.5 = no length preference); plus accuracy on a fresh split
with the training distribution (length-biased).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.robustness.common import (
    OLD_RESULTS_MD,
    RESULTS_DIR,
    RUNS_DIR,
    command_line,
    fmt_mean_std,
    markdown_table,
    pyplot,
    quiet_lightning,
    quiet_trainer,
    run_jobs,
    save_figure,
    seed_all,
    summarize,
    text_table,
    write_section,
)

MODULE = "benchmarks.robustness.distillation"
SECTION = 3
TITLE = "Distillation under a spurious length correlation: DPO vs IPO vs d-DPO vs e-DPO (S004)"

GOOD, BAD = "helpful", "bad"
TOPICS = ("travel", "cooking", "science", "history", "health", "finance", "weather", "sports")
KEYWORD_VALUE = {GOOD: 1.0, BAD: -1.0, None: 0.0}
MIN_WORDS, MAX_WORDS, MIN_GAP = 4, 12, 2
MID_LENGTH = 8
ENSEMBLE_BIASES = (0.15, 0.05, -0.05)  # per word, around MID_LENGTH: chosen here
SCORE_NOISE = 0.2  # std of each imperfect reward model's per-response noise: chosen here
METRICS = ("acc", "acc_shorter_better", "prefers_longer", "acc_train_dist")
METRIC_LABELS = {
    "acc": "test acc",
    "acc_shorter_better": "acc, better is shorter",
    "prefers_longer": "prefers longer",
    "acc_train_dist": "acc, train-like split",
}

# method name -> (DPO keyword arguments, score file)
METHODS = {
    "DPO": ({"loss_type": "dpo"}, "oracle"),
    "IPO": ({"loss_type": "ipo"}, "oracle"),
    "d-DPO (oracle r*)": ({"loss_type": "distill"}, "oracle"),
    "d-DPO (biased RM)": ({"loss_type": "distill"}, "biased"),
    "e-DPO (3 RMs)": ({"loss_type": "distill"}, "ensemble"),
    "dp-DPO (oracle, γ=0.05)": (
        {"loss_type": "distill", "kl_gamma_start": 0.05, "kl_samples": "data"},
        "oracle",
    ),
}
QUICK_METHODS = ("DPO", "d-DPO (oracle r*)", "e-DPO (3 RMs)")


def _filler() -> tuple[str, ...]:
    from lightning_robust.models import TINY_WORDS

    reserved = {GOOD, BAD, *TOPICS, "alpha", "beta", "gamma", "delta", "sigma", "omega"}
    return tuple(w for w in TINY_WORDS if w not in reserved)


def true_reward(response: str) -> float:
    """``r*(y) = [helpful in y] - [bad in y]`` (length-free)."""
    words = response.split()
    return float(GOOD in words) - float(BAD in words)


def _response(rng: random.Random, filler, n_words: int, keyword: str | None) -> str:
    words = [rng.choice(filler) for _ in range(n_words - (keyword is not None))]
    if keyword is not None:
        words.insert(rng.randrange(len(words) + 1), keyword)
    return " ".join(words)


def make_pairs(
    n: int, length_bias: float, label_noise: float, seed: int, stream: str, tie_share: float = 0.0
) -> list[dict]:
    """``n`` rows ``prompt, chosen, rejected, chosen_reward, rejected_reward`` (module docstring);
    a share ``tie_share`` of the pairs has equal true reward (same keyword status; the label is
    then a coin flip)."""
    if not 0.0 <= length_bias <= 1.0:
        raise ValueError(f"length_bias must be in [0, 1], got {length_bias}")
    if not 0.0 <= tie_share <= 1.0:
        raise ValueError(f"tie_share must be in [0, 1], got {tie_share}")
    if label_noise < 0:
        raise ValueError(f"label_noise must be >= 0, got {label_noise}")
    rng = random.Random(f"robustness.distillation/{seed}/{stream}")
    filler = _filler()
    rows, used = [], set()
    while len(rows) < n:
        prompt = " ".join([rng.choice(TOPICS), *(rng.choice(filler) for _ in range(3))])
        if prompt in used:
            continue
        used.add(prompt)
        if rng.random() < tie_share:
            k1 = k2 = rng.choice([GOOD, BAD, None])
        else:
            k1, k2 = rng.sample([GOOD, BAD, None], 2)
        while True:
            n1, n2 = rng.randint(MIN_WORDS, MAX_WORDS), rng.randint(MIN_WORDS, MAX_WORDS)
            if abs(n1 - n2) >= MIN_GAP:
                break
        gap = KEYWORD_VALUE[k1] - KEYWORD_VALUE[k2]
        if gap == 0 or label_noise > 0:
            first_wins = rng.random() < (
                0.5 if gap == 0 else 1 / (1 + math.exp(-gap / label_noise))
            )
        else:
            first_wins = gap > 0
        kc, kr = (k1, k2) if first_wins else (k2, k1)
        long_n, short_n = max(n1, n2), min(n1, n2)
        nc, nr = (long_n, short_n) if rng.random() < length_bias else (short_n, long_n)
        chosen, rejected = _response(rng, filler, nc, kc), _response(rng, filler, nr, kr)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "chosen_reward": true_reward(chosen),
                "rejected_reward": true_reward(rejected),
            }
        )
    return rows


def reward_scores(rows: list[dict], kind: str, seed: int) -> list[dict]:
    """Rows with ``chosen_scores``/``rejected_scores`` of ``kind``: ``oracle`` (``r*``), ``biased``
    (ensemble member 0) or ``ensemble`` (all members, a list per response)."""
    if kind not in ("oracle", "biased", "ensemble"):
        raise ValueError(f"unknown score kind {kind!r}; expected 'oracle', 'biased' or 'ensemble'")
    rng = random.Random(f"robustness.distillation/{seed}/scores")
    out = []
    for row in rows:
        new = dict(row)
        if kind == "oracle":
            new["chosen_scores"], new["rejected_scores"] = (
                row["chosen_reward"],
                row["rejected_reward"],
            )
        else:
            members = ENSEMBLE_BIASES[:1] if kind == "biased" else ENSEMBLE_BIASES
            for side in ("chosen", "rejected"):
                base, n = row[f"{side}_reward"], len(row[side].split())
                scores = [
                    base + b * (n - MID_LENGTH) + rng.gauss(0.0, SCORE_NOISE) for b in members
                ]
                new[f"{side}_scores"] = scores[0] if kind == "biased" else scores
        out.append(new)
    return out


@dataclass(frozen=True)
class DistillJob:
    method: str
    label_noise: float
    seed: int
    data_dir: str
    short_epochs: int = 1
    long_epochs: int = 4
    num_train: int = 1000
    num_test: int = 300
    length_bias: float = 0.9
    tie_share: float = 0.5
    beta: float = 0.1
    learning_rate: float = 1e-3
    batch_size: int = 16


def _data_key(job: DistillJob) -> str:
    raw = f"v2|{job.seed}|{job.label_noise}|{job.num_train}|{job.num_test}|{job.length_bias}|{job.tie_share}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def write_data(job: DistillJob) -> dict[str, Path]:
    """Write the training files (one per score kind) and the two test files; return their paths."""
    folder = Path(job.data_dir) / _data_key(job)
    paths = {k: folder / f"train_{k}.jsonl" for k in ("oracle", "biased", "ensemble")}
    paths["test"] = folder / "test_unbiased.jsonl"
    paths["test_train_dist"] = folder / "test_train_dist.jsonl"
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    train = make_pairs(
        job.num_train, job.length_bias, job.label_noise, job.seed, "train", job.tie_share
    )
    for kind in ("oracle", "biased", "ensemble"):
        _write_jsonl(paths[kind], reward_scores(train, kind, job.seed))
    _write_jsonl(paths["test"], make_pairs(job.num_test, 0.5, 0.0, job.seed, "test"))
    _write_jsonl(
        paths["test_train_dist"],
        make_pairs(job.num_test, job.length_bias, 0.0, job.seed, "test_train"),
    )
    return paths


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def pair_metrics(scorer, test: list[dict], train_like: list[dict]) -> dict[str, float]:
    """Accuracy, accuracy where the better answer is shorter, share preferring the longer answer
    (all on ``test``) and accuracy on ``train_like``, from the scorer's implicit rewards."""
    from lightning_robust.evals import pairwise_scores

    def scores(rows):
        return pairwise_scores(
            scorer,
            [r["prompt"] for r in rows],
            [r["chosen"] for r in rows],
            [r["rejected"] for r in rows],
        )

    sc, sr = scores(test)
    correct = (sc > sr).tolist()
    chosen_longer = [len(r["chosen"].split()) > len(r["rejected"].split()) for r in test]
    longer_wins = [c if cl else not c for c, cl in zip(correct, chosen_longer, strict=True)]
    # ties prefer neither: count a tie as not preferring the longer
    ties = (sc == sr).tolist()
    longer_wins = [lw and not t for lw, t in zip(longer_wins, ties, strict=True)]
    shorter_better = [c for c, cl in zip(correct, chosen_longer, strict=True) if not cl]
    tc, tr = scores(train_like)
    return {
        "acc": sum(correct) / len(correct),
        "acc_shorter_better": sum(shorter_better) / max(1, len(shorter_better)),
        "prefers_longer": sum(longer_wins) / len(longer_wins),
        "acc_train_dist": float((tc > tr).float().mean()),
    }


def _distill_run(job: DistillJob) -> list[dict]:
    """Train one DPO-family run; metrics after the short and the long number of epochs."""
    from lightning.pytorch.callbacks import Callback

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.evals import DPOImplicitRewardScorer
    from lightning_robust.modules import DPO

    quiet_lightning()
    options, score_kind = METHODS[job.method]
    paths = write_data(job)
    test, train_like = _read_jsonl(paths["test"]), _read_jsonl(paths["test_train_dist"])
    records: list[dict] = []

    class Evaluate(Callback):
        scorer = None

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            if epoch not in (job.short_epochs, job.long_epochs):
                return
            if self.scorer is None:
                self.scorer = DPOImplicitRewardScorer(
                    pl_module.backbone,
                    pl_module.tokenizer,
                    reference=pl_module.reference_model,
                    beta=job.beta,
                    max_length=64,
                    batch_size=64,
                    append_eos=True,
                )
            record = {**asdict(job), "epoch": epoch}
            record.update(pair_metrics(self.scorer, test, train_like))
            records.append(record)

    seed_all(job.seed)
    data = PreferenceDataModule(
        train={"path": str(paths[score_kind]), "schema": "preference"},
        val_fraction=0.0,
        tokenizer="tiny",
        max_length=64,
        batch_size=job.batch_size,
        append_eos=True,
        seed=job.seed,
        cache_dir=str(Path(job.data_dir) / "hf_cache"),
    )
    model = DPO(
        beta=job.beta,
        **options,
        backbone={"name_or_path": "tiny", "init_seed": job.seed},
        optimizer={
            "learning_rate": job.learning_rate,
            "warmup_ratio": 0.03,
            "lr_schedule": "constant",
        },
    )
    trainer = quiet_trainer(
        job.long_epochs, RUNS_DIR / "distillation", limit_val_batches=0, callbacks=[Evaluate()]
    )
    trainer.fit(model, datamodule=data)
    return records


def run_all(jobs: list[DistillJob], workers: int) -> list[dict]:
    for job in jobs:  # files first, in this process: workers only read them
        write_data(job)
    out = []
    for job, records in zip(jobs, run_jobs(_distill_run, jobs, workers), strict=True):
        for r in records:
            length = "short" if r["epoch"] == job.short_epochs else "long"
            out.append({**r, "length": f"{length} ({r['epoch']} ep)"})
    return out


def longer_is_better_share(records: list[dict]) -> float:
    """Mean over the records' seeds of the share of test pairs whose better answer is longer
    (what a perfect ranker scores on 'prefers longer'); the test split is regenerated."""
    shares = []
    for seed, num_test in sorted({(r["seed"], r["num_test"]) for r in records}):
        rows = make_pairs(num_test, 0.5, 0.0, seed, "test")
        shares.append(
            sum(len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows) / len(rows)
        )
    return sum(shares) / len(shares)


def tables(records: list[dict]) -> tuple[str, str]:
    records = sorted(
        records, key=lambda r: (r["label_noise"], r["epoch"])
    )  # stable: method order kept
    rows = summarize(records, ["label_noise", "length", "method"], METRICS)
    header = ["label noise T", "training", "method", *(METRIC_LABELS[m] for m in METRICS), "seeds"]
    body = [
        [
            f"{r['label_noise']:g}",
            r["length"],
            r["method"],
            *(fmt_mean_std(r[m]) for m in METRICS),
            r["n"],
        ]
        for r in rows
    ]
    return text_table(header, body), markdown_table(header, body)


def plot(records: list[dict], path: Path, neutral: float = 0.5) -> Path | None:
    """Test accuracy and share preferring the longer answer per method, one panel per regime;
    the grey line is ``neutral``, a perfect ranker's share preferring the longer answer."""
    plt = pyplot()
    if plt is None:
        return None
    rows = summarize(records, ["label_noise", "length", "method"], METRICS)
    regimes = list(dict.fromkeys((r["label_noise"], r["length"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(4.0 * len(regimes), 3.8), sharey=True, squeeze=False
    )
    width = 0.38
    for ax, (noise, length) in zip(axes[0], regimes, strict=True):
        here = {r["method"]: r for r in rows if r["label_noise"] == noise and r["length"] == length}
        xs = range(len(methods))
        for offset, metric, color in (
            (-width / 2, "acc", "tab:blue"),
            (width / 2, "prefers_longer", "tab:red"),
        ):
            ax.bar(
                [x + offset for x in xs],
                [here[m][f"{metric}_mean"] for m in methods],
                width,
                yerr=[here[m][f"{metric}_std"] for m in methods],
                color=color,
                capsize=2,
                label=METRIC_LABELS[metric],
            )
        ax.axhline(neutral, color="grey", linewidth=0.8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"label noise T={noise:g}, {length}", fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke version: small data, 3 methods")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0 1)"
    )
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0.0, 1.0], help="label-noise temperatures T"
    )
    parser.add_argument("--long-epochs", type=int, default=None, help="default 4 (quick 2)")
    parser.add_argument("--workers", type=int, default=2, help="processes (1 torch thread each)")
    parser.add_argument("--data-dir", type=Path, default=RUNS_DIR / "distillation" / "data")
    parser.add_argument("--results-md", type=Path, default=OLD_RESULTS_MD)
    parser.add_argument("--plots-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--json", type=Path, default=None, help="also write all records as JSON")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="report records saved with --json"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not touch results.md"
    )
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    """Run (or load with ``--from-json``) and report; returns the records."""
    args = parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        records, seconds = saved["records"], saved.get("seconds", math.nan)
        command, workers = (
            saved.get("command") or command_line(MODULE, argv),
            saved.get("workers", "?"),
        )
    else:
        seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
        methods = args.methods or (list(QUICK_METHODS) if args.quick else list(METHODS))
        settings = dict(
            long_epochs=args.long_epochs or (2 if args.quick else 4),
            num_train=200 if args.quick else 1000,
            num_test=100 if args.quick else 300,
        )
        jobs = [
            DistillJob(method, noise, seed, str(args.data_dir), **settings)
            for noise in args.noise
            for method in methods
            for seed in seeds
        ]
        start = time.perf_counter()
        records = run_all(jobs, args.workers)
        seconds = time.perf_counter() - start
        command, workers = command_line(MODULE, argv), args.workers
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        saved = {"records": records, "seconds": seconds, "command": command, "workers": workers}
        args.json.write_text(json.dumps(saved, indent=1))
    runs = len({(r["method"], r["label_noise"], r["seed"]) for r in records})
    seeds = sorted({r["seed"] for r in records})
    text, md = tables(records)
    neutral = longer_is_better_share(records)
    print(f"\nDistillation under a spurious length correlation: {runs} runs in {seconds:.0f} s")
    print(text)
    print(
        f"A perfect ranker prefers the longer answer on {neutral:.3f} of the test pairs (mean over seeds)."
    )
    figure = plot(records, args.plots_dir / "distillation_length_bias.png", neutral)
    if not args.no_write:
        job = records[0]
        body = [
            f"Command: `{command}` · seeds {seeds} · mean ± sample std over seeds · "
            f"{runs} runs, {seconds:.0f} s wall with {workers} worker process(es).",
            f"Tiny random-init Llama policy (`DPO` module, frozen-copy reference, β={job['beta']}, AdamW "
            f"lr {job['learning_rate']:g}, 3 % warm-up then constant, batch {job['batch_size']}); "
            f"{job['num_train']} training pairs whose chosen answer is the longer one in "
            f"{job['length_bias']:.0%} of rows, {job['tie_share']:.0%} of them with equal true reward "
            f"(coin-flip label); the true reward r*(y) = [helpful ∈ y] − [bad ∈ y] ignores length. "
            f"Test: {job['num_test']} pairs without ties whose length is independent of the label "
            f"(noise-free), plus a fresh split drawn like training. 'short' = after "
            f"{job['short_epochs']} epoch, 'long' = after {job['long_epochs']} epochs of the same run. "
            f"Label noise T = Bradley–Terry temperature of the training labels. Imperfect reward "
            f"models: r* + b·(n(y) − {MID_LENGTH}) + N(0, {SCORE_NOISE}²) with b ∈ {ENSEMBLE_BIASES} per "
            f"word (e-DPO: all three, min over the ensemble per minibatch; 'biased RM': the first). "
            f"Accuracies from the implicit reward β(log π − log π_ref) (`DPOImplicitRewardScorer`).",
            md,
            f"'prefers longer' of a perfect ranker (the true reward) is {neutral:.3f} on these test "
            f"splits (mean over seeds: the share of test pairs whose better answer is the longer one); "
            f"above it the policy has picked up the spurious length preference.",
        ]
        if figure is not None:
            body.append(
                f"![accuracy and length preference]({os.path.relpath(figure, args.results_md.parent)})"
            )
        write_section(args.results_md, SECTION, TITLE, "\n\n".join(body))
    return records


if __name__ == "__main__":
    main()
