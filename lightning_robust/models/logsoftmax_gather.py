"""``log softmax(logits)[target]`` by row chunks, with a backward that writes the gradient directly.

For ``logits`` ``[N, V]`` and ``targets`` ``[N]``::

    out_i = z_{i, t_i} - logsumexp_j z_{ij}
    d out_i / d z_ij = 1[j = t_i] - softmax(z_i)_j

so with upstream gradient ``g`` the logits' gradient is ``g_i (onehot_i - softmax_i)``. The
plain ``log_softmax(z).gather(...)`` holds a ``[N, V]`` log-softmax output for backward and its
backward allocates a zero-filled ``[N, V]`` gather gradient plus the log-softmax backward's
temporaries. Here the forward keeps only ``logsumexp`` ``[N]`` (the logits are an existing tensor,
saved by reference) and works ``chunk_rows`` rows at a time, and the backward fills one output
buffer in place, chunk by chunk: ``exp(z - lse) * (-g)`` then ``+ g`` at the targets. Values are
those of the plain path to float rounding (``tests/test_logprobs.py``).

Second derivatives (WDPO differentiates the log-probs twice): under ``create_graph=True`` the
backward runs in grad mode and is computed with ordinary differentiable ops instead (same
formula), so double backward is exact too.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "logsoftmax_gather"]

#: elements (rows x vocab) processed per chunk: 1 MiB of fp32, so temporaries stay in cache
DEFAULT_CHUNK_ELEMENTS = 1 << 18


def _chunks(n: int, vocab: int, chunk_rows: int | None):
    step = chunk_rows or max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 logits, float64 for float64 ones."""
    return torch.promote_types(logits.dtype, torch.float32)


class _LogSoftmaxGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None):
        n, vocab = logits.shape
        dtype = _compute_dtype(logits)
        lse = torch.empty(n, dtype=dtype, device=logits.device)
        picked = logits.gather(1, targets.unsqueeze(1)).squeeze(1).to(dtype)
        for lo, hi in _chunks(n, vocab, chunk_rows):
            # log_softmax is one fused pass on CPU (logsumexp is several); lse = z_t - logp_t
            logp = torch.log_softmax(logits[lo:hi].to(dtype), dim=1)
            lse[lo:hi] = picked[lo:hi] - logp.gather(1, targets[lo:hi].unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk_rows = chunk_rows
        return picked - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable formula (double backward)
            soft = torch.softmax(logits.to(lse.dtype), dim=1)  # differentiable, unlike saved lse
            onehot = torch.zeros_like(soft).scatter_(1, targets.unsqueeze(1), 1.0)
            return (grad.unsqueeze(1) * (onehot - soft)).to(logits.dtype), None, None
        n, vocab = logits.shape
        out = torch.empty_like(logits)
        grad = grad.to(lse.dtype)
        same = out.dtype == lse.dtype
        for lo, hi in _chunks(n, vocab, ctx.chunk_rows):
            g = grad[lo:hi].unsqueeze(1)
            block = out[lo:hi] if same else None
            block = torch.sub(logits[lo:hi].to(lse.dtype), lse[lo:hi].unsqueeze(1), out=block)
            block.exp_().mul_(-g)
            block.scatter_add_(1, targets[lo:hi].unsqueeze(1), g)
            if not same:
                out[lo:hi].copy_(block)
        return out, None, None


def logsoftmax_gather(
    logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """``log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]`` (``[N, V]``,
    ``[N]`` -> ``[N]`` in float32, float64 for float64 logits) without ``[N, V]`` temporaries beyond one chunk (module docstring).
    ``chunk_rows``: rows per chunk (default: about 2^18 elements)."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"logsoftmax_gather needs logits [N, V] and targets [N], got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if logits.shape[0] == 0:
        return logits.new_zeros(0, dtype=_compute_dtype(logits)) + logits.sum() * 0
    return _LogSoftmaxGather.apply(logits, targets.long(), chunk_rows)
