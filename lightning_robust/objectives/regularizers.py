"""Regularisers of the DPO family: extra terms beside the (robustly weighted) losses.

docs/DESIGN.md's "regulariser" piece, next to :class:`~lightning_robust.weighting.RobustWeighting`:
each is a small object with one call site in the module, returning a :class:`RegularizerTerm`
(the extra term and its stats). Two live here:

* :class:`ForwardKLPessimism` -- p-/dp-/e-DPO (S004 eq. 13; docs/ALGORITHMS.md §3.4): per pair
  ``l_i + gamma * KL_hat(x_i)``, added *before* the weighting (it is part of each pair's loss).
* :class:`WassersteinPenalty` -- WDPO (S002 Algorithm 1; docs/ALGORITHMS.md §3.3): the input-embedding
  gradient penalty ``rho * mean_i ||grad_E l_i||^2`` (``form="seed"``) or
  ``rho * sqrt(mean_i ||grad_E l_i||^2)`` (``"sqrt"``), added *unweighted* after it.

WDPO's double backward, chunked (issue 14): the plain path holds the first-backward graph
(``create_graph=True``) of the whole batch until the final backward. :meth:`WassersteinPenalty.
accumulate` instead takes the batch ``chunk_pairs`` pairs at a time: for each chunk it runs the
forward, builds that chunk's first-backward graph, differentiates the chunk's share of the penalty
w.r.t. the trainable parameters right away (the double backward; ``retain_graph`` keeps the
forward graph the losses still need) and lets the chunk's first-backward graph go. The summed
parameter gradients ride into the final backward through :class:`_CarryGradients`, whose
backward returns ``upstream * sum_k grad_k`` for each parameter. For the seed form the
penalty is a sum over pairs, so ``grad (rho/n) sum_i s_i = sum_chunks grad (rho/n) sum_{i in
chunk} s_i`` exactly (up to float summation order); peak memory is the forward activations plus
one chunk's second-order graph. The sqrt form is not separable over chunks and keeps the plain
path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from lightning_robust.objectives.wdpo import (
    WDPO_PENALTY_FORMS,
    embedding_gradient_penalty,
    wdpo_penalty,
)

__all__ = ["ForwardKLPessimism", "RegularizerTerm", "WassersteinPenalty"]


@dataclass
class RegularizerTerm:
    """What a regulariser adds.

    Attributes:
        per_example: ``[n]`` added to each example's loss before the weighting, or ``None``.
        scalar: a scalar added to the weighted loss, or ``None``.
        stats: detached 0-dim tensors to log (names without the ``train/`` prefix).
    """

    per_example: torch.Tensor | None = None
    scalar: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class ForwardKLPessimism:
    """``gamma * KL_hat(x_i)`` per pair (S004 eq. 13): the pessimism term of p-/dp-/e-DPO.

    ``KL_hat`` is the forward-KL estimate of
    :func:`~lightning_robust.objectives.dpo.forward_kl_estimate`; ``gamma`` the coefficient now
    (the module anneals it with :func:`~lightning_robust.objectives.dpo.pessimism_gamma`).
    """

    def __init__(self, gamma: float):
        self.gamma = float(gamma)

    def __call__(self, kl: torch.Tensor) -> RegularizerTerm:
        return RegularizerTerm(
            per_example=self.gamma * kl,
            stats={"kl/forward": kl.detach().mean(), "kl/gamma": torch.tensor(self.gamma)},
        )

    def add_to(self, losses: torch.Tensor | None, scalar: torch.Tensor | None, kl: torch.Tensor):
        """``(losses + gamma KL, scalar)`` for per-example losses, or ``(None, scalar + gamma
        mean KL)`` for a batch-level loss (e-DPO); also the term's stats."""
        term = self(kl)
        if losses is not None:
            return losses + term.per_example, scalar, term.stats
        return None, scalar + term.per_example.mean(), term.stats


class _CarryGradients(torch.autograd.Function):
    """``value`` in the forward; in the backward, ``upstream * grads[i]`` for ``params[i]``."""

    @staticmethod
    def forward(ctx, value, count, *tensors):
        ctx.count = count
        ctx.save_for_backward(*tensors[count:])
        return value.detach().clone()

    @staticmethod
    def backward(ctx, upstream):
        grads = ctx.saved_tensors
        return (None, None, *[upstream * g for g in grads], *[None] * ctx.count)


class WassersteinPenalty:
    """WDPO's input-embedding gradient penalty (module docstring; docs/ALGORITHMS.md §3.3, §8.3).

    Args:
        rho: the radius (``> 0``).
        form: ``"seed"`` (``rho * mean_i ||g_i||^2``, the released code) or ``"sqrt"``.
        chunk_pairs: pairs per chunk of :meth:`accumulate` (``None``: the whole batch at once).
    """

    def __init__(self, rho: float, form: str = "seed", chunk_pairs: int | None = 2):
        if form not in WDPO_PENALTY_FORMS:
            raise ValueError(
                f"unknown wdpo_form={form!r}; expected one of {list(WDPO_PENALTY_FORMS)}"
            )
        if chunk_pairs is not None and chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be >= 1, got {chunk_pairs}")
        self.rho, self.form, self.chunk_pairs = float(rho), form, chunk_pairs

    @property
    def chunkable(self) -> bool:
        """Whether :meth:`accumulate` applies (the seed form is a sum over pairs)."""
        return self.form == "seed" and self.chunk_pairs is not None

    def _value(self, sq: torch.Tensor) -> torch.Tensor:
        penalty = wdpo_penalty(sq, self.rho, self.form)
        return penalty.mean() if self.form == "seed" else penalty

    def __call__(self, losses: torch.Tensor, embeds, create_graph: bool = True) -> RegularizerTerm:
        """The plain path: the penalty of the whole batch as a scalar with its graph."""
        sq = embedding_gradient_penalty(losses, embeds, create_graph=create_graph)
        value = self._value(sq)
        return RegularizerTerm(
            scalar=value,
            stats={"wdpo/penalty": value.detach(), "wdpo/grad_sq_norm": sq.detach().mean()},
        )

    def accumulate(
        self,
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
        num_pairs: int,
        params: Sequence[torch.Tensor],
    ) -> tuple[list[torch.Tensor], RegularizerTerm]:
        """The chunked path (module docstring). ``chunks`` yields ``(losses [k], embeds [2k, L,
        H])`` per chunk of pairs, in order (computed lazily, so one chunk's second-order graph
        lives at a time); ``params`` are the trainable parameters. Returns the chunks' losses
        (with their forward graphs) and the term, whose scalar carries the penalty's exact
        parameter gradient into the final backward."""
        if not self.chunkable:
            raise ValueError("only the seed form of the WDPO penalty is accumulated in chunks")
        params = [p for p in params if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        parts, squares = [], []
        for losses, embeds in chunks:
            sq = embedding_gradient_penalty(losses, embeds, create_graph=True)
            share = self.rho * sq.sum() / num_pairs
            grads = torch.autograd.grad(share, params, retain_graph=True, allow_unused=True)
            for acc, g in zip(total, grads, strict=True):
                if g is not None:
                    acc.add_(g)
            parts.append(losses)
            squares.append(sq.detach())
            del sq, share, grads  # frees this chunk's second-order graph
        sq = torch.cat(squares)
        value = self._value(sq)
        carried = _CarryGradients.apply(value, len(params), *params, *total)
        return parts, RegularizerTerm(
            scalar=carried,
            stats={"wdpo/penalty": value.detach(), "wdpo/grad_sq_norm": sq.mean()},
        )
