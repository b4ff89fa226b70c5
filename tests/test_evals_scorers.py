"""Scorers: equal to direct model calls, batch-independent, cached tokenisation, DPO forms."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from lightning_robust.data import PreferenceExample, encode_examples
from lightning_robust.models import load_sequence_classifier, load_tokenizer, tiny_llama_config
from lightning_robust.models.logprobs import sequence_logprobs
from lightning_robust.models.scorers import (
    DPOImplicitRewardScorer,
    LikelihoodScorer,
    RewardModelScorer,
    Scorer,
    TokenCache,
)

PROMPTS = ["what is the weather today", "tell me a story", "what is the weather today", "help me"]
RESPONSES = [
    "the sun is hot and bright",
    "once a cat met a dog",
    "it will rain",
    "sure i can help you with the plan",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def lm(tok):
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)).eval()


@pytest.fixture(scope="module")
def ref(tok):
    torch.manual_seed(1)
    return LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)).eval()


def _direct_reward(model, tok, prompt, response):
    enc = encode_examples([PreferenceExample(prompt, response, response + " x")], tok, 128)[0]
    ids = torch.tensor([enc.chosen_input_ids])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].item()


def _direct_logp(model, tok, prompt, response):
    enc = encode_examples(
        [PreferenceExample(prompt, response, response + " x")], tok, 128, append_eos=True
    )[0]
    ids = torch.tensor([enc.chosen_input_ids])
    with torch.no_grad():
        logp, count = sequence_logprobs(
            model, ids, torch.ones_like(ids), torch.tensor([enc.chosen_prompt_len])
        )
    return logp.item(), count.item()


def test_reward_scorer_equals_single_forward_and_is_batch_independent(tok):
    model = load_sequence_classifier("tiny", tok, seed=0)
    model.train()
    scorer = RewardModelScorer(model, tok, max_length=128, batch_size=3)
    assert isinstance(scorer, Scorer)
    scores = scorer.score(PROMPTS, RESPONSES)
    assert model.training  # mode restored
    expected = [
        _direct_reward(model.eval(), tok, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    one = RewardModelScorer(model, tok, max_length=128, batch_size=1).score(PROMPTS, RESPONSES)
    assert one.tolist() == pytest.approx(scores.tolist(), abs=1e-5)


def test_reward_scorer_accepts_a_module_with_backbone_and_tokenizer(tok):
    class Module:
        backbone = load_sequence_classifier("tiny", tok, seed=0)
        tokenizer = tok

    scorer = RewardModelScorer(Module())
    assert scorer.model is Module.backbone and scorer.tokenizer is tok
    assert scorer.score(PROMPTS[:1], RESPONSES[:1]).shape == (1,)


def test_tokenisation_is_cached(tok):
    model = load_sequence_classifier("tiny", tok, seed=0)
    scorer = RewardModelScorer(model, tok, max_length=128)
    first = scorer.score(PROMPTS, RESPONSES)
    encoded = scorer.cache.encoded
    assert encoded == len(set(zip(PROMPTS, RESPONSES, strict=True)))
    second = scorer.score(list(reversed(PROMPTS)), list(reversed(RESPONSES)))
    assert scorer.cache.encoded == encoded  # nothing re-tokenised
    assert second.flip(0).tolist() == pytest.approx(first.tolist(), abs=1e-5)


def test_bounded_cache_keeps_the_newest_and_scores_the_same(tok):
    """Online RL scores new responses every step: ``max_items`` bounds the cache (oldest
    dropped first) without changing any score."""
    model = load_sequence_classifier("tiny", tok, seed=0)
    unbounded = RewardModelScorer(model, tok, max_length=128)
    bounded = RewardModelScorer(model, tok, max_length=128, cache=TokenCache(tok, 128, max_items=2))
    assert bounded.score(PROMPTS, RESPONSES).tolist() == pytest.approx(
        unbounded.score(PROMPTS, RESPONSES).tolist(), abs=1e-6
    )
    assert len(bounded.cache) == 2
    kept = list(bounded.cache._store)
    assert kept == [TokenCache.key(p, r) for p, r in zip(PROMPTS[-2:], RESPONSES[-2:], strict=True)]
    with pytest.raises(ValueError, match="max_items"):
        TokenCache(tok, 128, max_items=0)


def test_too_long_responses_are_cut_and_counted(tok):
    model = load_sequence_classifier("tiny", tok, seed=0)
    scorer = RewardModelScorer(model, tok, max_length=8)
    scores = scorer.score(["hi"], ["the " * 40])
    assert torch.isfinite(scores).all() and scorer.truncated == 1


def test_likelihood_scorer_sums_response_logprobs(tok, lm):
    scorer = LikelihoodScorer(lm, tok, max_length=128, batch_size=2)
    got = scorer.score(PROMPTS, RESPONSES)
    direct = [_direct_logp(lm, tok, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert got.tolist() == pytest.approx([d[0] for d in direct], abs=1e-4)
    norm = LikelihoodScorer(lm, tok, max_length=128, normalize=True).score(PROMPTS, RESPONSES)
    assert norm.tolist() == pytest.approx([d[0] / d[1] for d in direct], abs=1e-4)


def test_dpo_implicit_reward_and_reference_free_forms(tok, lm, ref):
    beta = 0.25
    dpo = DPOImplicitRewardScorer(lm, tok, reference=ref, beta=beta, max_length=128)
    pi = LikelihoodScorer(lm, tok, max_length=128).score(PROMPTS, RESPONSES)
    pr = LikelihoodScorer(ref, tok, max_length=128).score(PROMPTS, RESPONSES)
    assert dpo.score(PROMPTS, RESPONSES).tolist() == pytest.approx(
        (beta * (pi - pr)).tolist(), abs=1e-4
    )
    # the reference runs once per (prompt, response): a second call reuses its cached log-probs
    calls = []
    hook = ref.register_forward_hook(lambda *a: calls.append(1))
    dpo.score(PROMPTS, RESPONSES)
    hook.remove()
    assert not calls
    free = DPOImplicitRewardScorer(lm, tok, max_length=128).score(PROMPTS, RESPONSES)
    norm = LikelihoodScorer(lm, tok, max_length=128, normalize=True).score(PROMPTS, RESPONSES)
    assert free.tolist() == pytest.approx(norm.tolist(), abs=1e-5)
    total = DPOImplicitRewardScorer(lm, tok, ref_free_norm="sum", max_length=128).score(
        PROMPTS, RESPONSES
    )
    assert total.tolist() == pytest.approx(pi.tolist(), abs=1e-5)


def test_paired_and_single_encodings_agree(tok):
    from lightning_robust.models.scorers import TokenCache

    paired = TokenCache(tok, 64, append_eos=True)
    single = TokenCache(tok, 64, append_eos=True)
    prompts, responses = ["tell me", "tell me", "help"], ["the sun", "a cat and a dog", "sure"]
    a = paired.get(prompts, responses)  # items 0 and 1 share a prompt: encoded as one pair
    b = [single.get([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert a == b
    assert paired.get(prompts, responses) == a and len(paired) == 3
