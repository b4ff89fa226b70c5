"""ReferencePolicy (modules/reference.py): one home for the reference of DPO, GRPO/PPO and the
DPO implicit-reward scorer; mode resolution, frozen copy, views and the scorer's use of it."""

from __future__ import annotations

import pytest
import torch

from lightning_robust.models.lora import LoraOptions
from lightning_robust.models.scorers import DPOImplicitRewardScorer, LikelihoodScorer
from lightning_robust.modules import DPO, GRPO
from lightning_robust.modules.reference import ReferencePolicy, resolve_reference_mode

LORA = LoraOptions(r=4, alpha=8, dropout=0.0)
PROMPTS = ["the cat", "a dog", "the cat"]
RESPONSES = ["sat on the mat", "ran", "slept"]


def test_mode_resolution_and_named_errors():
    assert resolve_reference_mode(None, lora=True) == "lora_disabled"
    assert resolve_reference_mode(None, lora=False) == "frozen_copy"
    assert resolve_reference_mode("precomputed", lora=False) == "precomputed"
    with pytest.raises(ValueError, match="needs `lora`"):
        resolve_reference_mode("lora_disabled", lora=False)
    with pytest.raises(ValueError, match="unknown reference='none'"):
        resolve_reference_mode("none", lora=False)  # the training modules do not offer it
    assert ReferencePolicy("none", lora=False, name="x", allowed=("none",)).mode == "none"


def test_modules_share_one_reference_object():
    dpo, online = DPO(), GRPO(lora=LORA)
    assert dpo.reference_policy.mode == dpo.hparams.reference == "frozen_copy"
    assert online.reference_policy.mode == "lora_disabled"
    dpo.configure_model()
    ref = dpo.reference_policy
    assert ref.frozen is dpo.reference_model and ref.policy is dpo.backbone
    assert not any(p.requires_grad for p in ref.frozen.parameters())
    # the fingerprint is taken once and names the frozen copy (equal to the initial policy)
    assert not ref.fingerprinted and ref.fingerprint() == ref.fingerprint() and ref.fingerprinted


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("lora", [None, LORA])
def test_implicit_reward_scorer_takes_the_reference_policy(lora):
    torch.manual_seed(0)
    module = DPO(lora=lora)
    module.configure_model()
    _perturb(module.backbone)  # the policy has moved away from its reference
    tok = module.tokenizer
    ref = module.reference_policy
    by_policy = DPOImplicitRewardScorer(
        module.backbone, tok, reference=ref, beta=0.5, max_length=64
    )
    if lora is None:
        expected_ref = LikelihoodScorer(module.reference_model, tok, max_length=64).score(
            PROMPTS, RESPONSES
        )
    else:
        with module.backbone.disable_adapter():
            expected_ref = LikelihoodScorer(module.backbone, tok, max_length=64).score(
                PROMPTS, RESPONSES
            )
    pi = LikelihoodScorer(module.backbone, tok, max_length=64).score(PROMPTS, RESPONSES)
    got = by_policy.score(PROMPTS, RESPONSES)
    torch.testing.assert_close(got, 0.5 * (pi - expected_ref), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pi, expected_ref)
    if lora is not None:  # the string form gives the same numbers
        by_string = DPOImplicitRewardScorer(
            module.backbone, tok, reference="lora_disabled", beta=0.5, max_length=64
        )
        torch.testing.assert_close(by_string.score(PROMPTS, RESPONSES), got)


def test_precomputed_full_weight_reference_has_no_model_to_score_with():
    module = DPO(reference="precomputed")
    module.configure_model()
    with pytest.raises(ValueError, match="keeps no reference model"):
        DPOImplicitRewardScorer(
            module.backbone, module.tokenizer, reference=module.reference_policy
        ).score(PROMPTS, RESPONSES)
