"""GRPO/DRRO with a real policy, measured on held-out prompts before and after the fit.

Builds the run from a config (``configs/grpo/smollm2_drro.yaml`` with its step-2 flags), samples
``--samples`` completions for every validation prompt (disjoint from the training prompts:
the config's ``val_fraction``) before training and again after it, and reports per prompt the
mean proxy reward, gold reward and sequence KL (k3 estimator, ``sum_t`` over the response, against
the frozen reference) of those completions. Before/after are paired by prompt: the report gives
the mean change, a percentile-bootstrap 95 % CI of it, and an exact two-sided sign test.

    OMP_NUM_THREADS=1 python scripts/smollm2_drro_e2e.py --config configs/grpo/smollm2_drro.yaml \\
        --out runs/grpo/smollm2_drro/e2e.json -- <the flags printed by the gold-proxy step>

Everything after ``--`` is passed to the CLI (``--trainer.max_steps=4``, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smollm2_e2e import binom_two_sided, bootstrap_mean_ci  # noqa: E402


def paired_change(before: list[float], after: list[float], seed: int = 0) -> dict:
    """Mean of ``after - before``, its bootstrap 95 % CI and the exact sign test (ties dropped)."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need paired, non-empty values, got {len(before)} and {len(after)}")
    d = [a - b for a, b in zip(after, before, strict=True)]
    up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
    n = len(d)
    return {
        "prompts": n,
        "mean_before": sum(before) / n,
        "mean_after": sum(after) / n,
        "mean_delta": sum(d) / n,
        "mean_delta_ci95": bootstrap_mean_ci(d, seed),
        "sign_test": {"up": up, "down": down, "p_two_sided": binom_two_sided(up, up + down)},
    }


def per_prompt_figures(module, loader, samples: int, seed: int) -> dict[str, list[float]]:
    """Per validation prompt: mean proxy, gold (when configured) and k3 KL of ``samples``
    sampled completions under the module's current policy."""
    import torch

    from lightning_robust.objectives.rl import sequence_kl_k3

    policy = module.backbone
    was = policy.training
    policy.eval()
    out: dict[str, list[float]] = {"proxy": [], "gold": [], "kl": [], "response_length": []}
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            for batch in loader:
                rollout = module.rollout(batch, samples)
                responses = module.decode_responses(rollout)
                values = {
                    "proxy": module.score("proxy", batch["prompts"], rollout, responses),
                    "gold": module.score("gold", batch["prompts"], rollout, responses),
                }
                logps = module.policy_forward(rollout)[0].sum(-1)
                ref = module.reference_token_logprobs(rollout).sum(-1)
                values["kl"] = sequence_kl_k3(logps, ref).float()
                values["response_length"] = rollout.response_lengths.float()
                for i in range(len(batch["prompts"])):
                    rows = rollout.prompt_index == i
                    for name, v in values.items():
                        if v is not None:
                            out[name].append(float(v[rows].mean()))
    finally:
        policy.train(was)
    return {k: v for k, v in out.items() if v}


def run(config: str, overrides: list[str], out: str | None = None, samples: int = 4) -> dict:
    """Before figures, ``trainer.fit``, after figures; the report (written to ``out``)."""
    from lightning_robust.cli import build_cli

    cli = build_cli(["--config", config, *overrides], run=False)
    module, dm, trainer = cli.model, cli.datamodule, cli.trainer
    module.configure_model()
    dm.setup("fit")
    if dm.val_dataset is None:
        raise ValueError(f"{config}: the run needs validation prompts (data val or val_fraction)")
    report: dict = {"config": config, "overrides": overrides, "samples_per_prompt": samples}
    cpu = time.process_time()
    before = per_prompt_figures(module, dm.val_dataloader(), samples, seed=1)
    report["before_cpu_s"] = round(time.process_time() - cpu, 1)
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.fit(module, datamodule=dm)
    report["fit_cpu_s"] = round(time.process_time() - cpu, 1)
    report["fit_wall_s"] = round(time.perf_counter() - wall, 1)
    cpu = time.process_time()
    after = per_prompt_figures(module, dm.val_dataloader(), samples, seed=1)
    report["after_cpu_s"] = round(time.process_time() - cpu, 1)
    report["train_prompts"] = len(dm.train_dataset)
    report["val_prompts"] = len(dm.val_dataset)
    report["steps"] = trainer.global_step
    report["change"] = {k: paired_change(before[k], after[k]) for k in before if k in after}
    report["per_prompt"] = {"before": before, "after": after}
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
    return report


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/grpo/smollm2_drro.yaml")
    parser.add_argument("--out", default="runs/grpo/smollm2_drro/e2e.json")
    parser.add_argument("--samples", type=int, default=4, help="completions per prompt")
    args = parser.parse_args(argv[:cut])
    report = run(args.config, argv[cut + 1 :], args.out, args.samples)
    for name, c in report["change"].items():
        print(
            f"{name}: {c['mean_before']:.4f} -> {c['mean_after']:.4f} "
            f"(delta {c['mean_delta']:+.4f}, 95% CI [{c['mean_delta_ci95'][0]:+.4f}, "
            f"{c['mean_delta_ci95'][1]:+.4f}], sign test {c['sign_test']['up']} up / "
            f"{c['sign_test']['down']} down, p={c['sign_test']['p_two_sided']:.3g}; "
            f"{c['prompts']} held-out prompts)"
        )
    print(
        f"fit: {report['fit_cpu_s']} CPU-s, {report['fit_wall_s']} s wall, {report['steps']} steps"
    )


if __name__ == "__main__":
    main()
