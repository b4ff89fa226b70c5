"""The rules of docs/ALGORITHMS.md §1.2 and the RobustWeighting contract, for every strategy."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from lightning_robust.weighting import (
    ERM,
    ChiSquareBall,
    CVaR,
    Cvxpy,
    GroupDRO,
    KLBall,
    KLPenalty,
    RobustWeighting,
    TVBall,
    WeightingOutput,
)
from lightning_robust.weighting import closed_forms as cf

L = torch.tensor([0.2, 0.9, 0.45, 1.6, 0.7, 0.3, 0.55, 1.1], dtype=torch.float64)


def ball_strategies(rho: float = 0.3, alpha: float = 0.3):
    return [TVBall(rho), ChiSquareBall(rho), KLBall(rho), CVaR(alpha)]


def simplex_strategies():
    return [ERM(), *ball_strategies(), KLPenalty(0.5)]


def _divergence(name: str, q: torch.Tensor) -> float:
    return {"tv": cf.tv_divergence, "chi2": cf.chi2_divergence, "kl": cf.kl_divergence}[name](
        q
    ).item()


# ---------------------------------------------------------------- contract


def test_output_contract():
    losses = torch.rand(10, requires_grad=True)
    for strategy in [*simplex_strategies(), KLPenalty(0.5, form="seed")]:
        out = strategy(losses)
        assert isinstance(out, WeightingOutput) and isinstance(strategy, RobustWeighting)
        assert isinstance(strategy, torch.nn.Module)
        assert out.loss.dim() == 0 and out.loss.requires_grad
        assert out.weights.shape == (10,) and out.weights.dtype == torch.float32
        assert not out.weights.requires_grad
        assert out.global_weights is None
        for key in ("ess", "max_weight", "entropy"):
            assert out.stats[key].dim() == 0
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.stats.values())
        assert torch.equal(strategy.weights(losses), out.weights)
        expected = (out.weights.double() * losses.detach().double()).sum()
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    losses = torch.linspace(0.1, 2.0, 16).to(dtype)
    for strategy in simplex_strategies():
        out = strategy(losses)
        assert out.weights.dtype == dtype and out.loss.dtype == dtype
        assert torch.isfinite(out.loss)
    # the weights are solved in float64: the same as for the float64 losses
    ref = TVBall(0.3)(losses.double()).weights
    assert torch.allclose(TVBall(0.3)(losses).weights.double(), ref, atol=1e-2)


def test_stats_definitions():
    out = TVBall(0.2)(L)
    q = out.weights
    assert out.stats["ess"].item() == pytest.approx(1 / (q * q).sum().item(), rel=1e-14)
    assert out.stats["max_weight"].item() == pytest.approx(0.325, abs=1e-15)
    ent = -sum(v * math.log(v) for v in q.tolist() if v > 0)  # 0 log 0 = 0
    assert out.stats["entropy"].item() == pytest.approx(ent, abs=1e-14)
    assert out.stats["saturated"].item() == 0.0
    assert ChiSquareBall(0.5)(L).stats["dual"].dim() == 0


# ---------------------------------------------------------------- §1.2 rules 1–6


def test_rule1_single_example():
    one = torch.tensor([3.5], requires_grad=True)
    strategies = [*simplex_strategies(), KLPenalty(0.5, form="seed"), Cvxpy("kl", 0.2)]
    for strategy in strategies:
        out = strategy(one)
        assert out.weights.tolist() == [1.0]
        assert out.loss.item() == 3.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rule2_zero_radius_is_erm_bit_for_bit(dtype):
    losses = (torch.rand(13, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    erm = ERM()(losses)
    assert torch.equal(erm.loss, losses.mean())
    same = [
        TVBall(0.0),
        ChiSquareBall(0.0),
        KLBall(0.0),
        CVaR(1.0),
        KLPenalty(math.inf),
        KLPenalty(math.inf, form="seed"),
        Cvxpy("tv", 0.0),
        Cvxpy("chi2", 0.0),
        Cvxpy("cvar", 1.0),
        TVBall(0.0, minimize=True),
        TVBall(0.0, nan_policy="mask"),
    ]
    for strategy in same:
        out = strategy(losses)
        assert torch.equal(out.loss, erm.loss), strategy
        assert torch.equal(out.weights, torch.full_like(out.weights, 1 / 13))
        (g1,) = torch.autograd.grad(out.loss, losses)
        (g2,) = torch.autograd.grad(erm.loss, losses)
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("extra", [0.0, 0.5])
def test_rule4_radius_at_or_above_max(extra):
    losses = torch.tensor([1.0, 3.0, 0.5, 3.0, 2.0, 3.0, 0.1, 0.2, 1.5, 2.5], dtype=torch.float64)
    n, m = 10, 3
    top = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0, 0, 0], dtype=torch.float64) / m
    cases = [
        TVBall(min(1.0, 1 - m / n + extra)),
        ChiSquareBall(0.5 * (n / m - 1) + extra),
        KLBall(math.log(n / m) + extra),
        CVaR(m / n - extra / 2),
        Cvxpy("tv", 1 - m / n + extra),
        Cvxpy("kl", math.log(n / m) + extra),
        Cvxpy("chi2", 0.5 * (n / m - 1) + extra),
    ]
    for strategy in cases:
        out = strategy(losses)
        assert torch.allclose(out.weights, top, atol=1e-15, rtol=0), strategy
        assert out.weights[1] == out.weights[3] == out.weights[5]
        assert out.loss.item() == pytest.approx(3.0, abs=1e-14)
        assert out.stats["saturated"].item() == 1.0
    assert ChiSquareBall(10.0)(losses).stats["dual"].item() == 3.0
    assert KLBall(10.0)(losses).stats["dual"].item() == 0.0


def test_rule4_warns_once_per_instance(caplog):
    strategy = ChiSquareBall(100.0)
    with caplog.at_level("WARNING", logger="lightning_robust.weighting.base"):
        for _ in range(3):
            strategy(L)
        ChiSquareBall(100.0)(L)
    assert len([r for r in caplog.records if "D_max" in r.getMessage()]) == 2


def test_rule5_all_equal():
    losses = torch.full((7,), 2.5, dtype=torch.float64)
    for strategy in [*simplex_strategies(), ChiSquareBall(100.0), KLBall(50.0), Cvxpy("chi2", 0.3)]:
        out = strategy(losses)
        assert torch.allclose(out.weights, torch.full_like(losses, 1 / 7), atol=1e-15, rtol=0)
        assert out.loss.item() == pytest.approx(2.5, abs=1e-14)
        if "saturated" in out.stats:
            assert out.stats["saturated"].item() == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_rule6_ties_get_exactly_equal_weights(seed):
    g = torch.Generator().manual_seed(seed)
    losses = torch.randint(0, 5, (14,), generator=g).double() * 0.37
    perm = torch.randperm(14, generator=g)
    strategies = [
        TVBall(0.23),
        ChiSquareBall(0.4),
        KLBall(0.3),
        CVaR(0.3),
        CVaR(0.07),
        KLPenalty(0.5),
        TVBall(0.9),
        Cvxpy("tv", 0.23),
        Cvxpy("chi2", 0.4),
        Cvxpy("cvar", 0.3),
    ]
    for strategy in strategies:
        q = strategy(losses).weights
        for value in losses.unique():
            tied = q[losses == value]
            assert torch.all(tied == tied[0]), (strategy, value)
        # permutation equivariance: the symmetric maximiser is the unique equivariant one
        qp = strategy(losses[perm]).weights
        assert torch.allclose(qp, q[perm], atol=1e-15 if "Cvxpy" not in repr(strategy) else 1e-7)


def test_rule8_invariance_huge_ranges_and_offsets():
    g = torch.Generator().manual_seed(0)
    ints = torch.randperm(40, generator=g)[:12].double()
    spans = 10 ** (torch.rand(12, generator=g, dtype=torch.float64) * 14 - 6)  # 1e-6 .. 1e8
    outlier = spans.clone()
    outlier[3] = 1e9
    for strategy in [TVBall(0.3), ChiSquareBall(0.4), KLBall(0.3), CVaR(0.3)]:
        # offsets of 1e12 (exact in float64 here): identical weights
        q0 = strategy(ints).weights
        q1 = strategy(1e12 + 1e3 * ints).weights
        assert torch.allclose(q0, q1, atol=1e-12, rtol=0)
        for losses in (spans, outlier):
            q = strategy(losses).weights
            assert torch.isfinite(q).all() and q.min() >= 0
            assert q.sum().item() == pytest.approx(1.0, abs=1e-12)
            q2 = strategy(3.0 * losses + 7.0).weights
            assert torch.allclose(q, q2, atol=1e-9, rtol=0)
        name = {TVBall: "tv", ChiSquareBall: "chi2", KLBall: "kl"}.get(type(strategy))
        if name:
            assert _divergence(name, strategy(spans).weights) == pytest.approx(
                strategy.rho, abs=1e-9
            )


# ---------------------------------------------------------------- rule 7: non-finite losses


def test_rule7_error_names_positions():
    losses = L.clone()
    losses[2] = float("nan")
    losses[5] = float("inf")
    for strategy in [*simplex_strategies(), GroupDRO(2)]:
        groups = torch.zeros(8, dtype=torch.long)
        with pytest.raises(ValueError, match=r"positions \[2, 5\].*nan_policy='mask'"):
            strategy(losses, groups)


def test_rule7_mask_mode():
    losses = L.clone().requires_grad_()
    bad = L.clone()
    bad[2] = float("nan")
    bad[5] = -float("inf")
    keep = torch.tensor([0, 1, 3, 4, 6, 7])
    for make in [
        lambda: TVBall(0.2, nan_policy="mask"),
        lambda: ChiSquareBall(0.5, nan_policy="mask"),
        lambda: KLBall(0.2, nan_policy="mask"),
        lambda: CVaR(0.4, nan_policy="mask"),
        lambda: KLPenalty(0.5, nan_policy="mask"),
        lambda: ERM(nan_policy="mask"),
        lambda: KLPenalty(0.5, form="seed", nan_policy="mask"),
    ]:
        x = (losses * 1.0).masked_scatter(
            torch.isnan(bad) | torch.isinf(bad), bad[~torch.isfinite(bad)]
        )
        out = make()(x)
        assert out.weights[2] == 0 and out.weights[5] == 0
        ref = make()(L[keep])
        assert torch.allclose(out.weights[keep], ref.weights, atol=1e-15, rtol=0)
        assert out.stats["num_masked"].item() == 2 and out.stats["skipped"].item() == 0
        assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-14)
        (grad,) = torch.autograd.grad(out.loss, losses)
        assert torch.isfinite(grad).all() and grad[2] == 0 and grad[5] == 0
        assert torch.allclose(grad[keep], ref.weights, atol=1e-15)
    clean = TVBall(0.2, nan_policy="mask")(L)
    assert clean.stats["num_masked"].item() == 0


def test_rule7_all_masked_skips():
    losses = torch.full((4,), float("nan"), requires_grad=True)
    for strategy in [
        TVBall(0.2, nan_policy="mask"),
        ERM(nan_policy="mask"),
        GroupDRO(2, nan_policy="mask"),
    ]:
        out = strategy(losses * 1.0, torch.tensor([0, 1, 0, 1]))
        assert torch.equal(out.weights, torch.zeros(4))
        assert out.loss.item() == 0.0 and out.stats["skipped"].item() == 1.0
        assert out.stats["num_masked"].item() == 4
        (grad,) = torch.autograd.grad(out.loss, losses)
        assert torch.equal(grad, torch.zeros(4))


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        (lambda: TVBall(-0.1), "rho=-0.1"),
        (lambda: ChiSquareBall(-1), "rho=-1"),
        (lambda: KLBall(float("nan")), "rho=nan"),
        (lambda: CVaR(0.0), "alpha=0.0"),
        (lambda: CVaR(1.5), "alpha=1.5"),
        (lambda: KLPenalty(0.0), "tau=0.0"),
        (lambda: KLPenalty(-2.0), "tau=-2.0"),
        (lambda: KLPenalty(1.0, form="exact"), "form='exact'"),
        (lambda: KLPenalty(1.0, clamp=0.0), "clamp=0.0"),
        (lambda: Cvxpy("wasserstein", 0.1), "divergence='wasserstein'"),
        (lambda: Cvxpy("tv", -0.1), "rho=-0.1"),
        (lambda: Cvxpy("cvar", 0.0), "rho=0.0"),
        (lambda: Cvxpy("tv", 0.1, solver="gurobi"), "solver='gurobi'"),
        (lambda: TVBall(0.1, scope="world"), "scope='world'"),
        (lambda: TVBall(0.1, nan_policy="skip"), "nan_policy='skip'"),
        (lambda: GroupDRO(0), "num_groups=0"),
        (lambda: GroupDRO(3, eta=-1.0), "eta=-1.0"),
    ],
)
def test_validation_at_construction(factory, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        factory()


def test_shape_errors():
    with pytest.raises(ValueError, match="1-D"):
        TVBall(0.1)(torch.rand(2, 3))
    with pytest.raises(ValueError, match="empty"):
        TVBall(0.1)(torch.rand(0))
    with pytest.raises(ValueError, match="groups"):
        GroupDRO(2)(torch.rand(4))


def test_cli_style_construction():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(RobustWeighting, "weighting")
    for yaml_text, cls in [
        (
            "weighting:\n  class_path: lightning_robust.weighting.TVBall\n  init_args:\n    rho: 0.4\n",
            TVBall,
        ),
        (
            "weighting:\n  class_path: lightning_robust.weighting.KLPenalty\n  init_args:\n"
            "    tau: 0.05\n    form: seed\n    scope: local\n",
            KLPenalty,
        ),
        (
            "weighting:\n  class_path: lightning_robust.weighting.GroupDRO\n  init_args:\n"
            "    num_groups: 4\n",
            GroupDRO,
        ),
    ]:
        cfg = parser.parse_string(yaml_text)
        obj = parser.instantiate_classes(cfg).weighting
        assert isinstance(obj, cls)


# ---------------------------------------------------------------- minimize


def test_minimize_is_worst_case_of_negated_losses():
    for make in [
        lambda **k: TVBall(0.2, **k),
        lambda **k: ChiSquareBall(0.5, **k),
        lambda **k: KLBall(0.2, **k),
        lambda **k: CVaR(0.25, **k),
        lambda **k: KLPenalty(0.5, **k),
        lambda **k: KLPenalty(0.5, form="seed", **k),
    ]:
        lo = make(minimize=True)(L)
        ref = make()(-L)
        assert torch.allclose(lo.weights, ref.weights, atol=1e-15, rtol=0)
        assert lo.loss.item() == pytest.approx((lo.weights * L).sum().item(), abs=1e-14)
        if "dual" in ref.stats and not isinstance(make(), KLBall):
            assert lo.stats["dual"].item() == pytest.approx(-ref.stats["dual"].item(), abs=1e-14)
    assert TVBall(0.2, minimize=True)(L).loss.item() <= L.mean().item()
    assert CVaR(0.25, minimize=True)(L).loss.item() == pytest.approx(0.25, abs=1e-14)


# ---------------------------------------------------------------- KLPenalty seed form (§1.6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.3, 1.0, 5.0])
def test_seed_identity(seed, tau):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(16, generator=g, dtype=torch.float64) * 0.6 * tau
    seed_out = KLPenalty(tau, form="seed")(losses)
    norm_out = KLPenalty(tau)(losses)
    n = 16
    w = seed_out.weights * n
    c = torch.exp((losses - losses.mean()) / tau).mean()
    assert w.max().item() < 10  # clamp inactive
    assert torch.allclose(w, n * norm_out.weights * c, atol=1e-12, rtol=0)
    assert seed_out.weights.sum().item() == pytest.approx(c.item(), abs=1e-12)
    assert seed_out.stats["weight_sum"].item() == pytest.approx(c.item(), abs=1e-12)
    assert seed_out.loss.item() == pytest.approx((w * losses).mean().item(), abs=1e-12)
    # gradient direction = exact penalised DRO, scaled by c >= 1
    assert c.item() >= 1.0


def test_seed_clamp_saturates_never_nan():
    losses = torch.tensor([1e30, -1e30, 0.0, 5.0, 1e30, 3e29], requires_grad=True)
    out = KLPenalty(1e-3, form="seed")(losses)
    w = out.weights.double() * 6
    assert torch.isfinite(w).all()
    assert w.max().item() == pytest.approx(10.0, rel=1e-6)
    assert w[1].item() == 0.0
    assert torch.isfinite(out.loss)
    assert out.stats["clamped_frac"].item() == pytest.approx(3 / 6)
    (grad,) = torch.autograd.grad(out.loss, losses)
    assert torch.isfinite(grad).all()
    huge = KLPenalty(1e-300, form="seed", clamp=3.0)(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert huge.weights.tolist() == [0.0, 1.5]
    normalized = KLPenalty(1e-3)(losses)
    assert torch.isfinite(normalized.weights).all() and torch.isfinite(normalized.loss)


# ---------------------------------------------------------------- GroupDRO


def _groupdro_reference(batches, num_groups, eta):
    q = np.full(num_groups, 1.0 / num_groups)
    history = []
    for losses, groups in batches:
        losses, groups = np.asarray(losses, dtype=float), np.asarray(groups)
        present = [g for g in range(num_groups) if (groups == g).any()]
        gl = {g: losses[groups == g].mean() for g in present}
        for g in present:
            q[g] = q[g] * math.exp(eta * gl[g])
        q = q / q.sum()
        qp = {g: q[g] / sum(q[h] for h in present) for g in present}
        value = sum(qp[g] * gl[g] for g in present)
        weights = np.array([qp[g] / (groups == g).sum() for g in groups])
        history.append((q.copy(), value, weights))
    return history


def test_group_dro_three_steps_by_hand():
    batches = [
        ([0.5, 1.0, 2.0, 0.2, 0.7], [0, 0, 1, 2, 2]),
        ([3.0, 0.1, 0.4], [1, 1, 0]),  # group 2 absent
        ([0.9, 1.9, 2.9, 0.3], [2, 1, 1, 0]),
    ]
    strategy = GroupDRO(num_groups=3, eta=0.3)
    reference = _groupdro_reference(batches, 3, 0.3)
    for (losses, groups), (q_ref, value, weights) in zip(batches, reference, strict=True):
        lt = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
        out = strategy(lt, torch.tensor(groups))
        assert np.allclose(strategy.q.numpy(), q_ref, atol=1e-12, rtol=0)
        assert out.loss.item() == pytest.approx(value, abs=1e-12)
        assert np.allclose(out.weights.numpy(), weights, atol=1e-12, rtol=0)
        assert out.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
        for g in range(3):
            assert out.stats[f"group_weight_{g}"].item() == pytest.approx(q_ref[g], abs=1e-12)
        (grad,) = torch.autograd.grad(out.loss, lt)
        assert torch.allclose(grad, out.weights)


def test_group_dro_eval_mode_and_state_dict():
    strategy = GroupDRO(num_groups=3, eta=0.5)
    losses, groups = torch.tensor([1.0, 2.0, 3.0, 0.5]), torch.tensor([0, 1, 2, 2])
    strategy(losses, groups)
    strategy(losses, groups)
    state = copy.deepcopy(strategy.state_dict())
    assert set(state) == {"q"} and state["q"].dtype == torch.float64
    strategy.eval()
    before = strategy.q.clone()
    strategy(losses, groups)
    assert torch.equal(strategy.q, before)  # no update outside training
    restored = GroupDRO(num_groups=3, eta=0.5)
    restored.load_state_dict(state)
    assert torch.equal(restored.q, before)
    strategy.train()
    a, b = strategy(losses, groups), restored(losses, groups)
    assert torch.equal(a.weights, b.weights) and torch.equal(strategy.q, restored.q)


def test_group_dro_minimize_moves_to_best_group():
    strategy = GroupDRO(num_groups=2, eta=1.0, minimize=True)
    for _ in range(5):
        strategy(torch.tensor([0.1, 2.0]), torch.tensor([0, 1]))
    assert strategy.q[0] > strategy.q[1]


# ---------------------------------------------------------------- gradients (§1.8)


@pytest.mark.parametrize(("divergence", "rho"), [("tv", 0.25), ("chi2", 0.6), ("kl", 0.3)])
def test_envelope_theorem_cvxpylayers(divergence, rho):
    g = torch.Generator().manual_seed(3)
    losses = (torch.randperm(50, generator=g)[:10].double() / 7).requires_grad_()
    out = Cvxpy(divergence, rho, differentiable=True)(losses)
    assert out.loss.requires_grad
    (grad,) = torch.autograd.grad(out.loss, losses)
    assert torch.allclose(grad, out.weights, atol=1e-4, rtol=0)
    detached = Cvxpy(divergence, rho, differentiable=False)(losses)
    (grad2,) = torch.autograd.grad(detached.loss, losses)
    assert torch.equal(grad2, detached.weights)


@pytest.mark.parametrize(
    "make",
    [lambda: TVBall(0.25), lambda: ChiSquareBall(0.6), lambda: KLBall(0.3), lambda: CVaR(0.3)],
)
def test_envelope_theorem_finite_differences(make):
    strategy = make()
    losses = torch.tensor([0.3, 1.7, 0.9, 2.4, 1.1, 0.05, 1.3], dtype=torch.float64)
    q = strategy(losses).weights
    h = 1e-6
    eye = torch.eye(7, dtype=torch.float64)
    fd = torch.stack(
        [
            (strategy(losses + h * eye[i]).loss - strategy(losses - h * eye[i]).loss) / (2 * h)
            for i in range(7)
        ]
    )
    assert torch.allclose(fd, q, atol=1e-6, rtol=0)


def test_gradient_wrt_parameters_is_weighted_sum():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1).double()
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, dtype=torch.float64)

    def per_example():
        return (model(x).squeeze(-1) - y) ** 2

    for strategy in [
        TVBall(0.3),
        ChiSquareBall(0.5),
        KLBall(0.2),
        CVaR(0.3),
        KLPenalty(0.4),
        KLPenalty(0.4, form="seed"),
    ]:
        out = strategy(per_example())
        grads = torch.autograd.grad(out.loss, list(model.parameters()))
        manual = [torch.zeros_like(p) for p in model.parameters()]
        losses = per_example()
        for i in range(12):
            gi = torch.autograd.grad(losses[i], list(model.parameters()), retain_graph=True)
            for acc, gp in zip(manual, gi, strict=True):
                acc += out.weights[i] * gp
        for a, b in zip(grads, manual, strict=True):
            assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------- misc


def test_cvxpy_pickles_and_copies_after_building():
    strategy = Cvxpy("chi2", 0.4)
    before = strategy(L).weights
    clone = pickle.loads(pickle.dumps(strategy))
    deep = copy.deepcopy(strategy)
    assert torch.allclose(clone(L).weights, before, atol=1e-9)
    assert torch.allclose(deep(L).weights, before, atol=1e-9)
    assert strategy.state_dict() == {} or len(strategy.state_dict()) == 0


def test_local_scope_single_process_matches_global():
    for rho in (0.1, 0.4):
        a = TVBall(rho, scope="local")(L)
        b = TVBall(rho, scope="global")(L)
        assert torch.equal(a.weights, b.weights) and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("n", [200, 257, 1000])
def test_tie_structure_both_branches(n):
    g = torch.Generator().manual_seed(n)
    for z in (
        torch.rand(n, generator=g, dtype=torch.float64),
        torch.randint(0, 7, (n,), generator=g).double(),
        torch.zeros(n, dtype=torch.float64),
    ):
        zs, perm, start, stop = cf.tie_structure(z)
        assert torch.equal(z[perm], zs) and torch.all(zs[1:] <= zs[:-1])
        assert torch.equal(start, (zs[None, :] > zs[:, None]).sum(1).double())
        assert torch.equal(stop, (zs[None, :] >= zs[:, None]).sum(1).double())


@pytest.mark.parametrize("name", ["tv", "chi2", "cvar"])
def test_large_batch_with_ties_matches_cvxpy_value(name):
    g = torch.Generator().manual_seed(1)
    losses = torch.randint(0, 40, (600,), generator=g).double() / 9
    rho = {"tv": 0.3, "chi2": 0.8, "cvar": 0.2}[name]
    closed = {"tv": TVBall, "chi2": ChiSquareBall, "cvar": CVaR}[name](rho)(losses)
    ref = Cvxpy(name, rho, differentiable=False)(losses)
    assert abs(closed.loss.item() - ref.loss.item()) <= 2e-5 * (losses.max() - losses.min()).item()
    q = closed.weights
    for v in losses.unique():
        assert torch.all(q[losses == v] == q[losses == v][0])
    if name != "cvar":
        assert _divergence(name, q) == pytest.approx(rho, abs=1e-9)


def test_group_dro_buffer_stays_float64_under_dtype_casts():
    strategy = GroupDRO(num_groups=3).to(torch.bfloat16)
    assert strategy.q.dtype == torch.float64
    strategy.half()
    assert strategy.q.dtype == torch.float64
    out = strategy(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16), torch.tensor([0, 1, 2]))
    assert out.weights.dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    losses = torch.tensor([0.2, 0.9, 0.45, 1.6, 0.7, 0.3, 0.55, 1.1, 0.9, 0.2])
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    makers = [
        lambda: TVBall(0.2),
        lambda: ChiSquareBall(0.5),
        lambda: KLBall(0.2),
        lambda: CVaR(0.25),
        lambda: KLPenalty(0.5),
        lambda: KLPenalty(0.5, form="seed"),
        lambda: GroupDRO(3),
        lambda: ERM(),
        lambda: Cvxpy("chi2", 0.5),
        lambda: TVBall(0.2, nan_policy="mask"),
    ]
    for make in makers:
        cpu = make()(losses, groups)
        gpu = make().cuda()(losses.cuda().requires_grad_(), groups.cuda())
        assert gpu.weights.device.type == "cuda" and gpu.loss.device.type == "cuda"
        assert torch.allclose(gpu.weights.cpu(), cpu.weights, atol=1e-6)
        assert all(v.device.type == "cuda" for v in gpu.stats.values())
        gpu.loss.backward()


@pytest.mark.parametrize(
    "strategy_rho",
    [("tv", 1 - 4 / 5), ("chi2", 0.5 * (5 / 4 - 1)), ("kl", math.log(5 / 4))],
)
def test_radius_equal_to_its_maximum_in_floats_saturates(strategy_rho):
    """rho = D_max computed in floating point (1 - m/n is 0.19999999999999996) is saturated."""
    from lightning_robust.weighting import ChiSquareBall, KLBall, TVBall

    name, rho = strategy_rho
    cls = {"tv": TVBall, "chi2": ChiSquareBall, "kl": KLBall}[name]
    losses = torch.tensor([0.0, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    out = cls(rho=rho)(losses)
    assert out.stats["saturated"].item() == 1.0
    torch.testing.assert_close(
        out.weights, torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    )
