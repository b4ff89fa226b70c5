"""RewardBench: constants, section math (incl. missing subsets), strict ties, shared fixtures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_robust.evals import (
    EXAMPLE_COUNTS,
    PRIOR_SETS_COLUMNS,
    SUBSET_MAPPING,
    RewardBench,
    RewardModelScorer,
    average_score,
    section_scores,
    strict_correct,
)
from lightning_robust.evals.rewardbench import summarize

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(),
    reason=f"{SHARED_DATA} not found: shared-data tests need ../shared/data",
)
LLMBAR = SHARED_DATA / "rewardbench_llmbar" / "llmbar_rewardbench_format_shared.jsonl"
CONSTANTS = SHARED_DATA / "rewardbench_llmbar" / "rewardbench_constants.json"


class OracleScorer:
    """Scores by a rule on (prompt, response); deterministic, no model."""

    def __init__(self, rule):
        self.rule = rule
        self.calls = 0

    def score(self, prompts, responses):
        self.calls += 1
        return torch.tensor(
            [float(self.rule(p, r)) for p, r in zip(prompts, responses, strict=True)]
        )


@needs_shared_data
def test_constants_equal_the_official_file():
    official = json.loads(CONSTANTS.read_text())
    assert EXAMPLE_COUNTS == official["EXAMPLE_COUNTS"]
    assert SUBSET_MAPPING == official["SUBSET_MAPPING"]
    assert PRIOR_SETS_COLUMNS == official["PRIOR_SETS_COLUMNS"]


def test_section_scores_by_hand():
    acc = {
        "alpacaeval-easy": 1.0,
        "alpacaeval-length": 0.5,
        "mt-bench-easy": 0.0,
        "math-prm": 0.5,
        "hep-go": 1.0,
    }
    sections = section_scores(acc)
    # Chat: (1*100 + 0.5*95 + 0*28) / (100 + 95 + 28) = 147.5 / 223; alpacaeval-hard and
    # mt-bench-med are missing and do not count as 0.
    assert sections["Chat"] == pytest.approx(147.5 / 223)
    # Reasoning: (0.5*984 + 1*164) / (984 + 164) = 656 / 1148
    assert sections["Reasoning"] == pytest.approx(656 / 1148)
    assert set(sections) == {"Chat", "Reasoning"}  # Chat Hard, Safety, Prior Sets missing
    assert average_score(sections) == pytest.approx((147.5 / 223 + 656 / 1148) / 2)


def test_average_weights_prior_sets_half():
    sections = {"Chat": 0.9, "Chat Hard": 0.5, "Safety": 0.7, "Reasoning": 0.8}
    assert average_score(sections) == pytest.approx((0.9 + 0.5 + 0.7 + 0.8) / 4)
    prior = section_scores({"anthropic_helpful": 0.6, "shp": 0.8})["Prior Sets"]
    assert prior == pytest.approx(0.7)  # plain mean of the prior subsets present
    with_prior = {**sections, "Prior Sets": prior}
    assert average_score(with_prior) == pytest.approx((2 * (0.9 + 0.5 + 0.7 + 0.8) + 0.7) / 9)
    assert math.isnan(average_score({}))
    assert math.isnan(average_score({"Chat": float("nan")}))


def test_missing_is_reported_not_zero():
    metrics, details = summarize({"llmbar-natural": 0.25, "donotanswer": float("nan")})
    assert metrics == {"llmbar-natural": 0.25, "chat_hard": 0.25, "score": 0.25}
    assert "donotanswer" in details["missing_subsets"]
    assert details["missing_sections"] == ["Chat", "Safety", "Reasoning", "Prior Sets"]


def test_strict_tie_rule():
    chosen, rejected = torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.0, 0.5, 0.3])
    assert strict_correct(chosen, rejected).tolist() == [True, False, False]


def _rows(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_local_file_with_hub_columns_and_ties(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "good", "rejected": "bad", "subset": "alpacaeval-easy", "id": 0},
        {"prompt": "p2", "chosen": "good", "rejected": "tie", "subset": "alpacaeval-easy", "id": 1},
        {"prompt": "p3", "chosen": "bad", "rejected": "good", "subset": "hep-go", "id": 2},
        {"prompt": "p4", "chosen": "good", "rejected": "bad", "subset": "anthropic_hhh", "id": 3},
    ]
    values = {"good": 1.0, "bad": 0.0, "tie": 1.0}
    bench = RewardBench(_rows(tmp_path, rows))
    scorer = OracleScorer(lambda p, r: values[r])
    metrics = bench.evaluate(scorer)
    assert metrics["alpacaeval-easy"] == 0.5  # the tie counts as wrong
    assert metrics["hep-go"] == 0.0 and metrics["anthropic_hhh"] == 1.0
    assert metrics["chat"] == 0.5 and metrics["reasoning"] == 0.0 and metrics["prior_sets"] == 1.0
    assert metrics["score"] == pytest.approx((2 * 0.5 + 2 * 0.0 + 1.0) / 5)
    assert bench.details["ties"] == 1 and bench.details["counts"]["alpacaeval-easy"] == 2
    bench.evaluate(scorer)  # rows are read once and kept
    assert bench._rows is not None and scorer.calls == 2


@needs_shared_data
def test_llmbar_fixture_with_an_oracle_computed_by_hand():
    rows = [json.loads(line) for line in LLMBAR.read_text().splitlines()]
    perfect = {"llmbar-natural", "llmbar-adver-neighbor"}
    chosen = {(r["prompt"], r["chosen"]) for r in rows if r["subset"] in perfect}
    # perfect on two subsets, constant (ties: all wrong) elsewhere
    metrics = RewardBench(str(LLMBAR)).evaluate(OracleScorer(lambda p, r: float((p, r) in chosen)))
    assert metrics["llmbar-natural"] == 1.0 and metrics["llmbar-adver-neighbor"] == 1.0
    assert (
        metrics["llmbar-adver-GPTInst"]
        == metrics["llmbar-adver-GPTOut"]
        == metrics["llmbar-adver-manual"]
        == 0.0
    )
    assert metrics["chat_hard"] == pytest.approx((100 + 134) / (100 + 134 + 92 + 47 + 46))
    assert metrics["score"] == metrics["chat_hard"]  # the only section present
    assert "chat" not in metrics and "safety" not in metrics

    # a length oracle: expected accuracy counted directly from the file
    by_len = RewardBench(str(LLMBAR)).evaluate(OracleScorer(lambda p, r: len(r)))
    for subset in {r["subset"] for r in rows}:
        part = [r for r in rows if r["subset"] == subset]
        assert by_len[subset] == pytest.approx(
            sum(len(r["chosen"]) > len(r["rejected"]) for r in part) / len(part)
        )


@needs_shared_data
def test_llmbar_fixture_with_a_tiny_reward_model():
    from lightning_robust.models import load_sequence_classifier, load_tokenizer

    tok = load_tokenizer("tiny")
    scorer = RewardModelScorer(load_sequence_classifier("tiny", tok, seed=0), tok, max_length=64)
    bench = RewardBench(str(LLMBAR), max_rows_per_subset=3)
    metrics = bench.evaluate(scorer)
    assert set(bench.details["counts"]) == {
        s for s in SUBSET_MAPPING["Chat Hard"] if s.startswith("llmbar")
    }
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics == bench.evaluate(scorer)  # deterministic
