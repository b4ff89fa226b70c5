"""The regulariser piece (issue 17 item 4) and WDPO's chunked double backward (issue 14): the
chunked penalty gives the plain path's value and parameter gradients; the forward-KL
pessimism and the loss_type dispatch equal their direct formulas."""

from __future__ import annotations

import pytest
import torch

from lightning_robust.modules import DPO
from lightning_robust.objectives.dpo import (
    distillation_losses,
    ensemble_distillation_loss,
    objective_losses,
    preference_losses,
)
from lightning_robust.objectives.regularizers import ForwardKLPessimism, WassersteinPenalty

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}


def _batch(n=5):
    from tests.test_logprobs import _pair_batch

    shapes = [(3, 5, 2), (1, 4, 6), (6, 1, 1), (2, 7, 7), (4, 3, 5)][:n]
    return _pair_batch(shapes)


def _step_grads(model, batch):
    model.zero_grad(set_to_none=True)
    terms = model.step_terms(batch)
    (terms.losses.mean() + terms.extra).backward()
    grads = {n: p.grad.clone() for n, p in model.backbone.named_parameters() if p.grad is not None}
    return terms, grads


def test_chunked_wdpo_penalty_equals_the_whole_batch_path():
    """Same losses, penalty and parameter gradients (float64) with chunks of 2 pairs (5 pairs:
    an uneven last chunk) as with the plain double backward over the whole batch."""
    torch.manual_seed(0)
    model = DPO(tiny_config=TINY, wdpo_rho=0.5)
    model.configure_model()
    model.backbone.double()
    model.reference_model.double()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    model.wdpo_chunk_pairs = None
    plain, plain_grads = _step_grads(model, batch)
    model.wdpo_chunk_pairs = 2
    chunked, chunked_grads = _step_grads(model, batch)
    torch.testing.assert_close(chunked.losses, plain.losses, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.extra.detach(), plain.extra.detach(), rtol=1e-6, atol=1e-9)
    assert plain.extra.item() > 0
    for k in ("policy_chosen", "ref_rejected", "stat:wdpo/grad_sq_norm"):
        torch.testing.assert_close(chunked.aux[k], plain.aux[k], rtol=1e-6, atol=1e-6)
    assert plain_grads.keys() == chunked_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(chunked_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7)


def test_wasserstein_penalty_forms_and_checks():
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    embeds = torch.randn(4, 3, 2, requires_grad=True)
    out = (losses.repeat(2)[:, None, None] * embeds).sum(dim=(1, 2))  # l_i depends on rows i, i+n
    pair = out[:2] + out[2:]
    seed = WassersteinPenalty(0.3, "seed")(pair, embeds)
    sq = torch.tensor([2.0 * 3 * 2, 2.0 * 3 * 2]) * torch.tensor(
        [1.0, 4.0]
    )  # ||l_i * 1||^2 over 2 rows
    torch.testing.assert_close(seed.scalar, 0.3 * sq.mean())
    sqrt = WassersteinPenalty(0.3, "sqrt")(pair, embeds)
    torch.testing.assert_close(sqrt.scalar, 0.3 * sq.mean().sqrt())
    assert not WassersteinPenalty(0.3, "sqrt").chunkable
    with pytest.raises(ValueError, match="unknown wdpo_form"):
        WassersteinPenalty(0.3, "cube")
    with pytest.raises(ValueError, match="chunk_pairs"):
        WassersteinPenalty(0.3, "seed", chunk_pairs=0)


def test_forward_kl_pessimism_and_loss_dispatch():
    h = torch.tensor([0.5, -1.0, 2.0])
    kl = torch.tensor([0.1, 0.2, 0.3])
    losses, scalar, stats = objective_losses("ipo", h, 0.1)
    torch.testing.assert_close(losses, preference_losses("ipo", h, 0.1))
    new, _, kl_stats = ForwardKLPessimism(0.5).add_to(losses, None, kl)
    torch.testing.assert_close(new, losses + 0.5 * kl)
    assert kl_stats["kl/gamma"].item() == 0.5
    s1, s2 = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])
    d, _, _ = objective_losses("distill", h, 0.1, chosen_scores=s1, rejected_scores=s2)
    torch.testing.assert_close(d, distillation_losses(s1, s2, h, 0.1))
    e1, e2 = torch.stack([s1, s2], 1), torch.stack([s2, s1], 1)
    none, scalar, stats = objective_losses("distill", h, 0.1, chosen_scores=e1, rejected_scores=e2)
    expected, _ = ensemble_distillation_loss(e1.T, e2.T, h, 0.1, reduction="batch")
    assert none is None and torch.equal(scalar, expected) and "ensemble/selected" in stats
    _, plus, _ = ForwardKLPessimism(2.0).add_to(None, scalar, kl)
    torch.testing.assert_close(plus, scalar + 2.0 * kl.mean())
    evaluation, _, _ = objective_losses("distill", h, 0.1, training=False)
    torch.testing.assert_close(evaluation, preference_losses("dpo", h, 0.1))
    with pytest.raises(KeyError, match="chosen_scores"):
        objective_losses("distill", h, 0.1)
