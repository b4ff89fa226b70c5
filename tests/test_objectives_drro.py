"""DRRO / DRO for RLHF (docs/ALGORITHMS.md §5): the §5.1 water-filling table and LP checks, worst-case
regret by LP and vertex enumeration, Theorem 6.1, the §5.3 bonus table, exact reductions to
GRPO, limits in tau, edge cases, and the dynamic budget (§5.4)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from lightning_robust.objectives import (
    SHAPINGS,
    dro_bonus,
    dro_policy,
    dro_value,
    dynamic_budget,
    group_advantages,
    group_log_probs,
    hard_bonus,
    robust_utility,
    shaped_rewards,
    snis_weights,
    soft_bonus,
    soft_robust_objective,
    water_filling_policy,
    worst_case_regret,
)

F64 = torch.float64


def t64(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# ---------------------------------------------------------------------------------------------
# §5.1 promptwise theory
# ---------------------------------------------------------------------------------------------
R_EXAMPLE = [1.0, 0.9, 0.0]


@pytest.mark.parametrize(
    "delta, p_drro, t_star, utility, p_dro",
    [
        (0.05, (1, 0, 0), 0.95, 0.05, (1, 0, 0)),
        (0.5, (0.6, 0.4, 0), 0.7, 0.26, (0.5, 0.5, 0)),
        (1.5, (0.5333, 0.4667, 0), 0.2, 0.7533, (0.5, 0.5, 0)),
        (3.0, (0.4556, 0.4222, 0.1222), -0.3667, 1.2022, (1 / 3, 1 / 3, 1 / 3)),
    ],
)
def test_water_filling_table(delta, p_drro, t_star, utility, p_dro):
    p, t = water_filling_policy(R_EXAMPLE, delta)
    torch.testing.assert_close(p, torch.tensor(p_drro, dtype=F64), atol=1e-4, rtol=0)
    assert t == pytest.approx(t_star, abs=1e-4)
    assert robust_utility(p, R_EXAMPLE, delta) == pytest.approx(utility, abs=1e-4)
    assert worst_case_regret(p, R_EXAMPLE, delta) == pytest.approx(delta - utility, abs=1e-4)
    torch.testing.assert_close(dro_policy(R_EXAMPLE, delta), torch.tensor(p_dro, dtype=F64))


def lp_water_filling(r: np.ndarray, delta: float):
    """max_{p, t} <p, r> - t  s.t.  t >= r_j - delta p_j, p in the simplex (Thm 3.4's LP)."""
    k = len(r)
    c = np.concatenate([-r, [1.0]])
    a_ub = np.hstack([-delta * np.eye(k), -np.ones((k, 1))])
    a_eq = np.concatenate([np.ones(k), [0.0]])[None, :]
    res = linprog(
        c,
        A_ub=a_ub,
        b_ub=-r,
        A_eq=a_eq,
        b_eq=[1.0],
        bounds=[(0, None)] * k + [(None, None)],
        method="highs",
    )
    assert res.status == 0
    return res.x[:k], -res.fun


def test_water_filling_equals_lp_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = int(rng.integers(2, 9))
        r = rng.normal(size=k)
        delta = float(np.exp(rng.uniform(np.log(0.01), np.log(20.0))))
        p, _ = water_filling_policy(r, delta)
        p_lp, u_lp = lp_water_filling(r, delta)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-12) and float(p.min()) >= 0.0
        assert robust_utility(p, r, delta) == pytest.approx(u_lp, abs=1e-7)
        np.testing.assert_allclose(p.numpy(), p_lp, atol=1e-6)  # distinct rewards: unique


def test_water_filling_limits_and_ties():
    # delta -> 0: greedy; a huge budget: p = 1/K + (r - mean)/delta
    r = np.array([0.3, -1.0, 2.0, 0.5])
    torch.testing.assert_close(water_filling_policy(r, 0.0)[0], t64(0, 0, 1, 0))
    torch.testing.assert_close(water_filling_policy(r, 1e-6)[0], t64(0, 0, 1, 0))
    big = 100.0
    torch.testing.assert_close(
        water_filling_policy(r, big)[0], torch.tensor(0.25 + (r - r.mean()) / big, dtype=F64)
    )
    # tied maxima share the leftover equally, and the utility is the LP optimum
    r_tied = np.array([1.0, 1.0, 0.2])
    for delta in (0.1, 0.9, 4.0):
        p, _ = water_filling_policy(r_tied, delta)
        assert float(p[0]) == float(p[1])
        assert robust_utility(p, r_tied, delta) == pytest.approx(
            lp_water_filling(r_tied, delta)[1], abs=1e-7
        )
    # the jump of §5.1: r = (1, 0, 0) is greedy below delta = 2, spread above
    torch.testing.assert_close(water_filling_policy([1, 0, 0], 1.9)[0], t64(1, 0, 0))
    assert float(water_filling_policy([1, 0, 0], 2.1)[0][1]) > 0.0


def test_worst_case_regret_equals_lp_and_vertex_enumeration():
    rng = np.random.default_rng(1)
    for _ in range(30):
        k = int(rng.integers(2, 7))
        r = rng.normal(size=k)
        p = rng.dirichlet(np.ones(k))
        delta = float(rng.uniform(0.05, 3.0))
        # the regret is convex in xi, so its max over the l1 ball is at a vertex +-delta e_m
        vertices = [s * delta * np.eye(k)[m] for m in range(k) for s in (1.0, -1.0)]
        enum = max(float(np.max(r + xi) - p @ (r + xi)) for xi in vertices)
        # LP per j: max <e_j - p, xi> with xi = a - b, a, b >= 0, sum(a + b) <= delta
        lp_best = -math.inf
        for j in range(k):
            g = np.eye(k)[j] - p
            res = linprog(
                np.concatenate([-g, g]),
                A_ub=np.ones((1, 2 * k)),
                b_ub=[delta],
                bounds=[(0, None)] * (2 * k),
                method="highs",
            )
            lp_best = max(lp_best, float(r[j] - p @ r - res.fun))
        wcr = worst_case_regret(p, r, delta)
        assert wcr == pytest.approx(enum, abs=1e-12)
        assert wcr == pytest.approx(lp_best, abs=1e-8)
        assert wcr == pytest.approx(delta - robust_utility(p, r, delta), abs=1e-12)


def test_dro_policy_is_the_lp_optimum_of_the_value():
    rng = np.random.default_rng(2)
    for _ in range(30):
        k = int(rng.integers(2, 8))
        r = rng.normal(size=k)
        delta = float(rng.uniform(0.01, 5.0))
        # max <p, r> - delta s  s.t. p_j <= s, p in the simplex
        c = np.concatenate([-r, [delta]])
        a_ub = np.hstack([np.eye(k), -np.ones((k, 1))])
        res = linprog(
            c,
            A_ub=a_ub,
            b_ub=np.zeros(k),
            A_eq=np.concatenate([np.ones(k), [0]])[None],
            b_eq=[1.0],
            bounds=[(0, None)] * (k + 1),
            method="highs",
        )
        assert dro_value(dro_policy(r, delta), r, delta) == pytest.approx(-res.fun, abs=1e-8)


def test_theorem_6_1_majorisation():
    rng = np.random.default_rng(3)
    funcs = [lambda x: x, np.exp, np.tanh, lambda x: np.floor(3 * x)]
    for _ in range(100):
        k = int(rng.integers(2, 8))
        r = np.sort(rng.normal(size=k))[::-1].copy()  # strictly ordered, descending
        delta = float(np.exp(rng.uniform(np.log(0.01), np.log(10.0))))
        p_drro = water_filling_policy(r, delta)[0].numpy()
        p_dro = dro_policy(r, delta).numpy()
        assert np.all(np.cumsum(p_drro) >= np.cumsum(p_dro) - 1e-12)
        for f in funcs:
            assert p_drro @ f(r) >= p_dro @ f(r) - 1e-12


def test_soft_objective_bounds_and_gradient():
    rng = np.random.default_rng(4)
    for _ in range(20):
        k = int(rng.integers(2, 7))
        r, p = rng.normal(size=k), rng.dirichlet(np.ones(k))
        delta, tau = float(rng.uniform(0.1, 3)), float(rng.uniform(0.01, 1))
        gap = robust_utility(p, r, delta) - soft_robust_objective(p, r, delta, tau)
        assert -1e-12 <= gap <= tau * math.log(k) + 1e-12
        # dJ/dp_j = r_j + delta w_j with w = softmax((r - delta p)/tau) (central differences)
        w = torch.softmax(torch.tensor((r - delta * p) / tau), 0).numpy()
        h = 1e-6
        for j in range(k):
            e = np.eye(k)[j] * h
            fd = (
                soft_robust_objective(p + e, r, delta, tau)
                - soft_robust_objective(p - e, r, delta, tau)
            ) / (2 * h)
            assert fd == pytest.approx(r[j] + delta * w[j], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# §5.3 bonuses
# ---------------------------------------------------------------------------------------------
R53 = t64([0.2, 1.0, 0.7, -0.3])
LP53 = t64([-12.0, -15.0, -11.0, -13.0])


def test_group_probabilities_of_the_example():
    torch.testing.assert_close(
        group_log_probs(LP53).exp(), t64([0.2418, 0.0120, 0.6572, 0.0889]), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize(
    "shaping, bonus, advantages",
    [
        ("drro_hard", (0, 0.5, 0, 0), (-0.4234, 1.2702, 0.2280, -1.0748)),
        ("drro_soft", (0.0002, 0.0240, 0.0011, 0.0000), (-0.3552, 1.0647, 0.5080, -1.2174)),
        ("dro", (0, 0, -0.5, 0), None),
    ],
)
def test_bonus_table(shaping, bonus, advantages):
    shaped, b = shaped_rewards(R53, LP53, 0.5, shaping, tau=0.2)
    torch.testing.assert_close(b, t64(list(bonus)), atol=1e-4, rtol=0)
    torch.testing.assert_close(shaped, R53 + b)
    if advantages is not None:
        torch.testing.assert_close(
            group_advantages(shaped), t64(list(advantages)), atol=1e-4, rtol=0
        )


def test_snis_weights_of_the_example_and_mass_formula():
    log_p = group_log_probs(LP53)
    omega = snis_weights(R53, log_p, 0.5, 0.2)
    torch.testing.assert_close(omega, t64([0.0005, 0.9985, 0.0008, 0.0002]), atol=1e-4, rtol=0)
    torch.testing.assert_close(omega.sum(-1), t64([1.0])[0])
    # direct (non-log-space) formulas of eq. 4.11 / 4.15 on this well-scaled group
    p = log_p.exp()
    s = (R53 - 0.5 * p) / 0.2
    direct = (s.exp() / p) / (s.exp() / p).sum()
    torch.testing.assert_close(omega, direct)
    torch.testing.assert_close(soft_bonus(R53, log_p, 0.5, 0.2), 0.5 * 4 * p * direct)
    torch.testing.assert_close(soft_bonus(R53, log_p, 0.5, 0.2, form="weight"), 0.5 * direct)


def test_soft_bonus_group_coordinates_identity():
    """§5.2 iii: the soft bonus in p~ coordinates with budget d~ equals the raw-probability soft
    bonus with delta = d~ / S, S = sum_k pi_old(y_k)."""
    raw_logps = t64([-1.2, -2.0, -0.7, -3.1, -1.9])
    r = t64([0.4, -0.1, 0.9, 1.3, 0.0])
    d_tilde, tau = 0.8, 0.3
    pi = raw_logps.exp()
    s_raw = (r - (d_tilde / pi.sum()) * pi) / tau
    omega_raw = (s_raw.exp() / pi) / (s_raw.exp() / pi).sum()
    raw_bonus = (d_tilde / pi.sum()) * 5 * pi * omega_raw
    _, b = shaped_rewards(r, raw_logps, d_tilde, "drro_soft", tau=tau)
    torch.testing.assert_close(b, raw_bonus, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shaping", SHAPINGS)
@pytest.mark.parametrize("form", ["mass", "weight"])
def test_delta_zero_is_grpo_bit_for_bit(shaping, form):
    gen = torch.Generator().manual_seed(5)
    rewards = torch.randn(6, 8, generator=gen)
    logps = -50 * torch.rand(6, 8, generator=gen)
    shaped, bonus = shaped_rewards(rewards, logps, 0.0, shaping, bonus_form=form)
    assert torch.equal(shaped, rewards) and shaped.dtype == rewards.dtype
    assert torch.equal(group_advantages(shaped), group_advantages(rewards))
    assert bool((bonus == 0).all())


def test_soft_tau_limits():
    gen = torch.Generator().manual_seed(6)
    rewards = torch.randn(5, 6, generator=gen, dtype=F64)
    logps = -3 * torch.rand(5, 6, generator=gen, dtype=F64)
    grpo = group_advantages(rewards)
    # tau -> inf: omega_i -> (1/p~_i) / sum_k 1/p~_k, so b_i = delta G p~_i omega_i tends to
    # delta G / sum_k 1/p~_k, the same for every sample of the group
    shaped, b = shaped_rewards(rewards, logps, 0.5, "drro_soft", tau=1e8)
    common = 0.5 * 6 / (1.0 / group_log_probs(logps).exp()).sum(-1, keepdim=True)
    torch.testing.assert_close(b, common.expand_as(b), atol=1e-7, rtol=0)
    torch.testing.assert_close(group_advantages(shaped), grpo, atol=1e-6, rtol=0)
    # tau -> 0: the bonus concentrates on the hard winner, with value delta G p~_winner
    log_p = group_log_probs(logps)
    hard = hard_bonus(rewards, log_p, 0.5)
    soft = soft_bonus(rewards, log_p, 0.5, tau=1e-4)
    winners = hard > 0
    torch.testing.assert_close(
        soft, torch.where(winners, 0.5 * 6 * log_p.exp(), 0.0), atol=1e-10, rtol=0
    )


def test_uniform_p_soft_bonuses_sum_to_delta():
    gen = torch.Generator().manual_seed(7)
    rewards = torch.randn(4, 5, generator=gen, dtype=F64)
    logps = torch.full((4, 5), -37.0, dtype=F64)
    for form in ("mass", "weight"):
        _, b = shaped_rewards(rewards, logps, 0.7, "drro_soft", tau=0.3, bonus_form=form)
        torch.testing.assert_close(b.sum(-1), torch.full((4,), 0.7, dtype=F64))
    mass = shaped_rewards(rewards, logps, 0.7, "drro_soft", tau=0.3)[1]
    weight = shaped_rewards(rewards, logps, 0.7, "drro_soft", tau=0.3, bonus_form="weight")[1]
    torch.testing.assert_close(mass, weight)


def test_all_equal_rewards_hard_bonus_goes_to_least_probable():
    rewards = torch.zeros(1, 4)
    logps = torch.tensor([[-5.0, -9.0, -6.0, -7.0]])
    shaped, b = shaped_rewards(rewards, logps, 0.3, "drro_hard")
    assert b.tolist() == [[0.0, 0.3, 0.0, 0.0]]
    assert torch.equal(group_advantages(rewards), torch.zeros(1, 4))  # GRPO: no signal
    assert int(group_advantages(shaped).argmax()) == 1


def test_duplicates_get_equal_bonus():
    # samples 0 and 2 are the same completion: same reward and log-prob
    rewards = t64([1.0, 0.1, 1.0, 0.5])
    logps = t64([-20.0, -18.0, -20.0, -19.0])
    for shaping in ("drro_hard", "drro_soft", "dro"):
        _, b = shaped_rewards(rewards, logps, 0.5, shaping)
        assert float(b[0, 0]) == float(b[0, 2]), shaping
    _, hard = shaped_rewards(rewards, logps, 0.5, "drro_hard")
    assert hard.tolist() == [[0.5, 0.0, 0.5, 0.0]]  # both copies win the full budget
    # the DRO penalty hits the most probable completion
    assert dro_bonus(rewards, group_log_probs(logps), 0.5).tolist() == [[0.0, -0.5, 0.0, 0.0]]


def test_very_negative_log_probs_do_not_overflow():
    rewards = t64([0.5, 0.2, -0.1, 0.9])
    logps = t64([-1e4, -10.0, -1.2e4, -3.0])
    for shaping, form in itertools.product(("drro_hard", "drro_soft", "dro"), ("mass", "weight")):
        shaped, b = shaped_rewards(rewards.float(), logps.float(), 0.5, shaping, bonus_form=form)
        assert bool(torch.isfinite(b).all()) and bool(torch.isfinite(shaped).all()), shaping
    _, mass = shaped_rewards(rewards, logps, 0.5, "drro_soft")
    assert float(mass[0, 0]) == 0.0 and float(mass[0, 2]) == 0.0  # p~ -> 0 gives b -> 0


def test_bad_configurations_are_rejected():
    rewards, logps = torch.randn(2, 3), -torch.rand(2, 3)
    with pytest.raises(ValueError, match="shaping"):
        shaped_rewards(rewards, logps, 0.1, "drro")
    with pytest.raises(ValueError, match="bonus_form"):
        shaped_rewards(rewards, logps, 0.1, "drro_soft", bonus_form="both")
    with pytest.raises(ValueError, match="G=1"):
        shaped_rewards(rewards[:, :1], logps[:, :1], 0.1, "drro_hard")
    shaped_rewards(rewards[:, :1], logps[:, :1], 0.1, "none")  # GRPO accepts G = 1
    with pytest.raises(ValueError, match="tau"):
        shaped_rewards(rewards, logps, 0.1, "drro_soft", tau=0.0)
    with pytest.raises(ValueError, match="delta"):
        shaped_rewards(rewards, logps, -0.1, "drro_hard")
    bad = rewards.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"rewards.*\[1, 2\]"):
        shaped_rewards(bad, logps, 0.1, "drro_hard")
    bad_lp = logps.clone()
    bad_lp[0, 1] = -float("inf")
    with pytest.raises(ValueError, match=r"seq_old_logps.*\[0, 1\]"):
        shaped_rewards(rewards, bad_lp, 0.1, "dro")


def test_per_prompt_budgets():
    rewards = torch.randn(3, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    logps = -torch.rand(3, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    deltas = [0.1, 0.0, 0.7]
    _, joint = shaped_rewards(rewards, logps, t64(*deltas), "drro_soft")
    for i, d in enumerate(deltas):
        _, row = shaped_rewards(rewards[i : i + 1], logps[i : i + 1], d, "drro_soft")
        torch.testing.assert_close(joint[i : i + 1], row)


def test_group_advantages_conventions():
    r = t64([1.0, 2.0, 4.0], [3.0, 3.0, 3.0])
    a = group_advantages(r)
    std = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)  # unbiased
    torch.testing.assert_close(a[0], (r[0] - 7 / 3) / (std + 1e-6))
    assert torch.equal(a[1], torch.zeros(3, dtype=F64))
    torch.testing.assert_close(
        group_advantages(t64([2.5], [-1.0])), t64([2.5 / (1 + 1e-6)], [-1.0 / (1 + 1e-6)])
    )


# ---------------------------------------------------------------------------------------------
# §5.4 dynamic budget
# ---------------------------------------------------------------------------------------------
def test_dynamic_budget_window():
    assert dynamic_budget(0.3, 2.0, [], window=5) == 0.3
    assert dynamic_budget(0.3, 2.0, [0.1], window=5) == pytest.approx(0.5)
    assert dynamic_budget(0.3, 2.0, [0.1, 0.3], window=5) == pytest.approx(0.3 + 2 * 0.2)
    # only the last W values, the current one included
    assert dynamic_budget(0.3, 2.0, [9.0, 0.1, 0.2, 0.3], window=3) == pytest.approx(0.3 + 2 * 0.2)
    assert dynamic_budget(0.3, 2.0, [9.0, 0.1, 0.2, 0.3], window=1) == pytest.approx(0.9)
    assert dynamic_budget(0.3, 0.0, [5.0, 6.0], window=2) == 0.3
    with pytest.raises(ValueError, match="window"):
        dynamic_budget(0.3, 1.0, [0.1], window=0)
    with pytest.raises(ValueError, match="c"):
        dynamic_budget(0.3, -1.0, [0.1], window=2)
    with pytest.raises(ValueError, match="delta0"):
        dynamic_budget(-0.3, 1.0, [0.1], window=2)
