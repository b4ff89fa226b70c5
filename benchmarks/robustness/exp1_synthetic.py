"""Experiment 1 (seed S000): do DR reward models beat Bradley-Terry under a controlled shift?

    python -m benchmarks.robustness.exp1_synthetic                     # full form (10 seeds)
    python -m benchmarks.robustness.exp1_synthetic --quick             # CI smoke form
    python -m benchmarks.robustness.exp1_synthetic --seeds 10 11 12    # other seeds

Protocol (declared below, before anything runs; :mod:`benchmarks.robustness.protocol`):

* data: :mod:`lightning_robust.data.synthetic` through ``PreferenceDataModule(train="synthetic")``;
  training and validation have 10 % minority domain β; the shifted test split has 70 % β, the
  minority test split 100 % β. Regimes: ``conflict`` 0 (covariate shift only, S000's setting:
  one rule for every prompt) and 1 (β follows the reversed rule), label noise T = 0 and
  T = 0.5 (Bradley-Terry temperature of the training labels; evaluation labels are clean).
* model: the project's ``RewardModel("tiny")`` trained by Lightning; every method is a
  :class:`~lightning_robust.weighting.RobustWeighting` passed to it (no second training loop).
* methods and grids, each with the same budget of :data:`GRID_SIZE` configurations (the epoch
  is chosen for every method alike from the per-epoch validation accuracy of each run):
  Bradley-Terry (``ERM``) over learning rates; DR-TV and DR-χ² (S000) over ρ; group DRO with the
  domain labels (``GroupDRO``, Sagawa et al. 2020) over η; importance reweighting of the two
  domains to equal total weight per batch (``GroupDRO(eta=0)``: q stays uniform, so every
  present group gets weight 1/2 split over its rows) over learning rates.
* selection: per seed and method, the (configuration, epoch) with the highest accuracy on the
  in-distribution validation split; ties go to the earlier configuration and epoch. The shifted
  and minority splits are read only for the selected point.
* claims: paired per-seed difference of shifted accuracy against the selected Bradley-Terry run,
  95 % t interval, paired t-test p; "reproduces" only when the interval is above zero.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from benchmarks.robustness.common import RUNS_DIR, fit_synthetic_reward_model, run_jobs
from benchmarks.robustness.protocol import Experiment, Method, experiment_parser, run_experiment

NAME = "exp1_synthetic"
MODULE = f"benchmarks.robustness.{NAME}"
TITLE = "Exp 1 (S000): DR reward models under a controlled synthetic shift"
GRID_SIZE = 2
BASE_LR = 1e-3

METHODS = (
    Method("BT", "btl", {"learning_rate": [1e-3, 3e-3]}, baseline=True),
    Method("DR-TV", "tv", {"rho": [0.2, 0.4]}),
    Method("DR-χ²", "chi2", {"rho": [0.5, 1.0]}),
    Method("group DRO", "group_dro", {"eta": [0.03, 0.3]}),
    Method("importance reweighting", "reweight", {"learning_rate": [1e-3, 3e-3]}),
)
QUICK_METHODS = (
    Method("BT", "btl", {"learning_rate": [1e-3]}, baseline=True),
    Method("DR-TV", "tv", {"rho": [0.4]}),
    Method("group DRO", "group_dro", {"eta": [0.3]}),
)
REGIMES = (
    {"conflict": 0.0, "label_noise": 0.0},
    {"conflict": 1.0, "label_noise": 0.0},
    {"conflict": 1.0, "label_noise": 0.5},
    {"conflict": 0.0, "label_noise": 0.5},
)
QUICK_REGIMES = ({"conflict": 1.0, "label_noise": 0.0},)
FULL_SEEDS = tuple(range(10))
QUICK_SEEDS = (0, 1)
FULL_SETTINGS = {"num_train": 600, "num_eval": 200, "epochs": 2, "batch_size": 16}
# The form first run under the protocol (before the trim to the 15-minute limit); its verdicts
# differ from the trimmed form's under rule conflict, so both are kept (``--longer``).
LONGER_SETTINGS = {"num_train": 1000, "num_eval": 400, "epochs": 3, "batch_size": 16}
QUICK_SETTINGS = {"num_train": 160, "num_eval": 64, "epochs": 2, "batch_size": 16}
METRICS = ("val", "shifted", "minority")


@dataclass(frozen=True)
class Job:
    """One RewardModel run: a method's configuration in one regime and seed."""

    method: str
    family: str
    config: tuple  # ((name, value), ...) of the grid point
    conflict: float
    label_noise: float
    seed: int
    num_train: int
    num_eval: int
    epochs: int
    batch_size: int


def make_weighting(family: str, config: dict):
    """The project's weighting of a method family with the grid point ``config``."""
    from lightning_robust.weighting import ERM, ChiSquareBall, GroupDRO, TVBall

    if family == "btl":
        return ERM()
    if family == "tv":
        return TVBall(config["rho"])
    if family == "chi2":
        return ChiSquareBall(config["rho"])
    if family == "group_dro":
        return GroupDRO(2, eta=config["eta"])
    if family == "reweight":
        return GroupDRO(2, eta=0.0)
    raise ValueError(f"unknown method family {family!r}")


def train_run(job: Job) -> list[dict]:
    """Train one ``RewardModel``; one record per epoch with the accuracy on every split."""
    config = dict(job.config)
    return fit_synthetic_reward_model(
        lambda: make_weighting(job.family, config),
        seed=job.seed,
        epochs=job.epochs,
        batch_size=job.batch_size,
        learning_rate=config.get("learning_rate", BASE_LR),
        runs_dir=RUNS_DIR / NAME,
        metrics={
            "val": "val/accuracy",
            "shifted": "val/shifted/accuracy",
            "minority": "val/minority/accuracy",
        },
        num_train=job.num_train,
        num_eval=job.num_eval,
        conflict=job.conflict,
        label_noise=job.label_noise,
    )


def _run_cell(job: Job) -> list[dict]:
    return [
        {
            "method": job.method,
            "config": dict(job.config),
            "seed": job.seed,
            "conflict": job.conflict,
            "label_noise": job.label_noise,
            **r,
        }
        for r in train_run(job)
    ]


def experiment(quick: bool, seeds, longer: bool = False) -> Experiment:
    """The declaration: methods, grids, seeds, regimes, selection and claims (``longer``: the
    untrimmed form, written to ``<name>_longer.json``)."""
    settings = QUICK_SETTINGS if quick else (LONGER_SETTINGS if longer else FULL_SETTINGS)
    return Experiment(
        name=f"{NAME}_longer" if longer and not quick else NAME,
        title=TITLE,
        module=MODULE,
        methods=QUICK_METHODS if quick else METHODS,
        seeds=tuple(seeds or (QUICK_SEEDS if quick else FULL_SEEDS)),
        regimes=QUICK_REGIMES if quick else REGIMES,
        settings=settings,
        select_metric="val",
        test_metrics=("shifted", "minority", "val"),
        claim_metric="shifted",
        claim_direction=+1,
        claim="S000: a DR reward model beats Bradley–Terry on the shifted split (shifted accuracy)",
    )


def run(exp: Experiment, workers: int, progress=None, done: list[dict] | None = None) -> list[dict]:
    """All runs of one regime at a time (``progress(records)`` after each regime); regimes with
    records in ``done`` (a resumed run of the same declaration) are kept, not rerun."""
    records: list[dict] = list(done or [])
    finished = {(r["conflict"], r["label_noise"]) for r in records}
    for regime in exp.regimes:
        if (regime["conflict"], regime["label_noise"]) in finished:
            continue
        jobs = [
            Job(
                m.name,
                m.family,
                tuple(sorted(cfg.items())),
                regime["conflict"],
                regime["label_noise"],
                seed,
                **exp.settings,
            )
            for seed in exp.seeds
            for m in exp.methods
            for cfg in m.grid_points()
        ]
        for out in run_jobs(_run_cell, jobs, workers):
            records.extend(out)
        if progress is not None:
            progress(records)
    return records


def resumable_records(exp: Experiment, args) -> list[dict]:
    """Records of complete regimes in the existing JSON, when its declaration matches ``exp``
    (methods, seeds, settings); otherwise a clear error."""
    import json
    from pathlib import Path

    from benchmarks.robustness.protocol import results_path

    path = Path(args.out) if args.out else results_path(exp.name)
    if not path.exists():
        return []
    saved = json.loads(path.read_text(encoding="utf-8"))
    mine = exp.declaration()
    for key in ("methods", "seeds", "settings"):
        if saved["protocol"][key] != mine[key]:
            raise SystemExit(f"--resume: {path} was run with other {key}; rerun without --resume")
    per_regime = (
        len(exp.seeds) * sum(len(m.grid_points()) for m in exp.methods) * exp.settings["epochs"]
    )
    counts: dict = {}
    for r in saved["records"]:
        counts[(r["conflict"], r["label_noise"])] = (
            counts.get((r["conflict"], r["label_noise"]), 0) + 1
        )
    complete = {k for k, n in counts.items() if n == per_regime}
    return [r for r in saved["records"] if (r["conflict"], r["label_noise"]) in complete]


def main(argv=None) -> dict:
    parser = experiment_parser(TITLE, "CI smoke form (small data, 3 methods, 1 regime)")
    parser.add_argument("--workers", type=int, default=2, help="processes (one torch thread each)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished regimes of the existing JSON (same methods, seeds, settings)",
    )
    parser.add_argument(
        "--longer",
        action="store_true",
        help="the untrimmed form (1000 pairs, 400 per split, up to 3 epochs; ~21 min on 2 cores)",
    )
    args = parser.parse_args(argv)
    exp = experiment(args.quick, args.seeds, args.longer)
    done = resumable_records(exp, args) if args.resume else None
    started = time.perf_counter()
    import sys

    command_argv = [
        a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"
    ]  # same result
    return run_experiment(
        exp,
        lambda progress: run(exp, args.workers, progress, done),
        args,
        command_argv,
        started,
        extra={
            "grid_size": GRID_SIZE,
            "job_fields": list(asdict(Job("", "", (), 0, 0, 0, 0, 0, 0, 0))),
        },
    )


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- report
REGIME_FIELDS = ("conflict", "label_noise")
METRIC_LABELS = {"val": "in-dist (val)", "shifted": "shifted (70 % β)", "minority": "minority β"}
SUMMARY_METHODS = (
    "DR-TV",
    "DR-χ²",
    "group DRO",
)  # S000's claim + the strongest reference; all in the section


def regime_label(conflict: float, label_noise: float) -> str:
    shift = "covariate shift (conflict 0)" if conflict == 0 else f"rule conflict ({conflict:g})"
    return f"{shift}, label noise T={label_noise:g}"


def render(payload: dict) -> tuple[str, list[dict]]:
    """Markdown of the section and the claim rows, from the raw records only."""
    from benchmarks.robustness.common import markdown_table
    from benchmarks.robustness.protocol import select, selected_point_row
    from benchmarks.robustness.report import fmt, fmt_p
    from benchmarks.robustness.stats import paired_t, verdict

    proto = payload["protocol"]
    methods = proto["methods"]
    base = next(m["name"] for m in methods if m["baseline"])
    chosen = select(payload["records"], methods, REGIME_FIELDS, proto["select_metric"])
    regimes = [tuple(r[f] for f in REGIME_FIELDS) for r in proto["regimes"]]
    regimes = [g for g in regimes if any(k[:2] == g for k in chosen)]
    settings = proto["settings"]
    grids = "; ".join(
        f"{m['name']}: "
        + (
            ", ".join(
                f"{k} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in m["grid"].items()
            )
            or "no hyper-parameter"
        )
        for m in methods
    )
    status = "" if payload.get("complete") else " **Partial run: not every regime finished.**"
    lines = [
        f"Command: `{payload['command']}` · seeds {proto['seeds']} · {len(payload['records'])} per-epoch records "
        f"in [`results/{payload['experiment']}.json`](results/{payload['experiment']}.json).{status}",
        f"Tiny random-init `RewardModel` on `PreferenceDataModule(train='synthetic')`: {settings['num_train']} "
        f"training pairs (10 % minority domain β), {settings['num_eval']} pairs per evaluation split "
        f"(validation: 10 % β, the selection split; shifted: 70 % β; minority: β only; evaluation labels "
        f"clean), batch {settings['batch_size']}, AdamW, 3 % warm-up then constant learning rate "
        f"({BASE_LR:g} unless the grid sets it), up to {settings['epochs']} epochs. Grids (each "
        f"{max(len(Method(**m).grid_points()) for m in methods)} configurations; the epoch 1..{settings['epochs']} is "
        f"chosen the same way for every method): {grids}. Group DRO uses the domain labels; importance "
        f"reweighting gives each domain equal total weight per batch (`GroupDRO(eta=0)`).",
    ]
    header = [
        "regime",
        "method",
        *(METRIC_LABELS[m] for m in METRICS),
        "selected (per seed)",
        "seeds",
    ]
    body = []
    for g in regimes:
        for m in methods:
            picks = [chosen[k] for k in sorted(chosen) if k[:2] == g and k[2] == m["name"]]
            if not picks:
                continue
            body.append(selected_point_row([regime_label(*g), m["name"]], picks, METRICS))
    lines += [
        "### Accuracy at the validation-selected point (mean ± sample sd over seeds)",
        markdown_table(header, body),
    ]
    claims, rows = [], []
    for g in regimes:
        for m in methods:
            if m["name"] == base:
                continue
            seeds = sorted(
                s
                for (*gg, name, s) in chosen
                if tuple(gg) == g and name == m["name"] and (*g, base, s) in chosen
            )
            if not seeds:
                continue
            stats_by_metric = {
                x: paired_t(
                    [chosen[(*g, m["name"], s)][x] for s in seeds],
                    [chosen[(*g, base, s)][x] for s in seeds],
                )
                for x in METRICS
            }
            st = stats_by_metric[proto["claim_metric"]]
            v = verdict(st["lo"], st["hi"], proto["claim_direction"])
            claims.append(
                {
                    "claim": (
                        "S000 DR reward model > BT out of distribution"
                        if m["family"] in ("tv", "chi2")
                        else f"reference: {m['name']} (domain labels) > BT out of distribution"
                    ),
                    "regime": regime_label(*g),
                    "comparison": f"{m['name']} vs {base}",
                    "metric_label": "shifted accuracy",
                    **st,
                    "verdict": v,
                    "summary": m["name"] in SUMMARY_METHODS,
                    "command": payload["command"],
                }
            )
            rows.append(
                [
                    regime_label(*g),
                    f"{m['name']} − {base}",
                    *(
                        f"{fmt(s['mean'], sign=True)} [{fmt(s['lo'], sign=True)}, {fmt(s['hi'], sign=True)}]"
                        for s in (stats_by_metric[x] for x in ("shifted", "minority", "val"))
                    ),
                    fmt_p(st["p"]),
                    f"{st['wins']}/{st['n']}",
                    f"**{v}**",
                ]
            )
    header = [
        "regime",
        "paired difference",
        "Δ shifted [95 % CI]",
        "Δ minority [95 % CI]",
        "Δ in-dist [95 % CI]",
        "p (shifted)",
        "wins/seeds (shifted)",
        "verdict (shifted > 0)",
    ]
    lines += [
        f"### Paired against {base} (per seed, each at its own validation-selected point)",
        markdown_table(header, rows),
    ]
    return "\n\n".join(lines), claims
