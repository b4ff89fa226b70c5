"""The vLLM backend against a stand-in of vLLM's offline API (no GPU, no vLLM install): the weight
push goes through ``LLM.apply_model`` (current vLLM), falls back to the V0 attribute path, and
fails with a clear error otherwise; rollouts keep the Hugging Face layout."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lightning_robust.models import vllm_rollout
from lightning_robust.models.vllm_rollout import load_weights_into_engine, policy_weights


class FakeModel:
    def __init__(self):
        self.loaded = None

    def load_weights(self, weights):
        self.loaded = list(weights)


def test_push_goes_through_apply_model():
    model = FakeModel()
    llm = types.SimpleNamespace(apply_model=lambda fn: [fn(model)])
    weights = [("w", torch.ones(2))]
    load_weights_into_engine(llm, weights)
    assert model.loaded == weights


def test_push_falls_back_to_the_v0_path_and_errors_without_either():
    model = FakeModel()
    runner = types.SimpleNamespace(model=model)
    llm = types.SimpleNamespace(
        llm_engine=types.SimpleNamespace(
            model_executor=types.SimpleNamespace(
                driver_worker=types.SimpleNamespace(model_runner=runner)
            )
        )
    )
    load_weights_into_engine(llm, [("w", torch.zeros(1))])
    assert model.loaded[0][0] == "w"
    with pytest.raises(
        RuntimeError, match=r"cannot push the policy's weights into vLLM 9\.9.*experimental"
    ):
        load_weights_into_engine(
            types.SimpleNamespace(llm_engine=types.SimpleNamespace()), [], "9.9"
        )


def test_merged_lora_policy_pushes_base_names_only():
    from peft import LoraConfig, get_peft_model

    from lightning_robust.models.causal_lm import load_causal_lm
    from lightning_robust.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    base = load_causal_lm("tiny", tok, seed=0)
    names = set(base.state_dict())
    policy = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    weights = policy_weights(policy.get_base_model())
    assert {n for n, _ in weights} == names  # no lora_ tensors, no base_layer infix


def test_engine_samples_in_the_hf_layout_and_pushes(monkeypatch, caplog):
    pushed = FakeModel()

    class Completion:
        def __init__(self, ids):
            self.token_ids = ids

    class LLM:
        def __init__(self, model, **kwargs):
            self.kwargs = kwargs

        def generate(self, prompts, params, use_tqdm=False):
            return [
                types.SimpleNamespace(outputs=[Completion([5, 2, 7]), Completion([6])])
                for _ in prompts
            ]

        def apply_model(self, fn):
            return [fn(pushed)]

    fake = types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw, __version__="0.0-fake")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    with caplog.at_level("WARNING"):
        engine = vllm_rollout.VLLMRolloutEngine("dummy")
    assert "experimental" in caplog.text
    import os

    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    ids = torch.tensor([[0, 3, 4]])
    mask = torch.tensor([[0, 1, 1]])
    rollout = engine.generate(ids, mask, eos_token_id=2, pad_token_id=0, num_generations=2)
    assert rollout.response_ids.tolist() == [[5, 2, 0], [6, 0, 0]]
    assert rollout.response_mask.tolist() == [[True, True, False], [True, False, False]]
    assert rollout.has_eos.tolist() == [True, False] and rollout.prompt_width == 3
    policy = torch.nn.Linear(2, 2)
    engine.push_weights(policy)
    assert [n for n, _ in pushed.loaded] == ["weight", "bias"]
