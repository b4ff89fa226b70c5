"""Experiment 4b (issue 7; seed S003): reward over-optimisation of a tiny LM policy.

    python -m benchmarks.robustness.overoptimization            # full: 3 seeds
    python -m benchmarks.robustness.overoptimization --quick    # smoke version (CI)

The synthetic prompt task (:mod:`lightning_robust.data.synthetic_prompts`): prompts ask for a
list of on-topic words; the *proxy* reward (the training signal) counts vocabulary and on-topic
words, so it agrees with the *gold* reward (evaluation only) while repetitions are rare, but it
pays for length and repetition, which the gold reward punishes. A tiny random-init Llama policy
(full weights) is trained with the project's online modules on the proxy:

* ``GRPO``: :class:`~lightning_robust.modules.GRPO` with ``shaping="none"``;
* ``PPO``: :class:`~lightning_robust.modules.PPO` (value head, GAE, KL-in-reward ``beta``);
* ``DRO``: GRPO with ``shaping="dro"`` (the value-robust baseline, fixed budget);
* ``DRRO hard`` / ``DRRO soft``, fixed or dynamic budget (S003's final method: soft + dynamic),
  the soft bonus in the default ``mass`` form and in the ``weight`` form (docs/ALGORITHMS.md §8.5).

Every ``val_every`` rollouts the policy samples one completion per validation prompt; the
sequence-level KL to the initial policy (k3), the proxy and the gold reward are recorded (the
:class:`~lightning_robust.callbacks.RewardKLFrontier` points, ``val`` stage). Reported per
method, mean ± std over seeds: the peak validation gold reward, the KL at the peak, and the final
gold, proxy and KL; plotted: gold and proxy vs KL (the S003 frontier). Budgets, ``tau`` and
learning rates are *chosen here* (the repo's tiny configs), not tuned on the gold reward.
"""

from __future__ import annotations

import argparse
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
    write_block,
)
from benchmarks.robustness.simplex import SECTION, SECTION_TITLE

MODULE = "benchmarks.robustness.overoptimization"

# method -> (module, keyword arguments); budgets chosen here (the repo's tiny configs' values)
METHODS: dict[str, tuple[str, dict]] = {
    "GRPO": ("GRPO", {"shaping": "none"}),
    "PPO": ("PPO", {}),
    "DRO": ("GRPO", {"shaping": "dro", "budget": "fixed", "delta": 0.5}),
    "DRRO hard fixed": ("GRPO", {"shaping": "drro_hard", "budget": "fixed", "delta": 0.5}),
    "DRRO hard dynamic": (
        "GRPO",
        {"shaping": "drro_hard", "budget": "dynamic", "delta0": 0.1, "budget_c": 0.05},
    ),
    "DRRO soft fixed": ("GRPO", {"shaping": "drro_soft", "budget": "fixed", "delta": 0.5}),
    "DRRO soft dynamic": (
        "GRPO",
        {"shaping": "drro_soft", "budget": "dynamic", "delta0": 0.1, "budget_c": 0.05},
    ),
    # the soft bonus in the "weight" form b = delta omega (docs/ALGORITHMS.md §8.5): with the very
    # uneven p~ of LM completions the default "mass" form delta G p~ omega is nearly 0
    "DRRO soft fixed (weight form)": (
        "GRPO",
        {"shaping": "drro_soft", "budget": "fixed", "delta": 0.5, "bonus_form": "weight"},
    ),
    "DRRO soft dynamic (weight form)": (
        "GRPO",
        {
            "shaping": "drro_soft",
            "budget": "dynamic",
            "delta0": 0.1,
            "budget_c": 0.05,
            "bonus_form": "weight",
        },
    ),
}


@dataclass(frozen=True)
class OverOptJob:
    """One online-RL run on the synthetic prompt task."""

    method: str
    seed: int
    rollouts: int = 64
    prompts_per_rollout: int = 4
    num_generations: int = 4
    val_every: int = 8
    num_val: int = 16
    max_new_tokens: int = 12
    learning_rate: float = 5e-3


def policy_module(
    kind: str,
    seed: int,
    *,
    max_new_tokens: int,
    learning_rate: float,
    num_generations: int,
    **kwargs,
):
    """The project's online module on the synthetic prompt task: a tiny random-init policy
    (``init_seed=seed``) trained on ``synthetic:proxy`` with ``synthetic:gold`` logged.
    ``kind="PPO"``: the repo's tiny PPO config (S000 Table 13 beta unless ``kwargs`` sets
    ``beta``, TRL epochs), one completion per prompt; ``kind="GRPO"``: ``num_generations``
    completions per prompt, clip 0.2, one update per rollout, constant lr, ``kwargs`` (shaping,
    budget, delta, tau, kl_coef, ...) passed on."""
    from lightning_robust.modules import GRPO, PPO

    common = dict(
        backbone={"name_or_path": "tiny", "init_seed": seed},
        reward_model="synthetic:proxy",
        gold_reward_model="synthetic:gold",
        max_new_tokens=max_new_tokens,
        temperature=1.0,
    )
    if kind == "PPO":
        options = {"beta": 0.02, "ppo_epochs": 4, "num_minibatches": 2, **kwargs}
        return PPO(
            num_generations=1,
            **options,
            **common,
            optimizer={"learning_rate": learning_rate, "lr_schedule": "linear"},
        )
    if kind != "GRPO":
        raise ValueError(f"unknown module kind {kind!r}; expected 'GRPO' or 'PPO'")
    return GRPO(
        num_generations=num_generations,
        clip=0.2,
        ppo_epochs=1,
        **common,
        **kwargs,
        optimizer={"learning_rate": learning_rate, "lr_schedule": "constant", "warmup_ratio": 0.0},
    )


def _module(job: OverOptJob):
    if job.method not in METHODS:
        raise ValueError(f"unknown method {job.method!r}; expected one of {list(METHODS)}")
    kind, kwargs = METHODS[job.method]
    return policy_module(
        kind,
        job.seed,
        max_new_tokens=job.max_new_tokens,
        learning_rate=job.learning_rate,
        num_generations=job.num_generations,
        **kwargs,
    )


def prompt_data(
    datamodule_class,
    kind: str,
    prompts_per_rollout: int,
    num_generations: int,
    rollouts: int,
    num_val: int,
    seed: int,
    **kwargs,
):
    """The synthetic prompt task for ``rollouts`` rollouts of ``kind`` (one epoch): GRPO takes
    ``prompts_per_rollout`` prompts per rollout (``num_generations`` completions each), PPO one
    completion per prompt and so ``num_generations`` times the prompts (the same samples per
    update); ``num_val`` validation prompts in one batch. ``datamodule_class``:
    ``PromptDataModule`` or a subclass (``kwargs`` passed on)."""
    from lightning_robust.data.synthetic_prompts import SyntheticPromptConfig

    batch = prompts_per_rollout * (num_generations if kind == "PPO" else 1)
    return datamodule_class(
        batch_size=batch,
        val_batch_size=num_val,
        max_prompt_length=32,
        seed=seed,
        synthetic=SyntheticPromptConfig(num_train=batch * rollouts, num_val=num_val, seed=seed),
        **kwargs,
    )


def run_overopt(job: OverOptJob) -> list[dict]:
    """Train one method; the validation frontier points (step 0 included) as records."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lightning_robust.callbacks import RewardKLFrontier
    from lightning_robust.data import PromptDataModule

    quiet_lightning()
    seed_all(job.seed)
    L.seed_everything(job.seed, verbose=False)
    work = (
        RUNS_DIR / "overoptimization" / f"{job.method.replace(' ', '_')}_{job.seed}_{job.rollouts}"
    )
    is_ppo = METHODS[job.method][0] == "PPO"
    data = prompt_data(
        PromptDataModule,
        METHODS[job.method][0],
        job.prompts_per_rollout,
        job.num_generations,
        job.rollouts,
        job.num_val,
        job.seed,
    )
    frontier = RewardKLFrontier(output_dir=str(work))

    class ResponseLength(Callback):
        """The mean validation response length at every frontier point."""

        def __init__(self):
            self.lengths: list[float] = []

        def on_validation_end(self, trainer, pl_module):
            value = trainer.callback_metrics.get("val/response_length")
            self.lengths.append(float(value) if value is not None else float("nan"))

    lengths = ResponseLength()
    model = _module(job)
    updates_per_rollout = 4 * 2 if is_ppo else 1
    trainer = quiet_trainer(
        1, work, val_check_interval=job.val_every, callbacks=[frontier, lengths]
    )
    trainer.validate(model, datamodule=data, verbose=False)  # step 0: the initial policy
    start = [p for p in frontier.points if p["stage"] == "val"]
    frontier.points.clear()
    trainer.fit(model, datamodule=data)
    points = start + [p for p in frontier.points if p["stage"] == "val"]
    if len(lengths.lengths) != len(points):
        raise RuntimeError(
            f"{len(points)} frontier points but {len(lengths.lengths)} validation passes"
        )
    return [
        {
            **asdict(job),
            "rollout": p["step"] // updates_per_rollout,
            "kl": p["kl"],
            "proxy": p["proxy"],
            "gold": p["gold"],
            "length": n,
        }
        for p, n in zip(points, lengths.lengths, strict=True)
    ]


def finals(records: list[dict]) -> list[dict]:
    """Per (method, seed): peak validation gold, the KL there, and the final gold/proxy/KL."""
    out = []
    for key in dict.fromkeys((r["method"], r["seed"]) for r in records):
        run = sorted(
            (r for r in records if (r["method"], r["seed"]) == key), key=lambda r: r["rollout"]
        )
        peak = max(run, key=lambda r: r["gold"])
        out.append(
            {
                "method": key[0],
                "seed": key[1],
                "initial_gold": run[0]["gold"],
                "peak_gold": peak["gold"],
                "peak_kl": peak["kl"],
                "final_gold": run[-1]["gold"],
                "final_proxy": run[-1]["proxy"],
                "final_kl": run[-1]["kl"],
                "final_length": run[-1]["length"],
            }
        )
    return out


def overopt_table(final: list[dict]) -> tuple[str, str]:
    metrics = [
        "initial_gold",
        "peak_gold",
        "peak_kl",
        "final_gold",
        "final_proxy",
        "final_kl",
        "final_length",
    ]
    rows = summarize(final, ["method"], metrics)
    header = [
        "method",
        "initial gold",
        "peak gold",
        "KL at peak",
        "final gold",
        "final proxy",
        "final KL",
        "final length (tokens)",
        "seeds",
    ]
    body = [[r["method"], *(fmt_mean_std(r[m]) for m in metrics), r["n"]] for r in rows]
    return text_table(header, body), markdown_table(header, body)


def plot_overopt(records: list[dict], path: Path) -> Path | None:
    """Validation gold and proxy vs KL (mean over seeds per validation point)."""
    plt = pyplot()
    if plt is None:
        return None
    rows = summarize(records, ["method", "rollout"], ["gold", "proxy", "kl"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        curve = sorted((r for r in rows if r["method"] == name), key=lambda r: r["rollout"])
        style = "--" if "weight form" in name else "-"
        for ax, m in zip(axes[:2], ("gold", "proxy"), strict=True):
            ax.errorbar(
                [r["kl_mean"] for r in curve],
                [r[f"{m}_mean"] for r in curve],
                yerr=[r[f"{m}_std"] for r in curve],
                color=cmap(i % 10),
                marker="o",
                markersize=3,
                capsize=2,
                linewidth=1.2,
                linestyle=style,
                label=name,
            )
        axes[2].errorbar(
            [r["rollout"] for r in curve],
            [r["gold_mean"] for r in curve],
            yerr=[r["gold_std"] for r in curve],
            color=cmap(i % 10),
            marker="o",
            markersize=3,
            capsize=2,
            linewidth=1.2,
            linestyle=style,
            label=name,
        )
    for ax, m in zip(axes[:2], ("gold", "proxy"), strict=True):
        ax.set_xlabel("sequence KL(π ‖ π_init) (k3, validation samples)")
        ax.set_ylabel(f"{m} reward (validation)")
        ax.grid(alpha=0.3)
    axes[2].set_xlabel("rollouts")
    axes[2].set_ylabel("gold reward (validation)")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(
        "tiny LM on the synthetic prompt task: reward vs KL (mean ± std over seeds)", fontsize=9
    )
    return save_figure(fig, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (CI)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--rollouts", type=int, default=None)
    parser.add_argument("--methods", nargs="*", default=None, help=f"subset of {list(METHODS)}")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default 1 quick, 2 full)"
    )
    parser.add_argument("--out-md", default=str(OLD_RESULTS_MD))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    start = time.time()
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    workers = args.workers or (1 if args.quick else 2)
    methods = args.methods or (["GRPO", "DRRO soft dynamic"] if args.quick else list(METHODS))
    settings = dict(rollouts=4, val_every=2, num_val=4) if args.quick else {}
    if args.rollouts:
        settings["rollouts"] = args.rollouts
    jobs = [OverOptJob(m, seed, **settings) for m in methods for seed in seeds]
    records = [r for rs in run_jobs(run_overopt, jobs, workers) for r in rs]
    final = finals(records)
    text, md = overopt_table(final)
    print(text)
    prefix = "overopt_quick_" if args.quick else "overopt_"
    figure = plot_overopt(records, Path(args.out_dir) / f"{prefix}frontier.png")
    elapsed = time.time() - start
    j = jobs[0]
    body = "\n\n".join(
        [
            "### 4b. Tiny LM on the synthetic prompt task (GRPO / PPO / DRO / DRRO)",
            f"Command: `{command_line(MODULE, argv)}` ({elapsed:.0f} s with {workers} worker(s)); seeds "
            f"{seeds}; {j.rollouts} rollouts of {j.prompts_per_rollout} prompts × G = {j.num_generations} "
            f"(PPO: {j.prompts_per_rollout * j.num_generations} prompts × 1), {j.max_new_tokens} new tokens, "
            f"lr {j.learning_rate:g}; validation on {j.num_val} prompts every {j.val_every} rollouts. "
            "Budgets (δ̃ = 0.5 fixed; δ̃0 = 0.1, c = 0.05, W = 10 dynamic; τ = 0.2) are the repo's tiny-config "
            "values, chosen here, not tuned on gold. Mean ± std over seeds.",
            md,
            f"![frontier](results/{figure.name})" if figure is not None else "",
        ]
    )
    write_block(
        Path(args.out_md),
        SECTION,
        SECTION_TITLE,
        "overopt" + ("_quick" if args.quick else ""),
        body,
    )
    return {"records": records, "finals": final, "figure": figure, "elapsed": elapsed}


if __name__ == "__main__":
    main()
