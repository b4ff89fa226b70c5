"""Experiment 2 (issue 7; seed S002): the DPO family under a shift of the preference mixture.

    python -m benchmarks.robustness.preference_shift            # full: 3 seeds
    python -m benchmarks.robustness.preference_shift --quick    # smoke version (CI)

S002's emotion-mixture protocol with synthetic rewards on the tiny vocabulary. Two known reward
functions of a response ``y`` (``n(y)`` = its number of words)::

    r1(y) = [detail in y] + 0.1 n(y)        ("detailed": the keyword and more content)
    r2(y) = [simple in y] - 0.1 n(y)        ("concise": the other keyword and less content)
    r_a   = a r1 + (1 - a) r2

Each response of a pair contains ``detail`` and ``simple`` independently with probability 1/2
and has 4-12 filler words (:data:`lightning_robust.data.synthetic.FILLER`); prompts are
``"<topic> w1 w2 w3"``. Training labels come from ``r_{a_train}`` (``a_train = 0.8``) with
Bradley-Terry noise of temperature ``T`` (``P(y1 chosen) = sigmoid(gap / T)``, ``T = 0``:
deterministic). The test pairs are fixed; their labels are re-drawn noise-free under each
``a`` in {1.0, 0.8, 0.6, 0.4, 0.2, 0.0} (pairs tied under ``r_a`` are left out for that ``a``),
and the preference accuracy of a policy under ``a`` is the share of test pairs whose DPO
implicit-reward margin ``h = (log pi - log pi_ref)(y1) - (log pi - log pi_ref)(y2)`` has the
sign of ``r_a(y1) - r_a(y2)``.

Methods (the project's ``DPO`` module, tiny random-init Llama, full weights, frozen-copy
reference): DPO; DR-DPO with ``TVBall(0.4)`` (S000's best radius); KLDPO with
``KLPenalty(tau, form="seed")``, tau in {0.5, 0.1}; WDPO with ``wdpo_rho`` (seed form). Accuracy is recorded after
``short`` and after ``long`` epochs of one run (constant learning rate after warm-up) for every
label noise, over 3 seeds (data, initialisation and order all follow the seed).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

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
    write_block,
)
from lightning_robust.data.synthetic import FILLER, TOPICS

MODULE = "benchmarks.robustness.preference_shift"
SECTION = 2
SECTION_TITLE = "DPO family under preference shift: DPO vs DR-DPO vs KLDPO vs WDPO (S002)"
MIXTURES = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
KEYWORD_1, KEYWORD_2 = "detail", "simple"
LENGTH_WEIGHT = 0.1
MIN_WORDS, MAX_WORDS = 4, 12


# ----------------------------------------------------------------------------- rewards and data
def reward_1(response: str) -> float:
    """``r1(y) = [detail in y] + 0.1 n(y)``."""
    words = response.split()
    return float(KEYWORD_1 in words) + LENGTH_WEIGHT * len(words)


def reward_2(response: str) -> float:
    """``r2(y) = [simple in y] - 0.1 n(y)``."""
    words = response.split()
    return float(KEYWORD_2 in words) - LENGTH_WEIGHT * len(words)


def mixture_reward(a: float, response: str) -> float:
    """``r_a(y) = a r1(y) + (1 - a) r2(y)``, ``a`` in [0, 1]."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"mixture weight a must be in [0, 1], got {a}")
    return a * reward_1(response) + (1.0 - a) * reward_2(response)


def _response(rng: random.Random) -> str:
    n = rng.randint(MIN_WORDS, MAX_WORDS)
    keywords = [w for w in (KEYWORD_1, KEYWORD_2) if rng.random() < 0.5]
    words = [rng.choice(FILLER) for _ in range(n - len(keywords))]
    for w in keywords:
        words.insert(rng.randrange(len(words) + 1), w)
    return " ".join(words)


def make_pairs(num: int, seed: int, split: str) -> list[dict]:
    """``num`` prompts with two distinct responses each (``y1``, ``y2``), seeded by (seed, split)."""
    rng = random.Random(f"preference_shift/{seed}/{split}")
    rows = []
    for _ in range(num):
        prompt = " ".join([rng.choice(TOPICS), *(rng.choice(FILLER) for _ in range(3))])
        y1 = _response(rng)
        y2 = _response(rng)
        while y2 == y1:
            y2 = _response(rng)
        rows.append({"prompt": prompt, "y1": y1, "y2": y2})
    return rows


def label_pairs(
    pairs: list[dict], a: float, noise: float, seed: int, reward: Callable | None = None
) -> list[dict]:
    """Preference rows (``prompt``, ``chosen``, ``rejected``) labelled by ``r_a`` (or by
    ``reward(y)`` when given; ``a`` then only seeds the labels) with Bradley-Terry noise of
    temperature ``noise`` (0: the better response; ties go to ``y1``)."""
    rng = random.Random(f"preference_shift/labels/{seed}/{a}/{noise}")
    score = reward if reward is not None else (lambda y: mixture_reward(a, y))
    out = []
    for p in pairs:
        gap = score(p["y1"]) - score(p["y2"])
        first = rng.random() < 1.0 / (1.0 + math.exp(-gap / noise)) if noise > 0 else gap >= 0
        chosen, rejected = (p["y1"], p["y2"]) if first else (p["y2"], p["y1"])
        out.append({"prompt": p["prompt"], "chosen": chosen, "rejected": rejected})
    return out


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def mixture_accuracies(
    margins: torch.Tensor, pairs: list[dict], mixtures=MIXTURES
) -> dict[float, float]:
    """Share of pairs with ``sign(h) == sign(r_a(y1) - r_a(y2))`` per ``a`` (ties under ``r_a``
    left out); ``margins[i]`` is the implicit-reward margin of ``y1`` over ``y2`` of pair ``i``."""
    out = {}
    for a in mixtures:
        gaps = torch.tensor(
            [mixture_reward(a, p["y1"]) - mixture_reward(a, p["y2"]) for p in pairs]
        )
        keep = gaps.abs() > 1e-9
        right = (torch.sign(margins[keep]) == torch.sign(gaps[keep])).float()
        out[a] = float(right.mean()) if keep.any() else math.nan
    return out


def oracle_records(seeds, num_test: int, a_train: float) -> list[dict]:
    """Accuracy under each ``r_a`` of the training reward ``r_{a_train}`` itself on the test
    pairs: what a policy that learned the training preferences perfectly would score."""
    out = []
    for seed in seeds:
        pairs = make_pairs(num_test, seed, "test")
        margins = torch.tensor(
            [mixture_reward(a_train, p["y1"]) - mixture_reward(a_train, p["y2"]) for p in pairs]
        )
        for a, value in mixture_accuracies(margins, pairs).items():
            out.append({"seed": seed, "a": a, "accuracy": value})
    return out


# ----------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class ShiftJob:
    """One DPO-family run; accuracies are recorded after ``short_epochs`` and ``long_epochs``."""

    method: str  # DPO | DR-DPO | KLDPO | WDPO
    label_noise: float
    seed: int
    a_train: float = 0.8
    num_train: int = 1000
    num_test: int = 300
    short_epochs: int = 1
    long_epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 1e-3
    beta: float = 0.1
    tv_rho: float = 0.4
    kldpo_tau: float = 0.5
    wdpo_rho: float = 1.0


def method_kwargs(job: ShiftJob) -> dict:
    """``DPO`` module arguments of a named method."""
    from lightning_robust.weighting import KLPenalty, TVBall

    if job.method == "DPO":
        return {}
    if job.method == "DR-DPO":
        return {"weighting": TVBall(job.tv_rho)}
    if job.method == "KLDPO":
        return {"weighting": KLPenalty(job.kldpo_tau, form="seed")}
    if job.method == "WDPO":
        return {"wdpo_rho": job.wdpo_rho, "wdpo_form": "seed"}
    raise ValueError(f"unknown method {job.method!r}; expected DPO, DR-DPO, KLDPO or WDPO")


def method_label(job: ShiftJob) -> str:
    return {
        "DPO": "DPO",
        "DR-DPO": f"DR-DPO (TV ρ={job.tv_rho:g})",
        "KLDPO": f"KLDPO (τ={job.kldpo_tau:g})",
        "WDPO": f"WDPO (ρ={job.wdpo_rho:g})",
    }[job.method]


def _margins(module, loader) -> torch.Tensor:
    """Implicit-reward margins of every row of ``loader`` (chosen = y1, rejected = y2), in row order."""
    was_training = module.training
    module.eval()
    margins, rows = [], []
    with torch.no_grad():
        for batch in loader:
            policy, ref, _ = module.concatenated_logps(batch, "val")
            pc, pr = policy.chunk(2)
            rc, rr = ref.chunk(2)
            margins.append(((pc - rc) - (pr - rr)).float())
            rows.append(batch["index"])
    module.train(was_training)
    order = torch.cat(rows)
    out = torch.empty(len(order))
    out[order] = torch.cat(margins)
    return out


def run_shift(job: ShiftJob) -> list[dict]:
    """Train one method; one record per recorded training length with accuracy per mixture."""
    import datasets
    from lightning.pytorch.callbacks import Callback

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.modules import DPO

    datasets.disable_progress_bars()
    quiet_lightning()
    seed_all(job.seed)
    tag = {
        "KLDPO": f"{job.kldpo_tau:g}",
        "DR-DPO": f"{job.tv_rho:g}",
        "WDPO": f"{job.wdpo_rho:g}",
    }.get(job.method, "")
    work = (
        RUNS_DIR
        / "preference_shift"
        / (f"{job.method}{tag}_{job.label_noise:g}_{job.seed}_{job.a_train:g}_{job.num_train}")
    )
    train_pairs = make_pairs(job.num_train, job.seed, "train")
    test_pairs = make_pairs(job.num_test, job.seed, "test")
    train_file = write_jsonl(
        label_pairs(train_pairs, job.a_train, job.label_noise, job.seed), work / "train.jsonl"
    )
    # test rows oriented y1 -> chosen so margins are y1 over y2; labels come from each r_a
    test_rows = [
        {"prompt": p["prompt"], "chosen": p["y1"], "rejected": p["y2"]} for p in test_pairs
    ]
    test_file = write_jsonl(test_rows, work / "test.jsonl")
    records: list[dict] = []
    wanted = {job.short_epochs: "short", job.long_epochs: "long"}

    class MixtureAccuracy(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            if epoch not in wanted:
                return
            margins = _margins(pl_module, trainer.datamodule.val_dataloader()[0])
            acc = mixture_accuracies(margins, test_pairs)
            for a, value in acc.items():
                records.append(
                    {
                        **asdict(job),
                        "label": method_label(job),
                        "epoch": epoch,
                        "length": f"{wanted[epoch]} ({epoch} ep)",
                        "a": a,
                        "accuracy": value,
                    }
                )

    data = PreferenceDataModule(
        train=str(train_file),
        val=str(test_file),
        batch_size=job.batch_size,
        max_length=48,
        seed=job.seed,
        shuffle=True,
    )
    model = DPO(
        beta=job.beta,
        reference_cache_dir=str(work / "ref"),
        **method_kwargs(job),
        backbone={"name_or_path": "tiny", "init_seed": job.seed},
        optimizer={
            "learning_rate": job.learning_rate,
            "warmup_ratio": 0.03,
            "lr_schedule": "constant",
        },
    )
    trainer = quiet_trainer(
        job.long_epochs, work, limit_val_batches=0, callbacks=[MixtureAccuracy()]
    )
    trainer.fit(model, datamodule=data)
    return records


# ----------------------------------------------------------------------------- tables and plots
def shift_table(records: list[dict]) -> tuple[str, str, list[dict]]:
    """Accuracy per mixture (columns) for every (noise, length, method), mean ± std over seeds."""
    rows = summarize(records, ["label_noise", "length", "label", "a"], ["accuracy"])
    keyed = {(r["label_noise"], r["length"], r["label"], r["a"]): r for r in rows}
    mixtures = sorted({r["a"] for r in rows}, reverse=True)
    header = [
        "label noise T",
        "training",
        "method",
        *(f"a={a:g}" for a in mixtures),
        "worst a",
        "seeds",
    ]
    body, summary = [], []
    for noise, length, label in dict.fromkeys(
        (r["label_noise"], r["length"], r["label"]) for r in rows
    ):
        cells = [keyed[(noise, length, label, a)] for a in mixtures]
        worst = min(c["accuracy_mean"] for c in cells)
        body.append(
            [
                f"{noise:g}",
                length,
                label,
                *(fmt_mean_std(c["accuracy"]) for c in cells),
                f"{worst:.3f}",
                cells[0]["n"],
            ]
        )
        summary.append(
            {
                "label_noise": noise,
                "length": length,
                "label": label,
                "worst": worst,
                **{a: c["accuracy_mean"] for a, c in zip(mixtures, cells, strict=True)},
            }
        )
    return text_table(header, body), markdown_table(header, body), summary


def verdicts(summary: list[dict], a_train: float) -> list[str]:
    """Per regime: each robust method's accuracy change against DPO at a_train, at the far
    mixture a = 0 and in the worst case over a."""
    lines = []
    for noise, length in dict.fromkeys((s["label_noise"], s["length"]) for s in summary):
        here = [s for s in summary if s["label_noise"] == noise and s["length"] == length]
        base = next((s for s in here if s["label"] == "DPO"), None)
        if base is None:
            continue
        parts = [
            f"{s['label']} {s[a_train] - base[a_train]:+.3f} / {s[0.0] - base[0.0]:+.3f} / "
            f"{s['worst'] - base['worst']:+.3f}"
            for s in here
            if s is not base
        ]
        lines.append(
            f"- T={noise:g}, {length}: DPO {base[a_train]:.3f} at a={a_train:g}, {base[0.0]:.3f} at "
            f"a=0, worst {base['worst']:.3f}; vs DPO (a={a_train:g} / a=0 / worst): "
            + "; ".join(parts)
        )
    return lines


def plot_shift(records: list[dict], path: Path) -> Path | None:
    """Accuracy vs a per method, one panel per (label noise, training length)."""
    plt = pyplot()
    if plt is None:
        return None
    rows = summarize(records, ["label_noise", "length", "label", "a"], ["accuracy"])
    regimes = list(dict.fromkeys((r["label_noise"], r["length"]) for r in rows))
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(3.8 * len(regimes), 3.4), sharey=True, squeeze=False
    )
    for ax, (noise, length) in zip(axes[0], regimes, strict=True):
        for label in dict.fromkeys(r["label"] for r in rows):
            curve = sorted(
                (
                    r
                    for r in rows
                    if r["label_noise"] == noise and r["length"] == length and r["label"] == label
                ),
                key=lambda r: r["a"],
            )
            ax.errorbar(
                [r["a"] for r in curve],
                [r["accuracy_mean"] for r in curve],
                yerr=[r["accuracy_std"] for r in curve],
                marker="o",
                markersize=3,
                capsize=2,
                label=label,
            )
        ax.axvline(0.8, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"T={noise:g}, {length}", fontsize=9)
        ax.set_xlabel("test mixture a (train a=0.8)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("preference accuracy under r_a")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- main
#: (method, ShiftJob overrides) of the full run: KLDPO at S002's code-default-like tau = 0.5 and a
#: sharper tau = 0.1 (S002's README uses 0.05)
METHODS = (("DPO", {}), ("DR-DPO", {}), ("KLDPO", {}), ("KLDPO", {"kldpo_tau": 0.1}), ("WDPO", {}))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (CI)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default 1 quick, 2 full)"
    )
    parser.add_argument("--out-md", default=str(OLD_RESULTS_MD))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    start = time.time()
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    workers = args.workers or (1 if args.quick else 2)
    if args.quick:
        noises = (0.0,)
        settings = dict(num_train=64, num_test=48, short_epochs=1, long_epochs=2)
        methods = (("DPO", {}), ("KLDPO", {}))
    else:
        noises = (0.0, 0.3)
        settings = dict(num_train=1000, num_test=300, short_epochs=1, long_epochs=4)
        methods = METHODS
    jobs = [
        ShiftJob(m, noise, seed, **settings, **extra)
        for noise in noises
        for m, extra in methods
        for seed in seeds
    ]
    records = [r for rs in run_jobs(run_shift, jobs, workers) for r in rs]
    text, md, summary = shift_table(records)
    lines = verdicts(summary, jobs[0].a_train)
    oracle = summarize(
        oracle_records(seeds, jobs[0].num_test, jobs[0].a_train), ["a"], ["accuracy"]
    )
    oracle_line = (
        f"Reference (no training): the training reward r_{jobs[0].a_train:g} itself scores "
        + ", ".join(f"a={r['a']:g}: {fmt_mean_std(r['accuracy'])}" for r in oracle)
        + " on the same test pairs (the ceiling of a policy that learned the training preferences exactly)."
    )
    print(text + "\n\n" + "\n".join(lines) + "\n\n" + oracle_line)
    prefix = "shift_quick_" if args.quick else "shift_"
    figure = plot_shift(records, Path(args.out_dir) / f"{prefix}accuracy_vs_mixture.png")
    elapsed = time.time() - start
    j = jobs[0]
    body = "\n\n".join(
        [
            f"Command: `{command_line(MODULE, argv)}` ({elapsed:.0f} s with {workers} worker(s)); seeds "
            f"{seeds}; {j.num_train} training pairs labelled by r_a at a_train = {j.a_train:g}, "
            f"{j.num_test} test pairs; tiny random-init Llama, full weights, AdamW lr {j.learning_rate:g} "
            f"constant after 3 % warm-up, batch {j.batch_size}, β = {j.beta:g}; accuracy after "
            f"{j.short_epochs} and {j.long_epochs} epochs of one run. Mean ± std over seeds.",
            md,
            oracle_line,
            "Change against DPO (a = a_train / a = 0 / worst over a):\n\n" + "\n".join(lines),
            f"![accuracy vs mixture](results/{figure.name})" if figure is not None else "",
        ]
    )
    write_block(
        Path(args.out_md), SECTION, SECTION_TITLE, "shift" + ("_quick" if args.quick else ""), body
    )
    return {"records": records, "summary": summary, "figure": figure, "elapsed": elapsed}


if __name__ == "__main__":
    main()
