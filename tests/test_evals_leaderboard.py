"""Open LLM Leaderboard plumbing: lm-eval on an in-memory model over the shared BBH slice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_robust.evals import OpenLLMLeaderboard, flatten_results

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BBH = SHARED_DATA / "bbh_slice" / "bbh_slice_shared.jsonl"


def test_flatten_results():
    results = {
        "results": {
            "t": {
                "alias": "t",
                "sample_len": 4,
                "acc,none": 0.5,
                "acc_stderr,none": 0.1,
                "exact_match,strict-match": 0.25,
            }
        }
    }
    assert flatten_results(results) == {"t/acc": 0.5, "t/exact_match_strict-match": 0.25}


@pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"{SHARED_DATA} not found: needs ../shared/data"
)
def test_local_bbh_tasks_through_simple_evaluate(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra 'eval'")
    from transformers import LlamaForCausalLM

    from lightning_robust.evals import LikelihoodScorer, write_local_bbh_tasks
    from lightning_robust.models import load_tokenizer, tiny_llama_config

    names = write_local_bbh_tasks(tmp_path, BBH, tasks=["boolean_expressions", "navigate"])
    assert names == ["local_bbh_boolean_expressions", "local_bbh_navigate"]
    tok = load_tokenizer("tiny")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id))
    model.train()
    bench = OpenLLMLeaderboard(
        tasks=names, limit=4, include_path=str(tmp_path), apply_chat_template=False, batch_size=4
    )
    metrics = bench.evaluate(LikelihoodScorer(model, tok))
    assert set(metrics) == {f"{n}/acc_norm" for n in names}  # the leaderboard BBH metric
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert model.training  # mode restored
    assert bench.details["n_samples"][names[0]]["effective"] == 4
