"""WDPO input-embedding gradient penalty (docs/ALGORITHMS.md §3.3, §8.3) on a tiny random-init Llama
in float64: the closed form, batched vs per-example, padding, and the double-backprop
parameter gradient against finite differences."""

from __future__ import annotations

import pytest
import torch

from lightning_robust.models.logprobs import sequence_logprobs
from lightning_robust.models.tiny import tiny_llama_config, tiny_tokenizer
from lightning_robust.objectives import (
    WDPO_PENALTY_FORMS,
    dpo_losses,
    embedding_gradient_penalty,
    preference_losses,
    preference_margin,
    wdpo_penalty,
)

F64 = torch.float64
BETA = 0.5
N = 3  # pairs
L = 9  # padded length


@pytest.fixture(scope="module")
def setup():
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_llama_config(
        len(tok),
        tok.pad_token_id,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).double().eval()
    g = torch.Generator().manual_seed(1)
    vocab = len(tok)
    lengths = torch.tensor([9, 6, 7, 8, 9, 5])  # chosen rows 0..2, rejected rows 3..5
    prompt_len = torch.tensor([3, 2, 4, 3, 2, 4])
    ids = torch.randint(5, vocab, (2 * N, L), generator=g)
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, tok.pad_token_id))
    ref = torch.randn(2 * N, generator=g, dtype=F64) - 20.0
    return model, ids, mask, prompt_len, ref


def _embeds(model, ids):
    return model.get_input_embeddings()(ids).detach().requires_grad_()


def _batched_losses(model, ids, mask, prompt_len, ref, loss_type="dpo", eps=0.0):
    embeds = _embeds(model, ids)
    logps, _ = sequence_logprobs(model, ids, mask, prompt_len, inputs_embeds=embeds)
    h = preference_margin(logps[:N], logps[N:], ref[:N], ref[N:])
    return preference_losses(loss_type, h, BETA, eps), h, embeds


def test_penalty_matches_closed_form_per_example(setup):
    model, ids, mask, prompt_len, ref = setup
    losses, h, embeds = _batched_losses(model, ids, mask, prompt_len, ref)
    batched = embedding_gradient_penalty(losses, embeds, create_graph=False)
    assert batched.shape == (N,)
    for i in range(N):
        sq = []
        for row in (i, N + i):
            e = _embeds(model, ids[row : row + 1])
            lp, _ = sequence_logprobs(
                model,
                ids[row : row + 1],
                mask[row : row + 1],
                prompt_len[row : row + 1],
                inputs_embeds=e,
            )
            (g,) = torch.autograd.grad(lp.sum(), e)
            sq.append(g.pow(2).sum())
        closed = BETA**2 * torch.sigmoid(-BETA * h[i].detach()) ** 2 * (sq[0] + sq[1])
        assert closed.item() > 1e-8
        assert batched[i].item() == pytest.approx(closed.item(), rel=1e-5)


def test_batched_equals_per_example(setup):
    model, ids, mask, prompt_len, ref = setup
    for loss_type, eps in (("dpo", 0.0), ("ipo", 0.0), ("cdpo", 0.2)):
        losses, _, embeds = _batched_losses(model, ids, mask, prompt_len, ref, loss_type, eps)
        batched = embedding_gradient_penalty(losses, embeds, create_graph=False)
        for i in range(N):
            rows = torch.tensor([i, N + i])
            e = _embeds(model, ids[rows])
            lp, _ = sequence_logprobs(
                model, ids[rows], mask[rows], prompt_len[rows], inputs_embeds=e
            )
            li = preference_losses(
                loss_type,
                preference_margin(lp[:1], lp[1:], ref[i : i + 1], ref[N + i : N + i + 1]),
                BETA,
                eps,
            )
            single = embedding_gradient_penalty(li, e, create_graph=False)
            assert batched[i].item() == pytest.approx(single.item(), rel=1e-5)


def test_tuple_input_and_padding_gets_zero_gradient(setup):
    model, ids, mask, prompt_len, ref = setup
    ec, er = _embeds(model, ids[:N]), _embeds(model, ids[N:])
    logps, _ = sequence_logprobs(model, ids, mask, prompt_len, inputs_embeds=torch.cat([ec, er]))
    losses = dpo_losses(preference_margin(logps[:N], logps[N:], ref[:N], ref[N:]), BETA)
    from_tuple = embedding_gradient_penalty(losses, (ec, er), create_graph=True)
    assert from_tuple.requires_grad
    gc, gr = torch.autograd.grad(losses.sum(), (ec, er))
    grads = torch.cat([gc, gr])
    pad = ~mask.bool()
    assert pad.any() and grads[pad].abs().max().item() == 0.0
    assert grads[mask.bool()].abs().sum().item() > 0.0
    losses2, _, embeds = _batched_losses(model, ids, mask, prompt_len, ref)
    from_tensor = embedding_gradient_penalty(losses2, embeds, create_graph=False)
    assert not from_tensor.requires_grad
    # retain_graph=True keeps the losses' graph after an evaluation-style penalty
    losses3, _, embeds3 = _batched_losses(model, ids, mask, prompt_len, ref)
    embedding_gradient_penalty(losses3, embeds3, create_graph=False, retain_graph=True)
    losses3.sum().backward(inputs=[embeds3])
    assert torch.allclose(embeds3.grad, torch.cat([gc, gr]), rtol=1e-10, atol=1e-15)
    assert torch.allclose(from_tuple.detach(), from_tensor, rtol=1e-10, atol=0)


def _objective(model, ids, mask, prompt_len, ref, rho, form, create_graph):
    losses, _, embeds = _batched_losses(model, ids, mask, prompt_len, ref)
    sq = embedding_gradient_penalty(losses, embeds, create_graph=create_graph)
    pen = wdpo_penalty(sq, rho, form=form)
    return (losses + pen).mean() if form == "seed" else losses.mean() + pen


@pytest.mark.parametrize("form", ["seed", "sqrt"])
def test_parameter_gradient_matches_finite_differences(setup, form):
    model, ids, mask, prompt_len, ref = setup
    rho = 2.0
    params = dict(model.named_parameters())
    names = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "lm_head.weight",
    ]
    model.zero_grad(set_to_none=True)
    obj = _objective(model, ids, mask, prompt_len, ref, rho, form, create_graph=True)
    grads = torch.autograd.grad(obj, [params[n] for n in names])
    # without double backprop (create_graph=False) the penalty contributes no parameter gradient
    plain = _batched_losses(model, ids, mask, prompt_len, ref)[0].mean()
    plain_grads = torch.autograd.grad(plain, [params[n] for n in names])
    step = 1e-3
    checked = 0
    for name, g, g0 in zip(names, grads, plain_grads, strict=True):
        p = params[name]
        flat = g.flatten()
        for j in torch.topk(flat.abs(), 2).indices.tolist():
            with torch.no_grad():
                orig = p.view(-1)[j].item()
                p.view(-1)[j] = orig + step
            up = _objective(model, ids, mask, prompt_len, ref, rho, form, False).item()
            with torch.no_grad():
                p.view(-1)[j] = orig - step
            down = _objective(model, ids, mask, prompt_len, ref, rho, form, False).item()
            with torch.no_grad():
                p.view(-1)[j] = orig
            fd = (up - down) / (2 * step)
            assert flat[j].item() == pytest.approx(fd, rel=2e-3, abs=1e-5), (name, j)
            # and the penalty's own gradient is visible: it differs from the plain DPO gradient
            assert abs(flat[j].item() - g0.flatten()[j].item()) > 1e-4 * abs(flat[j].item())
            checked += 1
    assert checked == 6


def test_rho0_is_plain_dpo_and_forms(setup):
    model, ids, mask, prompt_len, ref = setup
    losses, _, embeds = _batched_losses(model, ids, mask, prompt_len, ref)
    sq = embedding_gradient_penalty(losses, embeds, create_graph=True)
    assert torch.equal((losses + wdpo_penalty(sq, 0.0)).mean(), losses.mean())
    assert torch.equal(losses.mean() + wdpo_penalty(sq, 0.0, form="sqrt"), losses.mean())
    assert torch.allclose(wdpo_penalty(sq, 0.3), 0.3 * sq)
    assert torch.allclose(wdpo_penalty(sq, 0.3, "sqrt"), 0.3 * sq.mean().sqrt())
    assert set(WDPO_PENALTY_FORMS) == {"seed", "sqrt"}


def test_sqrt_form_zero_norms_has_finite_gradient():
    sq = torch.zeros(4, dtype=F64, requires_grad=True)
    pen = wdpo_penalty(sq, 1.0, form="sqrt")
    assert pen.item() == 0.0
    (g,) = torch.autograd.grad(pen, sq)
    assert torch.isfinite(g).all() and g.abs().sum().item() == 0.0


def test_errors():
    e = torch.zeros(4, 3, 2, dtype=F64, requires_grad=True)
    losses = e.sum(dim=(1, 2))[:2]
    with pytest.raises(ValueError, match="form"):
        wdpo_penalty(torch.ones(2), 1.0, form="paper")
    with pytest.raises(ValueError, match="rho"):
        wdpo_penalty(torch.ones(2), -1.0)
    with pytest.raises(ValueError, match="2n"):
        embedding_gradient_penalty(losses, e[:3])
    with pytest.raises(ValueError, match="1-D"):
        embedding_gradient_penalty(losses.view(1, 2), e)
    with torch.no_grad():
        detached = e.sum(dim=(1, 2))[:2]
    with pytest.raises(ValueError, match="no_grad"):
        embedding_gradient_penalty(detached, e)
    # a loss of example i that reads only its own rows: grad of sum(E_i)+sum(E_{n+i}) is ones
    ok = e.sum(dim=(1, 2))[:2] + e.sum(dim=(1, 2))[2:]
    assert torch.equal(
        embedding_gradient_penalty(ok, e, create_graph=False), torch.full((2,), 12.0, dtype=F64)
    )


def test_default_sdpa_model_needs_math_backend_for_double_backprop():
    """CPU's fused SDPA kernel has no double backward; the math backend (or eager) does."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_llama_config(
        len(tok),
        tok.pad_token_id,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(5, len(tok), (4, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with sdpa_kernel(SDPBackend.MATH):
        e = _embeds(model, ids)
        lp, _ = sequence_logprobs(model, ids, mask, torch.full((4,), 2), inputs_embeds=e)
        losses = dpo_losses(preference_margin(lp[:2], lp[2:], torch.zeros(2), torch.zeros(2)), BETA)
        loss = (losses + wdpo_penalty(embedding_gradient_penalty(losses, e), 1.0)).mean()
        loss.backward()
    assert torch.isfinite(model.lm_head.weight.grad).all()
    assert model.lm_head.weight.grad.abs().sum() > 0
