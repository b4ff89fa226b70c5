"""Experiment 4b, tiny LM (seed S003): does DRRO reach a higher peak gold reward than GRPO and DRO?

    python -m benchmarks.robustness.exp4b_lm            # full form (5 seeds, 2 processes)
    python -m benchmarks.robustness.exp4b_lm --quick    # CI smoke form
    python -m benchmarks.robustness.exp4b_lm --seeds 5 6 7 8 9 --out /tmp/lm.json

The synthetic prompt task of :mod:`benchmarks.robustness.overoptimization` (old protocol): a tiny
random-init Llama policy (full weights) is trained with the project's online modules on an
exploitable *proxy* reward (it pays for length and repeated topic words) while the *gold* reward
(share of real words, up to three different topic words, no repeats) is only logged. Every
method is one of the package's modules (no second training loop):

* ``GRPO``: :class:`~lightning_robust.modules.GRPO`, ``shaping="none"``, grid over the KL
  coefficient β (per-token k3 term in the loss; S003 uses β = 0);
* ``DRRO hard``: GRPO with ``shaping="drro_hard"``, fixed budget, grid over δ̃;
* ``DRRO soft dynamic``: S003's final method (soft bonus, dynamic budget δ̃0 + c·KL, c = 0.05,
  W = 10), grid over δ̃0 × τ; the bonus in the ``weight`` form δ̃·ω (docs/ALGORITHMS.md §8.5: the
  default ``mass`` form δ̃·G·p̃·ω is ≈ 0 for the very uneven p̃ of LM completions, and the old
  protocol's run showed it training like GRPO);
* ``DRO``: GRPO with ``shaping="dro"`` (the value-robust baseline), fixed budget, grid over δ̃;
* ``PPO`` (with ``--ppo`` only): :class:`~lightning_robust.modules.PPO` (value head, GAE), grid over
  its KL-in-reward β. A PPO run costs about 1.1 times a GRPO run (13.1 vs 12.0 s CPU, one
  thread, evaluating every 4 rollouts). The committed run includes it (``--ppo --workers 2``:
  100 runs, 578 s CPU, 5.1 minutes on two idle cores); its 80 non-PPO runs equal, record for
  record, those of the earlier run without PPO (one worker), so the flag adds rows only.

Protocol (:mod:`benchmarks.robustness.protocol`): every method has a grid of the same size
(:data:`GRID_SIZE`); the learning rate, rollouts and sampling are shared. Every ``val_every``
rollouts (and at step 0) the policy samples one completion for each of ``num_val``
**validation** prompts (the task's ``val`` split) and each of ``num_test`` **test** prompts (the
``val`` split of another generator seed: an independent draw from the same prompt
distribution, sampled with its own random stream). Per seed and method the checkpoint — grid
point and evaluation step — with the highest mean **validation gold** is selected; the claim is
the mean **test gold** there. Selecting on validation *gold* is the oracle-peak protocol S003
uses (it tunes on held-out prompts scored by the gold model) and what "peak gold" means; it is
done on prompts and samples that the reported number does not reuse, so the reported peak is
not the maximum of noisy values it is read from (the old protocol's flaw). Selecting on the
proxy instead would pick the most over-optimised checkpoint; the test gold there is shown as a
column too. Claims: paired per seed (:func:`~benchmarks.robustness.stats.paired_t`) DRRO − GRPO
and DRRO − DRO (S003: DRRO's peak gold is above both), and DRRO − PPO for reference
(with ``--ppo``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

from benchmarks.robustness.common import (
    RUNS_DIR,
    quiet_lightning,
    quiet_trainer,
    run_jobs,
    seed_all,
)
from benchmarks.robustness.overoptimization import policy_module, prompt_data
from benchmarks.robustness.protocol import Experiment, Method, run_experiment

NAME = "exp4b_lm"
MODULE = f"benchmarks.robustness.{NAME}"
TITLE = (
    "Exp 4b, tiny LM (S003): DRRO vs GRPO and DRO (PPO with --ppo) at the validation-selected peak"
)
GRID_SIZE = 4
METHODS = (
    Method("GRPO", "grpo", {"kl_coef": [0.0, 0.01, 0.03, 0.1]}, baseline=True),
    Method("DRRO hard", "drro_hard", {"delta": [0.25, 0.5, 1.0, 2.0]}),
    Method("DRRO soft dynamic", "drro_soft", {"delta0": [0.1, 0.5], "tau": [0.2, 1.0]}),
    Method("DRO", "dro", {"delta": [0.1, 0.25, 0.5, 1.0]}),
)
# with --ppo (not in the committed run: 25 more runs, see the module docstring)
PPO_METHOD = Method("PPO", "ppo", {"beta": [0.01, 0.02, 0.05, 0.1]})
QUICK_METHODS = (
    Method("GRPO", "grpo", {"kl_coef": [0.0]}, baseline=True),
    Method("DRRO hard", "drro_hard", {"delta": [0.5]}),
    Method("DRO", "dro", {"delta": [0.5]}),
)
FULL_SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = (0, 1)
COMMON = {
    "prompts_per_rollout": 4,
    "num_generations": 4,
    "max_new_tokens": 12,
    "learning_rate": 5e-3,
}
FULL_SETTINGS = {**COMMON, "rollouts": 64, "val_every": 8, "num_val": 64, "num_test": 128}
QUICK_SETTINGS = {**COMMON, "rollouts": 4, "val_every": 2, "num_val": 8, "num_test": 8}
TEST_SEED_OFFSET = 100_003  # the test prompts: the val split of generator seed (seed + this)
# per evaluation point: (record field, logged metric); "val/test/..." is the second evaluation set
METRICS = {
    "val_gold": "val/reward/gold",
    "val_proxy": "val/reward/proxy",
    "test_gold": "val/test/reward/gold",
    "test_proxy": "val/test/reward/proxy",
    "test_kl": "val/test/kl",
    "test_length": "val/test/response_length",
}
DRRO = ("DRRO hard", "DRRO soft dynamic")


def module_arguments(family: str, config: dict) -> tuple[str, dict]:
    """``(module kind, keyword arguments)`` of a method family at the grid point ``config``."""
    if family == "ppo":
        return "PPO", {"beta": config["beta"]}
    if family == "grpo":
        return "GRPO", {"shaping": "none", "kl_coef": config["kl_coef"]}
    if family in ("drro_hard", "dro"):
        return "GRPO", {"shaping": family, "budget": "fixed", "delta": config["delta"]}
    if family == "drro_soft":
        return "GRPO", {
            "shaping": "drro_soft",
            "budget": "dynamic",
            "delta0": config["delta0"],
            "budget_c": 0.05,
            "budget_window": 10,
            "tau": config["tau"],
            "bonus_form": "weight",
        }
    raise ValueError(f"unknown method family {family!r}")


@dataclass(frozen=True)
class Job:
    """One online-RL run: a method's grid point and a seed."""

    method: str
    family: str
    config: tuple  # ((name, value), ...) of the grid point
    seed: int
    rollouts: int
    val_every: int
    num_val: int
    num_test: int
    prompts_per_rollout: int
    num_generations: int
    max_new_tokens: int
    learning_rate: float


def held_out_data(job: Job, kind: str):
    """The synthetic prompt task with two evaluation sets, ``val`` (the datamodule's own
    validation split: selects) and ``test`` (the validation split of seed ``seed +``
    :data:`TEST_SEED_OFFSET`: reported). The online modules log the second set as ``val/test/*``
    and sample it with its own random stream."""
    from lightning_robust.data import PromptDataModule

    class ValAndTestPrompts(PromptDataModule):
        def __init__(self, test: PromptDataModule, **kwargs):
            super().__init__(**kwargs)
            self.test = test
            self.val_set_names = ["val", "test"]

        def setup(self, stage=None):
            super().setup(stage)
            self.test.setup(stage)

        def val_dataloader(self):
            return [super().val_dataloader(), self.test.val_dataloader()]

    shape = (job.prompts_per_rollout, job.num_generations)
    test = prompt_data(PromptDataModule, kind, *shape, 1, job.num_test, job.seed + TEST_SEED_OFFSET)
    return prompt_data(
        ValAndTestPrompts, kind, *shape, job.rollouts, job.num_val, job.seed, test=test
    )


def train_run(job: Job) -> list[dict]:
    """Train one configuration; one record per evaluation point (step 0 included)."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    quiet_lightning()
    seed_all(job.seed)
    L.seed_everything(job.seed, verbose=False)
    kind, kwargs = module_arguments(job.family, dict(job.config))
    model = policy_module(
        kind,
        job.seed,
        max_new_tokens=job.max_new_tokens,
        learning_rate=job.learning_rate,
        num_generations=job.num_generations,
        **kwargs,
    )
    updates_per_rollout = model.hparams.ppo_epochs * model.hparams.num_minibatches
    points: list[dict] = []

    class EvaluationPoints(Callback):
        def on_validation_end(self, trainer, pl_module):
            logged = trainer.callback_metrics
            points.append(
                {
                    "rollout": trainer.global_step // updates_per_rollout,
                    **{k: round(float(logged[key]), 4) for k, key in METRICS.items()},
                }
            )

    work = RUNS_DIR / NAME / f"{job.family}_{job.seed}"
    trainer = quiet_trainer(
        1, work, val_check_interval=job.val_every, callbacks=[EvaluationPoints()]
    )
    data = held_out_data(job, kind)
    trainer.validate(model, datamodule=data, verbose=False)  # step 0: the initial policy
    trainer.fit(model, datamodule=data)
    return points


def _run_cell(job: Job) -> list[dict]:
    return [
        {"method": job.method, "config": dict(job.config), "seed": job.seed, **point}
        for point in train_run(job)
    ]


def experiment(quick: bool, seeds, ppo: bool = False) -> Experiment:
    return Experiment(
        name=NAME,
        title=TITLE,
        module=MODULE,
        methods=(QUICK_METHODS if quick else METHODS) + ((PPO_METHOD,) if ppo else ()),
        seeds=tuple(seeds or (QUICK_SEEDS if quick else FULL_SEEDS)),
        regimes=({"task": "synthetic prompts, proxy vs gold"},),
        settings=QUICK_SETTINGS if quick else FULL_SETTINGS,
        select_metric="val_gold",
        test_metrics=("test_gold", "test_proxy", "test_kl", "test_length"),
        claim_metric="test_gold",
        claim_direction=+1,
        claim="S003: DRRO reaches a higher peak gold reward than GRPO and DRO",
    )


def run(exp: Experiment, workers: int, progress) -> list[dict]:
    """Every grid point of every method, one seed at a time (``progress(records)`` after each
    seed, so a stopped run keeps its finished seeds, marked partial)."""
    records: list[dict] = []
    for seed in exp.seeds:
        jobs = [
            Job(m.name, m.family, tuple(sorted(cfg.items())), seed, **exp.settings)
            for m in exp.methods
            for cfg in m.grid_points()
        ]
        records += [r for out in run_jobs(_run_cell, jobs, workers) for r in out]
        progress(records)
    return records


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke form (3 methods, 4 rollouts, 8 + 8 prompts)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0..4 (quick: 0 1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes, one torch thread each (default 2; quick 1)",
    )
    parser.add_argument(
        "--ppo",
        action="store_true",
        help="add PPO (value head, KL-in-reward beta grid) to the methods",
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default docs/results/<name>.json; quick: none)"
    )
    args = parser.parse_args(argv)
    exp = experiment(args.quick, args.seeds, args.ppo)
    workers = args.workers or (1 if args.quick else 2)
    return run_experiment(
        exp,
        lambda progress: run(exp, workers, progress),
        args,
        argv,
        time.perf_counter(),
        extra={"grid_size": GRID_SIZE, "job_fields": list(asdict(Job("", "", (), 0, *[0] * 8)))},
    )


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- report
def _runs(records: list[dict]) -> dict[tuple, list[dict]]:
    """``{(method, config json, seed): evaluation points in rollout order}``."""
    import json

    runs: dict[tuple, list[dict]] = {}
    for r in records:
        runs.setdefault(
            (r["method"], json.dumps(r["config"], sort_keys=True), r["seed"]), []
        ).append(r)
    return runs


def render(payload: dict) -> tuple[str, list[dict]]:
    """Markdown of the section and the claim rows, from the raw records only."""
    import json
    from collections import Counter

    from benchmarks.robustness.common import fmt_mean_std, markdown_table
    from benchmarks.robustness.protocol import select
    from benchmarks.robustness.report import fmt, fmt_p
    from benchmarks.robustness.stats import paired_t, verdict

    proto = payload["protocol"]
    methods = proto["methods"]
    base = next(m["name"] for m in methods if m["baseline"])
    records = payload["records"]
    chosen = select(records, methods, (), proto["select_metric"])  # {(method, seed): record}
    by_proxy = select(records, methods, (), "val_proxy")
    runs = _runs(records)

    def final(r: dict) -> dict:
        return runs[(r["method"], json.dumps(r["config"], sort_keys=True), r["seed"])][-1]

    s = proto["settings"]
    names = [m["name"] for m in methods]
    grids = "; ".join(
        f"{m['name']}: "
        + " × ".join(
            f"{k} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in m["grid"].items()
        )
        for m in methods
    )
    lines = [
        f"Command: `{payload['command']}` · seeds {proto['seeds']} · {len(records)} evaluation points in "
        f"[`results/{payload['experiment']}.json`](results/{payload['experiment']}.json)"
        + ("" if payload.get("complete") else " **(partial run)**")
        + ".",
        "Tiny random-init Llama policy trained by the project's `GRPO`"
        + (" / `PPO`" if "PPO" in names else "")
        + " modules on the synthetic prompt task's exploitable proxy reward (gold only logged): "
        f"{s['rollouts']} rollouts of {s['prompts_per_rollout']} prompts × G = {s['num_generations']} "
        "completions"
        + (
            f" (PPO: {s['prompts_per_rollout'] * s['num_generations']} prompts × 1)"
            if "PPO" in names
            else ""
        )
        + f", {s['max_new_tokens']} new tokens, lr {s['learning_rate']:g} for all. Every "
        f"{s['val_every']} rollouts and at step 0 one completion is sampled for each of {s['num_val']} "
        f"validation prompts and {s['num_test']} test prompts (an independent draw of prompts, its own "
        "sampling stream). Per seed and method the checkpoint (grid point × step) with the highest "
        "**validation gold** is selected (S003's oracle-peak protocol, on prompts the reported number does "
        "not reuse); reported: the **test** gold there. Grids "
        f"({max(len(Method(**m).grid_points()) for m in methods)} points each): {grids}."
        + (
            " DRRO soft: dynamic budget δ̃0 + 0.05·KL (W = 10), bonus in the `weight` form."
            if "DRRO soft dynamic" in names
            else ""
        )
        + ' "Proxy-selected": the test gold at the checkpoint with the highest validation *proxy* '
        "(what one gets without a gold reward).",
    ]
    header = [
        "method",
        "test gold at peak",
        "val gold at peak (selection, optimistic)",
        "test KL at peak",
        "test proxy at peak",
        "test gold, last step",
        "test gold, proxy-selected",
        "selected grid point",
        "selected rollout",
        "seeds",
    ]
    body = []
    for m in methods:
        picks = [chosen[k] for k in sorted(chosen) if k[0] == m["name"]]
        proxy_picks = [by_proxy[k] for k in sorted(by_proxy) if k[0] == m["name"]]
        configs = Counter(
            ", ".join(f"{k}={v:g}" for k, v in sorted(p["config"].items())) for p in picks
        )
        body.append(
            [
                m["name"],
                fmt_mean_std([p["test_gold"] for p in picks]),
                fmt_mean_std([p["val_gold"] for p in picks]),
                fmt_mean_std([p["test_kl"] for p in picks], 2),
                fmt_mean_std([p["test_proxy"] for p in picks]),
                fmt_mean_std([final(p)["test_gold"] for p in picks]),
                fmt_mean_std([p["test_gold"] for p in proxy_picks]),
                ", ".join(f"{c} ×{n}" for c, n in configs.most_common()),
                ", ".join(str(p["rollout"]) for p in picks),
                len(picks),
            ]
        )
    lines += [
        "### Test gold at the validation-selected peak (mean ± sd over seeds)",
        markdown_table(header, body),
    ]

    comparisons = [(a, b) for a in DRRO for b in (base, "DRO", "PPO") if a in names and b in names]
    if not any(a in names for a in DRRO):  # the quick form: whatever is there against the baseline
        comparisons = [(a, base) for a in names if a != base]
    claims, rows = [], []
    for a, b in comparisons:
        seeds = sorted(k[1] for k in chosen if k[0] == a and (b, k[1]) in chosen)
        if not seeds:
            continue
        st = paired_t(
            [chosen[(a, x)]["test_gold"] for x in seeds],
            [chosen[(b, x)]["test_gold"] for x in seeds],
        )
        v = verdict(st["lo"], st["hi"], proto["claim_direction"])
        claims.append(
            {
                "claim": "S003 DRRO > baseline in peak gold (tiny LM, synthetic prompts)",
                "regime": "tiny LM, synthetic prompts (peak selected on validation gold)",
                "comparison": f"{a} vs {b}",
                "metric_label": "test gold at the peak",
                **st,
                "verdict": v,
                "summary": b != "PPO",
                "command": payload["command"],
            }
        )
        rows.append(
            [
                f"{a} − {b}",
                fmt(st["mean"], sign=True),
                f"[{fmt(st['lo'], sign=True)}, {fmt(st['hi'], sign=True)}]",
                fmt_p(st["p"]),
                f"{st['wins']}/{st['n']}",
                f"**{v}**",
            ]
        )
    header = [
        "paired difference",
        "mean Δ test gold",
        "95 % CI (seeds, t)",
        "p",
        "wins/seeds",
        "verdict (Δ > 0)",
    ]
    lines += [
        "### Paired per seed, each method at its own validation-selected peak",
        markdown_table(header, rows),
    ]
    return "\n\n".join(lines), claims
