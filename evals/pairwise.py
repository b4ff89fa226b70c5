"""In-distribution pairwise accuracy on a held-out preference split (same scorers as the benchmarks).

Rows go through the project's schema adapters (:mod:`lightning_robust.data.schemas`: preference,
hh-rlhf, Unified-Feedback, ...), so any training format works. ``holdout_fraction`` reproduces
the data module's prompt split (:func:`lightning_robust.data.split.split_by_prompt`, same
fraction and seed as ``PreferenceDataModule(val_fraction=..., seed=...)``) and keeps only the
held-out prompts: for hh-rlhf's shared 1,500 rows the rows trained on are never evaluated
(docs/DESIGN.md, further choices). With a real held-out split (Unified-Feedback ``val``, hh-rlhf
``test``) leave it ``None``.

Metrics: ``accuracy`` (strict: ties wrong), ``margin`` (mean chosen - rejected score) and
``group/<name>`` accuracy when the rows have groups.
"""

from __future__ import annotations

from collections import defaultdict

from lightning_robust.data.reading import adapt_rows
from lightning_robust.data.schemas import get_schema
from lightning_robust.data.source import DataSource, load_rows
from lightning_robust.data.split import split_by_prompt
from lightning_robust.evals.common import Evaluator, pairwise_scores, strict_correct


class PairwiseAccuracy(Evaluator):
    """Accuracy of ``score(chosen) > score(rejected)`` on held-out preference pairs.

    Args:
        source: hub id or local file (any schema of ``lightning_robust.data.schemas``).
        split: hub split (``val`` for Unified-Feedback, ``test`` for hh-rlhf).
        name: the ``<benchmark>`` of the metric names (default ``in_distribution``).
        config: hub configuration name; ``data_dir``: hub sub-folder (``harmless-base``).
        schema: schema name or ``"auto"``.
        group_column: column with the group of each row (per-group accuracy).
        holdout_fraction, seed: keep only the prompt-split held-out part (see module docstring).
        max_rows: read at most this many rows.
        on_bad_row: ``"skip"`` (default here: count and skip) or ``"error"``.
    """

    def __init__(
        self,
        source: str,
        split: str = "test",
        name: str = "in_distribution",
        config: str | None = None,
        data_dir: str | None = None,
        schema: str = "auto",
        group_column: str | None = None,
        holdout_fraction: float | None = None,
        seed: int = 0,
        max_rows: int | None = None,
        on_bad_row: str = "skip",
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.name = name
        self.source = DataSource(
            path=source,
            name=config,
            split=split,
            schema=schema,
            group_column=group_column,
            data_dir=data_dir,
        )
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.max_rows = max_rows
        self.on_bad_row = on_bad_row
        self.cache_dir = cache_dir
        self.skipped: dict[str, int] = {}

    def _load(self):
        rows = load_rows(self.source, max_rows=self.max_rows, cache_dir=self.cache_dir)
        sample = rows[0] if len(rows) else None
        schema = get_schema(self.source.schema, rows.column_names, sample)
        group_column = self.source.group_column or schema.group_column
        if group_column not in rows.column_names:
            group_column = None
        out = adapt_rows(rows, schema, group_column, self.on_bad_row, self.source.describe())
        self.skipped = dict(out.skipped)
        examples = out.examples
        if self.holdout_fraction:
            _, held = split_by_prompt(examples, self.holdout_fraction, self.seed)
            examples = [examples[i] for i in held]
        return examples

    def evaluate(self, scorer) -> dict[str, float]:
        examples = self.rows()
        chosen, rejected = pairwise_scores(
            scorer,
            [e.prompt for e in examples],
            [e.chosen for e in examples],
            [e.rejected for e in examples],
        )
        correct = strict_correct(chosen, rejected).tolist()
        metrics = {
            "accuracy": sum(correct) / len(correct),
            "margin": float((chosen - rejected).mean()),
        }
        groups = defaultdict(list)
        for e, c in zip(examples, correct, strict=True):
            if e.group is not None:
                groups[e.group].append(c)
        for g, v in sorted(groups.items()):
            metrics[f"group/{g}"] = sum(v) / len(v)
        self.details = {"count": len(examples), "skipped_rows": self.skipped}
        return metrics
