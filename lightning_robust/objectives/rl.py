"""Online-RL objectives: PPO, DR-PPO and the pieces GRPO shares (docs/ALGORITHMS.md §4, §5.3, §5.4).

Pure functions of tensors, no Lightning. Token-level tensors have shape ``[N, R]``: ``N``
completions, ``R`` response positions, with a bool ``mask [N, R]`` that is True on response
tokens (right padding: each row's response tokens come first). Per-completion tensors are ``[N]``.

The §4 PPO pipeline (TRL's practical form, used by S000 §5.2):

1. per-token rewards ``-beta (log pi_old - log pi_ref)`` plus the reward-model score at the last
   response token (minus a missing-EOS penalty): :func:`ppo_token_rewards`,
   :func:`missing_eos_penalty`;
2. GAE with ``gamma = 1``, ``lambda = 0.95`` and a value head: :func:`gae`;
3. advantages whitened over all response tokens of the batch: :func:`masked_whiten`;
4. clipped surrogate and clipped value loss: :func:`policy_surrogate`,
   :func:`clipped_value_loss`, reduced with :func:`aggregate_token_losses`.

DR-PPO (§4) weights samples by ``n q_i`` where ``q`` is the TV-ball worst case of
``-v`` with ``v_i`` = :func:`kl_regularised_returns`. Version A passes ``sample_scales = n q`` to
:func:`ppo_advantages`; version B passes ``sample_weights = n q`` to
:func:`aggregate_token_losses` for the policy loss only.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "TOKEN_KL_KINDS",
    "AGGREGATION_MODES",
    "SCALE_AT",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "last_token_index",
    "missing_eos_penalty",
    "ppo_token_rewards",
    "kl_regularised_returns",
    "gae",
    "ppo_advantages",
    "policy_surrogate",
    "clipped_value_loss",
    "token_kl",
    "sequence_kl_k3",
    "aggregate_token_losses",
]

#: estimators accepted by :func:`token_kl`
TOKEN_KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")
#: reductions accepted by :func:`aggregate_token_losses` (VERL's names)
AGGREGATION_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
#: where DR-PPO version A applies its per-sample scale (:func:`ppo_advantages`)
SCALE_AT: tuple[str, ...] = ("rewards", "advantages")


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _check_mask(x: torch.Tensor, mask: torch.Tensor, name: str = "x") -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if x.shape != mask.shape:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but mask has shape {tuple(mask.shape)}"
        )


def _check_2d(mask: torch.Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"token tensors must be [N, R], got mask of shape {tuple(mask.shape)}")


def _check_per_sample(v: torch.Tensor, n: int, name: str) -> None:
    if v.dim() != 1 or v.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (one per completion), got {tuple(v.shape)}")


def _check_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not (v >= 0.0) or math.isinf(v):
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
    return v


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; expected one of {list(choices)}")


# ---------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------
def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask)`` over ``dim`` (all entries when ``None``); masked entries count as 0
    even when they hold NaN or inf."""
    _check_mask(x, mask)
    z = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return z.sum() if dim is None else z.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is True: ``sum(x m) / sum(m)`` along ``dim``
    (over everything when ``None``). An empty selection gives 0 (the count is clamped to 1)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the unmasked entries of ``x`` (all of them together); ``unbiased`` divides by
    ``count - 1`` (docs/ALGORITHMS.md §4 example). Raises ``ValueError`` when fewer than 2 entries
    are unmasked and ``unbiased``."""
    count = int(mask.sum())
    if unbiased and count < 2:
        raise ValueError(f"unbiased masked variance needs >= 2 unmasked entries, got {count}")
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    return sq / (count - 1 if unbiased else max(count, 1))


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``1 - Var[returns - values] / Var[returns]`` over the unmasked tokens (population
    variances): 1 for a perfect value function, 0 for a constant one, negative when worse."""
    residual = returns - values
    residual_var = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    return 1 - residual_var / return_var.clamp(min=1e-12)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``x`` with the mean and **unbiased** variance of its unmasked entries (§4).

    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back
    (``x`` rescaled only). Masked entries of the output are 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=out.device))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last True entry of ``mask [N, R]`` (LongTensor ``[N]``).

    Raises ``ValueError`` naming the rows that have no response token.
    """
    _check_2d(mask)
    has_any = mask.any(dim=1)
    if not bool(has_any.all()):
        bad = torch.nonzero(~has_any).flatten().tolist()
        raise ValueError(f"rows {bad} of mask have no response token")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)


# ---------------------------------------------------------------------------------------------
# §4 rewards and returns
# ---------------------------------------------------------------------------------------------
def missing_eos_penalty(
    scores: torch.Tensor, has_eos: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Reward-model scores minus ``penalty`` for completions without an EOS token (§4; S000
    Table 13 uses ``penalty = 1``): ``scores - penalty * (not has_eos)``."""
    penalty = _check_nonneg("penalty", penalty)
    if has_eos.dtype != torch.bool:
        raise ValueError(f"has_eos must be a bool tensor, got dtype {has_eos.dtype}")
    if has_eos.shape != scores.shape:
        raise ValueError(
            f"has_eos has shape {tuple(has_eos.shape)} but scores has {tuple(scores.shape)}"
        )
    return scores - penalty * (~has_eos).to(scores.dtype)


def ppo_token_rewards(
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-token PPO rewards of docs/ALGORITHMS.md §4 "Practical", shape ``[N, R]``.

    ``r_it = -beta (log pi_old(y_it) - log pi_ref(y_it))`` on each response token, plus
    ``scores[i]`` (already EOS-penalised, see :func:`missing_eos_penalty`) at row ``i``'s last
    response token; 0 on masked positions. ``beta`` is the KL coefficient (S000: 0.02).
    """
    _check_2d(mask)
    _check_mask(old_logps, mask, "old_logps")
    _check_mask(ref_logps, mask, "ref_logps")
    _check_per_sample(scores, mask.shape[0], "scores")
    beta = _check_nonneg("beta", beta)
    zero = torch.zeros((), dtype=old_logps.dtype, device=old_logps.device)
    kl = torch.where(mask, old_logps - ref_logps, zero)
    rewards = -beta * kl
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards = rewards.clone()
    rewards[rows, last] = rewards[rows, last] + scores.to(rewards.dtype)
    return rewards


def kl_regularised_returns(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``v_i = sum_t r_it`` over response tokens (§4): the score minus ``beta`` times the
    sequence log-ratio ``log pi_old / pi_ref``; shape ``[N]``. DR-PPO's adversary minimises
    ``sum_i q_i v_i`` (TV ball on ``-v``)."""
    _check_2d(mask)
    return masked_sum(token_rewards, mask, dim=1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016; §4 defaults ``gamma=1``,
    ``lam=0.95``).

    ``delta_t = r_t + gamma V_{t+1} - V_t`` and ``A_t = delta_t + gamma lam A_{t+1}``, with
    rewards and values taken as 0 on masked positions (so ``V = 0`` after the last response
    token). Returns ``(advantages, returns)``, both ``[N, R]`` and 0 where masked, with
    ``returns = advantages + values``. No whitening here (see :func:`masked_whiten`).
    """
    _check_2d(mask)
    _check_mask(rewards, mask, "rewards")
    _check_mask(values, mask, "values")
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(mask, rewards, zero)
    v = torch.where(mask, values.to(rewards.dtype), zero)
    length = r.shape[1]
    adv_rev = []
    running = torch.zeros_like(r[:, 0])
    for step in reversed(range(length)):
        next_v = v[:, step + 1] if step + 1 < length else torch.zeros_like(running)
        delta = r[:, step] + gamma * next_v - v[:, step]
        running = delta + gamma * lam * running
        adv_rev.append(running)
    advantages = torch.stack(adv_rev[::-1], dim=1)
    advantages = torch.where(mask, advantages, zero)
    returns = torch.where(mask, advantages + v, zero)
    return advantages, returns


def ppo_advantages(
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    scores: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    gamma: float = 1.0,
    lam: float = 0.95,
    sample_scales: torch.Tensor | None = None,
    scale_at: str = "rewards",
    whiten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole §4 advantage pipeline, with DR-PPO version A's per-sample scale.

    1. ``token_rewards = ppo_token_rewards(old_logps, ref_logps, scores, mask, beta)``;
    2. with ``sample_scales = n q`` (``[N]``, version A) and ``scale_at="rewards"`` (default,
       S000's better variant) each row of rewards is multiplied by its scale *before* GAE; with
       ``scale_at="advantages"`` the GAE advantages are multiplied *before* whitening
       (docs/ALGORITHMS.md §4 "Where Version A acts", §8.1);
    3. ``gae`` on the (scaled) rewards; returns are ``advantages + values`` from the rewards
       fed to GAE (scaled ones under ``"rewards"``, unscaled under ``"advantages"``);
    4. whitening over all response tokens of the batch (``whiten=True``).

    Returns ``(advantages, returns, token_rewards)`` each ``[N, R]``; ``token_rewards`` are the
    *unscaled* per-token rewards, so ``kl_regularised_returns(token_rewards, mask)`` is ``v``
    whatever the scaling. Scaling the post-whitening advantages instead is identical to version
    B (a positive factor commutes with the clipped surrogate), which is why it is not offered.
    """
    _check_choice("scale_at", scale_at, SCALE_AT)
    token_rewards = ppo_token_rewards(old_logps, ref_logps, scores, mask, beta)
    rewards = token_rewards
    scale = None
    if sample_scales is not None:
        _check_per_sample(sample_scales, mask.shape[0], "sample_scales")
        if not bool(torch.isfinite(sample_scales).all()) or bool((sample_scales < 0).any()):
            raise ValueError("sample_scales must be finite and >= 0 (n q with q on the simplex)")
        scale = sample_scales.to(token_rewards.dtype).unsqueeze(1)
        if scale_at == "rewards":
            rewards = token_rewards * scale
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    if scale is not None and scale_at == "advantages":
        advantages = advantages * scale
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns, token_rewards


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def policy_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token (§4, §5.3 eq. 4.2), to be minimised.

    ``rho = exp(logps - old_logps)``, ``loss = max(-A rho, -A clip(rho, 1 - c, 1 + c))``; 0 where
    masked. ``clip_fraction`` is the share of response tokens where the clipped branch is the
    strictly larger one (the ratio left the trust region in the direction that matters).
    Advantages may be ``[N, R]`` or ``[N]`` (a completion advantage broadcast over its tokens,
    as GRPO does).
    """
    _check_2d(mask)
    _check_mask(logps, mask, "logps")
    _check_mask(old_logps, mask, "old_logps")
    clip = _check_nonneg("clip", clip)
    if advantages.dim() == 1:
        _check_per_sample(advantages, mask.shape[0], "advantages")
        advantages = advantages.unsqueeze(1).expand_as(logps)
    _check_mask(advantages, mask, "advantages")
    zero = torch.zeros((), dtype=logps.dtype, device=logps.device)
    log_ratio = torch.where(mask, logps - old_logps, zero)
    ratio = torch.exp(log_ratio)
    adv = torch.where(mask, advantages.to(logps.dtype), zero)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    losses = torch.where(mask, torch.maximum(unclipped, clipped), zero)
    clip_fraction = masked_mean((clipped > unclipped).to(logps.dtype), mask).detach()
    return losses, clip_fraction


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> torch.Tensor:
    """Clipped value loss per token (§4, value clip 0.2), TRL's convention with the factor 1/2:

    ``0.5 * max((v - R)^2, (old_v + clip(v - old_v, -c, c) - R)^2)``; 0 where masked.
    """
    _check_mask(values, mask, "values")
    _check_mask(old_values, mask, "old_values")
    _check_mask(returns, mask, "returns")
    clip = _check_nonneg("clip", clip)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    return torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))


def token_kl(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of ``KL(pi || ref)`` on samples from ``pi`` (Schulman 2020).

    With ``d = logp - ref``: ``k1 = d`` (unbiased, can be negative), ``k2 = d^2 / 2`` (biased,
    low variance), ``k3 = exp(-d) - 1 + d`` (unbiased and ``>= 0``). Masking is left to the
    caller (:func:`masked_sum` gives the sequence sum).
    """
    _check_choice("kind", kind, TOKEN_KL_KINDS)
    d = logps - ref_logps
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    return torch.expm1(-d) + d


def sequence_kl_k3(seq_logps: torch.Tensor, seq_ref_logps: torch.Tensor) -> torch.Tensor:
    """Sequence-level k3 of §5.4 (the dynamic budget's default), in float64, detached.

    ``u = log pi_ref(y) - log pi(y)`` (response-summed log-probs), ``k3 = e^u - 1 - u >= 0``.
    Never compute it in bf16/fp16 (§5.4). Returns ``[N]`` float64.
    """
    if seq_logps.shape != seq_ref_logps.shape:
        raise ValueError(
            f"seq_logps {tuple(seq_logps.shape)} and seq_ref_logps "
            f"{tuple(seq_ref_logps.shape)} must have the same shape"
        )
    u = seq_ref_logps.detach().to(torch.float64) - seq_logps.detach().to(torch.float64)
    return torch.expm1(u) - u


def aggregate_token_losses(
    token_losses: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce ``[N, R]`` token losses to a scalar (VERL's ``loss_agg_mode`` names).

    With ``l'_it = w_i l_it`` (``sample_weights [N]``, default 1: DR-PPO version B's ``n q`` or
    the ``n q`` of GRPO with a weighting across prompts):

    * ``token_mean``: ``sum_it m_it l'_it / sum_it m_it`` (every response token counts once);
    * ``seq_mean_token_mean``: ``1/N sum_i (sum_t m_it l'_it / sum_t m_it)``;
    * ``seq_mean_token_sum``: ``1/N sum_i sum_t m_it l'_it``.

    Rows without response tokens contribute 0 (their count is clamped to 1).
    """
    _check_2d(mask)
    _check_mask(token_losses, mask, "token_losses")
    _check_choice("mode", mode, AGGREGATION_MODES)
    losses = token_losses
    if sample_weights is not None:
        _check_per_sample(sample_weights, mask.shape[0], "sample_weights")
        losses = losses * sample_weights.to(losses.dtype).unsqueeze(1)
    if mode == "token_mean":
        return masked_mean(losses, mask)
    row_sums = masked_sum(losses, mask, dim=1)
    if mode == "seq_mean_token_sum":
        return row_sums.mean()
    return (row_sums / mask.sum(dim=1).clamp(min=1).to(losses.dtype)).mean()
