"""Property-based checks: every closed form equals the cvxpylayers (Clarabel, float64) solution.

Tolerances follow docs/ALGORITHMS.md §7: interior-point weights are accurate to about 1e-6, so values
are compared to 2e-5 (in units of the loss range) and weights to 1e-4 where the losses are well
separated (distinct integers on a grid, so relative gaps >= 1/300); the invariants that do not
involve the solver (simplex, divergence = rho, tie symmetry) hold to 1e-9.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_robust.weighting import (
    ChiSquareBall,
    CVaR,
    Cvxpy,
    KLBall,
    KLPenalty,
    TVBall,
)
from lightning_robust.weighting import closed_forms as cf

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

CLOSED = {"tv": TVBall, "chi2": ChiSquareBall, "kl": KLBall, "cvar": CVaR}
DIVERGENCE = {"tv": cf.tv_divergence, "chi2": cf.chi2_divergence, "kl": cf.kl_divergence}


def d_max(name: str, n: int, m: int) -> float:
    return {"tv": 1 - m / n, "chi2": 0.5 * (n / m - 1), "kl": math.log(n / m)}[name]


@st.composite
def separated_losses(draw, min_size=3, max_size=12):
    """Distinct integers on [0, 300], mapped affinely: relative gaps >= 1/300."""
    ints = draw(st.lists(st.integers(0, 300), min_size=min_size, max_size=max_size, unique=True))
    scale = draw(st.sampled_from([0.01, 0.3, 1.0, 7.0, 250.0]))
    shift = draw(st.sampled_from([-40.0, 0.0, 2.5, 1e4]))
    return torch.tensor(ints, dtype=torch.float64) * scale + shift


@st.composite
def tied_losses(draw, min_size=2, max_size=14):
    """Few distinct values: many exact ties."""
    ints = draw(st.lists(st.integers(0, 4), min_size=min_size, max_size=max_size))
    return torch.tensor(ints, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 3.3]))


def _range(losses: torch.Tensor) -> float:
    return max((losses.max() - losses.min()).item(), 1e-300)


@pytest.mark.parametrize("name", ["tv", "chi2", "kl"])
@SETTINGS
@given(losses=separated_losses(), frac=st.floats(0.02, 0.95))
def test_ball_closed_form_equals_cvxpy(name, losses, frac):
    n = len(losses)
    rho = frac * d_max(name, n, 1)
    closed = CLOSED[name](rho)(losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Cvxpy(name, rho, differentiable=False)(losses)
    r = _range(losses)
    assert abs(closed.loss.item() - ref.loss.item()) / r <= 2e-5
    assert torch.allclose(closed.weights, ref.weights, atol=1e-4, rtol=0)
    q = closed.weights
    assert q.min().item() >= 0 and abs(q.sum().item() - 1) <= 1e-12
    assert DIVERGENCE[name](q).item() == pytest.approx(rho, abs=1e-9)
    assert closed.stats["saturated"].item() == 0.0


@SETTINGS
@given(losses=separated_losses(), alpha=st.floats(0.02, 1.0, exclude_max=True))
def test_cvar_closed_form_equals_cvxpy(losses, alpha):
    n = len(losses)
    closed = CVaR(alpha)(losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Cvxpy("cvar", alpha, differentiable=False)(losses)
    assert abs(closed.loss.item() - ref.loss.item()) / _range(losses) <= 2e-5
    assert torch.allclose(closed.weights, ref.weights, atol=1e-4, rtol=0)
    q = closed.weights
    assert q.max().item() <= min(1.0, 1 / (alpha * n)) + 1e-12
    assert q.min().item() >= 0 and abs(q.sum().item() - 1) <= 1e-12


@SETTINGS
@given(losses=tied_losses(), frac=st.floats(0.0, 1.3), name=st.sampled_from(["tv", "chi2", "kl"]))
def test_ball_invariants_with_ties(losses, frac, name):
    n = len(losses)
    m = int((losses == losses.max()).sum())
    dm = d_max(name, n, m)
    rho = frac * dm if dm > 0 else frac
    if name == "tv":
        rho = min(rho, 1.0)  # a TV radius lies in [0, 1]
    out = CLOSED[name](rho)(losses)
    q = out.weights
    assert q.min().item() >= 0 and abs(q.sum().item() - 1) <= 1e-12
    div = DIVERGENCE[name](q).item()
    assert div <= rho + 1e-9
    saturated = rho >= dm and m < n
    if m == n:
        assert torch.allclose(q, torch.full_like(q, 1 / n), atol=1e-15)
    elif saturated:
        assert out.stats["saturated"].item() == 1.0
        top = (losses == losses.max()).double() / m
        assert torch.allclose(q, top, atol=1e-12)
    elif rho > 0:
        assert div == pytest.approx(rho, abs=1e-9)
    for v in losses.unique():
        tied = q[losses == v]
        assert torch.all(tied == tied[0])
    # the value dominates every other feasible point checked: uniform and, when feasible, top
    assert out.loss.item() >= losses.mean().item() - 1e-12


@SETTINGS
@given(
    losses=tied_losses(min_size=3), frac=st.floats(0.05, 0.9), name=st.sampled_from(["tv", "cvar"])
)
def test_tied_values_match_cvxpy(losses, frac, name):
    """With ties the TV/CVaR maximiser is not unique: compare values (docs/ALGORITHMS.md §7)."""
    n = len(losses)
    m = int((losses == losses.max()).sum())
    if m == n:
        return
    rho = frac * d_max("tv", n, m) if name == "tv" else max(frac, 1.01 * m / n)
    rho = min(rho, 1.0)
    closed = CLOSED[name](rho)(losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Cvxpy(name, rho, differentiable=False)(losses)
    assert abs(closed.loss.item() - ref.loss.item()) / _range(losses) <= 2e-5


@SETTINGS
@given(losses=separated_losses(max_size=10), tau=st.sampled_from([0.05, 0.3, 1.0, 4.0]))
def test_kl_penalty_normalized_is_softmax(losses, tau):
    losses = losses / _range(losses)  # tau in units of the range
    out = KLPenalty(tau)(losses)
    shifted = losses - losses.max()
    assert torch.allclose(out.weights, torch.softmax(shifted / tau, 0), atol=1e-12, rtol=0)
    lam = losses.max() + tau * (torch.logsumexp(shifted / tau, 0) - math.log(len(losses)))
    assert out.stats["dual"].item() == pytest.approx(lam.item(), abs=1e-10)


@pytest.mark.parametrize("tau", [0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_kl_penalty_normalized_equals_cvxpy(tau, seed):
    import cvxpy as cp
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(9, generator=g, dtype=torch.float64)
    n = len(losses)
    q = cp.Variable(n)
    objective = losses.numpy() @ q - tau * cp.sum(cp.rel_entr(q, np.full(n, 1 / n)))
    problem = cp.Problem(cp.Maximize(objective), [q >= 0, cp.sum(q) == 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = problem.solve(solver="CLARABEL")
    out = KLPenalty(tau)(losses)
    assert torch.allclose(out.weights, torch.from_numpy(q.value), atol=1e-4, rtol=0)
    assert out.stats["dual"].item() == pytest.approx(value, abs=2e-5)


@SETTINGS
@given(
    losses=separated_losses(), frac=st.floats(0.05, 0.9), name=st.sampled_from(["tv", "chi2", "kl"])
)
def test_minimize_equals_cvxpy_minimum(losses, frac, name):
    n = len(losses)
    rho = frac * d_max(name, n, 1)
    closed = CLOSED[name](rho, minimize=True)(losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Cvxpy(name, rho, differentiable=False, minimize=True)(losses)
    assert abs(closed.loss.item() - ref.loss.item()) / _range(losses) <= 2e-5
    assert closed.loss.item() <= losses.mean().item() + 1e-12
