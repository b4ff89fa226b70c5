"""MT-Bench human agreement (hub and LLMBar schemas) and in-distribution pairwise accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_robust.evals import MTBenchHuman, PairwiseAccuracy, RewardModelScorer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.exists(),
    reason=f"{SHARED_DATA} not found: shared-data tests need ../shared/data",
)
PAIRS = SHARED_DATA / "mt_bench_human_pairs" / "llmbar_mtbench_shared.jsonl"
HH = SHARED_DATA / "hh_rlhf_harmless_base" / "harmless_base_test_shared.jsonl"


class RuleScorer:
    def __init__(self, rule):
        self.rule = rule
        self.seen = []

    def score(self, prompts, responses):
        self.seen += list(zip(prompts, responses, strict=True))
        return torch.tensor(
            [float(self.rule(p, r)) for p, r in zip(prompts, responses, strict=True)]
        )


def _conv(q1, a1, q2, a2):
    return [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
        {"role": "assistant", "content": a2},
    ]


def _hub_rows():
    base = {"question_id": 81, "model_a": "m1", "model_b": "m2", "judge": "expert_0"}
    return [
        {
            **base,
            "turn": 1,
            "winner": "model_a",
            "conversation_a": _conv("q1", "good", "q2", "bad"),
            "conversation_b": _conv("q1", "bad", "q2", "good"),
        },
        {
            **base,
            "turn": 1,
            "winner": "tie",
            "conversation_a": _conv("q1", "good", "q2", "bad"),
            "conversation_b": _conv("q1", "good", "q2", "good"),
        },
        {
            **base,
            "turn": 2,
            "winner": "model_b",
            "conversation_a": _conv("q1", "good", "q2", "bad"),
            "conversation_b": _conv("q1", "bad", "q2", "good"),
        },
        {
            **base,
            "turn": 2,
            "winner": "model_a",
            "conversation_a": _conv("q1", "good", "q2", "bad"),
            "conversation_b": _conv("q1", "bad", "q2", "good"),
        },
        {
            **base,
            "turn": 2,
            "winner": "tie (bothbad)",
            "conversation_a": _conv("q1", "a", "q2", "bad"),
            "conversation_b": _conv("q1", "b", "q2", "bad"),
        },
    ]


def test_hub_schema_turns_and_ties_by_hand(tmp_path):
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _hub_rows()))
    scorer = RuleScorer(lambda p, r: {"good": 1.0, "bad": 0.0}.get(r, 0.5))
    bench = MTBenchHuman(str(path))
    metrics = bench.evaluate(scorer)
    # turn 1: 1 judgment (tie excluded), agreed; turn 2: 2 judgments, 1 agreed
    assert metrics == {"turn_1": 1.0, "turn_2": 0.5, "overall": pytest.approx(2 / 3)}
    assert bench.details["ties_excluded"] == 2
    # turn 2 is scored in context: each side's prompt holds its own turn-1 answer
    turn2_prompts = [p for p, r in scorer.seen if isinstance(p, list) and len(p) == 3]
    assert {p[1]["content"] for p in turn2_prompts} == {"good", "bad"}
    with_ties = MTBenchHuman(str(path), include_ties=True).evaluate(scorer)
    # ties agree when the scores are equal: turn-1 tie (good vs good) yes; turn-2 tie (bad vs bad) yes
    assert with_ties == {"turn_1": 1.0, "turn_2": pytest.approx(2 / 3), "overall": 0.8}
    only1 = MTBenchHuman(str(path), turns=[1]).evaluate(scorer)
    assert set(only1) == {"turn_1", "overall"}


@needs_shared_data
def test_llmbar_schema_with_oracle_and_tiny_model():
    rows = [json.loads(x) for x in PAIRS.read_text().splitlines()]
    bench = MTBenchHuman(str(PAIRS))
    metrics = bench.evaluate(RuleScorer(lambda p, r: len(r)))
    expected = sum(
        (len(r["output_1"]) > len(r["output_2"]))
        if r["label"] == 1
        else (len(r["output_2"]) > len(r["output_1"]))
        for r in rows
    ) / len(rows)
    assert metrics == {"turn_1": pytest.approx(expected), "overall": pytest.approx(expected)}
    assert bench.details["missing"] == ["turn_2"] and bench.details["counts"] == {"turn_1": 101}
    # an answer-identity oracle that prefers what the human majority chose; an answer can be
    # the winner of one pair and the loser of another, so agreement is counted per row
    winners = {r["output_1"] if r["label"] == 1 else r["output_2"] for r in rows}
    agreed = sum((r["output_2"] if r["label"] == 1 else r["output_1"]) not in winners for r in rows)
    assert bench.evaluate(RuleScorer(lambda p, r: float(r in winners)))["turn_1"] == pytest.approx(
        agreed / 101
    )

    from lightning_robust.models import load_sequence_classifier, load_tokenizer

    tok = load_tokenizer("tiny")
    scorer = RewardModelScorer(load_sequence_classifier("tiny", tok, seed=0), tok, max_length=64)
    tiny = MTBenchHuman(str(PAIRS), max_rows=16).evaluate(scorer)
    assert 0.0 <= tiny["overall"] <= 1.0


def test_pairwise_accuracy_with_groups(tmp_path):
    rows = [
        {"prompt": "a", "chosen": "good", "rejected": "bad", "group": "x"},
        {"prompt": "b", "chosen": "bad", "rejected": "good", "group": "x"},
        {"prompt": "c", "chosen": "good", "rejected": "bad", "group": "y"},
        {"prompt": "d", "chosen": "good", "rejected": "good!", "group": "y"},
    ]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = PairwiseAccuracy(str(path), name="unified_feedback")
    metrics = bench.evaluate(RuleScorer(lambda p, r: {"good": 1.0, "bad": 0.0}.get(r, 1.0)))
    assert bench.name == "unified_feedback"
    assert metrics["accuracy"] == 0.5 and metrics["group/x"] == 0.5 and metrics["group/y"] == 0.5


@needs_shared_data
def test_hh_rlhf_holdout_matches_the_data_module_split():
    from lightning_robust.data import PreferenceDataModule

    bench = PairwiseAccuracy(str(HH), holdout_fraction=0.1, seed=0)
    held = bench.rows()
    dm = PreferenceDataModule(
        train=str(HH),
        tokenizer="tiny",
        val_fraction=0.1,
        seed=0,
        on_bad_row="skip",
        max_length=4096,
    )
    dm.setup("fit")
    assert len(held) == len(dm.datasets["val"])
    train_prompts = {
        dm.tokenizer.decode(x["chosen_input_ids"][: x["chosen_prompt_len"]])
        for x in dm.datasets["train"]
    }
    assert not any(e.prompt in train_prompts for e in held)
    metrics = bench.evaluate(RuleScorer(lambda p, r: len(r)))
    expected = sum(len(e.chosen) > len(e.rejected) for e in held) / len(held)
    assert metrics["accuracy"] == pytest.approx(expected)
