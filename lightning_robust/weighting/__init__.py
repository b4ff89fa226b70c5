"""Robust minibatch weightings: the "inner max" of distributionally robust training.

Every strategy maps per-example losses ``l`` (shape ``[n]``) to weights ``q`` on the simplex
and the robust loss ``sum_i q_i l_i`` (docs/ALGORITHMS.md §1); see :class:`RobustWeighting`::

    from lightning_robust.weighting import TVBall
    out = TVBall(rho=0.4)(losses)
    out.loss.backward()          # gradient sum_i q_i grad l_i, q detached
    out.weights, out.stats       # q and diagnostics (ess, max_weight, entropy, dual, ...)

Closed forms (vectorised float64, microseconds per call): :class:`ERM`, :class:`TVBall`,
:class:`ChiSquareBall`, :class:`KLBall`, :class:`KLPenalty`, :class:`CVaR`; online group
weights: :class:`GroupDRO`; a convex-solver path (cvxpylayers): :class:`Cvxpy`.
This package imports neither Lightning nor the other lightning_robust subpackages.
"""

from .base import ERM, RobustWeighting, WeightingOutput, weight_stats
from .cvxpy_layer import Cvxpy
from .distributed import all_gather_concat, world_info
from .group_dro import GroupDRO
from .strategies import ChiSquareBall, CVaR, KLBall, KLPenalty, TVBall

__all__ = [
    "RobustWeighting",
    "WeightingOutput",
    "ERM",
    "TVBall",
    "ChiSquareBall",
    "KLBall",
    "KLPenalty",
    "CVaR",
    "GroupDRO",
    "Cvxpy",
    "weight_stats",
    "world_info",
    "all_gather_concat",
]
