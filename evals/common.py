"""Shared pieces of the benchmark evaluators: row loading, pairwise scoring, the evaluator base.

A scorer is an object with ``score(prompts, responses)`` or a plain callable
``(prompts, responses) -> sequence of floats``; :func:`as_scorer` accepts both and checks the
output (one finite number per response, else a one-line ``ValueError``).

An evaluator has a ``name`` (the ``<benchmark>`` of ``eval/<benchmark>/<subset>``) and
``evaluate(scorer) -> dict[str, float]`` (a flat dict ``{subset_or_section: value}``); the
details of its last run (counts, missing subsets) are in ``evaluator.details``. Rows are read once
and kept, so repeated evaluations during training only run the model (the scorer caches the
tokenisation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from lightning_robust.data.source import DataSource, load_rows


def is_local(path: str) -> bool:
    """Whether ``path`` names a local file or directory (else: a hub id)."""
    return os.path.exists(path) or path.endswith((".json", ".jsonl", ".parquet"))


def read_rows(
    path: str,
    name: str | None = None,
    split: str = "train",
    max_rows: int | None = None,
    cache_dir: str | None = None,
) -> list[dict]:
    """Rows of a hub dataset (``load_dataset(path, name, split=split)``) or a local file.

    Local ``.json``/``.jsonl``/``.parquet`` files (the same columns as the hub data) ignore
    ``name`` and ``split``.
    """
    source = DataSource(path=str(path), name=name, split=split)
    where = str(path) if is_local(str(path)) else f"{path} (split {split!r})"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ValueError(f"benchmark data {where} is empty (0 bytes)")
    try:
        rows = [dict(r) for r in load_rows(source, max_rows=max_rows, cache_dir=cache_dir)]
    except StopIteration:  # raised by the datasets JSON reader on a file without rows
        raise ValueError(f"benchmark data {where} has no rows") from None
    if not rows:
        raise ValueError(f"benchmark data {where} has no rows")
    return rows


def as_scores(values, count: int, where: str = "scorer") -> torch.Tensor:
    """``values`` (a tensor, list, tuple or array of numbers) as a float32 tensor of ``count``
    finite scores; ``ValueError`` naming ``where`` otherwise."""
    try:
        scores = torch.as_tensor(
            values if isinstance(values, torch.Tensor) else list(values), dtype=torch.float32
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{where} must return a sequence of numbers, got {type(values).__name__}: {err}"
        ) from None
    scores = (
        scores.detach().cpu().reshape(-1)
        if scores.dim() == 2 and scores.shape[-1] == 1
        else scores.detach().cpu()
    )
    if scores.dim() != 1 or scores.numel() != count:
        raise ValueError(
            f"{where} returned shape {tuple(scores.shape)} for {count} responses (one score each)"
        )
    if not bool(torch.isfinite(scores).all()):
        bad = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()[:5]
        raise ValueError(f"{where} returned non-finite scores at positions {bad}")
    return scores


class CheckedScorer:
    """A scorer from a plain callable ``(prompts, responses) -> sequence of floats`` or an object
    with ``score(prompts, responses)``; its output is checked and returned as a float tensor."""

    def __init__(self, scorer):
        if callable(getattr(scorer, "score", None)):
            self._score, self.where = scorer.score, f"{type(scorer).__name__}.score"
        elif callable(scorer):
            self._score, self.where = scorer, getattr(scorer, "__name__", type(scorer).__name__)
        else:
            raise TypeError(
                f"a scorer is a callable (prompts, responses) -> floats or has .score(); got {type(scorer).__name__}"
            )
        self.inner = scorer

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = list(prompts), list(responses)
        return as_scores(self._score(prompts, responses), len(responses), self.where)

    def __getattr__(self, name):  # model, policy, ... of the wrapped scorer (leaderboard runs)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def as_scorer(scorer) -> CheckedScorer:
    """``scorer`` wrapped in :class:`CheckedScorer` (unchanged when it already is one)."""
    return scorer if isinstance(scorer, CheckedScorer) else CheckedScorer(scorer)


def pairwise_scores(
    scorer, prompts: Sequence, chosen: Sequence[str], rejected: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of chosen and rejected responses; items interleaved so each pair shares a batch."""
    n = len(prompts)
    if not (len(chosen) == len(rejected) == n):
        raise ValueError("prompts, chosen and rejected must have the same length")
    both_prompts = [p for p in prompts for _ in range(2)]
    both_responses = [r for pair in zip(chosen, rejected, strict=True) for r in pair]
    scores = as_scorer(scorer).score(both_prompts, both_responses)
    return scores[0::2], scores[1::2]


def strict_correct(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bool per pair: ``chosen > rejected`` strictly (a tie is wrong, as RewardBench)."""
    return chosen > rejected


def mean(values: Sequence[float]) -> float:
    """Plain mean; NaN for an empty sequence."""
    values = list(values)
    return sum(values) / len(values) if values else math.nan


class Evaluator:
    """Base of the evaluators: a name, lazily read rows, ``evaluate(scorer)``."""

    name: str = "benchmark"

    def __init__(self) -> None:
        self.details: dict = {}
        self._rows = None

    def rows(self):
        """The benchmark rows (read on first use, then kept)."""
        if self._rows is None:
            try:
                rows = self._load()
            except StopIteration:  # the datasets JSON reader on a file without rows
                rows = []
            if not rows:
                source = getattr(self, "source", None)
                raise ValueError(f"{self.name}: no rows in {getattr(source, 'path', source)!s}")
            self._rows = rows
        return self._rows

    def _load(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, scorer) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, scorer) -> dict[str, float]:
        return self.evaluate(scorer)
