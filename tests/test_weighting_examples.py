"""Worked examples of docs/ALGORITHMS.md §1.3–§1.7 and the independent checks of §1.4, §1.5, §1.7."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import minimize_scalar

from lightning_robust.weighting import (
    ChiSquareBall,
    CVaR,
    Cvxpy,
    KLBall,
    KLPenalty,
    TVBall,
)
from lightning_robust.weighting import closed_forms as cf

L = torch.tensor([0.2, 0.9, 0.45, 1.6, 0.7, 0.3, 0.55, 1.1], dtype=torch.float64)


def _close(actual: torch.Tensor, expected, decimals: int) -> None:
    exp = torch.tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual.double(), exp, atol=0.5 * 10.0**-decimals, rtol=0), (actual, exp)


def test_tv_example_13():
    out = TVBall(rho=0.2)(L)
    _close(out.weights, [0, 0.125, 0.125, 0.325, 0.125, 0.05, 0.125, 0.125], 12)
    assert out.loss.item() == pytest.approx(0.9975, abs=1e-12)
    assert out.stats["saturated"].item() == 0.0
    # value formula of §1.3: mean + rho_eff (max - mean of donors, weighted by mass given up)
    donors = (1.0 * 0.2 + 0.6 * 0.3) / 1.6
    assert out.loss.item() == pytest.approx(L.mean().item() + 0.2 * (1.6 - donors), abs=1e-12)


def test_tv_example_13_saturated(caplog):
    strategy = TVBall(rho=1.0)
    with caplog.at_level("WARNING", logger="lightning_robust.weighting.base"):
        out = strategy(L)
        strategy(L)
    assert torch.equal(out.weights, torch.nn.functional.one_hot(torch.tensor(3), 8).double())
    assert out.loss.item() == 1.6
    assert out.stats["saturated"].item() == 1.0
    assert (
        sum("saturated" in r.getMessage() or "D_max" in r.getMessage() for r in caplog.records) == 1
    )


def test_chi2_example_14():
    out = ChiSquareBall(rho=0.5)(L)
    _close(out.weights, [0, 0.1718, 0.0343, 0.3856, 0.1107, 0, 0.0649, 0.2328], 4)
    assert out.loss.item() == pytest.approx(1.156178, abs=5e-7)
    assert cf.chi2_divergence(out.weights).item() == pytest.approx(0.5, abs=1e-12)


def test_kl_example_15():
    out = KLBall(rho=0.2)(L)
    _close(out.weights, [0.0515, 0.131, 0.0719, 0.3331, 0.1004, 0.0589, 0.0822, 0.171], 4)
    assert out.loss.item() == pytest.approx(1.014777, abs=5e-7)
    assert cf.kl_divergence(out.weights).item() == pytest.approx(0.2, abs=1e-12)


def test_kl_penalty_examples_16():
    seed = KLPenalty(tau=0.5, form="seed")(L)
    w = seed.weights * 8  # reported weights are w / n
    _close(w, [0.3499, 1.4191, 0.5769, 5.7546, 0.9512, 0.4274, 0.7047, 2.117], 4)
    assert seed.loss.item() == pytest.approx(1.790563, abs=5e-7)
    assert seed.loss.item() == pytest.approx((w * L).mean().item(), abs=1e-12)
    norm = KLPenalty(tau=0.5)(L)
    _close(norm.weights, [0.0284, 0.1154, 0.0469, 0.4678, 0.0773, 0.0347, 0.0573, 0.1721], 4)
    assert norm.loss.item() == pytest.approx(1.164510, abs=5e-7)
    # identity of §1.6: w = n q c with c = mean exp((l - mean)/tau) >= 1
    c = torch.exp((L - L.mean()) / 0.5).mean()
    assert c.item() >= 1.0
    assert torch.allclose(w, 8 * norm.weights * c, atol=1e-12, rtol=0)
    # normaliser lambda = tau log mean exp(l / tau) >= mean l (Jensen)
    lam = 0.5 * math.log(torch.exp(L / 0.5).mean().item())
    assert norm.stats["dual"].item() == pytest.approx(lam, abs=1e-12)
    assert lam >= L.mean().item()


def test_cvar_example_17():
    out = CVaR(alpha=0.25)(L)
    _close(out.weights, [0, 0, 0, 0.5, 0, 0, 0, 0.5], 12)
    assert out.loss.item() == pytest.approx(1.35, abs=1e-12)


@pytest.mark.parametrize(
    ("divergence", "rho", "weights", "value", "decimals"),
    [
        ("tv", 0.2, [0, 0.125, 0.125, 0.325, 0.125, 0.05, 0.125, 0.125], 0.9975, 4),
        ("chi2", 0.5, [0, 0.1718, 0.0343, 0.3856, 0.1107, 0, 0.0649, 0.2328], 1.156178, 4),
        ("kl", 0.2, [0.0515, 0.131, 0.0719, 0.3331, 0.1004, 0.0589, 0.0822, 0.171], 1.014777, 3),
        ("cvar", 0.25, [0, 0, 0, 0.5, 0, 0, 0, 0.5], 1.35, 4),
    ],
)
def test_cvxpy_examples(divergence, rho, weights, value, decimals):
    out = Cvxpy(divergence, rho, differentiable=False)(L)
    assert torch.allclose(out.weights, torch.tensor(weights, dtype=torch.float64), atol=1e-4)
    assert out.loss.item() == pytest.approx(value, abs=2e-5)


# ---------------------------------------------------------------- independent checks


def _chi2_bisection(losses: torch.Tensor, rho: float) -> torch.Tensor:
    """§1.4 check: D(q(eta)) is continuous and nondecreasing in eta; bisect D = rho."""
    lo, hi = losses.min().item() - 1e3 * (1 + losses.abs().max().item()), losses.max().item()
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        w = torch.clamp(losses - mid, min=0)
        if cf.chi2_divergence(w / w.sum()).item() > rho:
            hi = mid
        else:
            lo = mid
    w = torch.clamp(losses - lo, min=0)
    return w / w.sum()


def _chi2_dual(losses: torch.Tensor, rho: float, eta: float) -> float:
    pos = torch.clamp(losses - eta, min=0)
    return math.sqrt(1 + 2 * rho) * math.sqrt((pos * pos).mean().item()) + eta


def _kl_dual(losses: torch.Tensor, rho: float, lam: float) -> float:
    mx = losses.max().item()
    return (
        mx
        + lam * (torch.logsumexp((losses - mx) / lam, 0).item() - math.log(len(losses)))
        + lam * rho
    )


@pytest.mark.parametrize("rho", [0.01, 0.1, 0.5, 1.5, 3.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chi2_independent_checks(rho, seed):
    g = torch.Generator().manual_seed(seed)
    losses = torch.randn(12, generator=g, dtype=torch.float64) * 2 + 1
    out = ChiSquareBall(rho)(losses)
    assert torch.allclose(out.weights, _chi2_bisection(losses, rho), atol=1e-9, rtol=0)
    eta = out.stats["dual"].item()
    value = out.loss.item()
    assert _chi2_dual(losses, rho, eta) == pytest.approx(value, abs=1e-12)
    best = minimize_scalar(
        lambda e: _chi2_dual(losses, rho, e),
        bounds=(losses.min().item() - 50, losses.max().item()),
        method="bounded",
        options={"xatol": 1e-12},
    )
    assert best.fun == pytest.approx(value, abs=1e-9)
    assert best.fun >= value - 1e-12


@pytest.mark.parametrize("rho", [0.01, 0.1, 0.5, 1.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_dual_check(rho, seed):
    g = torch.Generator().manual_seed(seed)
    losses = torch.randn(12, generator=g, dtype=torch.float64) * 2 + 1
    out = KLBall(rho)(losses)
    lam = out.stats["dual"].item()
    value = out.loss.item()
    assert _kl_dual(losses, rho, lam) == pytest.approx(value, abs=1e-11)
    best = minimize_scalar(
        lambda s: _kl_dual(losses, rho, math.exp(s)),
        bounds=(-12, 12),
        method="bounded",
        options={"xatol": 1e-12},
    )
    assert best.fun == pytest.approx(value, abs=1e-9)
    assert best.fun >= value - 1e-12
    # the Gibbs form of §1.5
    tilt = torch.softmax(losses / lam, 0)
    assert torch.allclose(out.weights, tilt, atol=1e-12, rtol=0)


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.33, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_cvar_dual_check(alpha, seed):
    g = torch.Generator().manual_seed(seed)
    losses = torch.randint(0, 6, (15,), generator=g).double() * 0.7  # with ties
    out = CVaR(alpha)(losses)
    n = len(losses)

    def dual(eta: float) -> float:
        return eta + torch.clamp(losses - eta, min=0).sum().item() / (alpha * n)

    value = out.loss.item()
    assert dual(out.stats["dual"].item()) == pytest.approx(value, abs=1e-12)
    assert min(dual(v) for v in losses.tolist()) == pytest.approx(value, abs=1e-12)
    assert out.weights.max().item() <= min(1.0, 1 / (alpha * n)) + 1e-15
