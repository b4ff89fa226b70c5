"""PPO / DR-PPO / GRPO objective pieces (docs/ALGORITHMS.md §4, §5.4): the §4 worked example with
TV-ball weights, GAE against a hand loop, surrogate and value loss against direct formulas,
KL estimators by Monte Carlo, aggregation modes, and the version-B identity."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_robust.objectives import (
    aggregate_token_losses,
    clipped_value_loss,
    gae,
    kl_regularised_returns,
    last_token_index,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    policy_surrogate,
    ppo_advantages,
    ppo_token_rewards,
    sequence_kl_k3,
    token_kl,
)
from lightning_robust.weighting import TVBall

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# §4 worked example: 4 prompts, 3 tokens, beta = 0.02, rho = 0.2
# ---------------------------------------------------------------------------------------------
BETA = 0.02


def example():
    log_ratio = torch.tensor(
        [[0.5, -0.2, 0.3], [0.1, 0.4, 0.0], [-0.3, 0.2, 0.6], [0.0, 0.1, -0.1]], dtype=F64
    )
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[1, 2] = False
    # log pi_old and log pi_ref with the given difference (an offset that must cancel)
    ref = torch.full((4, 3), -2.5, dtype=F64)
    old = ref + log_ratio
    scores = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=F64)
    values = torch.tensor(
        [[0.2, 0.4, 0.6], [0.1, -0.2, 0.0], [0.0, 0.1, 0.2], [0.5, 0.9, 1.2]], dtype=F64
    )
    return old, ref, scores, values, mask


def dr_ppo_scales(old, ref, scores, mask):
    v = kl_regularised_returns(ppo_token_rewards(old, ref, scores, mask, BETA), mask)
    q = TVBall(rho=0.2)(-v).weights  # the adversary minimises value: TV ball on -v (§4)
    return v, v.shape[0] * q


def test_worked_example_returns_and_weights():
    old, ref, scores, values, mask = example()
    v, nq = dr_ppo_scales(old, ref, scores, mask)
    torch.testing.assert_close(v, torch.tensor([0.988, -0.51, 0.29, 2.0], dtype=F64))
    torch.testing.assert_close(nq, torch.tensor([1.0, 1.8, 1.0, 0.2], dtype=F64))


@pytest.mark.parametrize(
    "scale_at, expected",
    [
        (None, (0.547, -1.7391, -0.246, 1.6909)),
        ("rewards", (1.3767, -1.5625, 0.5867, 0.0512)),
        ("advantages", (1.2197, -2.3256, 0.3131, 0.3224)),
    ],
)
def test_worked_example_token0_advantages(scale_at, expected):
    old, ref, scores, values, mask = example()
    _, nq = dr_ppo_scales(old, ref, scores, mask)
    kwargs = {} if scale_at is None else {"sample_scales": nq, "scale_at": scale_at}
    adv, returns, token_rewards = ppo_advantages(old, ref, scores, values, mask, BETA, **kwargs)
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected, dtype=F64), atol=1e-4, rtol=0)
    # token rewards are the unscaled ones whatever the scaling: v comes back from them
    torch.testing.assert_close(
        kl_regularised_returns(token_rewards, mask),
        torch.tensor([0.988, -0.51, 0.29, 2.0], dtype=F64),
    )
    # whitened over all unmasked tokens: mean 0, unbiased variance ~1 (eps = 1e-8)
    assert abs(float(masked_mean(adv, mask))) < 1e-12
    n_tok = int(mask.sum())
    var = float(((adv[mask]) ** 2).sum()) / (n_tok - 1)
    assert var == pytest.approx(1.0, abs=1e-6)
    assert bool((adv[~mask] == 0).all()) and bool((returns[~mask] == 0).all())
    # returns come from the rewards that went into GAE (scaled only under "rewards")
    rewards = token_rewards * (nq.unsqueeze(1) if scale_at == "rewards" else 1.0)
    raw_adv, raw_ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(returns, raw_ret)


def test_rho_zero_is_standard_ppo_exactly():
    old, ref, scores, values, mask = example()
    v = kl_regularised_returns(ppo_token_rewards(old, ref, scores, mask, BETA), mask)
    nq = 4 * TVBall(rho=0.0)(-v).weights
    base = ppo_advantages(old, ref, scores, values, mask, BETA)
    for at in ("rewards", "advantages"):
        scaled = ppo_advantages(old, ref, scores, values, mask, BETA, sample_scales=nq, scale_at=at)
        assert torch.equal(scaled[0], base[0]) and torch.equal(scaled[1], base[1])


def test_version_b_identity_post_whitening_scale_equals_policy_loss_scale():
    """A positive per-sample factor on the post-whitening advantages equals the same factor on
    the per-token clipped policy loss (DESIGN note on DR-PPO version A vs B)."""
    old, ref, scores, values, mask = example()
    _, nq = dr_ppo_scales(old, ref, scores, mask)
    adv, _, _ = ppo_advantages(old, ref, scores, values, mask, BETA)
    gen = torch.Generator().manual_seed(0)
    logps = old + 0.3 * torch.randn(old.shape, generator=gen, dtype=F64)  # ratios inside and out
    scaled_adv_losses, _ = policy_surrogate(logps, old, adv * nq.unsqueeze(1), mask)
    losses, _ = policy_surrogate(logps, old, adv, mask)
    torch.testing.assert_close(scaled_adv_losses, losses * nq.unsqueeze(1), rtol=1e-12, atol=1e-14)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        torch.testing.assert_close(
            aggregate_token_losses(scaled_adv_losses, mask, mode),
            aggregate_token_losses(losses, mask, mode, sample_weights=nq),
        )


# ---------------------------------------------------------------------------------------------
# rewards, EOS penalty, last token
# ---------------------------------------------------------------------------------------------
def test_missing_eos_penalty():
    scores = torch.tensor([1.0, 2.0, -0.5])
    has_eos = torch.tensor([True, False, False])
    torch.testing.assert_close(
        missing_eos_penalty(scores, has_eos, 1.0), torch.tensor([1.0, 1.0, -1.5])
    )
    with pytest.raises(ValueError, match="penalty"):
        missing_eos_penalty(scores, has_eos, -1.0)
    with pytest.raises(ValueError, match="bool"):
        missing_eos_penalty(scores, has_eos.float(), 1.0)


def test_token_rewards_place_score_at_last_token():
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    old = torch.tensor([[-1.0, -2.0, 9.0, 9.0], [-0.5, -0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 0.0, 0.0], [-0.5, -1.5, -0.5, 0.5]])
    scores = torch.tensor([3.0, -1.0])
    r = ppo_token_rewards(old, ref, scores, mask, beta=0.1)
    expected = torch.tensor([[-0.05, 0.1 + 3.0, 0.0, 0.0], [0.0, -0.1, 0.0, 0.1 - 1.0]])
    torch.testing.assert_close(r, expected)
    assert last_token_index(mask).tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(torch.tensor([[True, False], [False, False]]))


# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------
def hand_gae(rewards, values, lengths, gamma, lam):
    """Textbook GAE, one row at a time over its own length, values 0 after the episode."""
    n, width = rewards.shape
    adv = torch.zeros(n, width, dtype=F64)
    for i in range(n):
        last = 0.0
        for t in reversed(range(lengths[i])):
            next_v = float(values[i, t + 1]) if t + 1 < lengths[i] else 0.0
            delta = float(rewards[i, t]) + gamma * next_v - float(values[i, t])
            last = delta + gamma * lam * last
            adv[i, t] = last
    return adv


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_hand_loop(gamma, lam):
    gen = torch.Generator().manual_seed(1)
    lengths = [5, 1, 3, 7, 4]
    mask = torch.arange(7).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    rewards = torch.randn(5, 7, generator=gen, dtype=F64)
    values = torch.randn(5, 7, generator=gen, dtype=F64)
    # garbage on padded positions must not leak in
    rewards = torch.where(mask, rewards, torch.full_like(rewards, 1e3))
    values = torch.where(mask, values, torch.full_like(values, -1e3))
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected = hand_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(mask, expected + values, torch.zeros_like(values)))
    if lam == 1.0 and gamma == 0.99:  # lam = 1: returns are discounted reward-to-go
        row = 3
        togo = [
            sum(gamma ** (k - t) * float(rewards[row, k]) for k in range(t, 7)) for t in range(7)
        ]
        torch.testing.assert_close(ret[row], torch.tensor(togo, dtype=F64))


# ---------------------------------------------------------------------------------------------
# surrogate, value loss, whitening
# ---------------------------------------------------------------------------------------------
def test_policy_surrogate_direct_formula_and_clip_fraction():
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    old = torch.zeros(2, 4, dtype=F64)
    ratios = torch.tensor([[1.1, 1.5, 0.5, 7.0], [0.9, 1.3, 0.7, 1.0]], dtype=F64)
    adv = torch.tensor([[1.0, 2.0, -1.0, 5.0], [-2.0, -1.0, -1.0, 0.5]], dtype=F64)
    losses, frac = policy_surrogate(ratios.log(), old, adv, mask, clip=0.2)
    c = lambda x: min(max(x, 0.8), 1.2)  # noqa: E731
    expected = torch.zeros(2, 4, dtype=F64)
    clipped_count = 0
    for i in range(2):
        for t in range(4):
            if mask[i, t]:
                a, r = float(adv[i, t]), float(ratios[i, t])
                expected[i, t] = max(-a * r, -a * c(r))
                clipped_count += -a * c(r) > -a * r
    torch.testing.assert_close(losses, expected)
    # clipped where the ratio left the region in the advantage's direction: (0,1) (A>0, r>1.2),
    # (0,2) and (1,2) (A<0, r<0.8); not (1,1) (A<0, r>1.2: the unclipped term is the max)
    assert clipped_count == 3
    assert float(losses[1, 1]) == pytest.approx(1.3)
    assert float(frac) == pytest.approx(3 / 7)
    # per-completion advantages broadcast over tokens (GRPO)
    seq_adv = torch.tensor([0.7, -1.2], dtype=F64)
    l1, _ = policy_surrogate(ratios.log(), old, seq_adv, mask)
    l2, _ = policy_surrogate(ratios.log(), old, seq_adv.unsqueeze(1).expand(2, 4), mask)
    assert torch.equal(l1, l2)


def test_policy_surrogate_gradient_at_old_policy_is_minus_advantage():
    gen = torch.Generator().manual_seed(2)
    old = torch.randn(3, 5, generator=gen, dtype=F64)
    logps = old.clone().requires_grad_(True)
    adv = torch.randn(3, 5, generator=gen, dtype=F64)
    mask = torch.rand(3, 5, generator=gen) > 0.3
    losses, frac = policy_surrogate(logps, old, adv, mask)
    losses.sum().backward()
    torch.testing.assert_close(logps.grad, torch.where(mask, -adv, torch.zeros_like(adv)))
    assert float(frac) == 0.0


def test_clipped_value_loss_direct_formula():
    mask = torch.tensor([[True, True, True, False]])
    values = torch.tensor([[1.0, 0.5, -0.4, 3.0]])
    old_values = torch.tensor([[0.7, 0.6, 0.0, 0.0]])
    returns = torch.tensor([[0.0, 2.0, -1.0, 0.0]])
    got = clipped_value_loss(values, old_values, returns, mask, clip=0.2)
    # token 0: v-R = 1, clipped v = 0.9 -> 0.5*max(1, 0.81); token 1: 0.5*max(2.25, 2.25 (v=0.5
    # inside the clip)); token 2: v clipped to -0.2 -> 0.5*max(0.36, 0.64)
    expected = torch.tensor([[0.5, 1.125, 0.32, 0.0]])
    torch.testing.assert_close(got, expected)


def test_masked_whiten_unbiased():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=F64)
    expected = (vals - vals.mean()) / torch.sqrt(vals.var(unbiased=True) + 1e-8)
    out = masked_whiten(x, mask)
    torch.testing.assert_close(out[mask], expected)
    assert float(out[0, 2]) == 0.0
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False)[mask], expected + 3.0)


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------
def test_token_kl_estimators_monte_carlo():
    """Categorical pi and ref over 6 symbols: k1 and k3 are unbiased for KL(pi||ref), k3 >= 0."""
    gen = torch.Generator().manual_seed(3)
    logits_pi = torch.randn(6, generator=gen, dtype=F64)
    logits_ref = logits_pi + 0.5 * torch.randn(6, generator=gen, dtype=F64)
    log_pi = torch.log_softmax(logits_pi, 0)
    log_ref = torch.log_softmax(logits_ref, 0)
    exact = float((log_pi.exp() * (log_pi - log_ref)).sum())
    samples = torch.multinomial(log_pi.exp(), 200_000, replacement=True, generator=gen)
    lp, lr = log_pi[samples], log_ref[samples]
    for kind in ("k1", "k3"):
        est = token_kl(lp, lr, kind)
        se = float(est.std()) / math.sqrt(est.numel())
        assert abs(float(est.mean()) - exact) < 4 * se + 1e-4, kind
    k3 = token_kl(lp, lr, "k3")
    assert bool((k3 >= 0).all())
    torch.testing.assert_close(token_kl(lp, lr, "k2"), 0.5 * (lp - lr) ** 2)
    torch.testing.assert_close(k3, torch.exp(lr - lp) - 1 - (lr - lp))
    with pytest.raises(ValueError, match="kind"):
        token_kl(lp, lr, "k4")


def test_sequence_kl_k3_float64_nonnegative_and_stable():
    seq = torch.tensor([-10.0, -20.0, -3.0, -500.0], dtype=torch.bfloat16)
    ref = torch.tensor([-10.0, -19.0, -8.0, -400.0], dtype=torch.float32)
    k3 = sequence_kl_k3(seq, ref)
    assert k3.dtype == F64 and bool((k3 >= 0).all())
    u = ref.double() - seq.double()
    torch.testing.assert_close(k3, torch.exp(u) - 1 - u)
    assert float(k3[0]) == 0.0 and math.isfinite(float(k3[3]))


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------
def test_aggregation_modes():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert float(aggregate_token_losses(losses, mask, "token_mean")) == pytest.approx(10 / 4)
    assert float(aggregate_token_losses(losses, mask, "seq_mean_token_mean")) == pytest.approx(3.0)
    assert float(aggregate_token_losses(losses, mask, "seq_mean_token_sum")) == pytest.approx(5.0)
    w = torch.tensor([0.5, 1.5], dtype=F64)
    assert float(aggregate_token_losses(losses, mask, "token_mean", w)) == pytest.approx(9 / 4)
    assert float(aggregate_token_losses(losses, mask, "seq_mean_token_mean", w)) == pytest.approx(
        (0.5 * 2 + 1.5 * 4) / 2
    )
    assert float(aggregate_token_losses(losses, mask, "seq_mean_token_sum", w)) == pytest.approx(
        (0.5 * 6 + 1.5 * 4) / 2
    )
    # NaN on a masked position does not leak
    bad = losses.clone()
    bad[1, 2] = float("nan")
    assert math.isfinite(float(aggregate_token_losses(bad, mask, "token_mean")))
    with pytest.raises(ValueError, match="mode"):
        aggregate_token_losses(losses, mask, "sum")
    with pytest.raises(ValueError, match="sample_weights"):
        aggregate_token_losses(losses, mask, "token_mean", torch.ones(3))


def test_bad_inputs_are_named():
    old, ref, scores, values, mask = example()
    with pytest.raises(ValueError, match="scale_at"):
        ppo_advantages(old, ref, scores, values, mask, BETA, scale_at="returns")
    with pytest.raises(ValueError, match="sample_scales"):
        ppo_advantages(old, ref, scores, values, mask, BETA, sample_scales=torch.ones(3))
    with pytest.raises(ValueError, match="bool"):
        gae(old, values, mask.float())
    with pytest.raises(ValueError, match="scores"):
        ppo_token_rewards(old, ref, scores[:2], mask, BETA)


def test_explained_variance_limits_and_formula():
    from lightning_robust.objectives.rl import explained_variance

    g = torch.Generator().manual_seed(3)
    returns = torch.randn(4, 5, generator=g)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    assert torch.isclose(explained_variance(returns, returns, mask), torch.tensor(1.0))
    constant = torch.full_like(returns, 0.7)
    assert torch.isclose(explained_variance(constant, returns, mask), torch.tensor(0.0), atol=1e-6)
    values = torch.randn(4, 5, generator=g)
    r, v = returns[mask].double(), values[mask].double()
    expected = 1 - (r - v).var(unbiased=False) / r.var(unbiased=False)
    assert torch.isclose(explained_variance(values, returns, mask).double(), expected, atol=1e-6)
