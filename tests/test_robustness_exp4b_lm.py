"""Exp 4b on the tiny LM (issue 12, item 7): the quick form end to end, its selection on validation
prompts, the paired claims and the separate sampling stream of the test prompts."""

from __future__ import annotations

import copy
import statistics

import pytest

from benchmarks.robustness import exp4b_lm


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp4b_lm") / "lm.json"
    return exp4b_lm.main(["--quick", "--out", str(out)])


def test_quick_form_records_every_evaluation_point(quick):
    s = exp4b_lm.QUICK_SETTINGS
    points = s["rollouts"] // s["val_every"] + 1  # step 0 and every val_every rollouts
    records = quick["records"]
    assert quick["complete"]
    assert len(records) == len(exp4b_lm.QUICK_METHODS) * len(exp4b_lm.QUICK_SEEDS) * points
    assert all(
        -2.0 <= r[m] <= 2.0 for r in records for m in ("val_gold", "test_gold", "test_proxy")
    )
    for seed in exp4b_lm.QUICK_SEEDS:
        # step 0 is the same initial policy for every method: identical evaluations (paired)
        start = [
            {k: v for k, v in r.items() if k not in ("method", "config")}
            for r in records
            if r["seed"] == seed and r["rollout"] == 0
        ]
        assert len(start) == len(exp4b_lm.QUICK_METHODS) and all(x == start[0] for x in start)
        assert start[0]["test_kl"] == 0.0
    # the full declaration gives every method a grid of the same size (same tuning budget)
    assert {len(m.grid_points()) for m in exp4b_lm.METHODS + (exp4b_lm.PPO_METHOD,)} == {
        exp4b_lm.GRID_SIZE
    }


def test_render_selects_on_validation_gold_and_pairs_by_seed(quick):
    md, claims = exp4b_lm.render(quick)
    records = quick["records"]
    assert "validation-selected peak" in md
    assert [c["comparison"] for c in claims] == ["DRRO hard vs GRPO", "DRRO hard vs DRO"]

    def peak(method, seed):  # the first evaluation point with the highest validation gold
        run = [r for r in records if r["method"] == method and r["seed"] == seed]
        return max(run, key=lambda r: (r["val_gold"], -run.index(r)))

    for c in claims:
        a, b = c["comparison"].split(" vs ")
        diffs = [peak(a, s)["test_gold"] - peak(b, s)["test_gold"] for s in exp4b_lm.QUICK_SEEDS]
        assert c["n"] == len(exp4b_lm.QUICK_SEEDS)
        assert c["mean"] == pytest.approx(statistics.fmean(diffs))
        assert c["verdict"] in ("reproduces", "not shown", "reversed")
    # a test value at a point that validation did not select changes nothing
    edited = copy.deepcopy(quick)
    chosen = peak("GRPO", 0)
    other = next(r for r in edited["records"] if r["method"] == "GRPO" and r != chosen)
    other["test_gold"] = 2.0
    assert exp4b_lm.render(edited)[1] == claims


def test_drro_hard_with_zero_budget_trains_exactly_as_grpo(quick):
    s = exp4b_lm.QUICK_SETTINGS
    job = exp4b_lm.Job("DRRO hard", "drro_hard", (("delta", 0.0),), 0, **s)
    grpo = [
        {k: v for k, v in r.items() if k not in ("method", "config", "seed")}
        for r in quick["records"]
        if r["method"] == "GRPO" and r["seed"] == 0
    ]
    assert exp4b_lm.train_run(job) == grpo


def test_test_prompts_are_another_draw_sampled_with_their_own_stream(monkeypatch, tmp_path):
    from benchmarks.robustness.common import quiet_trainer
    from benchmarks.robustness.overoptimization import policy_module

    s = exp4b_lm.QUICK_SETTINGS
    job = exp4b_lm.Job("GRPO", "grpo", (("kl_coef", 0.0),), 0, **{**s, "num_test": s["num_val"]})
    data = exp4b_lm.held_out_data(job, "GRPO")
    data.setup("fit")
    assert data.val_dataset.prompts != data.test.val_dataset.prompts
    # the same prompts in both sets: the online module must still sample them independently
    monkeypatch.setattr(exp4b_lm, "TEST_SEED_OFFSET", 0)
    data = exp4b_lm.held_out_data(job, "GRPO")
    data.setup("fit")
    assert data.val_dataset.prompts == data.test.val_dataset.prompts
    model = policy_module(
        "GRPO", 0, max_new_tokens=s["max_new_tokens"], learning_rate=1e-3, num_generations=4
    )
    metrics = quiet_trainer(1, tmp_path).validate(model, datamodule=data, verbose=False)
    merged = {k: v for m in metrics for k, v in m.items()}
    # before any update the policy is its reference (KL 0): the rewards show the samples differ
    rewards = ("reward/gold", "reward/proxy")
    assert [merged[f"val/{k}"] for k in rewards] != [merged[f"val/test/{k}"] for k in rewards]
