"""Benchmark evaluations, usable without Lightning (installed as ``lightning_robust.evals``).

Each evaluator has ``name`` and ``evaluate(scorer) -> dict[str, float]``; a scorer has
``score(prompts, responses) -> Tensor`` (see :mod:`lightning_robust.models.scorers`, re-exported
here) or is a plain callable ``(prompts, responses) -> sequence of floats``::

    from lightning_robust.evals import RewardBench, RewardModelScorer
    metrics = RewardBench().evaluate(RewardModelScorer(model, tokenizer))
"""

from lightning_robust.evals.common import (
    CheckedScorer,
    Evaluator,
    as_scorer,
    pairwise_scores,
    read_rows,
    strict_correct,
)
from lightning_robust.evals.hhh import HHH_CONFIGS, HHHAlignment
from lightning_robust.evals.leaderboard import (
    OpenLLMLeaderboard,
    flatten_results,
    write_local_bbh_tasks,
)
from lightning_robust.evals.mt_bench import MTBenchHuman
from lightning_robust.evals.pairwise import PairwiseAccuracy
from lightning_robust.evals.rewardbench import (
    EXAMPLE_COUNTS,
    PRIOR_SETS_COLUMNS,
    SECTION_WEIGHTS,
    SUBSET_MAPPING,
    RewardBench,
    average_score,
    section_scores,
)
from lightning_robust.models.scorers import (
    DPOImplicitRewardScorer,
    LikelihoodScorer,
    RewardModelScorer,
    Scorer,
    TokenCache,
)

__all__ = [
    "EXAMPLE_COUNTS",
    "HHH_CONFIGS",
    "PRIOR_SETS_COLUMNS",
    "SECTION_WEIGHTS",
    "SUBSET_MAPPING",
    "CheckedScorer",
    "DPOImplicitRewardScorer",
    "Evaluator",
    "HHHAlignment",
    "LikelihoodScorer",
    "MTBenchHuman",
    "OpenLLMLeaderboard",
    "PairwiseAccuracy",
    "RewardBench",
    "RewardModelScorer",
    "Scorer",
    "TokenCache",
    "as_scorer",
    "average_score",
    "flatten_results",
    "pairwise_scores",
    "read_rows",
    "section_scores",
    "strict_correct",
    "write_local_bbh_tasks",
]
