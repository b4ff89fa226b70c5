"""Closed-form robust weighting strategies (docs/ALGORITHMS.md §1.3–§1.7).

Each class is a :class:`~lightning_robust.weighting.base.RobustWeighting` whose inner problem
is solved by a vectorised float64 closed form of :mod:`.closed_forms`. Every constructor
takes simple typed keyword arguments, so the classes can be named in LightningCLI YAML::

    weighting:
      class_path: lightning_robust.weighting.TVBall
      init_args: {rho: 0.4, scope: global}
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from . import closed_forms as cf
from .base import RobustWeighting, _check_choice, as_number, validate_radius

__all__ = ["TVBall", "ChiSquareBall", "KLBall", "KLPenalty", "CVaR"]


class TVBall(RobustWeighting):
    """Worst case over the total-variation ball, docs/ALGORITHMS.md §1.3.

    ``max_q sum q_i l_i`` s.t. ``q`` in the simplex and ``1/2 sum |q_i - 1/n| <= rho``
    (``rho in [0, 1 - 1/n]``; larger radii saturate to uniform on the argmax set, §1.2 rule 4).
    Greedy closed form: ``rho_eff / m`` is added to each maximal loss and ``rho_eff`` removed
    from the smallest losses first. Robust value ``R = mean(l) + rho_eff (max l - mean of donors)``.
    S000 reports ``rho = 0.4`` as its best radius for the reward model (Table 1).

    Args:
        rho: TV radius (half the l1 distance), in ``[0, 1]`` (a TV distance never exceeds 1);
            ``0`` gives ERM exactly.
        scope, nan_policy, minimize: see :class:`RobustWeighting`.
    """

    def __init__(
        self,
        rho: float,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)
        self.rho = validate_radius("rho", rho)
        if self.rho > 1.0:
            raise ValueError(
                f"rho must be in [0, 1] for the TV ball (a TV distance never exceeds 1), got rho={rho!r}"
            )

    def _is_uniform(self) -> bool:
        return self.rho == 0.0

    def _solve(self, z, groups):
        q, _, sat = cf.tv_weights(z, self.rho)
        return q, {"saturated": sat}

    def _extra_repr_args(self) -> str:
        return f"rho={self.rho}"


class ChiSquareBall(RobustWeighting):
    """Worst case over the chi-square ball, docs/ALGORITHMS.md §1.4.

    ``D(q||u) = 1/(2n) sum (n q_i - 1)^2 = n/2 sum q_i^2 - 1/2 <= rho`` (the 1/2 normalisation
    of S000 App. A; texts without the 1/2 use twice this radius). Solution
    ``q_i = (l_i - eta)_+ / sum_j (l_j - eta)_+`` from the sorted threshold formula. Robust value
    (dual, Levy et al. 2020) ``R = inf_eta sqrt(1 + 2 rho) (mean (l_i - eta)_+^2)^{1/2} + eta``.
    ``stats["dual"]`` is the threshold ``eta`` in loss units.

    Args:
        rho: chi-square radius in the 1/2 normalisation, ``>= 0`` (max ``(n/m - 1)/2``).
        scope, nan_policy, minimize: see :class:`RobustWeighting`.
    """

    def __init__(
        self,
        rho: float,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)
        self.rho = validate_radius("rho", rho)

    def _is_uniform(self) -> bool:
        return self.rho == 0.0

    def _solve(self, z, groups):
        q, eta, sat = cf.chi2_weights(z, self.rho)
        return q, {"dual": eta, "saturated": sat}

    def _extra_repr_args(self) -> str:
        return f"rho={self.rho}"


class KLBall(RobustWeighting):
    """Worst case over the KL ball, docs/ALGORITHMS.md §1.5.

    ``KL(q||u) = sum q_i log(n q_i) <= rho``. Solution: the Gibbs tilt
    ``q_i = exp(l_i / lambda) / sum_j exp(l_j / lambda)`` with ``lambda > 0`` solving
    ``KL(q(lambda)||u) = rho`` (batched bracketing then safeguarded Newton on ``log lambda``,
    exact to about 1e-15 in the constraint). Dual value (S002 Lemma 12)
    ``R = inf_lambda lambda log(mean exp(l_i / lambda)) + lambda rho``; ``stats["dual"]`` is
    ``lambda`` in loss units (0 when saturated).

    Args:
        rho: KL radius, ``>= 0`` (max ``log(n/m)``).
        scope, nan_policy, minimize: see :class:`RobustWeighting`.
    """

    _dual_is_location = False

    def __init__(
        self,
        rho: float,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)
        self.rho = validate_radius("rho", rho)

    def _is_uniform(self) -> bool:
        return self.rho == 0.0

    def _solve(self, z, groups):
        q, lam, sat = cf.kl_ball_weights(z, self.rho)
        return q, {"dual": lam, "saturated": sat}

    def _extra_repr_args(self) -> str:
        return f"rho={self.rho}"


class CVaR(RobustWeighting):
    """Conditional value at risk, docs/ALGORITHMS.md §1.7 (Rockafellar–Uryasev).

    ``q`` in the simplex with ``q_i <= 1/(alpha n)``: the robust loss is the mean of the worst
    ``alpha``-fraction of the losses, ties at the cut sharing equally. Dual
    ``R = min_eta eta + 1/(alpha n) sum (l_i - eta)_+``; ``stats["dual"]`` is the minimising
    ``eta`` (the value at risk, a data point). ``alpha = 1`` gives ERM exactly and
    ``alpha <= m/n`` uniform on the argmax set.

    Args:
        alpha: tail fraction in ``(0, 1]``.
        scope, nan_policy, minimize: see :class:`RobustWeighting`.
    """

    def __init__(
        self,
        alpha: float,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)
        a = as_number("alpha", alpha)
        if not (0.0 < a <= 1.0):
            raise ValueError(f"alpha must be in (0, 1], got alpha={alpha!r}")
        self.alpha = a

    def _is_uniform(self) -> bool:
        return self.alpha == 1.0

    def _solve(self, z, groups):
        q, eta, sat = cf.cvar_weights(z, self.alpha)
        return q, {"dual": eta, "saturated": sat}

    def _extra_repr_args(self) -> str:
        return f"alpha={self.alpha}"


class KLPenalty(RobustWeighting):
    """KL-penalised worst case and the KLDPO weights, docs/ALGORITHMS.md §1.6.

    ``form="normalized"``: the exact penalised problem
    ``max_q sum q_i l_i - tau sum q_i log(n q_i)``, solved by ``q = softmax(l / tau)``; the loss
    is ``sum q_i l_i``.

    ``form="seed"``: KLDPO as released (S002 code, docs/DESIGN.md, further choices):
    ``w_i = min(exp((l_i - mean l) / tau), clamp)`` with the mean over the global batch under
    ``scope="global"``, detached and *not* normalised. The reported weights are ``w / n`` (they
    sum to ``c >= 1``, not 1) and the loss is ``mean(w_i l_i)``. With the clamp inactive
    ``w_i = n q_i c`` with ``q = softmax(l / tau)`` and ``c = mean exp((l - mean l) / tau)``.

    ``stats["dual"]`` is the normaliser ``lambda = tau log(mean exp(l_i / tau))`` (the
    penalised optimal value, S002 App. D) in both forms; the seed form also reports
    ``weight_sum`` (``c``, clamp included) and ``clamped_frac``. ``ess``, ``max_weight`` and
    ``entropy`` of the seed form are those of ``w / sum w``. Only shift-invariant: ``tau``
    has the units of the losses. ``tau = inf`` gives ERM exactly.

    Args:
        tau: temperature, ``> 0`` (``float("inf")`` allowed: uniform weights). S002's code
            default is 1.0, its README uses 0.05.
        form: ``"normalized"`` (default) or ``"seed"``.
        clamp: upper clamp of the seed weights ``w`` (S002 code: 10); ``inf`` disables it.
            Unused by ``form="normalized"``.
        scope, nan_policy, minimize: see :class:`RobustWeighting`.
    """

    _standardize = False

    def __init__(
        self,
        tau: float,
        form: Literal["normalized", "seed"] = "normalized",
        clamp: float = 10.0,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)
        t = as_number("tau", tau)
        if math.isnan(t) or t <= 0:
            raise ValueError(f"tau must be > 0 (inf allowed), got tau={tau!r}")
        _check_choice("form", form, ("normalized", "seed"))
        c = as_number("clamp", clamp)
        if math.isnan(c) or c <= 0:
            raise ValueError(f"clamp must be > 0 (inf allowed), got clamp={clamp!r}")
        self.tau = t
        self.form = form
        self.clamp = c

    def _is_uniform(self) -> bool:
        return math.isinf(self.tau)

    def _on_simplex(self) -> bool:
        return self.form != "seed"

    def _solve(self, x, groups):
        q, lam = cf.kl_penalty_weights(x, self.tau)
        if self.form == "normalized":
            return q, {"dual": lam}
        w = cf.kl_penalty_seed_weights(x, self.tau, self.clamp)
        extra = {
            "dual": lam,
            "weight_sum": w.mean(),
            "clamped_frac": (w >= self.clamp).to(torch.float64).mean(),
        }
        return w / x.shape[0], extra

    def _extra_repr_args(self) -> str:
        return f"tau={self.tau}, form={self.form!r}, clamp={self.clamp}"
