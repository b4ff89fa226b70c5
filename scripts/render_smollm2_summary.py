#!/usr/bin/env python
"""Render the committed raw outputs of the SmolLM2 end-to-end runs as markdown (no typed numbers).

Inputs (each optional; a missing one is reported as "not run"):

- ``docs/results/smollm2_dr_dpo_e2e.json`` / ``docs/results/smollm2_dpo_e2e.json``: the reports of
  ``scripts/smollm2_e2e.py`` (held-out margins with sign test, bootstrap CI and McNemar; benchmark
  accuracies with Wilson CIs);
- ``docs/results/smollm2_drro/reward_kl_frontier.csv``: the ``RewardKLFrontier`` points of the
  DRRO-GRPO run (``stage, step, kl, proxy, gold``) and ``docs/results/smollm2_drro/gold_proxy_summary.json``
  (the gold/proxy pipeline's summary).

    python scripts/render_smollm2_summary.py            # writes docs/results/smollm2_e2e.md
    python scripts/render_smollm2_summary.py --check    # exit 1 when the committed file differs
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
RESULTS = REPO / "docs" / "results"


def _ci(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "n/a"


def dpo_section(name: str, path: Path) -> list[str]:
    if not path.exists():
        return [f"### {name}", "", f"Not run (`{path.relative_to(REPO)}` absent).", ""]
    r = json.loads(path.read_text())
    h = r["heldout"]
    lines = [
        f"### {name}",
        "",
        f"Raw report: `{path.relative_to(REPO)}`; config `{r['config']}`, overrides {r['overrides'] or 'none'}, "
        f"{r['threads']} torch thread(s); {r['train_pairs']} train / {r['heldout_pairs']} held-out pairs; "
        f"fit {r['fit_s']} s, total wall {r.get('wall_s', r['wall_s_before_export'])} s; "
        f"last train loss {r['train_loss_last']:.4f}.",
        "",
        "| measure (pi(y+|x) > pi(y-|x)) | n | before (95 % CI) | after (95 % CI) |",
        "| --- | --- | --- | --- |",
        f"| hh-rlhf held-out accuracy | {h['pairs']} | {h['accuracy_before']:.3f} ({_ci(h['accuracy_before_ci95'])}) "
        f"| {h['accuracy_after']:.3f} ({_ci(h['accuracy_after_ci95'])}) |",
    ]
    for key, before in r["benchmarks_before"].items():
        after = r["benchmarks_after"][key]
        lines.append(
            f"| {key} ({before['metric']}) | {before['n']} | {before['accuracy']:.3f} ({_ci(before['ci95'])}) "
            f"| {after['accuracy']:.3f} ({_ci(after['ci95'])}) |"
        )
    tuning = r.get("tuning")
    if tuning:
        lines += [
            "",
            f"Learning rate chosen on a tune split of {r['tune_pairs']} pairs carved from the TRAIN prompts "
            f"(fraction {tuning['fraction']}, seed {tuning['seed']}; not trained on, disjoint from the "
            f"held-out pairs above); criterion: {tuning['criterion']}. Chosen: **{r['learning_rate']:g}**.",
            "",
            "| learning rate | tune mean margin | tune accuracy | last train loss | fit CPU s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for c in tuning["candidates"]:
            lines.append(
                f"| {c['learning_rate']:g} | {c['tune_mean_margin']:.3f} | {c['tune_accuracy']:.3f} "
                f"| {c['train_loss_last']:.4f} | {c['fit_cpu_s']:.0f} |"
            )
        t = r["tune"]
        lines += [
            "",
            f"Tune split at the chosen rate: margin change {t['mean_delta']:+.3f} (bootstrap 95 % CI "
            f"{t['mean_delta_ci95'][0]:+.3f} … {t['mean_delta_ci95'][1]:+.3f}), sign test "
            f"{t['sign_test']['up']} up / {t['sign_test']['down']} down, p = {t['sign_test']['p_two_sided']:.3g}.",
        ]
    cpu = r.get("cpu_s")
    if cpu:
        lines += [
            "",
            "Process CPU seconds (user+sys, `time.process_time`): "
            + ", ".join(f"{k} {v}" for k, v in cpu.items())
            + (
                f"; before-training figures read from `{r['before_from_cache']}` (measured once, shared)"
                if r.get("before_from_cache")
                else ""
            )
            + ".",
        ]
    s, m = h["sign_test"], h["mcnemar"]
    lines += [
        "",
        f"Held-out margins log pi(y+|x) − log pi(y−|x): mean {h['mean_margin_before']:.3f} → {h['mean_margin_after']:.3f}, "
        f"change {h['mean_delta']:+.3f} (bootstrap 95 % CI {h['mean_delta_ci95'][0]:+.3f} … {h['mean_delta_ci95'][1]:+.3f}); "
        f"sign test {s['up']} up / {s['down']} down, p = {s['p_two_sided']:.3g}; "
        f"McNemar {m['gained']} gained / {m['lost']} lost, p = {m['p_two_sided']:.3g}.",
        f"Export directory: `{r.get('export_dir', 'not exported')}`.",
        "",
    ]
    timing = path.with_suffix(".time.txt")
    if timing.exists():  # /usr/bin/time -v of the run: the exact command and its CPU figures
        lines += [
            f"`{timing.relative_to(REPO)}`:",
            "",
            "```",
            timing.read_text().strip(),
            "```",
            "",
        ]
    return lines


def _script(name: str):
    """A module of scripts/ by file name (scripts/ is not a package)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def comparison_section(a_path: Path, b_path: Path, out: Path, files: dict) -> list[str]:
    """DR-DPO (a) vs DPO (b) on the same held-out pairs; the figures also go to ``out`` (added to
    ``files``, path -> text, for the caller to write or check)."""
    if not (a_path.exists() and b_path.exists()):
        return []
    e2e = _script("smollm2_e2e")
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    if "heldout_margins" not in a or "heldout_margins" not in b:
        return []
    c = e2e.compare_methods(a, b)
    c = {"a": str(a_path.relative_to(REPO)), "b": str(b_path.relative_to(REPO)), **c}
    files[out] = json.dumps(c, indent=1) + "\n"
    s, m = c["sign_test"], c["mcnemar"]
    return [
        "### DR-DPO vs DPO, paired on the same held-out pairs",
        "",
        f"`{out.relative_to(REPO)}` (computed by this script from the two reports' per-pair margins): "
        f"d_i = margin_i(DR-DPO) − margin_i(DPO) after training, {c['pairs']} pairs (the before margins are "
        f"the same base model's, so d_i is also the difference of the margin changes). "
        f"Mean d {c['mean_difference']:+.4f} (bootstrap 95 % CI {c['mean_difference_ci95'][0]:+.4f} … "
        f"{c['mean_difference_ci95'][1]:+.4f}); sign test {s['up']} pairs higher under DR-DPO / {s['down']} "
        f"higher under DPO, p = {s['p_two_sided']:.3g}; held-out accuracy DR-DPO {c['accuracy_a']:.3f} vs DPO "
        f"{c['accuracy_b']:.3f}, McNemar {m['a_only_correct']} / {m['b_only_correct']} discordant pairs, "
        f"p = {m['p_two_sided']:.3g}.",
        "",
    ]


def _mean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def grpo_section(folder: Path) -> list[str]:
    csv_path = folder / "reward_kl_frontier.csv"
    if not csv_path.exists():
        return ["### DRRO-GRPO", "", f"Not run (`{csv_path.relative_to(REPO)}` absent).", ""]
    with open(csv_path, newline="") as f:
        rows = [
            {
                "stage": r["stage"],
                "step": int(r["step"]),
                "kl": float(r["kl"]),
                "proxy": float(r["proxy"]),
                "gold": float(r["gold"]) if r["gold"] else math.nan,
            }
            for r in csv.DictReader(f)
        ]
    lines = ["### DRRO-GRPO (SmolLM2 policy, project-trained proxy in the loss, gold logged)", ""]
    summary = folder / "gold_proxy_summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        flat = {}
        for k, v in s.items():
            for kk, vv in v.items() if isinstance(v, dict) else [("", v)]:
                if isinstance(vv, (int, float, str)) and not isinstance(vv, bool):
                    flat[f"{k}.{kk}" if kk else k] = vv
        lines += [
            f"Gold/proxy pipeline summary (`{summary.relative_to(REPO)}`): "
            + ", ".join(
                f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in flat.items()
            ),
            "",
        ]
    gold_csv = folder / "gold_metrics.csv"
    if gold_csv.exists():
        with open(gold_csv, newline="") as f:
            val = [r for r in csv.DictReader(f) if r.get("val/accuracy")]
        if val:
            lines += [
                f"Gold reward model (MiniLM, `configs/reward/minilm_hh_rlhf.yaml`, `{gold_csv.relative_to(REPO)}`): "
                f"held-out hh-rlhf accuracy {float(val[-1]['val/accuracy']):.3f}, "
                f"HHH {float(val[-1]['val/hhh/accuracy']):.3f}, MT-Bench-human {float(val[-1]['val/mt_bench/accuracy']):.3f}.",
                "",
            ]
    run_txt = folder / "run.txt"
    if run_txt.exists():
        lines += [
            "Commands and timings (`" + str(run_txt.relative_to(REPO)) + "`):",
            "",
            "```",
            run_txt.read_text().strip(),
            "```",
            "",
        ]
    lines += [
        "| stage | step | KL to initial policy | proxy reward | gold reward |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["stage"] != "val", r["step"])):
        lines.append(
            f"| {r['stage']} | {r['step']} | {r['kl']:.4f} | {r['proxy']:.4f} | {r['gold']:.4f} |"
        )
    train = sorted((r for r in rows if r["stage"] == "train"), key=lambda r: r["step"])
    if len(train) >= 6:
        k = len(train) // 3
        first, last = train[:k], train[-k:]
        lines += [
            "",
            f"Train batches, first {k} vs last {k} rollouts (means): "
            f"proxy {_mean([r['proxy'] for r in first]):.4f} → {_mean([r['proxy'] for r in last]):.4f}, "
            f"gold {_mean([r['gold'] for r in first]):.4f} → {_mean([r['gold'] for r in last]):.4f}, "
            f"KL {_mean([r['kl'] for r in first]):.4f} → {_mean([r['kl'] for r in last]):.4f}.",
        ]
    lines += heldout_change_lines(folder / "e2e.json")
    lines += drro_vs_grpo_lines(folder / "e2e.json", folder / "grpo_e2e.json")
    png = folder / "reward_kl_frontier.png"
    if png.exists():
        lines += ["", f"![reward-KL frontier]({png.relative_to(RESULTS)})"]
    return lines + [""]


def paired_change_row(name: str, c: dict) -> str:
    """A table row of a ``paired_change`` result: means, change, CI, sign test."""
    lo, hi = c["mean_delta_ci95"]
    st = c["sign_test"]
    return (
        f"| {name} | {c['mean_before']:.4f} | {c['mean_after']:.4f} | {c['mean_delta']:+.4f} "
        f"| [{lo:+.4f}, {hi:+.4f}] | {st['up']} / {st['down']} | {st['p_two_sided']:.3g} |"
    )


def drro_vs_grpo_lines(drro_path: Path, grpo_path: Path) -> list[str]:
    """DRRO (the config's shaping) vs the GRPO baseline (``shaping=none``, every other flag the
    same), paired by held-out prompt after training: per quantity the mean of
    ``after_DRRO - after_GRPO``, its bootstrap 95 % CI and the exact sign test."""
    if not (drro_path.exists() and grpo_path.exists()):
        return []
    paired_change = _script("smollm2_drro_e2e").paired_change
    drro, grpo = json.loads(drro_path.read_text()), json.loads(grpo_path.read_text())
    same_start = drro["per_prompt"]["before"] == grpo["per_prompt"]["before"]
    lines = [
        "",
        f"DRRO vs the GRPO baseline (`{grpo_path.relative_to(REPO)}`: the same command with "
        "`--model.init_args.shaping=none`), paired by held-out prompt after training; before the fit "
        + (
            "both runs sampled identical completions (same base model and seed)."
            if same_start
            else "the two runs' samples differ (the comparison is still paired by prompt)."
        )
        + " Difference = DRRO − GRPO:",
        "",
        "| quantity | GRPO after | DRRO after | difference | 95 % CI | DRRO higher / lower | sign test p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in drro["per_prompt"]["after"]:
        c = paired_change(grpo["per_prompt"]["after"][name], drro["per_prompt"]["after"][name])
        lines.append(paired_change_row(name, c))
    return lines


def heldout_change_lines(path: Path) -> list[str]:
    """The before/after table of ``scripts/smollm2_drro_e2e.py`` (per held-out prompt, paired)."""
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    lines = [
        "",
        f"Held-out prompts ({next(iter(r['change'].values()))['prompts']}, disjoint from the "
        f"{r['train_prompts']} training prompts), {r['samples_per_prompt']} sampled completions "
        f"each, before the fit vs after {r['steps']} steps (`{path.relative_to(REPO)}`; change: "
        "mean of the per-prompt differences, bootstrap 95 % CI, exact two-sided sign test):",
        "",
        "| quantity | before | after | change | 95 % CI | up / down | sign test p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [paired_change_row(name, c) for name, c in r["change"].items()]
    return lines


def render(files: dict | None = None) -> str:
    """The markdown; the derived raw files it cites are added to ``files`` (path -> text)."""
    files = {} if files is None else files
    lines = [
        "# SmolLM2-135M-Instruct end to end (CPU, offline)",
        "",
        "Generated by `python scripts/render_smollm2_summary.py` from the raw files in docs/results/.",
        "",
    ]
    lines += dpo_section("DR-DPO (TV ball), LoRA", RESULTS / "smollm2_dr_dpo_e2e.json")
    lines += dpo_section("DPO, LoRA", RESULTS / "smollm2_dpo_e2e.json")
    lines += comparison_section(
        RESULTS / "smollm2_dr_dpo_e2e.json",
        RESULTS / "smollm2_dpo_e2e.json",
        RESULTS / "smollm2_dr_dpo_vs_dpo.json",
        files,
    )
    earlier = sorted((RESULTS / "smollm2_e2e").glob("*.json"))
    if earlier:
        lines += [
            "### Earlier runs (learning rate not chosen on validation)",
            "",
            *[f"- `{p.relative_to(REPO)}`" for p in earlier],
            "",
        ]
    lines += grpo_section(RESULTS / "smollm2_drro")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=str(RESULTS / "smollm2_e2e.md"))
    p.add_argument("--check", action="store_true", help="exit 1 when --output differs")
    args = p.parse_args(argv)
    files: dict = {}
    files[Path(args.output)] = render(files)
    if args.check:
        stale = [
            path
            for path, text in files.items()
            if not path.exists() or path.read_text(encoding="utf-8") != text
        ]
        for path in stale:
            print(
                f"{path} differs from the render of the raw files; run "
                "`python scripts/render_smollm2_summary.py` and commit the result",
                file=sys.stderr,
            )
        if not stale:
            print(f"{args.output} and the files it derives match the raw files")
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
