"""WDPO: the input-embedding gradient penalty of S002 Algorithm 1 (docs/ALGORITHMS.md §3.3, §8.3).

The 2-Wasserstein worst case expands as ``E_Pn l + rho (E_Pn ||grad_z l||^2)^{1/2} + o(rho)``
(S002 §6). Tokens are discrete, so the gradient is taken with respect to the outputs ``E`` of
the policy's input-embedding layer, for *both* sequences of the pair, over all positions
(prompt and response; padding gets zero gradient because nothing downstream uses it).

Use::

    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()   # [2n, L, H]
    logps, _ = sequence_logprobs(model, ids, mask, prompt_len, inputs_embeds=embeds)
    losses = dpo_losses(preference_margin(logps[:n], logps[n:], ref[:n], ref[n:]), beta)
    sq = embedding_gradient_penalty(losses, embeds, create_graph=training)
    loss = (losses + wdpo_penalty(sq, rho)).mean()          # form="seed", the released code

``.detach().requires_grad_()`` cuts the penalty's path into the embedding matrix, so with the
embedding layer trainable its weight gets no gradient from these losses; if it must train,
pass the embedding output itself (``requires_grad`` through the weight) instead.

Double backprop: in training the inner gradient is built with ``create_graph=True`` so that the
penalty itself is differentiated w.r.t. the parameters; at evaluation use
``create_graph=False`` (no second-order graph). Either way it needs autograd enabled (not under
``torch.no_grad()`` / ``torch.inference_mode()``) and an attention kernel with a double
backward: eager attention, or SDPA under ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``
(the fused CPU/flash SDPA kernels raise "derivative ... not implemented").
"""

from __future__ import annotations

import torch

__all__ = ["WDPO_PENALTY_FORMS", "embedding_gradient_penalty", "wdpo_penalty"]

#: forms accepted by :func:`wdpo_penalty`
WDPO_PENALTY_FORMS: tuple[str, ...] = ("seed", "sqrt")


def embedding_gradient_penalty(
    losses: torch.Tensor,
    embeddings: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    create_graph: bool = True,
    retain_graph: bool | None = None,
) -> torch.Tensor:
    """Per-example ``||grad_{E^w_i} l_i||_F^2 + ||grad_{E^l_i} l_i||_F^2`` (docs/ALGORITHMS.md §3.3).

    Args:
        losses: per-example losses ``[n]`` computed from ``embeddings``.
        embeddings: the ``inputs_embeds`` that produced the losses (``requires_grad``): a tensor
            ``[2n, L, H]`` with the ``n`` chosen rows first and then the ``n`` rejected rows, or a
            tuple ``(chosen [n, L, H], rejected [n, L, H])``.
        create_graph: ``True`` in training (double backprop: the returned norms carry a graph
            to the parameters); ``False`` at evaluation (no graph).
        retain_graph: keep the losses' graph after the inner gradient; default
            ``create_graph`` (so with ``create_graph=False`` the losses can no longer be
            back-propagated unless ``retain_graph=True``).

    One ``torch.autograd.grad`` of ``losses.sum()`` gives every per-example gradient at once,
    which is exact because example ``i``'s loss depends only on its own two rows (no
    cross-example interaction: no batch norm, no in-batch mixing). Returns ``[n]`` in the dtype
    of the gradient.
    """
    if losses.dim() != 1:
        raise ValueError(f"losses must be a 1-D tensor [n], got shape {tuple(losses.shape)}")
    n = losses.shape[0]
    if isinstance(embeddings, (tuple, list)):
        if len(embeddings) != 2:
            raise ValueError("embeddings must be a tensor [2n, L, H] or a pair (chosen, rejected)")
        inputs = tuple(embeddings)
        if any(e.shape[0] != n for e in inputs):
            raise ValueError(
                f"chosen and rejected embeddings must each have {n} rows, got "
                f"{[tuple(e.shape) for e in inputs]}"
            )
    else:
        if embeddings.shape[0] != 2 * n:
            raise ValueError(
                f"embeddings must have 2n = {2 * n} rows (chosen then rejected), "
                f"got shape {tuple(embeddings.shape)}"
            )
        inputs = (embeddings,)
    if not losses.requires_grad or not all(e.requires_grad for e in inputs):
        raise ValueError(
            "embedding_gradient_penalty needs losses with a graph to embeddings that require "
            "grad (enable grad; not under torch.no_grad() or torch.inference_mode())"
        )
    grads = torch.autograd.grad(
        losses.sum(), inputs, create_graph=create_graph, retain_graph=retain_graph
    )
    per_row = [g.pow(2).flatten(1).sum(dim=1) for g in grads]
    if len(per_row) == 2:
        return per_row[0] + per_row[1]
    return per_row[0][:n] + per_row[0][n:]


def wdpo_penalty(sq_norms: torch.Tensor, rho: float, form: str = "seed") -> torch.Tensor:
    """WDPO penalty from the per-example squared norms (docs/ALGORITHMS.md §3.3, §8.3).

    * ``form="seed"`` (default, the released code): ``rho * ||g_i||^2`` per example ``[n]``;
      average it with the losses, ``L = (1/n) sum_i (l_i + rho ||g_i||^2)``.
    * ``form="sqrt"`` (the paper's Algorithm 1): ``rho * sqrt((1/n) sum_i ||g_i||^2)``, a
      scalar added to ``mean(l)``. Mean over the batch passed in (the per-device batch unless the
      caller gathers). The square root has an infinite derivative at 0; the gradient is taken
      as 0 there (the penalty is 0 only if every gradient vanishes).

    ``rho = 0`` gives a zero penalty (plain DPO/IPO/cDPO).
    """
    r = float(rho)
    if not (r >= 0.0):
        raise ValueError(f"rho must be >= 0, got rho={rho!r}")
    if form == "seed":
        return r * sq_norms
    if form == "sqrt":
        m = sq_norms.mean()
        # sqrt with a zero (not NaN) gradient at m = 0
        safe = torch.where(m > 0, m, torch.ones_like(m))
        return r * torch.where(m > 0, safe.sqrt(), torch.zeros_like(m))
    raise ValueError(f"unknown form={form!r}; expected one of {list(WDPO_PENALTY_FORMS)}")
