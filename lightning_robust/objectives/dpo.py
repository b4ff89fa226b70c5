"""DPO-family per-example losses and the reward-distillation objectives (docs/ALGORITHMS.md §0, §3).

Everything here is a pure function of per-example tensors (shape ``[n]`` unless stated): the
sequence log-probabilities of the policy and of the reference model (docs/ALGORITHMS.md §0: summed
over response tokens, no length normalisation) come in, per-example losses go out. Robust
weighting of these losses (DR-DPO §3.1, KLDPO §3.2) is done by :mod:`lightning_robust.weighting`
and is not repeated here; WDPO's gradient penalty (§3.3) is in :mod:`.wdpo`.

``log sigma(z)`` is always evaluated stably as ``-softplus(-z)`` (docs/ALGORITHMS.md §0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "PREFERENCE_LOSS_TYPES",
    "preference_margin",
    "dpo_losses",
    "ipo_losses",
    "cdpo_losses",
    "rdpo_losses",
    "preference_losses",
    "implicit_rewards",
    "distillation_losses",
    "forward_kl_estimate",
    "ensemble_distillation_loss",
    "OBJECTIVE_LOSS_TYPES",
    "objective_losses",
    "dr_dpo_loss",
    "pessimism_gamma",
]

#: loss names accepted by :func:`preference_losses`
PREFERENCE_LOSS_TYPES: tuple[str, ...] = ("dpo", "ipo", "cdpo", "rdpo")


def _check_beta(beta: float) -> None:
    b = float(beta)
    if not (b > 0.0) or math.isinf(b):
        raise ValueError(f"beta must be a finite number > 0, got beta={beta!r}")


# ---------------------------------------------------------------------------------------------
# §0 margin and §3 per-example losses
# ---------------------------------------------------------------------------------------------
def preference_margin(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> torch.Tensor:
    """Preference margin ``h`` of docs/ALGORITHMS.md §0.

    ``h = [log pi_theta(y_w|x) - log pi_ref(y_w|x)] - [log pi_theta(y_l|x) - log pi_ref(y_l|x)]``,
    per example; the DPO implicit reward margin is ``beta * h``. The reference log-probs are
    used as given: pass them detached (or computed under ``no_grad``), the reference gets no
    gradient (§3).
    """
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_losses(h: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO, docs/ALGORITHMS.md §3 table: ``l_i = -log sigma(beta h_i) = softplus(-beta h_i)``.

    ``dl/dh = -beta sigma(-beta h)``. Example (§3): ``h = 1``, ``beta = 0.1`` -> ``0.644397``.
    """
    _check_beta(beta)
    return F.softplus(-beta * h)


def ipo_losses(h: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO, docs/ALGORITHMS.md §3 table (OpenRLHF form): ``l_i = (h_i - 1 / (2 beta))^2``.

    ``beta`` plays the role of IPO's ``tau``. ``dl/dh = 2 (h - 1/(2 beta))``.
    Example (§3): ``h = 1``, ``beta = 0.1`` -> ``16.0``.
    """
    _check_beta(beta)
    return (h - 1.0 / (2.0 * beta)) ** 2


def cdpo_losses(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """Conservative DPO (label smoothing ``eps``), docs/ALGORITHMS.md §3 table.

    ``l_i = -(1 - eps) log sigma(beta h_i) - eps log sigma(-beta h_i)``
    ``    = (1 - eps) softplus(-beta h_i) + eps softplus(beta h_i)``, ``0 <= eps <= 1``.
    ``eps = 0`` is DPO. Example (§3): ``h = 1``, ``beta = 0.1``, ``eps = 0.1`` -> ``0.654397``.
    """
    _check_beta(beta)
    eps = float(label_smoothing)
    if not (0.0 <= eps <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    z = beta * h
    return (1.0 - eps) * F.softplus(-z) + eps * F.softplus(z)


def rdpo_losses(h: torch.Tensor, beta: float, label_noise: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024), docs/ALGORITHMS.md §3 table [R].

    ``l_i = [(1 - eps)(-log sigma(beta h_i)) - eps(-log sigma(-beta h_i))] / (1 - 2 eps)``,
    ``0 <= eps < 1/2`` (``ValueError`` otherwise). Unbiased: its expectation over labels
    flipped with probability ``eps`` is the clean DPO loss. It can be negative.
    Example (§3): ``h = 1``, ``beta = 0.1``, ``eps = 0.1`` -> ``0.631897``.
    """
    _check_beta(beta)
    eps = float(label_noise)
    if not (0.0 <= eps < 0.5):
        raise ValueError(f"rdpo needs 0 <= label_noise < 0.5, got label_noise={label_noise!r}")
    z = beta * h
    return ((1.0 - eps) * F.softplus(-z) - eps * F.softplus(z)) / (1.0 - 2.0 * eps)


def preference_losses(
    loss_type: str, h: torch.Tensor, beta: float, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-example loss of ``loss_type`` on margins ``h`` (docs/ALGORITHMS.md §3 table).

    ``"dpo"`` -> :func:`dpo_losses`, ``"ipo"`` -> :func:`ipo_losses`, ``"cdpo"`` ->
    :func:`cdpo_losses` (``label_smoothing`` is ``eps``), ``"rdpo"`` -> :func:`rdpo_losses`
    (``label_smoothing`` is the label-noise rate ``eps < 0.5``). ``"dpo"`` and ``"ipo"`` take
    no smoothing: a non-zero ``label_smoothing`` with them is a ``ValueError`` (use
    ``"cdpo"``), as is an unknown name.
    """
    name = str(loss_type).lower()
    if name not in PREFERENCE_LOSS_TYPES:
        raise ValueError(
            f"unknown loss_type={loss_type!r}; expected one of {list(PREFERENCE_LOSS_TYPES)}"
        )
    if name in ("dpo", "ipo"):
        if float(label_smoothing) != 0.0:
            raise ValueError(
                f"loss_type={name!r} takes no label_smoothing (got {label_smoothing!r}); "
                "use loss_type='cdpo' (label smoothing) or 'rdpo' (label noise)"
            )
        return dpo_losses(h, beta) if name == "dpo" else ipo_losses(h, beta)
    if name == "cdpo":
        return cdpo_losses(h, beta, label_smoothing)
    return rdpo_losses(h, beta, label_smoothing)


def implicit_rewards(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO implicit reward ``beta (log pi_theta(y|x) - log pi_ref(y|x))`` (§0; TRL's
    ``rewards/chosen`` and ``rewards/rejected``). Not detached: detach for logging."""
    return beta * (policy_logps - ref_logps)


# ---------------------------------------------------------------------------------------------
# §3.4 reward-model distillation (S004)
# ---------------------------------------------------------------------------------------------
def distillation_losses(
    reward_first: torch.Tensor, reward_second: torch.Tensor, h: torch.Tensor, beta: float
) -> torch.Tensor:
    """d-DPO distillation loss, docs/ALGORITHMS.md §3.4 (S004 eq. 7).

    ``l_i = (r_hat(x_i, y1_i) - r_hat(x_i, y2_i) - beta h(x_i, y1_i, y2_i))^2`` where ``h`` is
    the margin (§0) of the *first* response over the second. Symmetric in the pair order
    (swapping the responses negates both differences). Broadcasts, so rewards ``[K, n]`` with
    ``h`` ``[n]`` give ``[K, n]``. Example (§3.4): ``r = (1.3, 0.2)``, ``h = 1``,
    ``beta = 0.1`` -> ``1.0``.
    """
    _check_beta(beta)
    return (reward_first - reward_second - beta * h) ** 2


def forward_kl_estimate(
    ref_logps: torch.Tensor,
    policy_logps: torch.Tensor,
    prompt_index: torch.Tensor | None = None,
    num_prompts: int | None = None,
) -> torch.Tensor:
    """Monte-Carlo ``KL(pi_ref(.|x) || pi_theta(.|x))``, docs/ALGORITHMS.md §3.4 [R estimator].

    ``KL_hat(x) = (1/m) sum_k [log pi_ref(y_k|x) - log pi_theta(y_k|x)]`` over the ``m``
    samples ``y_k ~ pi_ref(.|x)`` (or the data's responses, ``kl_samples: data``) of prompt
    ``x``; its gradient is ``-(1/m) sum_k grad log pi_theta(y_k|x)`` (an SFT term).

    Args:
        ref_logps, policy_logps: sequence log-probs of the samples, shape ``[S]``.
        prompt_index: LongTensor ``[S]``: the prompt (``0 .. num_prompts-1``) of each sample;
            ``None``: one sample per prompt, the result is ``ref_logps - policy_logps``.
        num_prompts: number of prompts; ``None``: ``prompt_index.max() + 1`` (a host sync).

    Returns ``[num_prompts]``; a prompt with no sample gets ``0``.
    Example (§3.4): ref ``(-20, -25, -22)``, policy ``(-20.5, -24, -23)``, one prompt ->
    ``0.1667``.
    """
    diff = ref_logps - policy_logps
    if prompt_index is None:
        return diff
    if prompt_index.shape != diff.shape:
        raise ValueError(
            f"prompt_index must have the shape of the log-probs {tuple(diff.shape)}, "
            f"got {tuple(prompt_index.shape)}"
        )
    idx = prompt_index.to(device=diff.device, dtype=torch.long)
    if num_prompts is None:
        num_prompts = int(idx.max().item()) + 1 if idx.numel() else 0
    sums = torch.zeros(num_prompts, dtype=diff.dtype, device=diff.device).index_add(0, idx, diff)
    counts = torch.zeros(num_prompts, dtype=diff.dtype, device=diff.device).index_add(
        0, idx, torch.ones_like(diff)
    )
    return sums / counts.clamp_min(1.0)


def _first_argmin(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the minimum along ``dim``, the smallest index among exact ties (§3.4 [D])."""
    v = values.detach()
    k = v.shape[dim]
    shape = [1] * v.dim()
    shape[dim] = k
    ar = torch.arange(k, device=v.device).view(shape).expand_as(v)
    is_min = v == v.amin(dim=dim, keepdim=True)
    return torch.where(is_min, ar, torch.full_like(ar, k)).amin(dim=dim)


def ensemble_distillation_loss(
    rewards_first: torch.Tensor,
    rewards_second: torch.Tensor,
    h: torch.Tensor,
    beta: float,
    reduction: str = "batch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """e-DPO distillation term over an ensemble of ``K`` reward models, docs/ALGORITHMS.md §3.4.

    With ``l_ki`` the :func:`distillation_losses` of reward model ``k`` on example ``i``
    (rewards ``[K, n]``, margins ``h`` ``[n]``):

    * ``reduction="batch"`` (the training objective, S004 footnote 5):
      ``min_k (1/n) sum_i l_ki``; the gradient flows through the selected ``k`` only, exact
      ties go to the smallest ``k`` [D]. ``selected`` is that ``k`` (0-dim LongTensor).
    * ``reduction="example"``: ``(1/n) sum_i min_k l_ki``, the lower bound used only for
      analysis in S004; ``selected`` is the per-example argmin ``[n]`` (ties: smallest ``k``).

    The ``gamma * KL_hat`` term of e-DPO is added by the caller. Example (§3.4, ``K = 3``,
    ``n = 2``): ``0.185`` per batch, ``0.025`` per example (``0.2050`` and ``0.0450`` with
    ``gamma * mean KL_hat = 0.02``).
    """
    if rewards_first.dim() != 2 or rewards_first.shape != rewards_second.shape:
        raise ValueError(
            "rewards_first and rewards_second must both have shape [K, n], got "
            f"{tuple(rewards_first.shape)} and {tuple(rewards_second.shape)}"
        )
    losses = distillation_losses(rewards_first, rewards_second, h.unsqueeze(0), beta)  # [K, n]
    if reduction == "batch":
        per_model = losses.mean(dim=1)
        k = _first_argmin(per_model, 0)
        return per_model.gather(0, k.view(1)).squeeze(0), k
    if reduction == "example":
        k = _first_argmin(losses, 0)  # [n]
        return losses.gather(0, k.unsqueeze(0)).squeeze(0).mean(), k
    raise ValueError(f"unknown reduction={reduction!r}; expected 'batch' or 'example'")


def dr_dpo_loss(losses: torch.Tensor, beta_prime: float = 1.0) -> torch.Tensor:
    """Dr.DPO (Wu et al. 2024a) baseline, docs/ALGORITHMS.md §3.5 [C].

    ``L = -beta' log((1/n) sum_i exp(-l_i / beta'))`` (log-sum-exp, stable), a scalar. Its
    implicit weights are ``softmax(-l / beta')``: it *down*-weights high-loss pairs (optimistic,
    the opposite of §1). ``beta' -> inf`` gives the mean. Example (§3.5, ``beta' = 1``):
    ``0.641492``.
    """
    bp = float(beta_prime)
    if not (bp > 0.0):
        raise ValueError(f"beta_prime must be > 0, got {beta_prime!r}")
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty 1-D tensor, got shape {tuple(losses.shape)}")
    if math.isinf(bp):
        return losses.mean()
    n = losses.shape[0]
    return -bp * (torch.logsumexp(-losses / bp, dim=0) - math.log(n))


def pessimism_gamma(step: int, total_steps: int, start: float, end: float) -> float:
    """Linearly annealed KL coefficient ``gamma`` of p-DPO / dp-DPO / e-DPO (docs/ALGORITHMS.md §3.4).

    ``gamma(step) = start + (end - start) * min(max(step, 0) / total_steps, 1)``: ``start`` at
    step 0, ``end`` from ``total_steps`` on; constant when ``start == end``. With
    ``total_steps <= 0`` it is ``end``.
    """
    start, end = float(start), float(end)
    if start == end:
        return start
    if total_steps <= 0:
        return end
    frac = min(max(float(step), 0.0) / float(total_steps), 1.0)
    return start + (end - start) * frac


#: the ``loss_type`` values of the DPO module (dispatched by :func:`objective_losses`)
OBJECTIVE_LOSS_TYPES = ("dpo", "ipo", "cdpo", "rdpo", "distill", "dr_dpo")


def objective_losses(
    loss_type: str,
    h: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    chosen_scores: torch.Tensor | None = None,
    rejected_scores: torch.Tensor | None = None,
    training: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor]]:
    """The ``loss_type`` dispatch of the DPO family from the margins ``h`` ``[n]``.

    Returns ``(losses, scalar, stats)``: per-example losses ``[n]`` for DPO/IPO/cDPO/rDPO
    (:func:`preference_losses`), d-DPO (:func:`distillation_losses`, one score column) and
    Dr.DPO (its per-example DPO losses, aggregated by the caller with ``dr_dpo_loss``); for e-DPO
    (``distill`` with ``K > 1`` score columns ``[n, K]``) ``losses`` is ``None`` and ``scalar``
    the batch's ensemble-minimum loss (:func:`ensemble_distillation_loss`), with
    ``stats["ensemble/selected"]``. Evaluation (``training=False``) of ``distill`` without scores
    reports the DPO loss; training without them is an error.
    """
    stats: dict[str, torch.Tensor] = {}
    has_scores = chosen_scores is not None and rejected_scores is not None
    if loss_type == "distill" and not has_scores and not training:
        return preference_losses("dpo", h, beta), None, stats
    if loss_type == "dr_dpo":
        return preference_losses("dpo", h, beta), None, stats
    if loss_type == "distill":
        if not has_scores:
            raise KeyError(
                "loss_type='distill' needs 'chosen_scores' and 'rejected_scores' in the batch"
            )
        s1, s2 = chosen_scores.to(h.dtype), rejected_scores.to(h.dtype)
        if s1.dim() == 1 or s1.shape[1] == 1:
            return distillation_losses(s1.reshape(-1), s2.reshape(-1), h, beta), None, stats
        scalar, selected = ensemble_distillation_loss(s1.T, s2.T, h, beta, reduction="batch")
        stats["ensemble/selected"] = selected.float()
        return None, scalar, stats
    return preference_losses(loss_type, h, beta, label_smoothing), None, stats
