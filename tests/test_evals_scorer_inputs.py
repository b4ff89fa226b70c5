"""Plain-callable scorers, checked scorer output, empty benchmark files, unknown subsets."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from lightning_robust.evals import HHHAlignment, MTBenchHuman, RewardBench, as_scorer


def _rewardbench_file(path, subsets=("llmbar-natural", "llmbar-natural", "llmbar-naturl")):
    rows = [
        {
            "prompt": f"q{k}",
            "chosen": "a much longer answer" if k % 2 == 0 else "short",
            "rejected": "short" if k % 2 == 0 else "a much longer answer",
            "subset": s,
        }
        for k, s in enumerate(subsets)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def by_length(prompts, responses):
    return [float(len(r)) for r in responses]  # a plain list, not a tensor


def test_plain_function_scorer(tmp_path):
    source = _rewardbench_file(tmp_path / "rb.jsonl", ("llmbar-natural",) * 4)
    metrics = RewardBench(source=source).evaluate(by_length)
    # rows 0 and 2: chosen is the longer answer (correct); rows 1 and 3: it is the shorter
    assert metrics["llmbar-natural"] == 0.5


def test_scorer_output_is_checked():
    with pytest.raises(ValueError, match=r"by_half returned shape \(1,\) for 2 responses"):

        def by_half(prompts, responses):
            return [1.0]

        as_scorer(by_half).score(["p", "p"], ["a", "b"])
    with pytest.raises(ValueError, match=r"non-finite scores at positions \[1\]"):
        as_scorer(lambda p, r: [0.0, float("nan")]).score(["p", "p"], ["a", "b"])
    with pytest.raises(ValueError, match="sequence of numbers"):
        as_scorer(lambda p, r: ["x", "y"]).score(["p", "p"], ["a", "b"])
    with pytest.raises(TypeError, match="a scorer is a callable"):
        as_scorer(42)
    column = as_scorer(lambda p, r: torch.ones(len(r), 1)).score(["p"] * 3, ["a"] * 3)
    assert column.shape == (3,) and column.dtype == torch.float32


@pytest.mark.parametrize("evaluator", [RewardBench, MTBenchHuman, HHHAlignment])
def test_empty_benchmark_file_is_one_clear_error(tmp_path, evaluator):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        evaluator(source=str(empty)).evaluate(by_length)


def test_unknown_and_absent_subsets_are_listed(tmp_path, caplog):
    source = _rewardbench_file(tmp_path / "rb.jsonl")
    with caplog.at_level(logging.WARNING, logger="lightning_robust.evals.rewardbench"):
        bench = RewardBench(source=source)
        bench.evaluate(by_length)
    assert bench.details["unknown_subsets"] == ["llmbar-naturl"]
    assert "['llmbar-naturl']" in caplog.text and "misspelled" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_robust.evals.rewardbench"):
        RewardBench(source=source, subsets=["llmbar-natural", "chat-hard"]).evaluate(by_length)
    assert "['chat-hard'] are not in" in caplog.text and "llmbar-naturl" in caplog.text
