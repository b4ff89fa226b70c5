"""Exp 2 (S002 preference-mixture shift): rewards, labels, sampling and validation-only selection."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from benchmarks.robustness import exp2_preference as exp2
from benchmarks.robustness import protocol


def test_rewards_and_bradley_terry_labels_match_an_independent_computation():
    text = "one detail two simple"
    assert (exp2.reward_a(text), exp2.reward_b(text)) == (1.0, 1.0)  # satisfiable together
    assert exp2.reward_a("details simple") == 0.0  # whole words only
    assert exp2.mixed_reward(0.8, "detail x") == pytest.approx(0.2)
    assert exp2.mixed_reward(0.8, "simple x") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="mixture weight"):
        exp2.mixed_reward(1.5, text)

    def by_hand(y: str) -> float:  # r_w from the words, written out again
        words = set(y.split())
        return 0.8 * ("simple" in words) + 0.2 * ("detail" in words)

    # deterministic labels: the r_w-better answer is chosen, never a tie
    rows = exp2.preference_rows(300, 0, "train", 0.8, 0.0)
    assert len(rows) == 300
    assert all(by_hand(r["chosen"]) > by_hand(r["rejected"]) for r in rows)
    # Bradley-Terry labels: per reward gap, the share of rows that choose the better answer is
    # sigmoid(gap / T) (binomial 4-sigma band)
    noise = 0.25
    rows = exp2.preference_rows(4000, 1, "train", 0.8, noise)
    counts: dict[float, list[int]] = {}
    for r in rows:
        gap = round(abs(by_hand(r["chosen"]) - by_hand(r["rejected"])), 6)
        counts.setdefault(gap, []).append(by_hand(r["chosen"]) > by_hand(r["rejected"]))
    assert set(counts) == {0.2, 0.6, 0.8, 1.0}
    for gap, right in counts.items():
        expected = 1.0 / (1.0 + math.exp(-gap / noise))
        band = 4.0 * math.sqrt(expected * (1 - expected) / len(right))
        assert abs(sum(right) / len(right) - expected) < band, (gap, len(right))


def test_score_texts_is_the_mean_over_samples():
    rng = random.Random(0)
    words = ["detail", "simple", "tea", "map", "red"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 4))) for _ in range(200)]
    got = exp2.score_texts(texts, 0.8)
    has_a = [("detail" in t.split()) for t in texts]
    has_b = [("simple" in t.split()) for t in texts]
    assert got["a"] == pytest.approx(sum(has_a) / 200)
    assert got["b"] == pytest.approx(sum(has_b) / 200)
    assert got["mix"] == pytest.approx(0.8 * got["b"] + 0.2 * got["a"])
    assert got["both"] == pytest.approx(
        sum(a and b for a, b in zip(has_a, has_b, strict=True)) / 200
    )


def test_sampling_encodes_prompts_as_training_does_and_keeps_the_training_stream(tmp_path):
    from benchmarks.robustness.preference_shift import write_jsonl
    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.prompts import encode_prompts
    from lightning_robust.modules import DPO

    rows = exp2.preference_rows(6, 0, "train", 0.8, 0.0)
    path = write_jsonl(rows, tmp_path / "train.jsonl")
    data = PreferenceDataModule(train=str(path), val=str(path), tokenize_cache=False)
    data.setup("fit")
    module = DPO(backbone={"name_or_path": "tiny", "init_seed": 0})
    module.configure_model()
    prompts = [r["prompt"] for r in rows]
    encoded = encode_prompts(prompts, module.tokenizer, max_prompt_length=32).input_ids
    for item in (data.datasets["val"][i] for i in range(len(rows))):
        # the policy is sampled after exactly the prompt tokens it was trained on
        prompt = item["chosen_input_ids"][: item["chosen_prompt_len"]]
        assert list(prompt) == encoded[int(item["index"])]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = exp2.sample_completions(module, prompts, 3, 8, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the training stream is untouched
    assert first == exp2.sample_completions(module, prompts, 3, 8, seed=7)
    assert len(first) == 3 * len(prompts)
    assert first != exp2.sample_completions(module, prompts, 3, 8, seed=8)


def test_exp2_quick_selects_on_validation_only(tmp_path):
    out = tmp_path / "exp2.json"
    payload = exp2.main(["--quick", "--out", str(out)])
    assert payload["complete"] and out.exists()
    settings, seeds = exp2.QUICK_SETTINGS, exp2.QUICK_SEEDS
    records = payload["records"]
    trained = [r for r in records if r["method"] != exp2.INITIAL]
    assert len(trained) == len(seeds) * settings["epochs"] * sum(
        len(m.grid_points()) for m in exp2.QUICK_METHODS
    )
    assert sorted(r["seed"] for r in records if r["method"] == exp2.INITIAL) == list(seeds)
    w = settings["weight_b"]
    for r in records:
        values = [r[k] for k in ("val_a", "val_b", "val_reward", "test_a", "test_b", "test_mix")]
        assert all(0.0 <= v <= 1.0 for v in values)
        # r_w of the same samples is the mixture of their r_a and r_b; "both" is bounded by them
        assert r["val_reward"] == pytest.approx(w * r["val_b"] + (1 - w) * r["val_a"], abs=2e-6)
        assert r["test_mix"] == pytest.approx(w * r["test_b"] + (1 - w) * r["test_a"], abs=2e-6)
        assert max(0.0, r["test_a"] + r["test_b"] - 1) - 1e-6 <= r["test_both"]
        assert r["test_both"] <= min(r["test_a"], r["test_b"]) + 1e-6
    # every method of the full declaration has a grid of the same size (same tuning budget)
    assert len({len(m.grid_points()) for m in exp2.METHODS}) == 1

    # selection never reads a test metric: scrambling every test value (and making a
    # non-selected epoch the best on test) leaves the selected (configuration, epoch) unchanged
    methods = payload["protocol"]["methods"]
    chosen = protocol.select(records, methods, exp2.REGIME_FIELDS, "val_reward")
    scrambled = copy.deepcopy(records)
    rng = random.Random(0)
    for r in scrambled:
        for key in ("test_a", "test_b", "test_mix", "test_both"):
            r[key] = rng.random()
        picked = chosen.get((r["label_noise"], r["method"], r["seed"]))
        if picked is not None and r["epoch"] != picked["epoch"]:
            r["test_a"] = 2.0
    again = protocol.select(scrambled, methods, exp2.REGIME_FIELDS, "val_reward")
    assert chosen.keys() == again.keys()
    assert all(
        (chosen[k]["config"], chosen[k]["epoch"]) == (again[k]["config"], again[k]["epoch"])
        for k in chosen
    )
    assert all(again[k]["test_a"] <= 1.0 for k in again)

    md, claims = exp2.render(payload)
    assert len(claims) == len(exp2.QUICK_METHODS) - 1
    assert all(c["n"] == len(seeds) for c in claims)
    assert all(c["verdict"] in ("reproduces", "not shown", "reversed") for c in claims)
    assert "Paired against DPO" in md and "untrained policy" in md
    # the claim is the paired r_a difference at the validation-selected points
    noise = exp2.REGIMES[0]["label_noise"]
    base = [chosen[(noise, "DPO", s)]["test_a"] for s in seeds]
    other = [chosen[(noise, "KLDPO", s)]["test_a"] for s in seeds]
    assert claims[0]["mean"] == pytest.approx(
        sum(o - b for o, b in zip(other, base, strict=True)) / len(seeds)
    )

    # DR-DPO with radius 0 weights uniformly: it trains and samples exactly as DPO (the
    # sampling seeds are common to all methods)
    dpo = exp2.QUICK_METHODS[0]
    job = dict(label_noise=noise, seed=seeds[0], **settings)
    lr = dpo.grid["learning_rate"][0]
    tv0 = exp2.train_run(
        exp2.Job("DR-DPO (TV)", "tv", (("learning_rate", lr), ("rho", 0.0)), **job)
    )
    drop = ("method", "config")
    assert [{k: v for k, v in r.items() if k not in drop} for r in tv0] == [
        {k: v for k, v in r.items() if k not in drop}
        for r in trained
        if r["method"] == "DPO" and r["seed"] == seeds[0]
    ]
