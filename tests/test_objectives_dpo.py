"""DPO-family losses and reward distillation (docs/ALGORITHMS.md §0, §3, §3.4, §3.5): worked examples,
derivatives, rDPO unbiasedness, and composition with the robust weightings (§1.6, §3.1, §3.2)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_robust.objectives import (
    PREFERENCE_LOSS_TYPES,
    cdpo_losses,
    distillation_losses,
    dpo_losses,
    dr_dpo_loss,
    ensemble_distillation_loss,
    forward_kl_estimate,
    implicit_rewards,
    ipo_losses,
    pessimism_gamma,
    preference_losses,
    preference_margin,
    rdpo_losses,
)
from lightning_robust.weighting import ERM, KLPenalty, TVBall

F64 = torch.float64


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# §3 worked example: log pi(y_w) = -12, log pi(y_l) = -14.5, ref -12.4 and -13.9 -> h = 1
def example_margin() -> torch.Tensor:
    return preference_margin(t(-12.0), t(-14.5), t(-12.4), t(-13.9))


# ---------------------------------------------------------------------------------- §3 examples
def test_margin_of_the_worked_example():
    assert example_margin().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "loss_type, eps, expected",
    [("dpo", 0.0, 0.644397), ("ipo", 0.0, 16.0), ("cdpo", 0.1, 0.654397), ("rdpo", 0.1, 0.631897)],
)
def test_section3_worked_example(loss_type, eps, expected):
    h = example_margin()
    got = preference_losses(loss_type, h, 0.1, label_smoothing=eps)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=5e-7)


def test_direct_functions_match_dispatch():
    h = torch.linspace(-30, 30, 13, dtype=F64)
    assert torch.equal(dpo_losses(h, 0.3), preference_losses("dpo", h, 0.3))
    assert torch.equal(ipo_losses(h, 0.3), preference_losses("ipo", h, 0.3))
    assert torch.equal(cdpo_losses(h, 0.3, 0.2), preference_losses("cdpo", h, 0.3, 0.2))
    assert torch.equal(rdpo_losses(h, 0.3, 0.2), preference_losses("rdpo", h, 0.3, 0.2))
    assert torch.equal(preference_losses("DPO", h, 0.3), dpo_losses(h, 0.3))
    # eps = 0 reduces cDPO and rDPO to DPO
    assert torch.allclose(cdpo_losses(h, 0.3, 0.0), dpo_losses(h, 0.3), rtol=0, atol=0)
    assert torch.allclose(rdpo_losses(h, 0.3, 0.0), dpo_losses(h, 0.3), rtol=0, atol=0)


def test_log_sigmoid_is_stable_at_extreme_margins():
    h = t(-1e6, -800.0, 0.0, 800.0, 1e6)
    for fn in (
        lambda x: dpo_losses(x, 1.0),
        lambda x: cdpo_losses(x, 1.0, 0.1),
        lambda x: rdpo_losses(x, 1.0, 0.1),
    ):
        out = fn(h)
        assert torch.isfinite(out).all()
    d = dpo_losses(h, 1.0)
    assert d[0].item() == pytest.approx(1e6)
    assert d[-1].item() == 0.0
    assert d[2].item() == pytest.approx(math.log(2.0))
    h32 = torch.tensor([-200.0, 200.0])
    assert torch.isfinite(dpo_losses(h32, 1.0)).all()


def test_errors():
    h = t(1.0)
    with pytest.raises(ValueError, match="unknown loss_type"):
        preference_losses("kto", h, 0.1)
    with pytest.raises(ValueError, match="label_noise < 0.5"):
        rdpo_losses(h, 0.1, 0.5)
    with pytest.raises(ValueError, match="label_noise"):
        preference_losses("rdpo", h, 0.1, 0.7)
    with pytest.raises(ValueError, match="label_smoothing"):
        cdpo_losses(h, 0.1, 1.5)
    with pytest.raises(ValueError, match="cdpo"):
        preference_losses("dpo", h, 0.1, label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_losses(h, 0.0)
    with pytest.raises(ValueError, match="beta"):
        ipo_losses(h, -1.0)
    assert set(PREFERENCE_LOSS_TYPES) == {"dpo", "ipo", "cdpo", "rdpo"}


def test_implicit_rewards():
    r = implicit_rewards(t(-12.0, -14.5), t(-12.4, -13.9), 0.1)
    assert torch.allclose(r, t(0.04, -0.06), atol=1e-12)
    # the margin is the difference of the implicit rewards divided by beta
    assert (r[0] - r[1]).item() / 0.1 == pytest.approx(example_margin().item())


# --------------------------------------------------------------------------------- derivatives
def _analytic_dldh(loss_type, h, beta, eps):
    s_neg, s_pos = torch.sigmoid(-beta * h), torch.sigmoid(beta * h)
    if loss_type == "dpo":
        return -beta * s_neg
    if loss_type == "ipo":
        return 2.0 * (h - 1.0 / (2.0 * beta))
    if loss_type == "cdpo":
        return -(1 - eps) * beta * s_neg + eps * beta * s_pos
    return (-(1 - eps) * beta * s_neg - eps * beta * s_pos) / (1 - 2 * eps)


@pytest.mark.parametrize(
    "loss_type, eps", [("dpo", 0.0), ("ipo", 0.0), ("cdpo", 0.15), ("rdpo", 0.2)]
)
def test_dldh_autograd_and_finite_differences(loss_type, eps):
    beta = 0.3
    h = torch.tensor([-7.0, -1.3, 0.0, 0.4, 2.5, 9.0], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(preference_losses(loss_type, h, beta, eps).sum(), h)
    assert torch.allclose(
        g, _analytic_dldh(loss_type, h.detach(), beta, eps), rtol=1e-12, atol=1e-14
    )
    step = 1e-6
    with torch.no_grad():
        hp, hm = h + step, h - step
        fd = (
            preference_losses(loss_type, hp, beta, eps)
            - preference_losses(loss_type, hm, beta, eps)
        ) / (2 * step)
    assert torch.allclose(g, fd, rtol=1e-7, atol=1e-8)


def test_margin_gradient_reaches_policy_only_through_the_margin():
    pc = t(-12.0).requires_grad_()
    pr = t(-14.5).requires_grad_()
    loss = dpo_losses(preference_margin(pc, pr, t(-12.4), t(-13.9)), 0.1).sum()
    gc, gr = torch.autograd.grad(loss, (pc, pr))
    expected = -0.1 * torch.sigmoid(t(-0.1))
    assert torch.allclose(gc, expected) and torch.allclose(gr, -expected)


# ------------------------------------------------------------------------ rDPO unbiasedness (§3)
@settings(max_examples=40, deadline=None)
@given(
    h=st.floats(-50, 50, allow_nan=False),
    beta=st.floats(0.01, 2.0),
    eps=st.floats(0.0, 0.45),
)
def test_rdpo_unbiased_under_label_flips(h, beta, eps):
    """E over labels flipped w.p. eps (a flip negates h) of rDPO equals clean DPO."""
    hh = torch.tensor([h], dtype=F64)
    expected = (1 - eps) * rdpo_losses(hh, beta, eps) + eps * rdpo_losses(-hh, beta, eps)
    assert torch.allclose(expected, dpo_losses(hh, beta), rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(h=st.floats(-50, 50, allow_nan=False), beta=st.floats(0.01, 2.0), eps=st.floats(0.0, 1.0))
def test_cdpo_is_dpo_against_smoothed_labels(h, beta, eps):
    hh = torch.tensor([h], dtype=F64)
    expected = (1 - eps) * dpo_losses(hh, beta) + eps * dpo_losses(-hh, beta)
    assert torch.allclose(cdpo_losses(hh, beta, eps), expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- §3.4 distillation
def test_section34_worked_example():
    beta, gamma = 0.1, 0.1
    h = example_margin()
    d = distillation_losses(t(1.3), t(0.2), h, beta)
    assert d.item() == pytest.approx(1.0, abs=1e-12)
    kl = forward_kl_estimate(
        t(-20.0, -25.0, -22.0), t(-20.5, -24.0, -23.0), torch.zeros(3, dtype=torch.long)
    )
    assert kl.shape == (1,)
    assert kl.item() == pytest.approx(1.0 / 6.0, abs=1e-12)
    p_dpo = dpo_losses(h, beta) + gamma * kl
    dp_dpo = d + gamma * kl
    assert p_dpo.item() == pytest.approx(0.661063, abs=5e-7)
    assert dp_dpo.item() == pytest.approx(1.016667, abs=5e-7)


@settings(max_examples=40, deadline=None)
@given(
    r1=st.floats(-10, 10),
    r2=st.floats(-10, 10),
    lw=st.floats(-40, 0),
    ll=st.floats(-40, 0),
    rw=st.floats(-40, 0),
    rl=st.floats(-40, 0),
    beta=st.floats(0.01, 2.0),
)
def test_distillation_symmetric_in_pair_order(r1, r2, lw, ll, rw, rl, beta):
    forward = distillation_losses(t(r1), t(r2), preference_margin(t(lw), t(ll), t(rw), t(rl)), beta)
    swapped = distillation_losses(t(r2), t(r1), preference_margin(t(ll), t(lw), t(rl), t(rw)), beta)
    assert torch.allclose(forward, swapped, rtol=1e-12, atol=1e-12)


def test_forward_kl_estimate_grouping_and_gradient():
    ref = t(-1.0, -2.0, -3.0, -4.0, -5.0)
    pol = t(-1.5, -1.0, -3.5, -4.0, -6.0).requires_grad_()
    idx = torch.tensor([0, 1, 0, 2, 1])
    kl = forward_kl_estimate(ref, pol, idx)
    assert torch.allclose(kl.detach(), t((0.5 + 0.5) / 2, (-1.0 + 1.0) / 2, 0.0))
    # gradient: -(1/m) per sample
    (g,) = torch.autograd.grad(kl.sum(), pol)
    assert torch.allclose(g, t(-0.5, -0.5, -0.5, -1.0, -0.5))
    # num_prompts larger than used: empty prompts give 0
    kl4 = forward_kl_estimate(ref, pol, idx, num_prompts=4)
    assert kl4.shape == (4,) and kl4[3].item() == 0.0
    # one sample per prompt
    assert torch.equal(forward_kl_estimate(ref, pol.detach()), ref - pol.detach())
    with pytest.raises(ValueError, match="prompt_index"):
        forward_kl_estimate(ref, pol, idx[:3])


# e-DPO example of §3.4
R_FIRST = t(1.0, 0.2, 0.4, 0.9, 1.5, -0.2).view(3, 2)
R_SECOND = t(0.1, 0.5, 0.3, 0.1, 0.0, 0.4).view(3, 2)
H_E = t(3.0, -2.0)
KL_E = t(0.1, 0.3)


def test_ensemble_worked_example():
    beta, gamma = 0.1, 0.1
    loss_b, k_b = ensemble_distillation_loss(R_FIRST, R_SECOND, H_E, beta, reduction="batch")
    loss_e, k_e = ensemble_distillation_loss(R_FIRST, R_SECOND, H_E, beta, reduction="example")
    assert (loss_b + gamma * KL_E.mean()).item() == pytest.approx(0.2050, abs=1e-12)
    assert (loss_e + gamma * KL_E.mean()).item() == pytest.approx(0.0450, abs=1e-12)
    assert k_b.dtype == torch.long and k_b.dim() == 0 and k_b.item() == 0
    assert k_e.tolist() == [1, 0]
    assert loss_e.item() <= loss_b.item()  # the per-example min is a lower bound


def test_ensemble_gradient_flows_through_selected_model_only():
    rf = R_FIRST.clone().requires_grad_()
    h = H_E.clone().requires_grad_()
    loss, k = ensemble_distillation_loss(rf, R_SECOND, h, 0.1, reduction="batch")
    g_rf, g_h = torch.autograd.grad(loss, (rf, h))
    assert g_rf[1:].abs().sum().item() == 0.0
    resid = R_FIRST[0] - R_SECOND[0] - 0.1 * H_E
    assert torch.allclose(g_rf[0], resid)  # d/dr of mean of squares over n=2: 2 r / 2
    assert torch.allclose(g_h, -0.1 * resid)


def test_ensemble_ties_take_smallest_k():
    rf = torch.stack([R_FIRST[1], R_FIRST[0], R_FIRST[0]])
    rs = torch.stack([R_SECOND[1], R_SECOND[0], R_SECOND[0]])
    _, k = ensemble_distillation_loss(rf, rs, H_E, 0.1, reduction="batch")
    assert k.item() == 1
    rf = R_FIRST[0].expand(4, 2).clone()
    rs = R_SECOND[0].expand(4, 2).clone()
    _, k = ensemble_distillation_loss(rf, rs, H_E, 0.1, reduction="batch")
    assert k.item() == 0
    _, ke = ensemble_distillation_loss(rf, rs, H_E, 0.1, reduction="example")
    assert ke.tolist() == [0, 0]


def test_ensemble_errors_and_single_model():
    with pytest.raises(ValueError, match="reduction"):
        ensemble_distillation_loss(R_FIRST, R_SECOND, H_E, 0.1, reduction="mean")
    with pytest.raises(ValueError, match=r"\[K, n\]"):
        ensemble_distillation_loss(R_FIRST[0], R_SECOND[0], H_E, 0.1)
    loss, _ = ensemble_distillation_loss(R_FIRST[:1], R_SECOND[:1], H_E, 0.1)
    assert torch.allclose(loss, distillation_losses(R_FIRST[0], R_SECOND[0], H_E, 0.1).mean())


def test_pessimism_gamma_schedule():
    assert pessimism_gamma(0, 100, 1.0, 0.1) == 1.0
    assert pessimism_gamma(50, 100, 1.0, 0.1) == pytest.approx(0.55)
    assert pessimism_gamma(100, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert pessimism_gamma(250, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert pessimism_gamma(-5, 100, 1.0, 0.1) == 1.0
    assert pessimism_gamma(37, 100, 0.3, 0.3) == 0.3
    assert pessimism_gamma(3, 0, 1.0, 0.1) == 0.1


# ------------------------------------------------------------------------------- §3.5 Dr.DPO
L_EX = t(0.2, 0.9, 0.45, 1.6, 0.7, 0.3, 0.55, 1.1)


def test_dr_dpo_worked_example_and_weights():
    loss = dr_dpo_loss(L_EX, 1.0)
    assert loss.item() == pytest.approx(0.641492, abs=5e-7)
    lw = L_EX.clone().requires_grad_()
    (g,) = torch.autograd.grad(dr_dpo_loss(lw, 0.5), lw)
    assert torch.allclose(g, torch.softmax(-L_EX / 0.5, 0), atol=1e-14)
    assert dr_dpo_loss(L_EX, float("inf")).item() == pytest.approx(L_EX.mean().item())
    assert dr_dpo_loss(L_EX, 1e6).item() == pytest.approx(L_EX.mean().item(), abs=1e-6)
    assert torch.isfinite(dr_dpo_loss(t(1e4, 2e4), 1e-3))
    with pytest.raises(ValueError):
        dr_dpo_loss(L_EX, 0.0)


# ----------------------------------------------- composition with weighting (§1.6, §3.1, §3.2)
def _random_margins(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=F64) * 5.0).requires_grad_()


def test_kldpo_seed_weights_composed_with_dpo():
    tau = 0.5
    h = _random_margins()
    losses = dpo_losses(h, 0.1)
    out = KLPenalty(tau, form="seed")(losses)
    ld = losses.detach()
    w = torch.clamp(torch.exp((ld - ld.mean()) / tau), max=10.0)
    assert torch.allclose(out.weights * ld.shape[0], w, rtol=1e-12, atol=1e-14)
    assert torch.allclose(out.loss, (w * losses).mean(), rtol=1e-12)
    # the weights are detached: the gradient is (1/n) sum w_i dl_i/dh
    (g,) = torch.autograd.grad(out.loss, h)
    (g_ref,) = torch.autograd.grad((w * dpo_losses(h, 0.1)).mean(), h)
    assert torch.allclose(g, g_ref, rtol=1e-12, atol=1e-15)


def test_kldpo_seed_weights_overflow_saturate_without_nan():
    h = torch.tensor([-1e4, 1.0, 2.0, 3.0], dtype=F64, requires_grad=True)
    losses = dpo_losses(h, 1.0)  # first loss 1e4: exp(1e4 / tau) overflows
    out = KLPenalty(0.05, form="seed")(losses)
    assert torch.isfinite(out.loss) and torch.isfinite(out.weights).all()
    assert (out.weights * 4)[0].item() == 10.0
    (g,) = torch.autograd.grad(out.loss, h)
    assert torch.isfinite(g).all()


def test_rho0_and_tau_inf_reduce_to_plain_dpo():
    h = _random_margins(seed=3)
    losses = dpo_losses(h, 0.1)
    plain = losses.mean()
    for strategy in (
        TVBall(rho=0),
        KLPenalty(tau=float("inf")),
        KLPenalty(float("inf"), form="seed"),
        ERM(),
    ):
        out = strategy(losses)
        assert torch.equal(out.loss, plain), strategy
        (g,) = torch.autograd.grad(out.loss, h, retain_graph=True)
        (g_plain,) = torch.autograd.grad(plain, h, retain_graph=True)
        assert torch.equal(g, g_plain)
