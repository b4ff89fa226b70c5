"""Experiment 2 (seed S002): DPO-family policies under a shift of the preference mixture.

    python -m benchmarks.robustness.exp2_preference                   # full form (6 seeds)
    python -m benchmarks.robustness.exp2_preference --quick           # CI smoke form
    python -m benchmarks.robustness.exp2_preference --seeds 10 11 12  # other seeds

S002's mixture protocol on the synthetic vocabulary, with two rewards that one response can
satisfy *together* (they read different words), so a robust policy is possible::

    r_a(y) = [detail in y]                      the deployment preference (the shift)
    r_b(y) = [simple in y]
    r_w(y) = w r_b(y) + (1 - w) r_a(y)          the training mixture, w = 0.8 (toward r_b)

Data (:func:`preference_rows`, built on :mod:`benchmarks.robustness.preference_shift`'s pair
generator): prompts ``"<topic> w1 w2 w3"``; two responses of 4-12 filler words, each containing
``detail`` and ``simple`` independently with probability 1/2; pairs tied under ``r_w`` are left
out. Training labels follow Bradley-Terry on ``r_w`` with temperature ``T`` (``P(y1 chosen) =
sigmoid((r_w(y1) - r_w(y2)) / T)``; ``T = 0``: the better response). Regimes: ``T = 0.5``
(the weight ``w`` matters: a pair decided by ``r_a`` alone is labelled right with probability
sigmoid(0.4) = 0.60, one decided by ``r_b`` alone with sigmoid(1.6) = 0.83) and ``T = 0``
(deterministic: only the order "r_b first, then r_a" matters). The validation pairs are
labelled noise-free by ``r_w``.

Policy: the project's ``DPO`` module (tiny random-init Llama, full weights, frozen-copy
reference) trained by Lightning's Trainer; the methods are its arguments (no second training
loop): DPO; WDPO (``wdpo_rho``, seed form, S002 Algorithm 1); KLDPO (``KLPenalty(tau,
form="seed")``, S002 Algorithm 2), each over a grid of the same size (DPO over beta x learning
rate, the others over their radius / temperature x the same learning rates at beta = 0.1).
DR-DPO (``TVBall(rho)``, family ``tv``, S000 Algorithm 3) is supported by
:func:`dpo_arguments` but left out of the declared run (CPU budget).

Evaluation after every epoch (as S002 scores generated answers): completions **sampled** from
the policy (temperature 1, :func:`sample_completions`) on held-out prompts, scored by the known
rewards. Sampling uses its own seed per (seed, split, epoch), the same for every method, and
leaves the training random stream untouched.

* selection (in distribution): per seed and method, the (configuration, epoch) with the highest
  mean training-mixture reward ``r_w`` of samples on the validation prompts (``val_reward``);
  the validation preference accuracy (implicit-reward sign on held-out ``r_w`` pairs) is
  recorded and shown as an alternative rule;
* test (the shift): mean ``r_a`` of samples on separate test prompts (the claim), plus ``r_b``,
  ``r_w`` and the share of samples that satisfy both, read only at the selected point;
* claims: paired per-seed difference of test ``r_a`` against the selected DPO run, 95 % t
  interval, paired t-test p; "reproduces" only when the interval is above zero.
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import asdict, dataclass

from benchmarks.robustness.common import (
    RUNS_DIR,
    quiet_lightning,
    quiet_trainer,
    run_jobs,
    seed_all,
)
from benchmarks.robustness.preference_shift import (
    KEYWORD_1,
    KEYWORD_2,
    label_pairs,
    make_pairs,
    write_jsonl,
)
from benchmarks.robustness.protocol import Experiment, Method, run_experiment

NAME = "exp2_preference"
MODULE = f"benchmarks.robustness.{NAME}"
TITLE = "Exp 2 (S002): DPO-family policies under a preference-mixture shift (sampled completions)"
WORD_A, WORD_B = KEYWORD_1, KEYWORD_2  # "detail" (r_a), "simple" (r_b)
TRAIN_WEIGHT_B = 0.8
BASE_BETA = 0.1
INITIAL = "initial policy"  # records of the untrained policy (context only, never selected)

LEARNING_RATES = [3e-3, 1e-2]
METHODS = (
    Method("DPO", "dpo", {"beta": [0.05, 0.1], "learning_rate": LEARNING_RATES}, baseline=True),
    Method("WDPO", "wdpo", {"rho": [0.1, 1.0], "learning_rate": LEARNING_RATES}),
    Method("KLDPO", "kldpo", {"tau": [0.1, 1.0], "learning_rate": LEARNING_RATES}),
)
QUICK_METHODS = (
    Method("DPO", "dpo", {"beta": [0.1], "learning_rate": [1e-2]}, baseline=True),
    Method("KLDPO", "kldpo", {"tau": [0.1], "learning_rate": [1e-2]}),
)
# Bradley-Terry labels first (the mixture weight w matters: S002's setting), then deterministic
# labels (only the order r_b before r_a matters; DPO's margins can grow without bound)
REGIMES = ({"label_noise": 0.5}, {"label_noise": 0.0})
FULL_SEEDS = tuple(range(6))
QUICK_SEEDS = (0, 1)
FULL_SETTINGS = {
    "num_train": 320,
    "num_val": 160,
    "val_prompts": 32,
    "test_prompts": 64,
    "samples_per_prompt": 4,
    "max_new_tokens": 12,
    "epochs": 4,
    "batch_size": 16,
    "weight_b": TRAIN_WEIGHT_B,
}
QUICK_SETTINGS = {
    **FULL_SETTINGS,
    "num_train": 64,
    "num_val": 32,
    "val_prompts": 8,
    "test_prompts": 8,
    "epochs": 2,
}
SUMMARY_METHODS = ("WDPO", "KLDPO")  # S002's claim


# ----------------------------------------------------------------------------- rewards and data
def reward_a(text: str) -> float:
    """``r_a(y) = [detail in y]`` (whole words of the decoded text)."""
    return float(WORD_A in text.split())


def reward_b(text: str) -> float:
    """``r_b(y) = [simple in y]``."""
    return float(WORD_B in text.split())


def mixed_reward(weight_b: float, text: str) -> float:
    """``r_w(y) = w r_b(y) + (1 - w) r_a(y)``, ``w`` in [0, 1]."""
    if not 0.0 <= weight_b <= 1.0:
        raise ValueError(f"mixture weight w must be in [0, 1], got {weight_b}")
    return weight_b * reward_b(text) + (1.0 - weight_b) * reward_a(text)


def preference_rows(
    num: int, seed: int, split: str, weight_b: float, label_noise: float
) -> list[dict]:
    """``num`` preference rows of ``split`` labelled by ``r_w`` (Bradley-Terry temperature
    ``label_noise``); pairs tied under ``r_w`` are skipped (the first ``num`` untied of ``2 num``
    generated pairs)."""
    reward = functools.partial(mixed_reward, weight_b)
    pairs = [
        p
        for p in make_pairs(2 * num, seed, f"{NAME}/{split}")
        if reward(p["y1"]) != reward(p["y2"])
    ][:num]
    if len(pairs) < num:
        raise RuntimeError(f"only {len(pairs)} untied pairs of {2 * num} for split {split!r}")
    return label_pairs(pairs, weight_b, label_noise, seed, reward=reward)


def held_out_prompts(num: int, seed: int) -> list[str]:
    """``num`` held-out prompts from their own random stream (a prompt of 3 filler words and a
    topic repeats a training prompt only by chance)."""
    return [p["prompt"] for p in make_pairs(num, seed, f"{NAME}/test")]


def score_texts(texts: list[str], weight_b: float) -> dict[str, float]:
    """Means over ``texts`` of ``r_a``, ``r_b``, ``r_w`` and of ``r_a r_b`` (both satisfied)."""
    n = len(texts)
    a = [reward_a(t) for t in texts]
    b = [reward_b(t) for t in texts]
    return {
        "a": sum(a) / n,
        "b": sum(b) / n,
        "mix": sum(weight_b * y + (1.0 - weight_b) * x for x, y in zip(a, b, strict=True)) / n,
        "both": sum(x * y for x, y in zip(a, b, strict=True)) / n,
    }


def sample_completions(
    module, prompts: list[str], num_samples: int, max_new_tokens: int, seed: int
) -> list[str]:
    """``num_samples`` completions per prompt from the module's policy (temperature 1, no top-k /
    top-p), decoded without special tokens, prompt-major order. The prompts are encoded as the
    data module renders them for training (:func:`~lightning_robust.data.prompts.encode_prompts`,
    left-padded by :class:`~lightning_robust.data.prompts.PromptCollator`); sampling runs under
    ``torch.random.fork_rng`` seeded by ``seed``, so it neither reads nor advances the training
    random stream."""
    import torch

    from lightning_robust.data.prompts import PromptCollator, encode_prompts
    from lightning_robust.models.rollout import generate_rollouts

    tokenizer = module.tokenizer
    encoded = encode_prompts(prompts, tokenizer, max_prompt_length=32)
    batch = PromptCollator(tokenizer.pad_token_id)(
        [
            {"prompt_input_ids": ids, "index": i, "prompt": p}
            for i, (ids, p) in enumerate(zip(encoded.input_ids, prompts, strict=True))
        ]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rollout = generate_rollouts(
            module.backbone,
            batch["prompt_input_ids"],
            batch["prompt_attention_mask"],
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            num_generations=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=1.0,
        )
    return tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)


def sampling_seed(seed: int, split: str, epoch: int) -> int:
    """The sampling seed of (seed, split, epoch): the same for every method (common random numbers)."""
    return 1_000_003 * seed + 1009 * epoch + {"val": 1, "test": 2}[split]


# ----------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class Job:
    """One DPO-family run: a method's configuration in one regime and seed."""

    method: str
    family: str
    config: tuple  # ((name, value), ...) of the grid point
    label_noise: float
    seed: int
    num_train: int
    num_val: int
    val_prompts: int
    test_prompts: int
    samples_per_prompt: int
    max_new_tokens: int
    epochs: int
    batch_size: int
    weight_b: float
    record_initial: bool = False


def dpo_arguments(family: str, config: dict) -> dict:
    """``DPO`` module arguments of a method family at the grid point ``config``."""
    from lightning_robust.weighting import KLPenalty, TVBall

    args = {"beta": config.get("beta", BASE_BETA)}
    if family == "dpo":
        return args
    if family == "wdpo":
        return {**args, "wdpo_rho": config["rho"], "wdpo_form": "seed"}
    if family == "kldpo":
        return {**args, "weighting": KLPenalty(config["tau"], form="seed")}
    if family == "tv":
        return {**args, "weighting": TVBall(config["rho"])}
    raise ValueError(f"unknown method family {family!r}; expected dpo, wdpo, kldpo or tv")


def train_run(job: Job) -> list[dict]:
    """Train one policy; one record per epoch (and one for the untrained policy when
    ``job.record_initial``) with the validation and test metrics."""
    import datasets
    from lightning.pytorch.callbacks import Callback

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.modules import DPO

    datasets.disable_progress_bars()
    quiet_lightning()
    config = dict(job.config)
    tag = "_".join(f"{k}{v:g}" for k, v in job.config)
    work = RUNS_DIR / NAME / f"{job.family}_{tag}_T{job.label_noise:g}_s{job.seed}_n{job.num_train}"
    train_file = write_jsonl(
        preference_rows(job.num_train, job.seed, "train", job.weight_b, job.label_noise),
        work / "train.jsonl",
    )
    val_rows = preference_rows(job.num_val, job.seed, "val", job.weight_b, 0.0)
    val_file = write_jsonl(val_rows, work / "val.jsonl")
    prompts = {
        "val": [r["prompt"] for r in val_rows[: job.val_prompts]],
        "test": held_out_prompts(job.test_prompts, job.seed),
    }
    records: list[dict] = []

    def evaluate(module, epoch: int) -> dict:
        out = {}
        for split, chosen in prompts.items():
            texts = sample_completions(
                module,
                chosen,
                job.samples_per_prompt,
                job.max_new_tokens,
                sampling_seed(job.seed, split, epoch),
            )
            for key, value in score_texts(texts, job.weight_b).items():
                out[f"{split}_{'reward' if key == 'mix' and split == 'val' else key}"] = round(
                    value, 6
                )
        return out

    class SampledRewards(Callback):
        def on_fit_start(self, trainer, pl_module):
            if job.record_initial:
                records.append(
                    {"method": INITIAL, "config": {}, "epoch": 0, **evaluate(pl_module, 0)}
                )

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            epoch = trainer.current_epoch + 1
            accuracy = float(trainer.callback_metrics["val/rewards/accuracies"])
            records.append(
                {
                    "method": job.method,
                    "config": config,
                    "epoch": epoch,
                    "val_acc": round(accuracy, 6),
                    **evaluate(pl_module, epoch),
                }
            )

    seed_all(job.seed)
    data = PreferenceDataModule(
        train=str(train_file),
        val=str(val_file),
        batch_size=job.batch_size,
        max_length=48,
        seed=job.seed,
        tokenize_cache=False,
    )
    model = DPO(
        **dpo_arguments(job.family, config),
        reference_cache_dir=str(work / "ref"),
        backbone={"name_or_path": "tiny", "init_seed": job.seed},
        optimizer={
            "learning_rate": config["learning_rate"],
            "warmup_ratio": 0.03,
            "lr_schedule": "constant",
        },
    )
    model.wdpo_chunk_pairs = None  # WDPO on the whole batch at once: the same gradient, faster
    trainer = quiet_trainer(job.epochs, work, callbacks=[SampledRewards()])
    trainer.fit(model, datamodule=data)
    return [{**r, "seed": job.seed, "label_noise": job.label_noise} for r in records]


def experiment(quick: bool, seeds) -> Experiment:
    """The declaration: methods, grids, seeds, regimes, selection and claims."""
    return Experiment(
        name=NAME,
        title=TITLE,
        module=MODULE,
        methods=QUICK_METHODS if quick else METHODS,
        seeds=tuple(seeds or (QUICK_SEEDS if quick else FULL_SEEDS)),
        regimes=REGIMES[:1] if quick else REGIMES,
        settings=QUICK_SETTINGS if quick else FULL_SETTINGS,
        select_metric="val_reward",
        test_metrics=("test_a", "test_b", "test_mix", "test_both"),
        claim_metric="test_a",
        claim_direction=+1,
        claim="S002: WDPO / KLDPO policies score higher than DPO under the shifted preference r_a "
        "(mean r_a of sampled completions)",
    )


def jobs_of(exp: Experiment, seeds, regimes=None) -> list[Job]:
    """Every run of the declaration for ``seeds`` (the baseline's first grid point also samples
    the untrained policy of its seed), the longest runs (WDPO's double backward) first."""
    jobs = []
    for regime in exp.regimes if regimes is None else regimes:
        for seed in seeds:
            for m in exp.methods:
                for k, cfg in enumerate(m.grid_points()):
                    jobs.append(
                        Job(
                            m.name,
                            m.family,
                            tuple(sorted(cfg.items())),
                            regime["label_noise"],
                            seed,
                            **exp.settings,
                            record_initial=m.baseline and k == 0,
                        )
                    )
    return sorted(jobs, key=lambda j: j.family != "wdpo")


def run(exp: Experiment, workers: int, progress=None, seeds_per_part: int = 3) -> list[dict]:
    """All runs, one regime and ``seeds_per_part`` seeds at a time (``progress(records)`` after
    each part, so an interrupted run leaves its finished parts in the JSON, marked incomplete)."""
    records: list[dict] = []
    seeds = list(exp.seeds)
    for regime in exp.regimes:
        for start in range(0, len(seeds), seeds_per_part):
            part = jobs_of(exp, seeds[start : start + seeds_per_part], [regime])
            for out in run_jobs(train_run, part, workers):
                records.extend(out)
            records.sort(
                key=lambda r: (
                    -r["label_noise"],
                    r["seed"],
                    r["method"],
                    str(r["config"]),
                    r["epoch"],
                )
            )
            if progress is not None:
                progress(records)
    return records


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke form (64 pairs, DPO and KLDPO, 2 epochs, one regime, in process)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0..5 (quick: 0 1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes, one torch thread each (the quick form runs in process)",
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default docs/results/<name>.json; quick: none)"
    )
    args = parser.parse_args(argv)
    exp = experiment(args.quick, args.seeds)
    started = time.perf_counter()
    return run_experiment(
        exp,
        lambda progress: run(exp, 1 if args.quick else args.workers, progress),
        args,
        argv,
        started,
        extra={"job_fields": list(asdict(Job("", "", (), 0, 0, *[0] * 9)))},
    )


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- report
REGIME_FIELDS = ("label_noise",)
METRIC_LABELS = {
    "test_a": "test r_a (the shift)",
    "test_b": "test r_b",
    "test_both": "test r_a·r_b (both)",
    "test_mix": "test r_w",
    "val_reward": "val r_w (selects)",
    "val_acc": "val pref. accuracy",
}
TABLE_METRICS = tuple(METRIC_LABELS)
ALTERNATIVE_SELECT = "val_acc"  # a diagnostic rule (the declared one is val_reward)


def regime_label(label_noise: float, weight_b: float = TRAIN_WEIGHT_B) -> str:
    noise = (
        "deterministic labels" if label_noise == 0 else f"Bradley–Terry labels T={label_noise:g}"
    )
    return f"train on r_w = {weight_b:g}·r_b + {1 - weight_b:g}·r_a ({noise}), test on r_a"


def _paired(chosen: dict, g: tuple, name: str, base: str, metric: str) -> dict | None:
    from benchmarks.robustness.stats import paired_t

    seeds = sorted(
        s for (*gg, m, s) in chosen if tuple(gg) == g and m == name and (*g, base, s) in chosen
    )
    if not seeds:
        return None
    return paired_t(
        [chosen[(*g, name, s)][metric] for s in seeds],
        [chosen[(*g, base, s)][metric] for s in seeds],
    )


def render(payload: dict) -> tuple[str, list[dict]]:
    """Markdown of the section and the claim rows, from the raw records only."""
    from benchmarks.robustness.common import fmt_mean_std, markdown_table
    from benchmarks.robustness.protocol import select, selected_point_row
    from benchmarks.robustness.report import fmt, fmt_p
    from benchmarks.robustness.stats import verdict

    proto = payload["protocol"]
    methods = proto["methods"]
    settings = proto["settings"]
    weight_b = settings["weight_b"]
    base = next(m["name"] for m in methods if m["baseline"])
    records = payload["records"]
    chosen = select(records, methods, REGIME_FIELDS, proto["select_metric"])
    regimes = [tuple(r[f] for f in REGIME_FIELDS) for r in proto["regimes"]]
    regimes = [g for g in regimes if any(k[:1] == g for k in chosen)]

    def cell(config_values) -> str:
        return ", ".join(f"{v:g}" for v in config_values)

    grids = "; ".join(
        f"{m['name']}: "
        + " × ".join(
            f"{'lr' if k == 'learning_rate' else k} ∈ {{{cell(v)}}}" for k, v in m["grid"].items()
        )
        for m in methods
    )
    status = "" if payload.get("complete") else " **Partial run: not every seed finished.**"
    n_samples = settings["samples_per_prompt"]
    lines = [
        f"Command: `{payload['command']}` · seeds {proto['seeds']} · {len(records)} per-epoch "
        f"records in [`results/{payload['experiment']}.json`](results/{payload['experiment']}.json)."
        f"{status}",
        f"Two rewards that one answer can satisfy together: r_a(y) = [detail ∈ y] (the deployment "
        f"preference) and r_b(y) = [simple ∈ y]. Training preferences: {settings['num_train']} pairs "
        f"labelled by the mixture r_w = {weight_b:g}·r_b + {1 - weight_b:g}·r_a (pairs tied under r_w "
        f"left out; each response has 4–12 filler words and contains each keyword with probability "
        f"1/2). Policy: the project's `DPO` module, tiny random-init Llama, full weights, frozen-copy "
        f"reference, AdamW with 3 % warm-up then constant learning rate, batch {settings['batch_size']}, "
        f"up to {settings['epochs']} epochs; WDPO (`wdpo_rho`, seed form) and KLDPO (`KLPenalty`, seed "
        f"form) at β = {BASE_BETA:g}. Grids, each of "
        f"{max(len(Method(**m).grid_points()) for m in methods)} configurations: {grids}.",
        f"After every epoch the policy **samples** {n_samples} completions (temperature 1, "
        f"{settings['max_new_tokens']} new tokens) per prompt on {settings['val_prompts']} validation and "
        f"{settings['test_prompts']} separate test prompts, the same sampling seeds for every method. "
        f"Selection (per seed and method, over configuration × epoch): the highest mean r_w of the "
        f"validation samples (the training mixture: in distribution). Reported at that point: the mean "
        f"r_a of the test samples (the claim), r_b, the share satisfying both, and r_w; the validation "
        f"preference accuracy on {settings['num_val']} held-out r_w pairs is shown as well. Rewards of "
        f"samples are shares of samples in [0, 1].",
    ]
    header = [
        "regime",
        "method",
        *(METRIC_LABELS[m] for m in TABLE_METRICS),
        "selected (per seed)",
        "seeds",
    ]
    body = []
    for g in regimes:
        initial = [r for r in records if r["method"] == INITIAL and (r["label_noise"],) == g]
        if initial:
            body.append(
                [
                    regime_label(*g, weight_b),
                    "untrained policy (reference)",
                    *(
                        fmt_mean_std([r[x] for r in initial]) if x in initial[0] else "—"
                        for x in TABLE_METRICS
                    ),
                    "epoch 0",
                    len(initial),
                ]
            )
        for m in methods:
            picks = [chosen[k] for k in sorted(chosen) if k[:1] == g and k[1] == m["name"]]
            if picks:
                body.append(
                    selected_point_row(
                        [regime_label(*g, weight_b), m["name"]], picks, TABLE_METRICS
                    )
                )
    lines += [
        "### Sampled-completion rewards at the validation-selected point (mean ± sample sd over seeds)",
        markdown_table(header, body),
    ]

    def interval(st: dict) -> str:
        return (
            f"{fmt(st['mean'], sign=True)} [{fmt(st['lo'], sign=True)}, {fmt(st['hi'], sign=True)}]"
        )

    claims, rows = [], []
    # diagnostics (not claims): another in-distribution selection rule, and DPO restricted to
    # the robust methods' beta (a smaller budget for DPO: only its learning rates)
    same_beta = [
        {**m, "grid": {**m["grid"], "beta": [BASE_BETA]}}
        if m["baseline"] and BASE_BETA in m["grid"].get("beta", [])
        else m
        for m in methods
    ]
    diagnostics = {
        "accuracy": select(records, methods, REGIME_FIELDS, ALTERNATIVE_SELECT),
        "same_beta": select(
            [
                r
                for r in records
                if r["method"] != base or r["config"].get("beta", BASE_BETA) == BASE_BETA
            ],
            same_beta,
            REGIME_FIELDS,
            proto["select_metric"],
        ),
    }
    extra_seeds = sorted(set(proto["seeds"]) - set(FULL_SEEDS))
    if extra_seeds:
        diagnostics["declared_seeds"] = {k: v for k, v in chosen.items() if k[-1] in FULL_SEEDS}
    diagnostic_rows: dict[str, list] = {k: [] for k in diagnostics}
    for g in regimes:
        for m in methods:
            if m["name"] == base:
                continue
            st = _paired(chosen, g, m["name"], base, proto["claim_metric"])
            if st is None:
                continue
            others = {x: _paired(chosen, g, m["name"], base, x) for x in ("test_b", "val_reward")}
            v = verdict(st["lo"], st["hi"], proto["claim_direction"])
            s002 = m["family"] in ("wdpo", "kldpo")
            claims.append(
                {
                    "claim": "S002 WDPO/KLDPO > DPO under preference shift"
                    if s002
                    else f"reference: {m['name']} (S000) > DPO under preference shift",
                    "regime": regime_label(*g, weight_b),
                    "comparison": f"{m['name']} vs {base}",
                    "metric_label": "test r_a of sampled completions",
                    **st,
                    "verdict": v,
                    "summary": m["name"] in SUMMARY_METHODS,
                    "command": payload["command"],
                }
            )
            rows.append(
                [
                    regime_label(*g, weight_b),
                    f"{m['name']} − {base}",
                    interval(st),
                    interval(others["test_b"]),
                    interval(others["val_reward"]),
                    fmt_p(st["p"]),
                    f"{st['wins']}/{st['n']}",
                    f"**{v}**",
                ]
            )
            for key, picked in diagnostics.items():
                alt = _paired(picked, g, m["name"], base, proto["claim_metric"])
                if alt is not None:
                    diagnostic_rows[key].append(
                        [
                            regime_label(*g, weight_b),
                            f"{m['name']} − {base}",
                            interval(alt),
                            fmt_p(alt["p"]),
                            f"{alt['wins']}/{alt['n']}",
                            verdict(alt["lo"], alt["hi"], proto["claim_direction"]),
                        ]
                    )
    header = [
        "regime",
        "paired difference",
        "Δ test r_a [95 % CI]",
        "Δ test r_b [95 % CI]",
        "Δ val r_w [95 % CI]",
        "p (r_a)",
        "wins/seeds (r_a)",
        "verdict (r_a > 0)",
    ]
    diagnostic_header = [
        "regime",
        "paired difference",
        "Δ test r_a [95 % CI]",
        "p",
        "wins/seeds",
        "verdict (r_a > 0)",
    ]
    lines += [
        f"### Paired against {base} (per seed, each at its own validation-selected point)",
        markdown_table(header, rows),
        "### Diagnostics (not claims)",
        "Same runs, other in-distribution selections. (1) Every method selected by the held-out r_w "
        "preference accuracy of its implicit reward (no sampling): does the verdict depend on the "
        "selection rule?",
        markdown_table(diagnostic_header, diagnostic_rows["accuracy"]),
        f"(2) {base} restricted to β = {BASE_BETA:g}, the β of the robust methods (its learning rates "
        f"only: half the budget of the others), selected on validation r_w as above: is the difference "
        f"a matter of β?",
        markdown_table(diagnostic_header, diagnostic_rows["same_beta"]),
    ]
    if extra_seeds:
        lines += [
            f"(3) The declared full form's seeds {list(FULL_SEEDS)} only. Seeds {extra_seeds} were "
            f"run after the verdicts of those seeds had been seen; the claim rows above pool every "
            f"seed of the JSON, and this table keeps the first verdicts visible.",
            markdown_table(diagnostic_header, diagnostic_rows["declared_seeds"]),
        ]
    return "\n\n".join(lines), claims
