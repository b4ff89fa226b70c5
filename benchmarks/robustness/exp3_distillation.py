"""Experiment 3 (seed S004): reward-model distillation under a length bias, with *learned* reward models.

    python -m benchmarks.robustness.exp3_distillation                  # full form
    python -m benchmarks.robustness.exp3_distillation --quick          # CI smoke form
    python -m benchmarks.robustness.exp3_distillation --seeds 10 11 12 # other seeds

Protocol (declared below, before anything runs; :mod:`benchmarks.robustness.protocol`):

* data (:func:`benchmarks.robustness.distillation.make_pairs`): prompt ``"<topic> w1 w2 w3"``,
  responses of 4-12 filler words holding ``helpful``, ``bad`` or neither; the true reward
  ``r*(y) = [helpful in y] - [bad in y]`` ignores length. Half of the training pairs have equal
  true reward (their label is a coin flip), the others carry Bradley-Terry labels with
  temperature ``label_noise``; the chosen answer is the longer one with probability
  ``length_bias`` (the regime). The validation split is drawn like training (same bias, ties
  and label noise): the only split that selects. The test split has length independent of the
  label, no ties and clean labels: accuracy there is agreement with the true reward.
* every method sees the SAME training file (prompt, chosen, rejected: no true reward in it).
  Reward models are learned from it by the project's ``RewardModel`` (Bradley-Terry, tiny
  random-init Llama) through Lightning's Trainer: one on all pairs (d-DPO, dp-DPO) and an
  ensemble of three on subsets of the same pairs resampled to length biases 0.2 / 0.5 / 0.8
  (S004 §6.1: reward models trained on data with different length biases; e-DPO). Their
  checkpoints score every training pair through the project's annotation command
  (``python cli.py annotate`` = :func:`lightning_robust.annotate.main`), which writes the
  ``chosen_scores`` / ``rejected_scores`` columns the distillation methods train on.
* methods (the project's ``DPO`` module, frozen-copy reference, each with a grid of the same
  size :data:`GRID_SIZE`; the epoch 1..``epochs`` is chosen for every method alike):
  DPO over beta (baseline), IPO over beta (IPO's tau), d-DPO over beta (one learned RM),
  dp-DPO (d-DPO plus the forward-KL pessimism term ``gamma KL_hat`` on the data's responses,
  S004 eq. 11 / §7.1) over gamma, p-DPO (DPO on the preference labels plus the same pessimism
  term, no reward model: S004 eq. 13) over gamma, e-DPO (min over the three learned RMs per
  minibatch) over beta.
* selection: per regime, method and seed the (configuration, epoch) with the highest accuracy on
  the validation split under its own (length-biased, noisy) labels; test metrics are read only
  at the selected point.
* claim: S004's "d-/e-DPO beat DPO (and IPO) under a length bias": paired per-seed difference of
  test accuracy (agreement with the true reward on length-neutral held-out pairs), 95 % t
  interval, paired t-test p; "reproduces" only when the interval is above zero.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.robustness.common import (
    RUNS_DIR,
    quiet_lightning,
    quiet_trainer,
    run_jobs,
    seed_all,
)
from benchmarks.robustness.distillation import _read_jsonl, _write_jsonl, make_pairs, pair_metrics
from benchmarks.robustness.protocol import (
    Experiment,
    Method,
    describe_grids,
    experiment_parser,
    run_experiment,
)

NAME = "exp3_distillation"
MODULE = f"benchmarks.robustness.{NAME}"
TITLE = "Exp 3 (S004): distilled / pessimistic / ensemble DPO with learned reward models under a length bias"
GRID_SIZE = 2
ENSEMBLE_BIASES = (0.2, 0.5, 0.8)  # S004 §6.1
MAX_LENGTH = 64

METHODS = (
    Method("DPO", "dpo", {"beta": [0.1, 0.5]}, baseline=True),
    Method("IPO", "ipo", {"beta": [0.1, 0.5]}),
    Method("d-DPO", "distill", {"beta": [0.1, 0.5]}),
    Method("dp-DPO", "distill_kl", {"gamma": [0.05, 0.2]}),
    Method("p-DPO", "dpo_kl", {"gamma": [0.05, 0.2]}),
    Method("e-DPO", "ensemble", {"beta": [0.1, 0.5]}),
)
QUICK_METHODS = (
    Method("DPO", "dpo", {"beta": [0.1]}, baseline=True),
    Method("d-DPO", "distill", {"beta": [0.1]}),
    Method("e-DPO", "ensemble", {"beta": [0.1]}),
)
REGIMES = ({"length_bias": 0.9}, {"length_bias": 0.75}, {"length_bias": 0.5})
QUICK_REGIMES = ({"length_bias": 0.9},)
FULL_SEEDS = tuple(range(10))
QUICK_SEEDS = (0, 1)
FULL_SETTINGS = {
    "num_train": 800,
    "num_val": 200,
    "num_test": 300,
    "tie_share": 0.5,
    "label_noise": 0.5,
    "epochs": 2,
    "rm_epochs": 2,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "dp_beta": 0.1,
}
QUICK_SETTINGS = {
    **FULL_SETTINGS,
    "num_train": 120,
    "num_val": 48,
    "num_test": 48,
    "epochs": 1,
    "rm_epochs": 1,
}
POLICY_METRICS = ("val", "test", "shorter_better", "prefers_longer")
RM_METRICS = ("rm_val", "rm_test", "rm_prefers_longer")


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Cell:
    """One (regime, seed): its data files, reward models and annotated files live in ``folder``."""

    length_bias: float
    seed: int
    root: str
    num_train: int
    num_val: int
    num_test: int
    tie_share: float
    label_noise: float
    rm_epochs: int
    batch_size: int
    learning_rate: float

    @property
    def folder(self) -> Path:
        key = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return Path(self.root) / f"bias{self.length_bias:g}-seed{self.seed}-{key}"

    def path(self, name: str) -> Path:
        return self.folder / name


def _labels_only(rows: list[dict]) -> list[dict]:
    """What a method may see: prompt, chosen, rejected (the true reward is dropped)."""
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


def chosen_longer(row: dict) -> bool:
    return len(row["chosen"].split()) > len(row["rejected"].split())


def biased_subset(rows: list[dict], target: float, seed: int) -> list[dict]:
    """The largest subset of ``rows`` in which the chosen answer is the longer one in a share
    ``target`` of the pairs (pairs drawn without replacement, original order kept)."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target length bias must be in (0, 1), got {target}")
    longer = [i for i, r in enumerate(rows) if chosen_longer(r)]
    shorter = [i for i, r in enumerate(rows) if not chosen_longer(r)]
    n_short = min(len(shorter), int(len(longer) * (1 - target) / target))
    n_long = min(len(longer), round(n_short * target / (1 - target)))
    if n_short == 0 or n_long == 0:
        raise ValueError(
            f"no subset with length bias {target}: {len(longer)} / {len(shorter)} pairs"
        )
    rng = random.Random(f"robustness.exp3/{seed}/subset/{target}")
    keep = set(rng.sample(longer, n_long)) | set(rng.sample(shorter, n_short))
    return [rows[i] for i in sorted(keep)]


def write_cell_data(cell: Cell) -> dict:
    """Training / validation / test files and the ensemble's subsets; returns a record of the
    row counts, the share of pairs whose chosen answer is the longer one (per file) and of test
    pairs whose *better* answer is the longer one (a perfect ranker's 'prefers longer')."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    b, t, seed = cell.length_bias, cell.label_noise, cell.seed
    train = _labels_only(make_pairs(cell.num_train, b, t, seed, "train", cell.tie_share))
    files = {
        "train": train,
        "val": make_pairs(cell.num_val, b, t, seed, "val", cell.tie_share),
        "test": make_pairs(cell.num_test, 0.5, 0.0, seed, "test"),
    }
    for target in ENSEMBLE_BIASES:
        files[f"subset{target:g}"] = biased_subset(train, target, seed)
    for name, rows in files.items():
        _write_jsonl(cell.path(f"{name}.jsonl"), rows)
    return {
        "kind": "data",
        "method": "data",
        "seed": seed,
        "length_bias": b,
        "rows": {name: len(rows) for name, rows in files.items()},
        "chosen_longer": {
            name: sum(map(chosen_longer, rows)) / len(rows) for name, rows in files.items()
        },
    }


# ----------------------------------------------------------------------------- reward models
RM_NAMES = ("all", *(f"subset{t:g}" for t in ENSEMBLE_BIASES))


@dataclass(frozen=True)
class RMJob:
    cell: Cell
    name: str  # "all" or "subset<bias>"
    steps: int  # optimiser steps (every RM gets the all-data RM's number)


def rm_source(name: str) -> str:
    """The file a reward model is trained on: all training pairs or one biased subset."""
    return "train" if name == "all" else name


def reward_model_steps(cell: Cell) -> int:
    return cell.rm_epochs * -(-cell.num_train // cell.batch_size)


def train_reward_model(job: RMJob) -> dict:
    """Fit a Bradley-Terry ``RewardModel`` on the job's file; save its checkpoint; return its
    accuracy on the validation split (training labels), the test split (true reward) and its
    share of test pairs where it prefers the longer answer."""
    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.evals import pairwise_scores
    from lightning_robust.models.scorers import RewardModelScorer
    from lightning_robust.modules import RewardModel

    quiet_lightning()
    cell = job.cell
    source = cell.path(f"{rm_source(job.name)}.jsonl")
    seed_all(cell.seed)
    data = PreferenceDataModule(
        train={"path": str(source), "schema": "preference"},
        val_fraction=0.0,
        tokenizer="tiny",
        max_length=MAX_LENGTH,
        batch_size=cell.batch_size,
        seed=cell.seed,
        cache_dir=str(cell.folder / "hf_cache"),
    )
    model = RewardModel(
        backbone={"name_or_path": "tiny", "init_seed": cell.seed},
        optimizer={
            "learning_rate": cell.learning_rate,
            "warmup_ratio": 0.03,
            "lr_schedule": "constant",
        },
    )
    trainer = quiet_trainer(-1, cell.folder, max_steps=job.steps, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(cell.path(f"rm_{job.name}.ckpt"))
    scorer = RewardModelScorer(model, max_length=MAX_LENGTH, batch_size=64)

    def acc(rows):
        c, r = pairwise_scores(
            scorer, *([x[k] for x in rows] for k in ("prompt", "chosen", "rejected"))
        )
        return c, r, float((c > r).float().mean())

    _, _, val = acc(_read_jsonl(cell.path("val.jsonl")))
    test_rows = _read_jsonl(cell.path("test.jsonl"))
    c, r, test = acc(test_rows)
    longer = [
        (ci > ri) == chosen_longer(x) and ci != ri
        for ci, ri, x in zip(c.tolist(), r.tolist(), test_rows, strict=True)
    ]
    return {
        "rm_val": val,
        "rm_test": test,
        "rm_prefers_longer": sum(longer) / len(longer),
        "rm_pairs": len(_read_jsonl(source)),
        "rm_steps": job.steps,
    }


def annotate_cell(cell: Cell) -> dict[str, str]:
    """Score the training pairs with the learned reward models through the annotation command:
    ``distill.jsonl`` (the all-data RM) and ``ensemble.jsonl`` (the three subset RMs)."""
    from lightning_robust.annotate import main as annotate

    out = {}
    for name, models in (("distill", ["all"]), ("ensemble", list(RM_NAMES[1:]))):
        argv = ["--data", str(cell.path("train.jsonl")), "--schema", "preference"]
        for m in models:
            argv += ["--reward-model", str(cell.path(f"rm_{m}.ckpt"))]
        argv += [
            "--output",
            str(cell.path(f"{name}.jsonl")),
            "--max-length",
            str(MAX_LENGTH),
            "--batch-size",
            "64",
        ]
        out[name] = annotate(argv)
    return out


# ----------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class PolicyJob:
    cell: Cell
    method: str
    family: str
    config: tuple  # ((name, value), ...)
    epochs: int
    dp_beta: float


TRAIN_FILE = {
    "dpo": "train",
    "ipo": "train",
    "distill": "distill",
    "distill_kl": "distill",
    "dpo_kl": "train",
    "ensemble": "ensemble",
}


def dpo_options(family: str, config: dict, dp_beta: float) -> dict:
    """The ``DPO`` module's arguments of a method family at the grid point ``config``."""
    if family in ("dpo", "ipo"):
        return {"loss_type": family, "beta": config["beta"]}
    if family in ("distill", "ensemble"):
        return {"loss_type": "distill", "beta": config["beta"]}
    if family in ("distill_kl", "dpo_kl"):  # dp-DPO / p-DPO: beta fixed, gamma from the grid
        return {
            "loss_type": "distill" if family == "distill_kl" else "dpo",
            "beta": dp_beta,
            "kl_gamma_start": config["gamma"],
            "kl_samples": "data",
        }
    raise ValueError(f"unknown method family {family!r}")


def train_policy(job: PolicyJob) -> list[dict]:
    """Train one DPO-family run; one record per epoch with the validation and test metrics of the
    implicit reward ``beta (log pi - log pi_ref)``."""
    from lightning.pytorch.callbacks import Callback

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.evals import DPOImplicitRewardScorer
    from lightning_robust.modules import DPO

    quiet_lightning()
    cell, config = job.cell, dict(job.config)
    options = dpo_options(job.family, config, job.dp_beta)
    val, test = _read_jsonl(cell.path("val.jsonl")), _read_jsonl(cell.path("test.jsonl"))
    records: list[dict] = []

    class Evaluate(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            scorer = DPOImplicitRewardScorer(
                pl_module.backbone,
                pl_module.tokenizer,
                reference=pl_module.reference_model,
                beta=options["beta"],
                max_length=MAX_LENGTH,
                batch_size=64,
                append_eos=True,
            )
            m = pair_metrics(scorer, test, val)
            records.append(
                {
                    "epoch": trainer.current_epoch + 1,
                    "val": m["acc_train_dist"],
                    "test": m["acc"],
                    "shorter_better": m["acc_shorter_better"],
                    "prefers_longer": m["prefers_longer"],
                }
            )

    seed_all(cell.seed)
    data = PreferenceDataModule(
        train={"path": str(cell.path(f"{TRAIN_FILE[job.family]}.jsonl")), "schema": "preference"},
        val_fraction=0.0,
        tokenizer="tiny",
        max_length=MAX_LENGTH,
        batch_size=cell.batch_size,
        append_eos=True,
        seed=cell.seed,
        cache_dir=str(cell.folder / "hf_cache"),
    )
    model = DPO(
        **options,
        backbone={"name_or_path": "tiny", "init_seed": cell.seed},
        optimizer={
            "learning_rate": cell.learning_rate,
            "warmup_ratio": 0.03,
            "lr_schedule": "constant",
        },
    )
    trainer = quiet_trainer(job.epochs, cell.folder, limit_val_batches=0, callbacks=[Evaluate()])
    trainer.fit(model, datamodule=data)
    return records


def _policy_cell(job: PolicyJob) -> list[dict]:
    return [
        {
            "method": job.method,
            "config": dict(job.config),
            "seed": job.cell.seed,
            "length_bias": job.cell.length_bias,
            **r,
        }
        for r in train_policy(job)
    ]


def _rm_cell(job: RMJob) -> dict:
    return {
        "kind": "reward_model",
        "method": f"RM {job.name}",
        "seed": job.cell.seed,
        "length_bias": job.cell.length_bias,
        **train_reward_model(job),
    }


def experiment(quick: bool, seeds, length_biases=None) -> Experiment:
    """The declaration: methods, grids, seeds, regimes, selection and claims."""
    regimes = QUICK_REGIMES if quick else REGIMES
    if length_biases:
        bad = [b for b in length_biases if not 0.0 < b < 1.0]
        if bad:
            raise ValueError(f"--length-bias values must be in (0, 1), got {bad}")
        regimes = tuple({"length_bias": float(b)} for b in length_biases)
    return Experiment(
        name=NAME,
        title=TITLE,
        module=MODULE,
        methods=QUICK_METHODS if quick else METHODS,
        seeds=tuple(seeds or (QUICK_SEEDS if quick else FULL_SEEDS)),
        regimes=regimes,
        settings={
            **(QUICK_SETTINGS if quick else FULL_SETTINGS),
            "ensemble_biases": list(ENSEMBLE_BIASES),
        },
        select_metric="val",
        test_metrics=("test", "shorter_better", "prefers_longer"),
        claim_metric="test",
        claim_direction=+1,
        claim="S004: d-/e-DPO beat DPO (and IPO) under a length bias (true-reward accuracy on length-neutral test pairs)",
    )


def cells_of(exp: Experiment, regime: dict, root: Path) -> list[Cell]:
    s = exp.settings
    return [
        Cell(
            regime["length_bias"],
            seed,
            str(root),
            **{
                k: s[k]
                for k in (
                    "num_train",
                    "num_val",
                    "num_test",
                    "tie_share",
                    "label_noise",
                    "rm_epochs",
                    "batch_size",
                    "learning_rate",
                )
            },
        )
        for seed in exp.seeds
    ]


def run(exp: Experiment, workers: int, root: Path, progress=None) -> list[dict]:
    """Per regime: data, reward models, annotation, then every policy run; ``progress(records)``
    after each regime."""
    records: list[dict] = []
    for regime in exp.regimes:
        cells = cells_of(exp, regime, root)
        records.extend(write_cell_data(cell) for cell in cells)
        rm_jobs = [RMJob(c, name, reward_model_steps(c)) for c in cells for name in RM_NAMES]
        records.extend(run_jobs(_rm_cell, rm_jobs, workers))
        run_jobs(annotate_cell, cells, 1, progress=False)  # cheap: in this process
        jobs = [
            PolicyJob(
                cell,
                m.name,
                m.family,
                tuple(sorted(cfg.items())),
                exp.settings["epochs"],
                exp.settings["dp_beta"],
            )
            for cell in cells
            for m in exp.methods
            for cfg in m.grid_points()
        ]
        for out in run_jobs(_policy_cell, jobs, workers):
            records.extend(out)
        if progress is not None:
            progress(records)
    return records


def main(argv=None) -> dict:
    parser = experiment_parser(TITLE, "CI smoke form (small data, 3 methods, 1 regime)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes, one torch thread each (default 2; quick: 1)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=RUNS_DIR / NAME, help="data, checkpoints, annotated files"
    )
    parser.add_argument(
        "--length-bias",
        type=float,
        nargs="+",
        default=None,
        help="training length biases (the regimes; default 0.9 0.75 0.5, quick: 0.9)",
    )
    args = parser.parse_args(argv)
    try:
        exp = experiment(args.quick, args.seeds, args.length_bias)
    except ValueError as err:
        parser.error(str(err))
    workers = args.workers or (1 if args.quick else 2)
    started = time.perf_counter()
    return run_experiment(
        exp,
        lambda progress: run(exp, workers, args.work_dir, progress),
        args,
        argv,
        started,
        extra={"grid_size": GRID_SIZE},
    )


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- report
REGIME_FIELDS = ("length_bias",)
METRIC_LABELS = {
    "val": "val acc (training labels)",
    "test": "test acc (true reward)",
    "shorter_better": "test acc, better is shorter",
    "prefers_longer": "prefers longer (test)",
}
RM_LABELS = {
    "rm_val": "val acc (training labels)",
    "rm_test": "test acc (true reward)",
    "rm_prefers_longer": "prefers longer (test)",
}
# (method, reference) pairs compared; the first two are S004's claim against the baseline
COMPARISONS = (
    ("d-DPO", "DPO"),
    ("e-DPO", "DPO"),
    ("dp-DPO", "DPO"),
    ("p-DPO", "DPO"),
    ("IPO", "DPO"),
    ("d-DPO", "IPO"),
    ("e-DPO", "IPO"),
)
SUMMARY = {("d-DPO", "DPO"), ("e-DPO", "DPO")}


def regime_label(length_bias: float) -> str:
    if length_bias == 0.5:
        return "control: no length bias (0.5)"
    return f"length bias {length_bias:g} (chosen = longer)"


def _rm_label(method: str) -> str:
    name = method.removeprefix("RM ")
    return (
        "all pairs (d-/dp-DPO)"
        if name == "all"
        else f"subset, bias {name.removeprefix('subset')} (e-DPO)"
    )


def render(payload: dict) -> tuple[str, list[dict]]:
    """Markdown of the section and the claim rows, from the raw records only."""
    from benchmarks.robustness.common import fmt_mean_std, markdown_table
    from benchmarks.robustness.protocol import select, selected_point_row
    from benchmarks.robustness.report import fmt, fmt_p
    from benchmarks.robustness.stats import paired_t, verdict

    proto = payload["protocol"]
    methods, s = proto["methods"], proto["settings"]
    names = [m["name"] for m in methods]
    records = payload["records"]
    policy = [r for r in records if "kind" not in r]
    chosen = select(policy, methods, REGIME_FIELDS, proto["select_metric"])
    regimes = [
        r["length_bias"] for r in proto["regimes"] if any(k[0] == r["length_bias"] for k in chosen)
    ]
    data = [r for r in records if r.get("kind") == "data"]
    rms = [r for r in records if r.get("kind") == "reward_model"]
    grids = describe_grids(methods)
    status = "" if payload.get("complete") else " **Partial run: not every regime finished.**"
    lines = [
        f"Command: `{payload['command']}` · seeds {proto['seeds']} · {len(records)} records (data, reward "
        f"models, per-epoch policy runs) in [`results/{payload['experiment']}.json`](results/{payload['experiment']}.json).{status}",
        f"Data (`benchmarks/robustness/distillation.py: make_pairs`): the true reward r*(y) = [helpful ∈ y] − [bad ∈ y] "
        f"ignores length; {s['num_train']} training pairs, {s['tie_share']:.0%} of them with equal true reward "
        f"(coin-flip label), the others Bradley–Terry labels at temperature {s['label_noise']:g}; the chosen answer is "
        f"the longer one with probability = the regime's length bias. Every method trains on the same file "
        f"(prompt, chosen, rejected). Validation ({s['num_val']} pairs) is drawn like training and is the only "
        f"split that selects; test ({s['num_test']} pairs) has length independent of the label, no ties and clean "
        f"labels, so its accuracy is agreement with the true reward.",
        f"Reward models are **learned** here: the project's `RewardModel` (Bradley–Terry, tiny random-init Llama, "
        f"lr {s['learning_rate']:g}, batch {s['batch_size']}) fit by Lightning on all training pairs (d-DPO, dp-DPO) and "
        f"on subsets of the same pairs resampled to length biases {', '.join(f'{b:g}' for b in s['ensemble_biases'])} "
        f"(the e-DPO ensemble, as S004 §6.1), each for as many optimiser steps as {s['rm_epochs']} epoch(s) of all pairs; "
        f"their checkpoints score the training pairs through the annotation command (`python cli.py annotate "
        f"--reward-model rm.ckpt ...`), whose `chosen_scores`/`rejected_scores` columns the distillation methods read.",
        f"Policies: the project's `DPO` module (tiny random-init Llama, frozen-copy reference, AdamW lr "
        f"{s['learning_rate']:g}, batch {s['batch_size']}, up to {s['epochs']} epoch(s); the epoch is chosen like the grid "
        f"point). dp-DPO = d-DPO (β = {s['dp_beta']:g}) + γ·KL̂ on the data's responses (S004 eq. 11, §7.1); p-DPO = DPO (β = {s['dp_beta']:g}) "
        f"on the labels + the same γ·KL̂ term (S004 eq. 13); e-DPO = min "
        f"over the three reward models per minibatch. Grids ({max(len(Method(**m).grid_points()) for m in methods)} "
        f"configurations each; IPO's β is its τ): {grids}. Accuracies from the implicit reward β(log π − log π_ref).",
    ]
    if data:
        neutral = {
            g: fmt_mean_std([d["chosen_longer"]["test"] for d in data if d["length_bias"] == g])
            for g in regimes
        }
        lines.append(
            "'prefers longer' of a perfect ranker (the true reward) on the test pairs: "
            + "; ".join(f"{regime_label(g)}: {neutral[g]}" for g in regimes)
            + ". Above it a model has picked up the length preference."
        )
    if rms:
        header = ["regime", "reward model", "pairs", *RM_LABELS.values(), "seeds"]
        body = []
        for g in regimes:
            for name in dict.fromkeys(r["method"] for r in rms):
                here = [r for r in rms if r["length_bias"] == g and r["method"] == name]
                if here:
                    body.append(
                        [
                            regime_label(g),
                            _rm_label(name),
                            f"{sum(r['rm_pairs'] for r in here) / len(here):.0f}",
                            *(fmt_mean_std([r[k] for r in here]) for k in RM_LABELS),
                            len(here),
                        ]
                    )
        lines += [
            "### Learned reward models (mean ± sample sd over seeds)",
            markdown_table(header, body),
        ]
    header = ["regime", "method", *METRIC_LABELS.values(), "selected (per seed)", "seeds"]
    body = []
    for g in regimes:
        for m in names:
            picks = [chosen[k] for k in sorted(chosen) if k[0] == g and k[1] == m]
            if picks:
                body.append(selected_point_row([regime_label(g), m], picks, METRIC_LABELS))
    lines += [
        "### Policies at the validation-selected point (mean ± sample sd over seeds)",
        markdown_table(header, body),
    ]
    claims, rows = [], []
    for g in regimes:
        for method, ref in COMPARISONS:
            seeds = sorted(
                k[2] for k in chosen if k[0] == g and k[1] == method and (g, ref, k[2]) in chosen
            )
            if not seeds:
                continue
            st = {
                x: paired_t(
                    [chosen[(g, method, q)][x] for q in seeds],
                    [chosen[(g, ref, q)][x] for q in seeds],
                )
                for x in ("test", "shorter_better", "prefers_longer", "val")
            }
            main = st[proto["claim_metric"]]
            v = verdict(main["lo"], main["hi"], proto["claim_direction"])
            claims.append(
                {
                    "claim": (
                        f"S004 {method} > {ref} under a length bias"
                        if g != 0.5
                        else f"control: {method} vs {ref} without length bias"
                    )
                    if method in ("d-DPO", "e-DPO", "dp-DPO", "p-DPO")
                    else f"reference: {method} > {ref}",
                    "regime": regime_label(g),
                    "comparison": f"{method} vs {ref}",
                    "metric_label": "true-reward test accuracy",
                    **main,
                    "verdict": v,
                    "summary": (method, ref) in SUMMARY,
                    "command": payload["command"],
                }
            )
            rows.append(
                [
                    regime_label(g),
                    f"{method} − {ref}",
                    *(
                        f"{fmt(t['mean'], sign=True)} [{fmt(t['lo'], sign=True)}, {fmt(t['hi'], sign=True)}]"
                        for t in (
                            st[x] for x in ("test", "shorter_better", "prefers_longer", "val")
                        )
                    ),
                    fmt_p(main["p"]),
                    f"{main['wins']}/{main['n']}",
                    f"**{v}**",
                ]
            )
    header = [
        "regime",
        "paired difference",
        "Δ test acc [95 % CI]",
        "Δ acc, better is shorter [95 % CI]",
        "Δ prefers longer [95 % CI]",
        "Δ val acc [95 % CI]",
        "p (test acc)",
        "wins/seeds (test acc)",
        "verdict (test acc > 0)",
    ]
    lines += [
        "### Paired by seed (each method at its own validation-selected point)",
        markdown_table(header, rows),
    ]
    return "\n\n".join(lines), claims
