"""The controlled-shift generator: determinism, knobs, the exact rule and the label noise."""

import math
from collections import Counter

import pytest

from lightning_robust.data.synthetic import (
    KEYWORDS,
    SPLITS,
    SyntheticShiftConfig,
    flip_probability,
    generate,
    true_reward,
)
from lightning_robust.models import TINY_WORDS, load_tokenizer


def beta_share(rows):
    return sum(r["group"] == "beta" for r in rows) / len(rows)


def test_deterministic_given_seed_and_knobs():
    cfg = SyntheticShiftConfig(num_train=300, num_eval=50, seed=3)
    assert generate(cfg) == generate(SyntheticShiftConfig(num_train=300, num_eval=50, seed=3))
    assert (
        generate(cfg)["train"]
        != generate(SyntheticShiftConfig(num_train=300, num_eval=50, seed=4))["train"]
    )
    # the training split does not depend on the size of the evaluation splits
    assert (
        generate(cfg)["train"]
        == generate(SyntheticShiftConfig(num_train=300, num_eval=80, seed=3))["train"]
    )


def test_split_sizes_and_domain_shares():
    cfg = SyntheticShiftConfig(
        num_train=1000, num_eval=200, minority_share=0.15, shifted_minority_share=0.6
    )
    data = generate(cfg)
    assert [len(data[s]) for s in SPLITS] == [1000, 200, 200, 200]
    assert beta_share(data["train"]) == pytest.approx(0.15)
    assert beta_share(data["val"]) == pytest.approx(0.15)
    assert beta_share(data["shifted"]) == pytest.approx(0.6)
    assert beta_share(data["minority"]) == 1.0


def test_no_prompt_shared_between_splits_and_marker_tells_domain():
    data = generate(SyntheticShiftConfig(num_train=500, num_eval=100))
    seen = set()
    for split in SPLITS:
        prompts = [r["prompt"] for r in data[split]]
        assert len(set(prompts)) == len(prompts)
        assert not seen & set(prompts)
        seen |= set(prompts)
        for r in data[split]:
            assert r["prompt"].split()[0] == r["group"]


def test_only_tiny_words_and_one_token_each():
    data = generate(SyntheticShiftConfig(num_train=200, num_eval=20))
    words = {
        w
        for rows in data.values()
        for r in rows
        for key in ("prompt", "chosen", "rejected")
        for w in r[key].split()
    }
    assert words <= set(TINY_WORDS)
    tok = load_tokenizer("tiny")
    row = data["train"][0]
    for key in ("prompt", "chosen", "rejected"):
        assert len(tok(row[key])["input_ids"]) == len(row[key].split())


def test_true_reward_exact_rule():
    assert true_reward("alpha", "a detail b") == pytest.approx(1.0 + 0.3)
    assert true_reward("alpha", "a simple b c") == pytest.approx(-1.0 + 0.4)
    assert true_reward("alpha", "a b") == pytest.approx(0.2)
    assert true_reward("beta", "a simple b c") == pytest.approx(1.0 - 0.4)
    assert true_reward("beta", "a detail b") == pytest.approx(-1.3)
    with pytest.raises(ValueError):
        true_reward("gamma", "a")


def test_noise_free_labels_follow_the_rule():
    data = generate(SyntheticShiftConfig(num_train=600, num_eval=200))
    for rows in data.values():
        for r in rows:
            assert r["chosen_reward"] == pytest.approx(true_reward(r["rule"], r["chosen"]))
            assert r["chosen_reward"] > r["rejected_reward"]
            words = r["chosen"].split()
            if r["kind"] == "keyword":  # the domain's keyword wins a keyword pair
                assert KEYWORDS[r["rule"]] in words
            assert not (KEYWORDS["alpha"] in words and KEYWORDS["beta"] in words)


def test_conflict_knob():
    def rules(conflict):
        rows = generate(
            SyntheticShiftConfig(num_train=2000, num_eval=10, minority_share=0.5, conflict=conflict)
        )["train"]
        assert all(r["rule"] == "alpha" for r in rows if r["group"] == "alpha")
        return [r["rule"] for r in rows if r["group"] == "beta"]

    assert set(rules(1.0)) == {"beta"}
    assert set(rules(0.0)) == {"alpha"}
    half = rules(0.5)
    share = half.count("beta") / len(half)
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / len(half))


def test_length_pair_share_knob():
    rows = generate(SyntheticShiftConfig(num_train=2000, num_eval=10, length_pair_share=0.4))[
        "train"
    ]
    share = Counter(r["kind"] for r in rows)["length"] / len(rows)
    assert abs(share - 0.4) < 4 * math.sqrt(0.24 / len(rows))


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_label_noise_flip_rate_matches_bradley_terry(temperature):
    cfg = SyntheticShiftConfig(num_train=4000, num_eval=200, label_noise=temperature, seed=1)
    data = generate(cfg)
    rows = data["train"]
    gaps = [abs(r["chosen_reward"] - r["rejected_reward"]) for r in rows]
    expected = [flip_probability(g, temperature) for g in gaps]
    flips = sum(r["chosen_reward"] < r["rejected_reward"] for r in rows)
    mean, var = sum(expected), sum(p * (1 - p) for p in expected)
    assert abs(flips - mean) < 4 * math.sqrt(var)
    assert flips > 0
    # the formula: P(worse chosen) = sigmoid(-|gap| / T)
    assert flip_probability(1.0, 1.0) == pytest.approx(1 / (1 + math.e))
    for split in ("val", "shifted", "minority"):  # evaluation labels stay noise-free
        assert all(r["chosen_reward"] > r["rejected_reward"] for r in data[split])


def test_config_validation():
    with pytest.raises(ValueError, match="minority_share"):
        SyntheticShiftConfig(minority_share=1.5)
    with pytest.raises(ValueError, match="label_noise"):
        SyntheticShiftConfig(label_noise=-1)
