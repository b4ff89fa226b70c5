"""Reference / differentiable weights through a convex solver (cvxpylayers), docs/ALGORITHMS.md §1.1, §1.8.

This is the generic path: the same problems as the closed forms, solved by an interior-point
method (Clarabel by default) through ``cvxpylayers``, so that the robust value can be
differentiated *through* ``q`` as well. It is a reference and an experiment knob, not the
training default: a solve costs milliseconds where the closed forms cost microseconds
(``benchmarks/weighting.py``), and interior-point weights are accurate to about 1e-6
(docs/ALGORITHMS.md §7).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import torch

from . import closed_forms as cf
from .base import RobustWeighting, _check_choice, validate_radius

__all__ = ["Cvxpy"]

# solvers that cvxpylayers reaches through diffcp (``solve_method``) / that it names itself
_DIFFCP_METHODS = {"CLARABEL": "Clarabel", "SCS": "SCS", "ECOS": "ECOS"}
_LAYER_SOLVERS = ("MOREAU", "CUCLARABEL", "MPAX")
_CLARABEL_DEFAULTS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


def _import_cvxpy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer
    return cp, CvxpyLayer


class Cvxpy(RobustWeighting):
    """Worst-case weights from a convex solver via cvxpylayers (float64), docs/ALGORITHMS.md §1.1.

    Solves ``max_q sum q_i z_i`` over the simplex with, for ``divergence``:

    * ``"tv"``: ``1/2 ||q - u||_1 <= rho`` (§1.3);
    * ``"chi2"``: ``||q||_2 <= sqrt((1 + 2 rho) / n)``, i.e. ``n/2 sum q^2 - 1/2 <= rho`` (§1.4);
    * ``"kl"``: ``sum q_i log(n q_i) <= rho`` (exponential cone, §1.5);
    * ``"cvar"``: ``q_i <= 1 / (rho n)``, with ``rho`` playing ``alpha`` (§1.7).

    ``z`` are the standardised losses (§1.2 rule 8). The layer is built lazily once per batch
    size ``n`` and cached (not part of the ``state_dict``). The rules of §1.2 apply as for the
    closed forms: ``rho = 0`` (``alpha = 1``) is ERM exactly, a saturated radius gives uniform
    weights on the argmax set without calling the solver, and tied losses get exactly equal
    weights (the solver output is averaged over each tie group, a linear map that keeps the
    graph). Tiny negative solver outputs are clipped and ``q`` renormalised. Results are cast
    back to the losses' dtype.

    With ``differentiable=True`` the loss ``sum q(l) l`` is differentiated through ``q`` as well
    (implicit differentiation of the cone program); by the envelope theorem (§1.8) its gradient
    w.r.t. ``l`` is still ``q*`` up to solver accuracy. Under ``scope="global"`` only this rank's
    losses carry the graph. No ``dual`` stat is reported.

    Args:
        divergence: ``"tv"``, ``"chi2"``, ``"kl"`` or ``"cvar"``.
        rho: radius (``>= 0``); for ``"cvar"`` the tail fraction ``alpha`` in ``(0, 1]``.
        solver: ``"Clarabel"`` (default), ``"SCS"`` or ``"ECOS"`` (through diffcp), or a solver
            cvxpylayers names itself (``"MOREAU"``, ``"CUCLARABEL"``, ``"MPAX"``); case-insensitive.
        differentiable: keep the graph through ``q`` (default ``True``); ``False`` detaches.
        solver_args: keyword settings for the solver. Default for Clarabel: gap and
            feasibility tolerances of 1e-10 (its own 1e-8 leaves weight errors up to ~2e-4 on
            ill-conditioned chi-square problems, where the value is flat in ``q``).
        scope, nan_policy, minimize: see :class:`RobustWeighting`.
    """

    def __init__(
        self,
        divergence: Literal["tv", "chi2", "kl", "cvar"],
        rho: float,
        solver: str = "Clarabel",
        differentiable: bool = True,
        *,
        solver_args: dict[str, Any] | None = None,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)
        _check_choice("divergence", divergence, ("tv", "chi2", "kl", "cvar"))
        if divergence == "cvar":
            a = float(rho)
            if not (0.0 < a <= 1.0):
                raise ValueError(
                    f"rho (alpha for divergence='cvar') must be in (0, 1], got rho={rho!r}"
                )
            self.rho = a
        else:
            self.rho = validate_radius("rho", rho)
        key = str(solver).upper()
        if key not in _DIFFCP_METHODS and key not in _LAYER_SOLVERS:
            raise ValueError(
                f"unknown solver={solver!r}; expected one of "
                f"{['Clarabel', 'SCS', 'ECOS', *_LAYER_SOLVERS]}"
            )
        self.divergence = divergence
        self.solver = solver
        self.differentiable = bool(differentiable)
        if solver_args is None and key == "CLARABEL":
            solver_args = dict(_CLARABEL_DEFAULTS)
        self.solver_args = dict(solver_args or {})
        self._keeps_graph = self.differentiable
        self._layers: dict[int, object] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_layers"] = {}  # solver layers are rebuilt lazily; they need not pickle
        return state

    def _is_uniform(self) -> bool:
        return self.rho == (1.0 if self.divergence == "cvar" else 0.0)

    def _degenerate(self, n: int, m: float) -> bool:
        if self.divergence == "tv":
            return self.rho >= 1.0 - m / n
        if self.divergence == "chi2":
            return self.rho >= 0.5 * (n / m - 1.0)
        if self.divergence == "kl":
            return self.rho >= math.log(n / m)
        return self.rho * n <= m

    def _layer(self, n: int):
        layer = self._layers.get(n)
        if layer is not None:
            return layer
        cp, CvxpyLayer = _import_cvxpy()
        q = cp.Variable(n)
        loss = cp.Parameter(n)
        cons = [q >= 0, cp.sum(q) == 1]
        if self.divergence == "tv":
            cons.append(0.5 * cp.norm1(q - 1.0 / n) <= self.rho)
        elif self.divergence == "chi2":
            cons.append(cp.norm2(q) <= math.sqrt((1.0 + 2.0 * self.rho) / n))
        elif self.divergence == "kl":
            cons.append(cp.sum(cp.rel_entr(q, np.full(n, 1.0 / n))) <= self.rho)
        else:
            cons.append(q <= 1.0 / (self.rho * n))
        problem = cp.Problem(cp.Maximize(loss @ q), cons)
        key = str(self.solver).upper()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if key in _DIFFCP_METHODS:
                layer = CvxpyLayer(
                    problem,
                    parameters=[loss],
                    variables=[q],
                    solver_args={"solve_method": _DIFFCP_METHODS[key], **self.solver_args},
                )
            else:
                layer = CvxpyLayer(
                    problem,
                    parameters=[loss],
                    variables=[q],
                    solver=key,
                    solver_args=self.solver_args or None,
                )
        self._layers[n] = layer
        return layer

    def _solve(self, z, groups):
        n = z.shape[0]
        zd = z.detach()
        _, perm, start, stop = cf.tie_structure(zd)
        m = stop[0]
        degenerate = self._degenerate(n, float(m))
        saturated = torch.tensor(degenerate and float(m) < n, device=z.device)
        if degenerate:
            return (zd == 0).to(torch.float64) / m, {"saturated": saturated}
        layer = self._layer(n)
        zin = z if self.differentiable else zd
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            (q,) = layer(zin.cpu())
        q = q.to(device=z.device, dtype=torch.float64)
        q = torch.clamp(q, min=0.0)
        q = q / q.sum()
        # exact tie symmetry (§1.2 rule 6): average the solver weights over each tie group
        gid = torch.empty_like(start).scatter_(0, perm, start).to(torch.long)
        sums = torch.zeros_like(q).index_add(0, gid, q)
        counts = torch.zeros_like(start).index_add_(0, gid, torch.ones_like(start))
        q = (sums / torch.clamp(counts, min=1.0))[gid]
        return q, {"saturated": saturated}

    def _extra_repr_args(self) -> str:
        return (
            f"divergence={self.divergence!r}, rho={self.rho}, solver={self.solver!r}, "
            f"differentiable={self.differentiable}"
        )
