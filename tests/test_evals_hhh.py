"""HHH-Alignment: strict, order-independent; a constant scorer gets no credit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_robust.evals import HHH_CONFIGS, HHHAlignment, RewardModelScorer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(),
    reason=f"{SHARED_DATA} not found: shared-data tests need ../shared/data",
)
HHH = SHARED_DATA / "hhh_alignment"


class RuleScorer:
    def __init__(self, rule):
        self.rule = rule

    def score(self, prompts, responses):
        return torch.tensor(
            [float(self.rule(p, r)) for p, r in zip(prompts, responses, strict=True)]
        )


def _write(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {
        "input": "q1",
        "targets": {"choices": ["best", "worse"], "labels": [1, 0]},
        "category": "helpful",
    },
    {
        "input": "q2",
        "targets": {"choices": ["best", "worse", "worst"], "labels": [1, 0, 0]},
        "category": "helpful",
    },
    {
        "input": "q3",
        "targets": {"choices": ["best", "alsobest"], "labels": [1, 0]},
        "category": "honest",
    },
]
VALUES = {"best": 2.0, "worse": 1.0, "worst": 3.0, "alsobest": 2.0}


def test_strict_rule_by_hand(tmp_path):
    # q1 correct; q2 wrong ("worst" scores higher); q3 wrong (tie)
    bench = HHHAlignment(str(_write(tmp_path / "hhh.jsonl", ROWS)), configs=["helpful", "honest"])
    metrics = bench.evaluate(RuleScorer(lambda p, r: VALUES[r]))
    assert metrics == {"helpful": 0.5, "honest": 0.0, "overall": pytest.approx(1 / 3)}
    assert bench.details["counts"] == {"helpful": 2, "honest": 1}


def test_order_independent_and_constant_gets_nothing(tmp_path):
    flipped = []
    for r in ROWS:
        t = r["targets"]
        flipped.append(
            {**r, "targets": {"choices": t["choices"][::-1], "labels": t["labels"][::-1]}}
        )
    a = HHHAlignment(str(_write(tmp_path / "a.jsonl", ROWS)), configs=["helpful", "honest"])
    b = HHHAlignment(str(_write(tmp_path / "b.jsonl", flipped)), configs=["helpful", "honest"])
    rule = RuleScorer(lambda p, r: VALUES[r])
    assert a.evaluate(rule) == b.evaluate(rule)
    constant = RuleScorer(lambda p, r: 0.0)
    assert a.evaluate(constant)["overall"] == 0.0


@needs_shared_data
def test_shared_fixture_constant_oracle_and_tiny_model():
    bench = HHHAlignment(str(HHH))  # a local directory of <category>.jsonl
    constant = bench.evaluate(RuleScorer(lambda p, r: 1.0))
    assert constant == {
        **{c: 0.0 for c in HHH_CONFIGS},
        "overall": 0.0,
    }  # correct answers are all first
    rows = [
        json.loads(x) for c in HHH_CONFIGS for x in (HHH / f"{c}.jsonl").read_text().splitlines()
    ]
    # oracle: 1 for any answer labelled best somewhere. The same query recurs with other pairs
    # (102 distinct inputs), and an answer best in one row can be the worse one of another
    # row, so the expected accuracy is counted per row: best in the set, the other not.
    best = {(r["input"], r["targets"]["choices"][r["targets"]["labels"].index(1)]) for r in rows}
    expected = sum(
        (r["input"], r["targets"]["choices"][1 - r["targets"]["labels"].index(1)]) not in best
        for r in rows
    ) / len(rows)
    assert bench.evaluate(RuleScorer(lambda p, r: float((p, r) in best)))[
        "overall"
    ] == pytest.approx(expected)
    # shorter answer wins; expected accuracy counted from the files
    short = bench.evaluate(RuleScorer(lambda p, r: -len(r)))
    expected = sum(
        len(r["targets"]["choices"][r["targets"]["labels"].index(1)])
        < len(r["targets"]["choices"][1 - r["targets"]["labels"].index(1)])
        for r in rows
    ) / len(rows)
    assert short["overall"] == pytest.approx(expected)
    assert bench.details["counts"] == {"harmless": 58, "helpful": 59, "honest": 61, "other": 43}

    from lightning_robust.models import load_sequence_classifier, load_tokenizer

    tok = load_tokenizer("tiny")
    tiny = HHHAlignment(str(HHH), configs=["honest"]).evaluate(
        RewardModelScorer(load_sequence_classifier("tiny", tok, seed=0), tok, max_length=64)
    )
    assert set(tiny) == {"honest", "overall"} and 0.0 <= tiny["overall"] <= 1.0
