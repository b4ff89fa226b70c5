"""The ``RobustWeighting`` contract and the shared pipeline (docs/ALGORITHMS.md §0, §1.1, §1.2).

A strategy maps per-example losses ``l`` (shape ``[n]``) to weights ``q`` on the simplex and
the robust loss ``sum_i q_i l_i``, whose gradient is ``sum_i q_i grad l_i`` with ``q``
detached (Danskin / envelope theorem, docs/ALGORITHMS.md §0 and §1.8).

:class:`RobustWeighting.forward` implements everything common to all strategies, so the
subclasses only solve the inner problem on a clean float64 vector:

* shape checks, detaching, float64 (§1.2 rule 9), ``minimize=True`` (solve on ``-l``);
* ``scope="global"`` (and ``"accumulated"``, whose caller passes all micro-batches at once):
  all-gather across ranks (:mod:`.distributed`), keep this rank's slice,
  scale the local loss by the world size so that data-parallel gradient averaging yields
  ``sum over all ranks of q_i grad l_i``;
* non-finite losses (§1.2 rule 7): an error naming the positions, or ``nan_policy="mask"``;
* standardisation ``z = (l - max l) / (max l - min l)`` for the ball problems (rule 8);
* the uniform short cut (rule 2: ``rho = 0``, ``alpha = 1``, ``tau = inf``, and ERM), whose
  loss is ``losses.mean()``, the very same op as :class:`ERM`, so it matches bit for bit;
* the saturation warning (rule 4, once per instance) and the diagnostics (rule 10).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .distributed import all_gather_concat, world_info

__all__ = ["WeightingOutput", "RobustWeighting", "ERM", "weight_stats"]

log = logging.getLogger(__name__)

_F64 = torch.float64

#: where the worst case is taken (docs/DESIGN.md, "Scope of the worst case")
SCOPES = ("global", "local", "accumulated")


@dataclass
class WeightingOutput:
    """Result of a :class:`RobustWeighting` call.

    Attributes:
        loss: scalar robust loss ``sum_i q_i l_i`` (this rank's share times the world size
            under ``scope="global"``), carrying the gradient ``sum_i q_i grad l_i``.
        weights: detached ``q`` for this rank's examples, shape ``[n]``, dtype and device of
            the losses (on the simplex in a single process; see ``global_weights``).
        stats: 0-dim tensors: ``ess`` (``1/sum q^2``), ``max_weight``, ``entropy``
            (``-sum q log q``), and where they apply ``dual``, ``saturated``, ``num_masked``,
            ``skipped``, ``robust_loss``, strategy-specific entries.
        global_weights: the full ``q`` over the gathered global batch (rank order) when the
            weights were computed across ranks, else ``None``.
    """

    loss: torch.Tensor
    weights: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    global_weights: torch.Tensor | None = None

    def sample_scales(self) -> torch.Tensor | None:
        """``n q_i`` for this rank's examples, the factor that turns a per-example mean into the
        robust objective (DR-PPO versions A/B, GRPO across prompts; docs/ALGORITHMS.md §4). ``n`` is
        the size of the batch the weights were solved on (all ranks under ``scope="global"``, so
        data-parallel gradient averaging yields ``sum_i q_i grad l_i``). ``None`` when ``q`` is
        uniform: callers then apply no scale at all and run the unweighted algorithm bit for bit.
        """
        q_all = self.global_weights if self.global_weights is not None else self.weights
        if bool((q_all == q_all[0]).all()):
            return None
        return self.weights * q_all.numel()


@dataclass
class _Batch:
    """The losses a strategy solves on: ``x`` float64 ``[n]`` (negated with ``minimize``; all
    ranks' under ``scope="global"``), their group ids, this rank's slice
    ``[offset, offset + n_local)`` and every rank's size."""

    x: torch.Tensor
    groups: torch.Tensor | None
    offset: int
    sizes: list[int]
    world: int
    n_local: int


def weight_stats(q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagnostics of docs/ALGORITHMS.md §1.2 rule 10 for weights ``q`` (normalised to sum 1 first).

    ``ess = 1 / sum q_i^2``, ``max_weight = max q_i``, ``entropy = -sum q_i log q_i`` with
    ``0 log 0 = 0``.
    """
    return {
        "ess": 1.0 / (q * q).sum(),
        "max_weight": q.amax(),
        "entropy": -torch.special.xlogy(q, q).sum(),
    }


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; expected one of {list(choices)}")


class RobustWeighting(nn.Module):
    """Base class of every weighting strategy (docs/DESIGN.md, "RobustWeighting").

    Call it on per-example losses: ``out = strategy(losses, groups=None)`` returns a
    :class:`WeightingOutput` with ``out.loss = sum_i q_i l_i`` (``q`` detached), ``out.weights``
    and ``out.stats``; ``strategy.weights(losses)`` returns ``q`` alone.

    Args:
        scope: ``"global"`` (default): with an initialised ``torch.distributed`` group of
            more than one rank, the weights are computed on the losses of all ranks (gathered,
            rank order) and each rank keeps its slice; ``"local"``: on this rank's losses only
            (as the seed papers ran, docs/ALGORITHMS.md §0 "Which n"); ``"accumulated"``: the worst
            case over every micro-batch of one optimiser step (docs/DESIGN.md "Scope of the worst
            case"). The weighting itself treats ``"accumulated"`` like ``"global"`` (gathered
            across ranks); the caller passes the losses of *all* micro-batches of the step at
            once -- :class:`~lightning_robust.modules.base.BackboneModule` does so with a
            no-grad pre-pass, then weighted backward passes per micro-batch (one extra
            forward). Identical on one process without accumulation.
        nan_policy: ``"error"`` (default): non-finite losses raise ``ValueError`` naming their
            positions; ``"mask"``: they get weight 0 and the problem is solved on the finite
            ones (docs/ALGORITHMS.md §1.2 rule 7).
        minimize: ``False`` (default): worst case (maximise ``sum q l``). ``True``: the best case
            ``min_q sum q l`` over the same set, i.e. the worst-case weights of ``-l`` (policy
            values, where the adversary lowers the value); the loss stays ``sum q l``.
    """

    #: solve on standardised losses (affine invariance, docs/ALGORITHMS.md §1.2 rule 8)
    _standardize: bool = True
    #: the ``dual`` stat is a location in loss units (flipped back when ``minimize=True``)
    _dual_is_location: bool = True
    #: weights keep the autograd graph of the losses (``Cvxpy(differentiable=True)``)
    _keeps_graph: bool = False
    #: the strategy consumes group ids (GroupDRO)
    _uses_groups: bool = False

    def __init__(
        self,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("scope", scope, SCOPES)
        _check_choice("nan_policy", nan_policy, ("error", "mask"))
        self.scope = scope
        self.nan_policy = nan_policy
        self.minimize = bool(minimize)
        self._warned_saturation = False

    @property
    def gathers_ranks(self) -> bool:
        """True when the weights are computed over the losses of all ranks (``"global"`` and
        ``"accumulated"`` scopes)."""
        return self.scope != "local"

    # ------------------------------------------------------------------ subclass hooks
    def _is_uniform(self) -> bool:
        """True when the configuration makes ``q = u`` for every batch (§1.2 rule 2)."""
        return False

    def _solve(
        self, z: torch.Tensor, groups: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Solve on a finite float64 vector (standardised when ``_standardize``).

        Returns ``q`` (same length) and extra stats; a ``dual`` entry is in ``z`` units and a
        ``saturated`` entry is a bool tensor. Must not synchronise with the host.
        """
        raise NotImplementedError

    def _extra_repr_args(self) -> str:
        return ""

    def extra_repr(self) -> str:
        base = f"scope={self.scope!r}, nan_policy={self.nan_policy!r}, minimize={self.minimize}"
        extra = self._extra_repr_args()
        return f"{extra}, {base}" if extra else base

    # ------------------------------------------------------------------ public API
    def weights(self, losses: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """The weights ``q`` alone (``self(losses, groups).weights``: a full forward, so a
        :class:`GroupDRO` in training mode updates its state)."""
        return self.forward(losses, groups).weights

    def forward(self, losses: torch.Tensor, groups: torch.Tensor | None = None) -> WeightingOutput:
        """Weights and robust loss for per-example ``losses`` (shape ``[n]``).

        ``groups`` (LongTensor ``[n]`` of group ids) is used by :class:`GroupDRO` and ignored
        by the other strategies. Four steps: :meth:`_gather` (float64, sign, all ranks),
        :meth:`_finite_mask` (the non-finite policy), :meth:`_solve_batch` (the strategy's
        solve on the finite entries, plus the weight diagnostics) and :meth:`_finish` (this
        rank's weights and the loss whose gradient is ``sum_i q_i grad l_i``).

        Host synchronisations per call: the finite check (one; two in mask mode), the saturation
        check until its warning has been logged once, and the size exchange under
        ``scope="global"`` with several ranks. The closed-form solves themselves have none.
        """
        self._check_inputs(losses, groups)
        batch = self._gather(losses, groups)
        stats: dict[str, torch.Tensor] = {}
        finite = self._finite_mask(batch, stats)
        q = self._solve_batch(batch, finite, stats)
        if q is None:  # nan_policy="mask" and no finite loss: a zero loss, zero weights
            return self._all_masked(losses, batch, stats)
        finite_local = (
            None if finite is None else finite[batch.offset : batch.offset + batch.n_local]
        )
        return self._finish(losses, batch, q, finite_local, stats)

    # ------------------------------------------------------------------ forward's steps
    def _check_inputs(self, losses: torch.Tensor, groups: torch.Tensor | None) -> None:
        if losses.dim() != 1:
            raise ValueError(f"losses must be a 1-D tensor [n], got shape {tuple(losses.shape)}")
        if self._uses_groups:
            if groups is None:
                raise ValueError(f"{type(self).__name__} needs groups (a LongTensor [n] of ids)")
            if groups.shape != losses.shape:
                raise ValueError(
                    f"groups must have the shape of losses {tuple(losses.shape)}, "
                    f"got {tuple(groups.shape)}"
                )

    def _gather(self, losses: torch.Tensor, groups: torch.Tensor | None) -> _Batch:
        """The float64 losses the strategy solves on (detached unless ``differentiable``,
        negated with ``minimize``), concatenated over the ranks under ``scope="global"``."""
        n_local = losses.shape[0]
        src = losses if self._keeps_graph else losses.detach()
        x = src.to(_F64)
        if self.minimize:
            x = -x
        g = groups if self._uses_groups else None
        world, _ = world_info() if self.gathers_ranks else (1, 0)
        offset, sizes = 0, [n_local]
        if world > 1:
            if g is not None:
                both, offset, sizes = all_gather_concat(torch.stack([x.detach(), g.to(_F64)]))
                g = both[1].to(torch.long)
                x = both[0]
            else:
                x, offset, sizes = all_gather_concat(x)
        if x.shape[0] == 0:
            raise ValueError("losses is empty: cannot weight an empty batch")
        return _Batch(x=x, groups=g, offset=offset, sizes=sizes, world=world, n_local=n_local)

    def _finite_mask(self, batch: _Batch, stats: dict) -> torch.Tensor | None:
        """The non-finite policy (§1.2 rule 7): ``None`` when every loss is finite; with
        ``nan_policy="error"`` a non-finite loss raises, naming its positions; with ``"mask"``
        the boolean mask of the finite entries (and ``num_masked`` in ``stats``)."""
        x = batch.x
        if self.nan_policy == "error":
            if not bool(torch.isfinite(x).all()):
                bad = torch.nonzero(~torch.isfinite(x.detach())).flatten().tolist()
                where = " of the global batch (all ranks, rank order)" if batch.world > 1 else ""
                raise ValueError(
                    f"non-finite losses at positions {bad}{where}; "
                    "set nan_policy='mask' to drop them"
                )
            return None
        fin = torch.isfinite(x.detach())
        stats["num_masked"] = (~fin).sum().to(_F64)
        return None if bool(fin.all()) else fin

    def _solve_batch(
        self, batch: _Batch, finite: torch.Tensor | None, stats: dict
    ) -> torch.Tensor | None:
        """``q`` ``[n]`` (float64) over the whole batch: the strategy's solve on the finite
        entries, zero weight on the others; ``None`` when no entry is finite. Adds the weight
        diagnostics (and ``skipped`` in mask mode) to ``stats``."""
        x, g = batch.x, batch.groups
        if finite is None:
            q = self._compute(x, g, stats)
        else:
            idx = torch.nonzero(finite).flatten()
            if idx.numel() == 0:
                stats["skipped"] = torch.ones((), dtype=_F64, device=x.device)
                return None
            q_sub = self._compute(x[idx], g[idx] if g is not None else None, stats)
            q = torch.zeros(x.shape[0], dtype=_F64, device=x.device).index_put((idx,), q_sub)
        if self.nan_policy != "error":
            stats["skipped"] = torch.zeros((), dtype=_F64, device=x.device)
        self._weight_diagnostics(q.detach(), stats)
        return q

    def _weight_diagnostics(self, q_det: torch.Tensor, stats: dict) -> None:
        """:func:`weight_stats` of the normalised weights and the saturation warning (rule 4,
        once per instance)."""
        stats.update(weight_stats(q_det / q_det.sum() if not self._on_simplex() else q_det))
        if "saturated" in stats:
            sat = stats["saturated"]
            if not self._warned_saturation and bool(sat):
                self._warned_saturation = True
                log.warning(
                    "%s: the radius is at or above its maximum for this batch (rho >= D_max, "
                    "or alpha <= m/n for CVaR); "
                    "the weights are uniform on the argmax set (docs/ALGORITHMS.md §1.2 rule 4). "
                    "Logged once per instance.",
                    self.__class__.__name__,
                )
            stats["saturated"] = sat.to(_F64)

    def _all_masked(self, losses: torch.Tensor, batch: _Batch, stats: dict) -> WeightingOutput:
        """Every loss non-finite under ``nan_policy="mask"``: a zero loss (still connected to
        the graph), zero weights."""
        q = torch.zeros(batch.x.shape[0], dtype=_F64, device=batch.x.device)
        return WeightingOutput(
            loss=(losses.nan_to_num(0.0, 0.0, 0.0) * 0).sum(),
            weights=torch.zeros_like(losses, dtype=losses.dtype).detach(),
            stats=stats,
            global_weights=q.to(losses.dtype) if batch.world > 1 else None,
        )

    def _finish(
        self,
        losses: torch.Tensor,
        batch: _Batch,
        q: torch.Tensor,
        finite_local: torch.Tensor | None,
        stats: dict,
    ) -> WeightingOutput:
        """This rank's weights and the robust loss ``sum_i q_i l_i`` (``losses.mean()`` on the
        uniform short cut; times the world size under ``scope="global"``, so that data-parallel
        gradient averaging gives the sum over all ranks)."""
        world, masked = batch.world, finite_local is not None
        q_det = q.detach()
        q_local = q if world == 1 else q[batch.offset : batch.offset + batch.n_local]
        uniform_fast = (
            self._is_uniform() and not masked and all(s == batch.sizes[0] for s in batch.sizes)
        )
        if uniform_fast:
            loss = losses.mean()
        else:
            loss = self._weighted_sum(
                q_local if self._keeps_graph else q_local.detach(), losses, finite_local
            )
            if world > 1:
                loss = loss * world
        if world > 1:
            xs = batch.x.detach() if not self.minimize else -batch.x.detach()
            xs = torch.where(torch.isfinite(xs), xs, torch.zeros_like(xs)) if masked else xs
            stats["robust_loss"] = (q_det * xs).sum()
        weights = q_local.detach().to(losses.dtype)
        global_weights = q_det.to(losses.dtype) if world > 1 else None
        return WeightingOutput(
            loss=loss, weights=weights, stats=stats, global_weights=global_weights
        )

    def chunk_loss(self, weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``W * sum_i q_i l_i`` over a slice of the examples whose weights ``q`` came from an
        earlier call on *all* of them (``scope="accumulated"``: one call on the losses of every
        micro-batch of the optimiser step, then this per micro-batch with the graph attached).

        ``W`` is the world size when the weights were gathered across ranks (else 1), as in
        :meth:`forward`, so that data-parallel gradient averaging leaves
        ``sum over every micro-batch of every rank of q_i grad l_i``: the gradients summed over
        the micro-batches equal the gradient of the robust loss of the whole step. Examples of
        weight 0 whose loss is not finite (``nan_policy="mask"``) contribute exactly 0.
        """
        if weights.shape != losses.shape:
            raise ValueError(
                f"weights {tuple(weights.shape)} and losses {tuple(losses.shape)} must match"
            )
        finite = None
        if self.nan_policy == "mask":
            finite = torch.isfinite(losses.detach()) | (weights != 0)
        loss = self._weighted_sum(weights.detach(), losses, finite)
        world = world_info()[0] if self.gathers_ranks else 1
        return loss * world if world > 1 else loss

    # ------------------------------------------------------------------ internals
    def _on_simplex(self) -> bool:
        return True

    @staticmethod
    def _weighted_sum(q: torch.Tensor, losses: torch.Tensor, finite: torch.Tensor | None):
        """``sum q_i l_i`` in at least float32, cast back to the losses' dtype."""
        work = torch.promote_types(losses.dtype, torch.float32)
        lw = losses if losses.dtype == work else losses.to(work)
        if finite is not None:
            lw = torch.where(finite, lw, torch.zeros_like(lw))
        out = (q.to(work) * lw).sum()
        return out if out.dtype == losses.dtype else out.to(losses.dtype)

    def _compute(
        self, x: torch.Tensor, groups: torch.Tensor | None, stats: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Weights for a finite float64 vector ``x`` (sign already applied); fills ``stats``."""
        n = x.shape[0]
        if self._is_uniform() or (n == 1 and not self._uses_groups):
            return torch.full((n,), 1.0 / n, dtype=_F64, device=x.device)
        if not self._standardize:
            q, extra = self._solve(x, groups)
            if "dual" in extra and self.minimize and self._dual_is_location:
                extra["dual"] = -extra["dual"]
            stats.update(extra)
            return q
        mn, mx = torch.aminmax(x.detach()) if not self._keeps_graph else (x.amin(), x.amax())
        rng = mx - mn
        scale = torch.where(rng > 0, rng, torch.ones_like(rng))
        z = (x - mx) / scale
        q, extra = self._solve(z, groups)
        if "dual" in extra:
            d = extra["dual"] * scale.detach()
            if self._dual_is_location:
                d = d + mx.detach()
                if self.minimize:
                    d = -d
            extra["dual"] = d
        stats.update(extra)
        return q


class ERM(RobustWeighting):
    """Empirical risk: ``q = u = (1/n, ..., 1/n)`` and ``loss = losses.mean()`` (docs/ALGORITHMS.md §0).

    The reference point of every robust strategy: a ball strategy with ``rho = 0`` takes this
    exact code path, so its loss equals ``ERM()(losses).loss`` bit for bit (§1.2 rule 2).
    Non-finite losses follow ``nan_policy`` like every other strategy.
    """

    def __init__(
        self,
        *,
        scope: Literal["global", "local", "accumulated"] = "global",
        nan_policy: Literal["error", "mask"] = "error",
        minimize: bool = False,
    ) -> None:
        super().__init__(scope=scope, nan_policy=nan_policy, minimize=minimize)

    def _is_uniform(self) -> bool:
        return True


def as_number(name: str, value) -> float:
    """``float(value)``, or a ``ValueError`` naming the option when ``value`` is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {name}={value!r}") from None


def validate_radius(name: str, value: float) -> float:
    """``rho >= 0`` and finite-or-inf (docs/ALGORITHMS.md §1.2 rule 3)."""
    v = as_number(name, value)
    if math.isnan(v) or v < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value!r}")
    return v
