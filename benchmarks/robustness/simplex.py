"""Experiment 4a (issue 7; seed S003): over-optimisation on the promptwise simplex.

    python -m benchmarks.robustness.simplex            # full: 10 instances (seeds 0-9)
    python -m benchmarks.robustness.simplex --quick    # smoke version (CI)

No language model: one prompt with ``K`` candidate responses, a *gold* reward vector ``g`` and
a *proxy* ``r`` (the model of docs/ALGORITHMS.md §5.1). The proxy equals the gold reward on every
response but one: a response from the bottom half by gold (the *exploit*) is rated
``max(g) + eps`` by the proxy, so maximising the proxy picks a poor response while the true best
response keeps its reward.

(i) **Exact policies** (pure :mod:`lightning_robust.objectives.drro`): the water-filling DRRO
optimum :func:`water_filling_policy`, the value-robust DRO optimum :func:`dro_policy` and the
greedy proxy policy, for a sweep of the budget ``delta``; gold and proxy value of each.

(ii) **Sampled training** of a softmax policy ``p = softmax(theta)`` from the uniform reference
``p0``, with GRPO-style updates: each step samples ``B`` groups of ``G`` responses from
``p_old``, shapes the proxy rewards with :func:`shaped_rewards` (``none`` = GRPO,
``drro_hard``, ``drro_soft``, ``dro``; fixed budget or the dynamic budget
:func:`dynamic_budget` on the batch k3 KL of :func:`sequence_kl_k3`), normalises them with
:func:`group_advantages` and takes one Adam step on the clipped surrogate
:func:`policy_surrogate` (one token per response). The exact ``KL(p || p0)``, gold and proxy
value are recorded along training: the gold/proxy-vs-KL frontier.

Budgets come in two units. S003's group-normalised budget ``delta~`` (``p~`` = the softmax of
the group's log-probs) stands for the raw budget ``delta~ / S`` with ``S = sum_k pi_old(y_k)``
(docs/ALGORITHMS.md §5.2 iii); with ``K`` small, groups repeat responses and ``S`` grows as the policy
concentrates. The *raw* variant passes one budget per group, ``delta~_b = delta * S_b``, so the
shaping equals the raw-probability one at ``delta`` exactly. The final policy is compared with the
exact water-filling optimum at ``delta`` (raw) or at ``delta~ K / G`` (S003's heuristic scale).

Every number is deterministic given the seed (instance and sampling generators are seeded).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.robustness.common import (
    OLD_RESULTS_MD,
    RESULTS_DIR,
    command_line,
    fmt_mean_std,
    markdown_table,
    pyplot,
    run_jobs,
    save_figure,
    summarize,
    text_table,
    write_block,
)
from lightning_robust.objectives.drro import (
    dro_policy,
    dynamic_budget,
    group_advantages,
    robust_utility,
    shaped_rewards,
    water_filling_policy,
)
from lightning_robust.objectives.rl import policy_surrogate, sequence_kl_k3

MODULE = "benchmarks.robustness.simplex"
SECTION = 4
SECTION_TITLE = "Over-optimisation: GRPO / PPO / DRO / DRRO (S003)"
BLOCK = "simplex"
F64 = torch.float64


# ----------------------------------------------------------------------------- the instance
@dataclass(frozen=True)
class Instance:
    """One prompt: gold and proxy rewards of ``K`` responses (float64) and the exploit index."""

    gold: torch.Tensor
    proxy: torch.Tensor
    exploit: int


def make_instance(seed: int, num_responses: int = 8, eps_range=(0.1, 0.5)) -> Instance:
    """Gold ``g ~ N(0, 1)^K``; the proxy equals ``g`` except on one response drawn from the
    bottom half by gold, which the proxy rates ``max(g) + eps``, ``eps ~ U(eps_range)``."""
    if num_responses < 4:
        raise ValueError(f"num_responses must be >= 4, got {num_responses}")
    gen = torch.Generator().manual_seed(10_000 + seed)
    gold = torch.randn(num_responses, generator=gen, dtype=F64)
    bottom = torch.argsort(gold)[: num_responses // 2]
    exploit = int(bottom[torch.randint(len(bottom), (1,), generator=gen)])
    lo, hi = eps_range
    eps = lo + (hi - lo) * float(torch.rand(1, generator=gen, dtype=F64))
    proxy = gold.clone()
    proxy[exploit] = gold.max() + eps
    return Instance(gold, proxy, exploit)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Exact ``KL(p || q) = sum_j p_j log(p_j / q_j)`` (0 log 0 = 0)."""
    p, q = p.to(F64), q.to(F64)
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p))
    return float(terms.sum())


# ----------------------------------------------------------------------------- (i) exact policies
def exact_policies(inst: Instance, delta: float) -> dict[str, torch.Tensor]:
    """Greedy (proxy argmax), the DRRO water-filling optimum and the DRO optimum at ``delta``."""
    greedy, _ = water_filling_policy(inst.proxy, 0.0)
    drro, _ = water_filling_policy(inst.proxy, delta)
    return {"greedy": greedy, "DRRO (exact)": drro, "DRO (exact)": dro_policy(inst.proxy, delta)}


def exact_records(seeds, deltas, num_responses: int) -> list[dict]:
    """Gold, proxy and KL to uniform of each exact policy per (seed, delta)."""
    out = []
    for seed in seeds:
        inst = make_instance(seed, num_responses)
        uniform = torch.full_like(inst.proxy, 1.0 / num_responses)
        for delta in deltas:
            for name, p in exact_policies(inst, delta).items():
                out.append(
                    {
                        "seed": seed,
                        "delta": delta,
                        "policy": name,
                        "gold": float(p @ inst.gold),
                        "proxy": float(p @ inst.proxy),
                        "kl": kl_divergence(p, uniform),
                        "exploit_mass": float(p[inst.exploit]),
                    }
                )
    return out


# ----------------------------------------------------------------------------- (ii) sampled training
@dataclass(frozen=True)
class TrainJob:
    """One sampled-training run of a softmax policy on one instance."""

    shaping: str  # none | drro_hard | drro_soft | dro
    budget: str  # fixed | dynamic
    delta: float  # the fixed budget, or delta_0 of the dynamic budget
    seed: int
    raw: bool = False  # budget in raw-probability units: delta~_b = delta * S_b per group
    c: float = 1.0
    window: int = 10
    tau: float = 0.2
    steps: int = 400
    groups: int = 16
    group_size: int = 8
    learning_rate: float = 0.05
    clip: float = 0.2
    num_responses: int = 8
    log_every: int = 10


def method_label(job: TrainJob) -> str:
    if job.shaping == "none":
        return "GRPO"
    name = {"drro_hard": "DRRO hard", "drro_soft": "DRRO soft", "dro": "DRO"}[job.shaping]
    symbol = "δ" if job.raw else "δ̃"
    unit = " raw" if job.raw else ""
    if job.budget == "dynamic":
        return f"{name}{unit} dyn {symbol}0={job.delta:g} c={job.c:g}"
    return f"{name}{unit} {symbol}={job.delta:g}"


def train_softmax_policy(job: TrainJob) -> list[dict]:
    """GRPO-style training of ``softmax(theta)`` on the proxy; a record every ``log_every``
    steps (and at step 0) with the exact gold, proxy, ``KL(p || p0)`` and the budget used."""
    inst = make_instance(job.seed, job.num_responses)
    gen = torch.Generator().manual_seed(20_000 + job.seed)
    k = job.num_responses
    log_p0 = torch.full((k,), -math.log(k), dtype=F64)
    theta = log_p0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=job.learning_rate)
    history: list[float] = []
    records = []
    delta_t = job.delta
    ones = torch.ones(job.groups * job.group_size, 1, dtype=torch.bool)

    def record(step: int) -> None:
        with torch.no_grad():
            p = torch.softmax(theta, 0)
        records.append(
            {
                **asdict(job),
                "method": method_label(job),
                "step": step,
                "gold": float(p @ inst.gold),
                "proxy": float(p @ inst.proxy),
                "kl": kl_divergence(p, log_p0.exp()),
                "delta_t": delta_t,
                "exploit_mass": float(p[inst.exploit]),
            }
        )

    record(0)
    for step in range(1, job.steps + 1):
        with torch.no_grad():
            log_old = torch.log_softmax(theta, 0)
        probs = log_old.exp().expand(job.groups, k)
        idx = torch.multinomial(probs, job.group_size, replacement=True, generator=gen)
        rewards = inst.proxy[idx]
        seq_old = log_old[idx]
        history.append(float(sequence_kl_k3(seq_old, log_p0[idx]).mean()))
        if job.budget == "dynamic":
            delta_t = dynamic_budget(job.delta, job.c, history, job.window)
        else:
            delta_t = job.delta
        budget = delta_t
        if job.raw:
            # delta~_b = delta * S_b with S_b = sum_k p_old(y_k): the group-normalised shaping then
            # equals the raw-probability shaping at budget delta exactly (docs/ALGORITHMS.md §5.2 iii)
            budget = delta_t * seq_old.exp().sum(dim=-1)
        shaped, _ = shaped_rewards(rewards, seq_old, budget, job.shaping, tau=job.tau)
        adv = group_advantages(shaped).reshape(-1)
        logps = torch.log_softmax(theta, 0)[idx].reshape(-1, 1)
        losses, _ = policy_surrogate(logps, seq_old.reshape(-1, 1), adv, ones, clip=job.clip)
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
        if step % job.log_every == 0:
            record(step)
    return records


def final_summary(job: TrainJob, records: list[dict]) -> dict:
    """Final and peak gold of a run, its final KL and proxy, and the distance (TV) of the final
    policy to the exact water-filling optimum at ``delta = delta~ K / G`` (DRRO rows)."""
    last = records[-1]
    peak = max(records, key=lambda r: r["gold"])
    out = {
        "method": last["method"],
        "seed": job.seed,
        "final_gold": last["gold"],
        "peak_gold": peak["gold"],
        "peak_kl": peak["kl"],
        "final_proxy": last["proxy"],
        "final_kl": last["kl"],
        "final_exploit": last["exploit_mass"],
    }
    inst = make_instance(job.seed, job.num_responses)
    raw_delta = job.delta if job.raw else job.delta * job.num_responses / job.group_size
    exact, _ = water_filling_policy(inst.proxy, raw_delta)
    out["exact_gold"] = float(exact @ inst.gold)
    out["exact_exploit"] = float(exact[inst.exploit])
    out["exact_utility"] = robust_utility(exact, inst.proxy, raw_delta)
    return out


def run_training(jobs: list[TrainJob], workers: int = 1) -> tuple[list[dict], list[dict]]:
    curves, finals = [], []
    for job, records in zip(jobs, run_jobs(train_softmax_policy, jobs, workers), strict=True):
        curves.extend(records)
        finals.append(final_summary(job, records))
    return curves, finals


def training_jobs(seeds, steps: int, quick: bool = False) -> list[TrainJob]:
    """Per seed: GRPO; DRRO hard/soft with the group-normalised budget delta~ = 1 (S003's
    coordinates); DRRO hard/soft with the raw budget delta in {1, 2} and dynamic
    (delta_0 = 0.5, c = 1); DRO with both budgets at 1. ``quick``: four of them."""
    specs = [
        ("none", "fixed", 0.0, False),
        ("drro_hard", "fixed", 1.0, False),
        ("drro_soft", "fixed", 1.0, False),
        ("drro_hard", "fixed", 1.0, True),
        ("drro_hard", "fixed", 2.0, True),
        ("drro_soft", "fixed", 1.0, True),
        ("drro_soft", "fixed", 2.0, True),
        ("drro_hard", "dynamic", 0.5, True),
        ("drro_soft", "dynamic", 0.5, True),
        ("dro", "fixed", 1.0, False),
        ("dro", "fixed", 1.0, True),
    ]
    if quick:
        specs = [specs[0], specs[3], specs[8], specs[9]]
    return [
        TrainJob(shaping, budget, delta, seed, raw=raw, steps=steps)
        for seed in seeds
        for shaping, budget, delta, raw in specs
    ]


# ----------------------------------------------------------------------------- tables and plots
def exact_table(records: list[dict]) -> tuple[str, str]:
    rows = summarize(records, ["delta", "policy"], ["gold", "proxy", "kl", "exploit_mass"])
    header = ["δ", "policy", "gold", "proxy", "KL(p‖uniform)", "exploit mass", "seeds"]
    body = [
        [
            f"{r['delta']:g}",
            r["policy"],
            fmt_mean_std(r["gold"]),
            fmt_mean_std(r["proxy"]),
            fmt_mean_std(r["kl"]),
            fmt_mean_std(r["exploit_mass"]),
            r["n"],
        ]
        for r in rows
        if not (r["policy"] == "greedy" and r["delta"] != rows[0]["delta"])
    ]
    return text_table(header, body), markdown_table(header, body)


def training_table(finals: list[dict]) -> tuple[str, str]:
    metrics = [
        "peak_gold",
        "peak_kl",
        "final_gold",
        "final_proxy",
        "final_kl",
        "final_exploit",
        "exact_gold",
        "exact_exploit",
    ]
    rows = summarize(finals, ["method"], metrics)
    header = [
        "method",
        "peak gold",
        "KL at peak",
        "final gold",
        "final proxy",
        "final KL",
        "final exploit mass",
        "exact DRRO gold",
        "exact exploit mass",
        "seeds",
    ]
    body = []
    for r in rows:
        comparable = r["method"].startswith("DRRO") and "dyn" not in r["method"]
        exact = [fmt_mean_std(r[m]) if comparable else "—" for m in ("exact_gold", "exact_exploit")]
        body.append([r["method"], *(fmt_mean_std(r[m]) for m in metrics[:-2]), *exact, r["n"]])
    return text_table(header, body), markdown_table(header, body)


def plot_exact(records: list[dict], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    rows = summarize(records, ["policy", "delta"], ["gold", "proxy"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, color in (
        ("greedy", "tab:gray"),
        ("DRRO (exact)", "tab:red"),
        ("DRO (exact)", "tab:blue"),
    ):
        curve = sorted((r for r in rows if r["policy"] == name), key=lambda r: r["delta"])
        for ax, m in zip(axes, ("gold", "proxy"), strict=True):
            ax.errorbar(
                [r["delta"] for r in curve],
                [r[f"{m}_mean"] for r in curve],
                yerr=[r[f"{m}_std"] for r in curve],
                color=color,
                marker="o",
                markersize=3,
                capsize=2,
                label=name,
            )
    for ax, m in zip(axes, ("gold", "proxy"), strict=True):
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("budget δ")
        ax.set_ylabel(f"{m} value ⟨p, {m}⟩")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("exact promptwise policies (mean ± std over instances)", fontsize=9)
    return save_figure(fig, path)


def plot_frontier(curves: list[dict], path: Path, methods=None) -> Path | None:
    """Gold and proxy vs exact KL(p‖p0), mean over seeds at each logged step."""
    plt = pyplot()
    if plt is None:
        return None
    rows = summarize(curves, ["method", "step"], ["gold", "proxy", "kl"])
    names = list(dict.fromkeys(r["method"] for r in rows))
    if methods is not None:
        names = [n for n in names if n in methods]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        curve = sorted((r for r in rows if r["method"] == name), key=lambda r: r["step"])
        style = (
            "--"
            if name.startswith("DRO")
            else (":" if "raw" not in name and name != "GRPO" else "-")
        )
        for ax, m in zip(axes, ("gold", "proxy"), strict=True):
            ax.plot(
                [r["kl_mean"] for r in curve],
                [r[f"{m}_mean"] for r in curve],
                color=cmap(i % 20),
                linestyle=style,
                label=name,
                linewidth=1.4,
            )
    for ax, m in zip(axes, ("gold", "proxy"), strict=True):
        ax.set_xlabel("KL(p ‖ p0)")
        ax.set_ylabel(f"{m} reward")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("sampled training on the simplex: reward vs KL (mean over seeds)", fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (CI)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="number of instances (seeds 0..n-1)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default 1 quick, 2 full)"
    )
    parser.add_argument("--out-md", default=str(OLD_RESULTS_MD))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    start = time.time()
    n_seeds = args.seeds or (2 if args.quick else 6)
    seeds = list(range(n_seeds))
    k = 8
    deltas = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    steps = 60 if args.quick else 300
    workers = args.workers or (1 if args.quick else 2)
    prefix = "simplex_quick_" if args.quick else "simplex_"
    out_dir = Path(args.out_dir)

    exact = exact_records(seeds, deltas, k)
    exact_text, exact_md = exact_table(exact)
    print("(i) exact promptwise policies\n" + exact_text + "\n")

    jobs = training_jobs(seeds, steps, quick=args.quick)
    curves, finals = run_training(jobs, workers)
    train_text, train_md = training_table(finals)
    print("(ii) sampled GRPO-style training\n" + train_text + "\n")

    figures = {
        "exact": plot_exact(exact, out_dir / f"{prefix}exact.png"),
        "frontier": plot_frontier(curves, out_dir / f"{prefix}frontier.png"),
    }
    elapsed = time.time() - start
    cmd = command_line(MODULE, argv)
    figure_md = "\n".join(
        f"![{name}](results/{Path(p).name})" for name, p in figures.items() if p is not None
    )
    body = "\n\n".join(
        [
            "### 4a. Promptwise simplex (exact water filling vs sampled training)",
            f"Command: `{cmd}` ({elapsed:.0f} s). Instances: seeds {seeds[0]}–{seeds[-1]}, K = {k} "
            f"responses, gold ~ N(0, 1), the proxy equals gold except one bottom-half response rated "
            f"max(gold) + U(0.1, 0.5). Mean ± std over instances.",
            "**(i) Exact policies** (`water_filling_policy`, `dro_policy`, greedy = δ 0):\n\n"
            + exact_md,
            f"**(ii) Sampled training** (softmax policy from uniform, {steps} Adam steps lr 0.05, 16 groups "
            f"× G = 8 per step, `shaped_rewards` → `group_advantages` → `policy_surrogate`; dynamic "
            f"budget `dynamic_budget(δ̃0, c, k3 history, W=10)`; τ = 0.2):\n\n" + train_md,
            figure_md,
        ]
    )
    write_block(
        Path(args.out_md), SECTION, SECTION_TITLE, BLOCK + ("_quick" if args.quick else ""), body
    )
    return {
        "exact": exact,
        "curves": curves,
        "finals": finals,
        "figures": figures,
        "elapsed": elapsed,
    }


if __name__ == "__main__":
    main()
