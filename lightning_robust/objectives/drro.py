"""DRRO for RLHF (S003): promptwise theory and the GRPO reward shapings (docs/ALGORITHMS.md §5).

Group tensors have shape ``[B, G]``: ``B`` prompts with ``G`` sampled completions each. The
shapings add a bonus ``b`` to the proxy rewards of each group, then GRPO normalises within the
group (§5.3):

* ``"none"``: GRPO, ``b = 0``;
* ``"drro_hard"``: ``b_i = delta * 1[i in argmax_k (r_k - delta p~_k)]`` (eq. 4.14);
* ``"drro_soft"``: the SNIS soft bonus (eq. 4.15), ``bonus_form="mass"``:
  ``b_i = delta G p~_i omega_i`` (default), or ``"weight"``: ``b_i = delta omega_i``
  (docs/DESIGN.md option, docs/ALGORITHMS.md §8.5);
* ``"dro"``: the value-robust baseline, ``b_i = -delta * 1[p~_i = max_k p~_k]``.

``p~`` is the group-normalised rollout probability ``softmax(log pi_old(y_1..y_G))`` (§5.2 iii);
every bonus is computed in float64 and in log space. The promptwise functions at the end
(§5.1: water filling, worst-case regret, the DRO optimum, the soft objective) work on one
reward vector in float64 and serve tests and notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "SHAPINGS",
    "BONUS_FORMS",
    "DEFAULT_TAU",
    "group_log_probs",
    "hard_bonus",
    "snis_log_weights",
    "snis_weights",
    "soft_bonus",
    "dro_bonus",
    "shaped_rewards",
    "group_advantages",
    "dynamic_budget",
    "water_filling_policy",
    "worst_case_regret",
    "robust_utility",
    "dro_policy",
    "dro_value",
    "soft_robust_objective",
]

#: reward shapings accepted by :func:`shaped_rewards`
SHAPINGS: tuple[str, ...] = ("none", "drro_hard", "drro_soft", "dro")
#: soft-bonus forms (docs/ALGORITHMS.md §8.5)
BONUS_FORMS: tuple[str, ...] = ("mass", "weight")
#: soft-bonus temperature; S003's value was lost in extraction, 0.2 is *chosen here* (the §5.3
#: worked example's value)
DEFAULT_TAU: float = 0.2

_F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _as_budget(delta, like: torch.Tensor) -> torch.Tensor:
    """``delta`` as float64 broadcastable to ``[B, G]`` (a float, or one budget per prompt)."""
    d = torch.as_tensor(delta, dtype=_F64, device=like.device)
    if d.dim() == 1:
        d = d.unsqueeze(-1)
    if not bool(torch.isfinite(d).all()) or bool((d < 0).any()):
        raise ValueError(f"delta must be finite and >= 0, got delta={delta!r}")
    return d


def _check_tau(tau: float) -> float:
    t = float(tau)
    if not (t > 0.0) or math.isnan(t):
        raise ValueError(f"tau must be > 0 for the soft bonus, got tau={tau!r}")
    return t


def _check_group(rewards: torch.Tensor, log_p: torch.Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    if log_p.shape != rewards.shape:
        raise ValueError(
            f"log-probs have shape {tuple(log_p.shape)} but rewards have {tuple(rewards.shape)}"
        )


def _check_finite(name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = torch.nonzero(bad).tolist()[:10]
        raise ValueError(f"{name} contain non-finite values at [prompt, sample] {where}")


# ---------------------------------------------------------------------------------------------
# §5.2 / §5.3 bonuses
# ---------------------------------------------------------------------------------------------
def group_log_probs(seq_logps: torch.Tensor) -> torch.Tensor:
    """``log p~_i = log pi_old(y_i) - LSE_k log pi_old(y_k)`` within each group (§5.2 iii):
    the log-softmax over the last dimension, no underflow for very negative log-probs."""
    return torch.log_softmax(seq_logps, dim=-1)


def hard_bonus(rewards: torch.Tensor, log_p: torch.Tensor, delta) -> torch.Tensor:
    """Hard DRRO bonus, eq. 4.14 (§5.3): ``b_i = delta * 1[i in argmax_k (r_k - delta p~_k)]``.

    Every maximiser (exact float ties, duplicates of one completion included) receives the full
    ``delta`` (§8.9). ``log_p`` is :func:`group_log_probs`. Float64 output.
    """
    _check_group(rewards, log_p)
    d = _as_budget(delta, rewards)
    score = rewards.to(_F64) - d * log_p.to(_F64).exp()
    winners = score == score.amax(dim=-1, keepdim=True)
    return d * winners.to(_F64)


def snis_log_weights(rewards: torch.Tensor, log_p: torch.Tensor, delta, tau: float = DEFAULT_TAU):
    """Log SNIS weights of eq. 4.11 in group coordinates (§5.3):
    ``s_i = (r_i - delta p~_i) / tau``, ``log omega_i = s_i - log p~_i - LSE_k(s_k - log p~_k)``.
    Float64, ``[B, G]``."""
    _check_group(rewards, log_p)
    d = _as_budget(delta, rewards)
    tau = _check_tau(tau)
    lp = log_p.to(_F64)
    s = (rewards.to(_F64) - d * lp.exp()) / tau
    a = s - lp
    return a - torch.logsumexp(a, dim=-1, keepdim=True)


def snis_weights(rewards: torch.Tensor, log_p: torch.Tensor, delta, tau: float = DEFAULT_TAU):
    """SNIS weights ``omega`` (each group sums to 1) of :func:`snis_log_weights`."""
    return snis_log_weights(rewards, log_p, delta, tau).exp()


def soft_bonus(
    rewards: torch.Tensor,
    log_p: torch.Tensor,
    delta,
    tau: float = DEFAULT_TAU,
    form: str = "mass",
) -> torch.Tensor:
    """Soft DRRO bonus, eq. 4.15 (§5.3), float64 ``[B, G]``.

    * ``form="mass"`` (default, §8.5): ``b_i = delta G p~_i omega_i``, the SNIS estimate of the
      soft adversary's mass, evaluated as ``exp(log(delta G) + s_i - LSE_k(s_k - log p~_k))``
      so a sample with ``p~_i -> 0`` gets ``b_i -> 0`` without overflow;
    * ``form="weight"``: ``b_i = delta omega_i`` (docs/DESIGN.md option).

    For uniform ``p~`` both forms coincide and sum to ``delta``. ``tau`` default is chosen here
    (:data:`DEFAULT_TAU`, S003's value was lost).
    """
    if form not in BONUS_FORMS:
        raise ValueError(f"unknown bonus_form={form!r}; expected one of {list(BONUS_FORMS)}")
    log_omega = snis_log_weights(rewards, log_p, delta, tau)
    d = _as_budget(delta, rewards)
    if form == "weight":
        return d * log_omega.exp()
    group = rewards.shape[-1]
    # log(delta G p~ omega) = log(delta G) + log p~ + log omega; log p~ cancels inside log omega
    log_mass = log_omega + log_p.to(_F64)
    return d * group * log_mass.exp()


def dro_bonus(rewards: torch.Tensor, log_p: torch.Tensor, delta) -> torch.Tensor:
    """Value-robust DRO baseline (§5.3, §8.8): ``b_i = -delta * 1[p~_i = max_k p~_k]``, the most
    probable sampled completion(s) penalised by the budget. Float64 ``[B, G]``."""
    _check_group(rewards, log_p)
    d = _as_budget(delta, rewards)
    lp = log_p.to(_F64)
    top = lp == lp.amax(dim=-1, keepdim=True)
    return torch.where(top, -d, torch.zeros((), dtype=_F64, device=lp.device))


def shaped_rewards(
    rewards: torch.Tensor,
    seq_old_logps: torch.Tensor,
    delta,
    shaping: str,
    tau: float = DEFAULT_TAU,
    bonus_form: str = "mass",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shaped rewards ``r~ = r + b`` (eq. 4.1) for one of :data:`SHAPINGS` (§5.3).

    Args:
        rewards: proxy rewards ``[B, G]``.
        seq_old_logps: rollout sequence log-probs ``log pi_old(y)`` ``[B, G]`` (response-summed).
        delta: the (group-normalised) budget ``delta~ >= 0``: a float or one per prompt ``[B]``.
        shaping: ``"none"`` (GRPO), ``"drro_hard"``, ``"drro_soft"`` or ``"dro"``.
        tau: soft temperature ``> 0`` (``"drro_soft"`` only; default chosen here).
        bonus_form: ``"mass"`` or ``"weight"`` (``"drro_soft"`` only, §8.5).

    Returns ``(shaped, bonus)``: ``shaped`` in the dtype of ``rewards``, ``bonus`` in float64.
    ``delta = 0`` returns ``rewards`` unchanged bit for bit (so GRPO exactly).

    Raises ``ValueError`` for an unknown shaping or form, ``G < 2`` with a bonus (``p~ = 1``
    makes DRRO meaningless), ``tau <= 0``, ``delta < 0``, and non-finite rewards or log-probs.
    """
    if shaping not in SHAPINGS:
        raise ValueError(f"unknown shaping={shaping!r}; expected one of {list(SHAPINGS)}")
    if bonus_form not in BONUS_FORMS:
        raise ValueError(f"unknown bonus_form={bonus_form!r}; expected one of {list(BONUS_FORMS)}")
    _check_group(rewards, seq_old_logps)
    _as_budget(delta, rewards)
    if shaping == "drro_soft":
        _check_tau(tau)
    if shaping != "none" and rewards.shape[-1] < 2:
        raise ValueError(
            f"shaping={shaping!r} needs at least 2 completions per prompt, got G={rewards.shape[-1]}"
        )
    _check_finite("rewards", rewards)
    _check_finite("seq_old_logps", seq_old_logps)
    if shaping == "none":
        bonus = torch.zeros(rewards.shape, dtype=_F64, device=rewards.device)
    else:
        log_p = group_log_probs(seq_old_logps.to(_F64))
        if shaping == "drro_hard":
            bonus = hard_bonus(rewards, log_p, delta)
        elif shaping == "drro_soft":
            bonus = soft_bonus(rewards, log_p, delta, tau, form=bonus_form)
        else:
            bonus = dro_bonus(rewards, log_p, delta)
    return rewards + bonus.to(rewards.dtype), bonus


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages (eq. 4.1, §5.3): ``(r_i - mean(r)) / (std(r) + eps)`` within each group,
    ``std`` unbiased (``G - 1``) and ``eps = 1e-6`` (VERL, §8.10). ``G = 1`` uses mean 0 and
    std 1 as VERL does. ``rewards [B, G]`` -> ``[B, G]``."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[-1] == 1:
        return rewards / (1.0 + eps)
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, unbiased=True)
    return (rewards - mean) / (std + eps)


def dynamic_budget(delta0: float, c: float, kl_history: Sequence[float], window: int) -> float:
    """Dynamic budget of eq. 4.16-4.17 (§5.4): ``delta_t = delta0 + c * mean(last W KLs)``.

    ``kl_history`` holds the batch KL estimates so far, the current batch's last; the mean is over
    its last ``min(window, len)`` values (fewer at the start); an empty history gives ``delta0``.
    No clipping (S003 App. G). ``delta0 >= 0``, ``c >= 0``, ``window >= 1``.
    """
    if not (float(delta0) >= 0.0) or math.isinf(float(delta0)):
        raise ValueError(f"delta0 must be finite and >= 0, got delta0={delta0!r}")
    if not (float(c) >= 0.0) or math.isinf(float(c)):
        raise ValueError(f"c must be finite and >= 0, got c={c!r}")
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1, got window={window!r}")
    recent = [float(k) for k in list(kl_history)[-int(window) :]]
    if not recent:
        return float(delta0)
    if not all(math.isfinite(k) for k in recent):
        raise ValueError(f"kl_history has non-finite values in its last {window}: {recent}")
    return float(delta0) + float(c) * math.fsum(recent) / len(recent)


# ---------------------------------------------------------------------------------------------
# §5.1 promptwise theory (float64, one prompt, K responses)
# ---------------------------------------------------------------------------------------------
def _vec(x) -> torch.Tensor:
    v = torch.as_tensor(x, dtype=_F64)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D vector, got shape {tuple(v.shape)}")
    return v


def _check_delta_scalar(delta) -> float:
    d = float(delta)
    if not (d >= 0.0) or math.isinf(d):
        raise ValueError(f"delta must be finite and >= 0, got delta={delta!r}")
    return d


def water_filling_policy(r, delta) -> tuple[torch.Tensor, float]:
    """DRRO optimum of one prompt (Thm 3.4, §5.1): ``max_p <p, r> - max_j (r_j - delta p_j)``.

    With ``t_min`` the root of ``sum_j (r_j - t)_+ = delta`` and
    ``t_slope = inf{t : sum_{r_j > t} (r_(1) - r_j) <= delta}`` (``-inf`` when the full set
    satisfies it), ``t* = max(t_min, t_slope)``, ``p_j = (r_j - t*)_+ / delta`` for non-top
    responses and the leftover split equally among the tied maxima. ``delta = 0`` gives the
    greedy policy (uniform on the argmax) with ``t* = max r``. Returns ``(p, t*)``.
    """
    r = _vec(r)
    delta = _check_delta_scalar(delta)
    top_value = r.max()
    top = r == top_value
    if delta == 0.0:
        return top.to(_F64) / top.sum(), float(top_value)
    rs, _ = torch.sort(r, descending=True)
    k = torch.arange(1, r.numel() + 1, dtype=_F64)
    prefix = torch.cumsum(rs, 0)
    levels = (prefix - delta) / k
    active = torch.nonzero(rs > levels).flatten()
    # largest k whose k-th reward is above its level (k = 1 always is, barring rounding)
    t_min = float(levels[active[-1]]) if active.numel() else float(levels[0])
    gaps = k * rs[0] - prefix  # D_k = sum_{i<=k} (r_(1) - r_(i)), nondecreasing
    k_star = int((gaps <= delta).sum())
    t_slope = -math.inf if k_star == r.numel() else float(rs[k_star])
    t_star = max(t_min, t_slope)
    p = torch.clamp(r - t_star, min=0.0) / delta
    p = torch.where(top, torch.zeros_like(p), p)
    leftover = 1.0 - p.sum()
    p = torch.where(top, leftover / top.sum(), p)
    return p, t_star


def worst_case_regret(p, r, delta) -> float:
    """``WCR(p) = max_{||xi||_1 <= delta} Reg(p; r + xi) = delta + max_j (r_j - delta p_j) - <p, r>``
    (Prop. 3.3, §5.1)."""
    p, r = _vec(p), _vec(r)
    delta = _check_delta_scalar(delta)
    return float(delta + (r - delta * p).max() - p @ r)


def robust_utility(p, r, delta) -> float:
    """``U(p) = <p, r> - max_j (r_j - delta p_j)`` (§5.1), so ``WCR = delta - U``."""
    p, r = _vec(p), _vec(r)
    delta = _check_delta_scalar(delta)
    return float(p @ r - (r - delta * p).max())


def dro_policy(r, delta) -> torch.Tensor:
    """Value-robust DRO optimum (Lemma H.1, §5.1): uniform on the top ``k*`` responses with
    ``k*`` the smallest maximiser of ``(S_k - delta) / k`` (``S_k``: sum of the ``k`` largest)."""
    r = _vec(r)
    delta = _check_delta_scalar(delta)
    rs, order = torch.sort(r, descending=True, stable=True)
    k = torch.arange(1, r.numel() + 1, dtype=_F64)
    scores = (torch.cumsum(rs, 0) - delta) / k
    k_star = int(torch.nonzero(scores == scores.max()).flatten()[0]) + 1
    p = torch.zeros_like(r)
    p[order[:k_star]] = 1.0 / k_star
    return p


def dro_value(p, r, delta) -> float:
    """``V(p) = min_{||xi||_1 <= delta} <p, r + xi> = <p, r> - delta max_j p_j`` (§5.1)."""
    p, r = _vec(p), _vec(r)
    delta = _check_delta_scalar(delta)
    return float(p @ r - delta * p.max())


def soft_robust_objective(p, r, delta, tau) -> float:
    """Soft relaxation (eq. 4.6-4.8, §5.1): ``J_tau(p) = <p, r> - tau LSE_j((r_j - delta p_j)/tau)``,
    with ``0 <= U(p) - J_tau(p) <= tau log K``."""
    p, r = _vec(p), _vec(r)
    delta = _check_delta_scalar(delta)
    tau = _check_tau(tau)
    return float(p @ r - tau * torch.logsumexp((r - delta * p) / tau, dim=0))
