"""Closed-form worst-case weights on standardised losses (docs/ALGORITHMS.md §1.3–§1.7).

Every function here is a pure, vectorised float64 computation on one 1-D tensor, on the
tensor's own device, with no Python loop over the examples and no host synchronisation
(no ``.item()``, ``.tolist()``, data-dependent shapes or branches): flags such as
"saturated" are returned as tensors and applied with ``torch.where``.

The ball solvers (:func:`tv_weights`, :func:`chi2_weights`, :func:`kl_ball_weights`,
:func:`cvar_weights`) take *standardised* losses ``z = (l - max l) / (max l - min l)``
(docs/ALGORITHMS.md §1.2 rule 8), so ``max z == 0`` exactly and ``min z == -1`` (or ``z == 0``
everywhere when all losses are equal). Each returns ``(q, dual, saturated)``: the weights in
the original order, the dual variable in ``z`` units (``None`` where there is none) and a
0-dim bool tensor, true when ``rho >= D_max`` (the caller turns it into a stat and a warning).
In the saturated and the all-equal cases every solver returns the uniform distribution on
the argmax set ``M`` (§1.2 rules 4–5).

The KL-penalty forms (:func:`kl_penalty_weights`, :func:`kl_penalty_seed_weights`) take the
raw losses (shift-invariant only, §1.2 rule 8).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "tie_structure",
    "tv_weights",
    "chi2_weights",
    "kl_ball_weights",
    "cvar_weights",
    "kl_penalty_weights",
    "kl_penalty_seed_weights",
    "kl_divergence",
    "chi2_divergence",
    "tv_divergence",
]

_F64 = torch.float64
#: a radius within this relative distance below its maximum D_max counts as saturated (§1.2
#: rule 4), so that rho = D_max computed in floating point (e.g. 1 - m/n) is not missed
_BOUNDARY_RTOL = 1e-12


def tie_structure(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort ``z`` in decreasing order and describe its tie groups, vectorised.

    Returns ``(zs, perm, start, stop)``: ``zs = z[perm]`` in decreasing order, and for each
    sorted position ``i`` (0-based) the tie group occupying sorted positions
    ``start[i] .. stop[i] - 1`` (float64): ``start`` is the number of entries strictly larger
    than ``zs[i]`` and ``stop`` the number of entries ``>= zs[i]``. "Tied" means exactly equal
    floats (docs/ALGORITHMS.md §7); the order inside a tie group is irrelevant, since every formula
    gives a whole group equal values. Small ``n``: two ``searchsorted`` calls (fewest ops);
    large ``n``: running maxima of group boundaries (cheaper than a binary search per entry).
    """
    n = z.shape[0]
    neg, perm = torch.sort(-z)  # ascending in -z == decreasing in z
    if n <= 256:
        start = torch.searchsorted(neg, neg).to(_F64)
        stop = torch.searchsorted(neg, neg, right=True).to(_F64)
        return -neg, perm, start, stop
    idx = torch.arange(n, dtype=_F64, device=z.device)
    new = torch.ones(n, dtype=torch.bool, device=z.device)
    new[1:] = neg[1:] != neg[:-1]  # a tie group starts here
    start = torch.cummax(idx * new, 0).values
    ends_reversed = torch.roll(new, -1).flip(0)  # group ends, in reversed coordinates
    stop = n - torch.cummax(idx * ends_reversed, 0).values.flip(0)
    return -neg, perm, start, stop


def _unsort(values_sorted: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(values_sorted).scatter_(0, perm, values_sorted)


def tv_weights(z: torch.Tensor, rho: float):
    """TV-ball worst case, docs/ALGORITHMS.md §1.3 (greedy LP solution).

    ``D(q||u) = 1/2 sum |q_i - 1/n| <= rho``. With ``rho_eff = min(rho, 1 - m/n)``, every
    example of the argmax set ``M`` (size ``m``) gets ``1/n + rho_eff/m`` and a total of
    ``rho_eff`` is removed from the smallest losses first, at most ``1/n`` each; the tie group
    at the cut shares the remaining removal equally. In units of ``1/n`` (``R = n rho_eff``),
    the group occupying ascending positions ``a .. a+g-1`` gives up ``clamp(R - a, 0, g)``.
    """
    n = z.shape[0]
    zs, perm, start, stop = tie_structure(z)
    size = stop - start
    m = size[0]
    # rho at its maximum up to rounding (e.g. rho = 1 - m/n computed in floats) saturates
    saturated = (n * rho >= (n - m) * (1.0 - _BOUNDARY_RTOL)) & (m < n)
    r = torch.where(saturated, n - m, torch.clamp(n - m, max=n * rho))  # n * rho_eff
    asc_start = n - stop  # number of entries strictly smaller than the group
    removal = torch.minimum(torch.clamp(r - asc_start, min=0.0), size) / size
    nq = 1.0 - removal + (start == 0) * (r / m)
    q = _unsort(nq / n, perm)
    return q, None, saturated


def chi2_weights(z: torch.Tensor, rho: float):
    """Chi-square-ball worst case, docs/ALGORITHMS.md §1.4 (sorted threshold formula).

    ``D(q||u) = 1/(2n) sum (n q_i - 1)^2 <= rho`` (the 1/2 normalisation of §1.1). The solution
    is ``q_i = (z_i - eta)_+ / sum_j (z_j - eta)_+``. With ``c = 1 + 2 rho`` and, for the ``k``
    largest losses, mean ``mu_k`` and population variance ``s_k^2``, the candidate thresholds
    ``eta_k = mu_k - s_k sqrt(n / (c k - n))`` (valid when ``c k > n``, ``s_k > 0`` and ``k``
    closes a tie group) are evaluated for all ``k`` at once from prefix sums; the support is
    the largest valid ``k`` with ``eta_k < z_(k)``. Because ``max z = 0`` is in every support,
    the variance from prefix sums loses at most a factor ``k`` of relative precision.

    The dual variable returned is the threshold ``eta`` (``z`` units); in the saturated case
    it is ``0`` (the top value), where the dual of §1.4 attains its infimum.
    """
    n = z.shape[0]
    zs, perm, start, stop = tie_structure(z)
    m = stop[0]
    k = torch.arange(1, n + 1, dtype=_F64, device=z.device)
    mu = torch.cumsum(zs, 0) / k
    var = torch.clamp(torch.cumsum(zs * zs, 0) / k - mu * mu, min=0.0)
    denom = (k - n) + (2.0 * rho) * k  # c k - n, exact sign even for tiny rho
    eta = mu - torch.sqrt(var * n / torch.clamp(denom, min=1e-300))
    valid = (denom > 0) & (var > 0) & (stop == k) & (eta < zs)
    kstar = torch.amax(valid * k).to(torch.long)  # 0 when nothing is valid
    eta_star = eta.gather(0, torch.clamp(kstar - 1, min=0).reshape(1)).reshape(())
    degenerate = rho >= 0.5 * (n / m - 1.0) * (1.0 - _BOUNDARY_RTOL)
    # no valid k outside the saturated case would be a numerical failure: fall back to the
    # feasible uniform point rather than to an infeasible one (never observed in tests)
    failed = (kstar == 0) & ~degenerate
    eta_star = torch.where(degenerate, torch.zeros_like(eta_star), eta_star)
    w = torch.clamp(zs - eta_star, min=0.0)
    w = torch.where(degenerate, (start == 0).to(_F64), w)
    w = torch.where(failed, torch.ones_like(w), w)
    q = _unsort(w / w.sum(), perm)
    saturated = degenerate & (m < n)
    return q, eta_star, saturated


def kl_ball_weights(z: torch.Tensor, rho: float, grid: int = 32, rounds: int = 2, newton: int = 4):
    """KL-ball worst case, docs/ALGORITHMS.md §1.5 (Gibbs tilt, root of the KL constraint).

    ``q_i = exp(l_i/lambda) / sum_j exp(l_j/lambda)`` with ``lambda > 0`` solving
    ``KL(q||u) = sum q_i log(n q_i) = rho``. Working with the inverse temperature on standardised
    losses, ``t = range / lambda``, and ``s = log t``: with ``S = sum exp(t z)`` (``>= 1``, no
    overflow since ``max z = 0``) and ``E = E_q[z]``, ``KL(t) = t E - log S + log n`` increases
    from 0 to ``log(n/m)`` and ``dKL/ds = t^2 Var_q(z)``. Since ``Var_q(z) <= 1/4`` on
    ``[-1, 0]``, ``KL(t) <= t^2/8`` and ``s_lo = log(8 rho)/2`` is a lower bracket; ``s_hi = 50``
    is the upper one (beyond it the tilt is uniform on ``M`` to double precision unless the two
    largest distinct losses are closer than ~1e-20 of the range). The bracket is
    narrowed by ``rounds`` batched grid searches of ``grid`` points each (one ``[grid, n]``
    evaluation per round), then ``newton`` safeguarded Newton steps in ``s`` (a step that leaves
    the current bracket is replaced by the secant of the bracket ends, else by bisection) bring
    ``|KL - rho|`` to about ``1e-14``. Fixed iteration counts: no host synchronisation. The
    defaults (2 rounds of 32, 4 steps) were checked on losses spanning 1e-6..1e8, ties, and
    radii from ``1e-12 D_max`` to ``(1 - 1e-13) D_max``; one step fewer still passed.

    The dual variable returned is ``lambda`` in ``z`` units (``1/t``); it is 0 in the
    saturated and all-equal cases.
    """
    n = z.shape[0]
    dev = z.device
    c = math.log(n) - rho
    m = (z == 0).sum().to(_F64)
    top = (z == 0).to(_F64) / m
    if rho <= 0.0:
        return torch.full_like(z, 1.0 / n), torch.zeros((), dtype=_F64, device=dev), m < 0
    degenerate = rho >= torch.log(n / m) * (1.0 - _BOUNDARY_RTOL)
    lo = torch.tensor(0.5 * math.log(8.0 * rho), dtype=_F64, device=dev)
    hi = torch.clamp(lo + 1.0, min=50.0)
    frac = torch.linspace(0.0, float(grid - 1), grid, dtype=_F64, device=dev)
    zrow = z.unsqueeze(0)
    flo = fhi = None
    for _ in range(rounds):
        step = (hi - lo) / (grid - 1)
        t = torch.exp(lo + step * frac).unsqueeze(1)
        a = t * zrow
        e = torch.exp(a)
        big_s = e.sum(1)
        f = (e * a).sum(1) / big_s - torch.log(big_s) + c
        below = torch.clamp((f < 0).sum(), 1, grid - 1)
        ends = f.gather(0, torch.stack([below - 1, below]))
        flo, fhi = ends[0], ends[1]
        below = below.to(_F64)
        lo, hi = lo + step * (below - 1.0), lo + step * below
    z2 = z * z
    s = lo - flo * (hi - lo) / (fhi - flo)  # secant start inside the bracket
    s = torch.where((s >= lo) & (s <= hi), s, 0.5 * (lo + hi))
    for _ in range(newton):
        t = torch.exp(s)
        e = torch.exp(t * z)
        big_s = e.sum()
        mean = torch.dot(e, z) / big_s
        var = torch.dot(e, z2) / big_s - mean * mean
        f = t * mean - torch.log(big_s) + c
        neg = f < 0
        lo, flo = torch.where(neg, s, lo), torch.where(neg, f, flo)
        hi, fhi = torch.where(neg, hi, s), torch.where(neg, fhi, f)
        s_newton = s - f / (t * t * var)
        s_secant = lo - flo * (hi - lo) / (fhi - flo)
        ok_newton = (s_newton >= lo) & (s_newton <= hi)
        ok_secant = (s_secant >= lo) & (s_secant <= hi)
        s = torch.where(ok_newton, s_newton, torch.where(ok_secant, s_secant, 0.5 * (lo + hi)))
    t = torch.exp(s)
    e = torch.exp(t * z)
    q = torch.where(degenerate, top, e / e.sum())
    lam = torch.where(degenerate, torch.zeros_like(t), 1.0 / t)
    saturated = degenerate & (m < n)
    return q, lam, saturated


def cvar_weights(z: torch.Tensor, alpha: float):
    """CVaR_alpha worst case, docs/ALGORITHMS.md §1.7 (Rockafellar–Uryasev).

    ``q in simplex, q_i <= 1/(alpha n)``: the cap goes to the largest losses first and the tie
    group at the cut shares the remaining mass equally. In units of ``1/(alpha n)`` each example
    holds at most 1 and the total is ``alpha n``, so the group starting at sorted (decreasing)
    position ``s`` with ``g`` members gets ``clamp(alpha n - s, 0, g) / (g alpha n)`` each.
    The dual variable (VaR) is ``eta = z_(k)`` with ``k = ceil(alpha n)``, where
    ``R = min_eta eta + 1/(alpha n) sum (z_i - eta)_+`` attains its minimum.
    """
    n = z.shape[0]
    zs, perm, start, stop = tie_structure(z)
    size = stop - start
    an = alpha * n
    share = torch.minimum(torch.clamp(an - start, min=0.0), size) / (size * an)
    q = _unsort(share, perm)
    k = min(max(math.ceil(an - 1e-9), 1), n)
    eta = zs[k - 1]
    m = size[0]
    saturated = (an <= m) & (m < n)
    return q, eta, saturated


def kl_penalty_weights(x: torch.Tensor, tau: float):
    """KL-penalised worst case, docs/ALGORITHMS.md §1.6: ``q = softmax(l / tau)``.

    Maximiser of ``sum q_i l_i - tau sum q_i log(n q_i)`` over the simplex. Returns
    ``(q, lam)`` with the normaliser ``lam = tau log((1/n) sum exp(l_i / tau))`` (the
    optimal penalised value, the Lagrange multiplier of ``sum q = 1`` in S002 App. D).
    Shift-invariant only (``tau`` has the units of the losses).
    """
    n = x.shape[0]
    mx = x.amax()
    a = (x - mx) / tau
    lse = torch.logsumexp(a, 0)
    q = torch.exp(a - lse)
    lam = mx + tau * (lse - math.log(n))
    return q, lam


def kl_penalty_seed_weights(x: torch.Tensor, tau: float, clamp: float):
    """KLDPO weights as released (S002 code), docs/ALGORITHMS.md §1.6 ``form="seed"``.

    ``w_i = min(exp((l_i - mean l) / tau), clamp)``, detached and not normalised; the loss is
    ``(1/n) sum w_i l_i``. An overflowing exponential saturates at the clamp (``exp`` gives
    ``inf``, the clamp turns it into ``clamp``), never NaN. The mean is taken as
    ``max + mean(l - max)`` so that it does not overflow. Returns ``w`` (not divided by n).
    """
    mx = x.amax()
    mean = mx + (x - mx).mean()
    return torch.clamp(torch.exp((x - mean) / tau), max=clamp)


def kl_divergence(q: torch.Tensor) -> torch.Tensor:
    """``KL(q||u) = sum q_i log(n q_i)`` with ``0 log 0 = 0`` (docs/ALGORITHMS.md §1.1)."""
    n = q.shape[-1]
    return torch.special.xlogy(q, q * n).sum(-1)


def chi2_divergence(q: torch.Tensor) -> torch.Tensor:
    """``D_chi2(q||u) = n/2 sum q_i^2 - 1/2`` (the 1/2 normalisation, docs/ALGORITHMS.md §1.1)."""
    n = q.shape[-1]
    return 0.5 * n * (q * q).sum(-1) - 0.5


def tv_divergence(q: torch.Tensor) -> torch.Tensor:
    """``D_TV(q||u) = 1/2 sum |q_i - 1/n|`` (docs/ALGORITHMS.md §1.1)."""
    n = q.shape[-1]
    return 0.5 * (q - 1.0 / n).abs().sum(-1)
