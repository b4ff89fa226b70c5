"""Group DRO with online group weights (Sagawa et al. 2020, Algorithm 1; docs/DESIGN.md, further choices)."""

from __future__ import annotations

import math
from typing import Literal

import torch

from .base import RobustWeighting

__all__ = ["GroupDRO"]


class GroupDRO(RobustWeighting):
    """Online group DRO: exponentiated-gradient ascent on group weights (Sagawa et al. 2020, Alg. 1).

    State: ``q`` in the simplex over ``num_groups`` groups, a registered float64 buffer (saved
    in checkpoints, moved with the module, kept float64 under dtype casts), uniform at start. On each call with per-example
    ``losses`` and ``groups``:

    1. group losses ``L_g = mean of l_i over i in g`` for the groups present in the batch
       (with ``scope="global"`` the batch is the global one, gathered over all ranks, so the
       group sums and counts are those of all ranks);
    2. in training mode only (``self.training``), ``q_g <- q_g exp(eta L_g)`` for the present
       groups, then ``q <- q / sum q`` (computed as a softmax of ``log q + eta L``);
    3. the robust loss is ``sum_{g present} q~_g L_g`` with ``q~`` = ``q`` renormalised over
       the present groups, i.e. the per-example weight is ``q~_{g(i)} / n_{g(i)}``.

    With ``minimize=True`` the update uses ``-l`` (weights move toward the *best* groups).
    ``stats`` add ``group_weight_<g>`` (``q_g`` after the update) for every group and
    ``worst_group_loss`` (``max L_g`` over present groups; the min when minimising).

    Args:
        num_groups: number of groups ``G``; group ids are ``0 .. G-1``.
        eta: step size of the exponentiated update (docs/DESIGN.md default 0.01).
        scope, nan_policy, minimize: see :class:`RobustWeighting`.
    """

    _standardize = False
    _uses_groups = True

    def __init__(
        self,
        num_groups: int,
        eta: float = 0.01,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)
        if int(num_groups) != num_groups or num_groups < 1:
            raise ValueError(
                f"num_groups must be a positive integer, got num_groups={num_groups!r}"
            )
        e = float(eta)
        if math.isnan(e) or e < 0:
            raise ValueError(f"eta must be >= 0, got eta={eta!r}")
        self.num_groups = int(num_groups)
        self.eta = e
        self.register_buffer(
            "q", torch.full((self.num_groups,), 1.0 / self.num_groups, dtype=torch.float64)
        )

    def _apply(self, fn, recurse=True):
        # keep the group weights in float64 under ``module.to(dtype)`` / "bf16-true" precision:
        # many multiplicative updates in low precision would drift
        super()._apply(fn, recurse)
        if self.q.dtype != torch.float64:
            self.q = self.q.to(torch.float64)
        return self

    def _solve(self, x, groups):
        num = self.num_groups
        sums = torch.zeros(num, dtype=torch.float64, device=x.device).index_add_(0, groups, x)
        counts = torch.zeros(num, dtype=torch.float64, device=x.device).index_add_(
            0, groups, torch.ones_like(x)
        )
        present = counts > 0
        group_loss = sums / torch.clamp(counts, min=1.0)
        q_prev = self.q.to(device=x.device, dtype=torch.float64)
        if self.training:
            step = torch.where(present, self.eta * group_loss, torch.zeros_like(group_loss))
            q_new = torch.softmax(torch.log(q_prev) + step, 0)
            with torch.no_grad():
                self.q.copy_(q_new.to(self.q.dtype))
        else:
            q_new = q_prev
        q_present = torch.where(present, q_new, torch.zeros_like(q_new))
        q_present = q_present / q_present.sum()
        w = (q_present / torch.clamp(counts, min=1.0))[groups]
        worst = torch.where(present, group_loss, torch.full_like(group_loss, -math.inf)).amax()
        extra = {f"group_weight_{i}": v for i, v in enumerate(q_new.unbind())}
        extra["worst_group_loss"] = -worst if self.minimize else worst
        return w, extra

    def _extra_repr_args(self) -> str:
        return f"num_groups={self.num_groups}, eta={self.eta}"
