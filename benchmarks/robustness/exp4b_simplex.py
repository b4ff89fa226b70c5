"""Experiment 4b, simplex family (seed S003): DRRO vs the KL-regularised optimum and DRO when the
proxy is the gold reward plus noise (the regime of Theorem 6.1).

    python -m benchmarks.robustness.exp4b_simplex            # full form (10 seeds)
    python -m benchmarks.robustness.exp4b_simplex --quick    # CI smoke form

No language model: each *prompt* is one simplex instance with ``K`` responses, gold rewards
``g ~ N(0, 1)^K`` and a proxy ``r = g + sigma * e``, ``e ~ N(0, 1)^K``. Because ``E[g | r]`` is
increasing in ``r``, Theorem 6.1 (the DRRO optimum majorises the DRO optimum, so it has the
higher expectation of any increasing function of ``r``) says DRRO's expected gold is at least
DRO's at the same budget. Each method's policy is its exact optimum on the proxy
(:mod:`lightning_robust.objectives.drro`):

* DRRO: :func:`~lightning_robust.objectives.drro.water_filling_policy` at budget ``delta``;
* DRO (value-robust, S003's baseline): :func:`~lightning_robust.objectives.drro.dro_policy`;
* KL-regularised RL (the optimum PPO/GRPO-style KL-penalised training aims at, Rafailov et al.
  2023, eq. 4): ``p ∝ p0 exp(r / beta)`` with the uniform reference ``p0`` (the baseline);
* greedy: the proxy's argmax (reference; no hyper-parameter).

Protocol: per seed, ``num_val`` validation prompts choose each method's ``delta`` / ``beta``
(highest mean gold) from a grid of the same size; the chosen policy is scored on ``num_test``
separate test prompts. Claims: paired per-prompt gold differences DRRO − KL-regularised and
DRRO − DRO on the test prompts (and DRRO − greedy); seed-level 95 % t interval over the per-seed means, plus the
item-level bootstrap interval over the test prompts of every seed pooled.
"""

from __future__ import annotations

import time

import torch

from benchmarks.robustness.protocol import Experiment, Method, experiment_parser, run_experiment

NAME = "exp4b_simplex"
MODULE = f"benchmarks.robustness.{NAME}"
TITLE = "Exp 4b, simplex family (S003): DRRO vs KL-regularised and DRO with proxy = gold + noise"
F64 = torch.float64
GRID = [0.03, 0.1, 0.3, 1.0, 3.0]
METHODS = (
    Method("KL-regularised", "kl", {"beta": GRID}, baseline=True),
    Method("DRRO", "drro", {"delta": GRID}),
    Method("DRO", "dro", {"delta": GRID}),
    Method("greedy", "greedy", {}),
)
REGIMES = (
    {"noise": "gaussian", "sigma": 0.5},
    {"noise": "gaussian", "sigma": 1.0},
    {"noise": "cauchy", "sigma": 0.5},
)
FULL_SEEDS = tuple(range(10))
QUICK_SEEDS = (0, 1)
FULL_SETTINGS = {"num_responses": 8, "num_val": 64, "num_test": 128}
QUICK_SETTINGS = {"num_responses": 8, "num_val": 16, "num_test": 16}
SUMMARY = ("DRRO",)


def instances(seed: int, split: str, n: int, k: int, sigma: float, noise: str = "gaussian"):
    """``(gold, proxy)`` of ``n`` prompts, ``[n, k]`` float64, from a generator seeded by (seed,
    split): ``proxy = gold + sigma * e`` with ``e`` standard normal or standard Cauchy
    (``tan(pi (u - 1/2))``, heavy-tailed: outside Theorem 6.1's regime, ``E[g | r]`` is not
    increasing in ``r``)."""
    gen = torch.Generator().manual_seed(7919 * seed + {"val": 1, "test": 2}[split])
    gold = torch.randn(n, k, generator=gen, dtype=F64)
    if noise == "gaussian":
        e = torch.randn(n, k, generator=gen, dtype=F64)
    elif noise == "cauchy":
        e = torch.tan(torch.pi * (torch.rand(n, k, generator=gen, dtype=F64) - 0.5))
    else:
        raise ValueError(f"noise must be 'gaussian' or 'cauchy', got {noise!r}")
    return gold, gold + sigma * e


def policy(family: str, config: dict, proxy: torch.Tensor) -> torch.Tensor:
    """The method's exact optimum on one proxy vector."""
    from lightning_robust.objectives.drro import dro_policy, water_filling_policy

    if family == "kl":
        return torch.softmax(proxy / config["beta"], 0)
    if family == "drro":
        return water_filling_policy(proxy, config["delta"])[0]
    if family == "dro":
        return dro_policy(proxy, config["delta"])
    if family == "greedy":
        return water_filling_policy(proxy, 0.0)[0]
    raise ValueError(f"unknown family {family!r}")


def gold_values(family: str, config: dict, gold: torch.Tensor, proxy: torch.Tensor) -> list[float]:
    return [float(policy(family, config, r) @ g) for g, r in zip(gold, proxy, strict=True)]


def run(exp: Experiment, progress) -> list[dict]:
    records = []
    s = exp.settings
    for regime in exp.regimes:
        for seed in exp.seeds:
            val = instances(
                seed, "val", s["num_val"], s["num_responses"], regime["sigma"], regime["noise"]
            )
            test = instances(
                seed, "test", s["num_test"], s["num_responses"], regime["sigma"], regime["noise"]
            )
            for m in exp.methods:
                for cfg in m.grid_points():
                    v, t = gold_values(m.family, cfg, *val), gold_values(m.family, cfg, *test)
                    records.append(
                        {
                            "method": m.name,
                            "config": cfg,
                            "seed": seed,
                            **regime,
                            "val": round(sum(v) / len(v), 6),
                            "test": round(sum(t) / len(t), 6),
                            "test_items": [round(x, 4) for x in t],
                        }
                    )
        progress(records)
    return records


def experiment(quick: bool, seeds) -> Experiment:
    return Experiment(
        name=NAME,
        title=TITLE,
        module=MODULE,
        methods=METHODS,
        seeds=tuple(seeds or (QUICK_SEEDS if quick else FULL_SEEDS)),
        regimes=REGIMES[:1] if quick else REGIMES,
        settings=QUICK_SETTINGS if quick else FULL_SETTINGS,
        select_metric="val",
        test_metrics=("test",),
        claim_metric="test",
        claim_direction=+1,
        claim="S003: DRRO reaches a higher gold reward than the KL-regularised optimum and DRO",
    )


def main(argv=None) -> dict:
    parser = experiment_parser(TITLE, "CI smoke form (16 + 16 prompts, one regime)")
    args = parser.parse_args(argv)
    exp = experiment(args.quick, args.seeds)
    return run_experiment(exp, lambda progress: run(exp, progress), args, argv, time.perf_counter())


# ----------------------------------------------------------------------------- report
def render(payload: dict) -> tuple[str, list[dict]]:
    from benchmarks.robustness.common import markdown_table
    from benchmarks.robustness.protocol import select, selected_point_row
    from benchmarks.robustness.report import fmt, fmt_p
    from benchmarks.robustness.stats import paired_bootstrap_mean, paired_t, verdict

    proto = payload["protocol"]
    methods = proto["methods"]
    base = next(m["name"] for m in methods if m["baseline"])
    chosen = select(payload["records"], methods, ("noise", "sigma"), "val")
    chosen = {
        ((k[0], k[1]), *k[2:]): v for k, v in chosen.items()
    }  # key: ((noise, sigma), method, seed)
    sigmas = [
        (r["noise"], r["sigma"])
        for r in proto["regimes"]
        if any(k[0] == (r["noise"], r["sigma"]) for k in chosen)
    ]
    s = proto["settings"]
    lines = [
        f"Command: `{payload['command']}` · seeds {proto['seeds']} · records in "
        f"[`results/{payload['experiment']}.json`](results/{payload['experiment']}.json)"
        + ("" if payload.get("complete") else " **(partial run)**")
        + ".",
        f"Exact optimal policies on simplex instances: K = {s['num_responses']} responses per prompt, gold "
        f"g ~ N(0, 1)^K, proxy r = g + σ·N(0, 1)^K. Per seed {s['num_val']} validation prompts choose each "
        f"method's δ / β from {{{', '.join(f'{v:g}' for v in GRID)}}} (highest mean gold); the result is the mean "
        f"gold on {s['num_test']} separate test prompts. Regimes: Gaussian proxy noise (inside Theorem 6.1's regime: E[g | r] increases with r) and Cauchy noise (heavy-tailed errors, outside it: a very high proxy is likely an error). The KL-regularised optimum p ∝ exp(r/β) (what "
        f"KL-penalised PPO/GRPO training aims at) is the baseline; greedy = the proxy's argmax.",
    ]
    header = [
        "proxy noise",
        "method",
        "test gold (mean ± sd over seeds)",
        "selected (per seed)",
        "seeds",
    ]
    body = []
    for sigma in sigmas:
        for m in methods:
            picks = [chosen[k] for k in sorted(chosen) if k[0] == sigma and k[1] == m["name"]]
            body.append(
                selected_point_row([f"{sigma[0]} σ={sigma[1]:g}", m["name"]], picks, ["test"])
            )
    lines += ["### Test gold at the validation-selected point", markdown_table(header, body)]
    comparisons = [("DRRO", base), ("DRRO", "DRO"), ("DRRO", "greedy"), ("DRO", base)]
    claims, rows = [], []
    for sigma in sigmas:
        for a, b in comparisons:
            seeds = sorted(
                k[2] for k in chosen if k[0] == sigma and k[1] == a and (sigma, b, k[2]) in chosen
            )
            if not seeds:
                continue
            st = paired_t(
                [chosen[(sigma, a, x)]["test"] for x in seeds],
                [chosen[(sigma, b, x)]["test"] for x in seeds],
            )
            items_a = [v for x in seeds for v in chosen[(sigma, a, x)]["test_items"]]
            items_b = [v for x in seeds for v in chosen[(sigma, b, x)]["test_items"]]
            boot = paired_bootstrap_mean(items_a, items_b)
            v = verdict(st["lo"], st["hi"], +1)
            claims.append(
                {
                    "claim": "S003 DRRO > baseline in gold (simplex, proxy = gold + noise)",
                    "regime": f"simplex, {sigma[0]} noise σ={sigma[1]:g}",
                    "comparison": f"{a} vs {b}",
                    "metric_label": "test gold",
                    "digits": 4,
                    **st,
                    "verdict": v,
                    "summary": a in SUMMARY and b != "greedy",
                    "command": payload["command"],
                }
            )
            rows.append(
                [
                    f"{sigma[0]} σ={sigma[1]:g}",
                    f"{a} − {b}",
                    fmt(st["mean"], 4, sign=True),
                    f"[{fmt(st['lo'], 4, sign=True)}, {fmt(st['hi'], 4, sign=True)}]",
                    fmt_p(st["p"]),
                    f"{st['wins']}/{st['n']}",
                    f"[{fmt(boot['lo'], 4, sign=True)}, {fmt(boot['hi'], 4, sign=True)}] ({boot['n']} prompts)",
                    f"**{v}**",
                ]
            )
    header = [
        "proxy noise",
        "paired difference",
        "mean Δ gold",
        "95 % CI (seeds, t)",
        "p",
        "wins/seeds",
        "95 % CI (prompts pooled, bootstrap)",
        "verdict (Δ > 0)",
    ]
    lines += ["### Paired per-prompt differences on the test prompts", markdown_table(header, rows)]
    return "\n\n".join(lines), claims


if __name__ == "__main__":
    main()
