"""Where preference rows come from: :class:`DataSource` and the row loader.

A source is a Hugging Face hub dataset (``datasets.load_dataset(path, name, split=split)``), a
local ``.json`` / ``.jsonl`` / ``.parquet`` file (or a glob of them; loaded with
``load_dataset("json" | "parquet", data_files=path, split="train")``), a local directory that
``load_dataset`` understands, or ``"synthetic"`` (the built-in controlled-shift generator, see
:mod:`lightning_robust.data.synthetic`; ``split`` picks train / val / shifted / minority).

Selection and mixing (preference and prompt data alike; applied by :func:`load_rows`, in order):

1. ``include_sources`` / ``exclude_sources``: keep (drop) the rows whose ``source_column``
   (default ``"source"``, Unified-Feedback's column) is in the list, e.g. S000's Unified-Feedback
   subset without its ``hh-rlhf`` and ``chatbot_arena`` sources. A filter that keeps no row is
   an error naming the option.
2. ``max_rows``: a uniform random subset of that many rows, drawn with ``seed``
   (``Dataset.shuffle(seed).select``), e.g. S000's 400K subset.
3. ``path: mix`` with ``mix: [source, ...]``: the rows of several sources (each with its own
   1 and 2) interleaved by ``datasets.interleave_datasets`` with ``mix_weights`` as sampling
   probabilities (normalised; equal when omitted), ``seed`` and ``stopping_strategy``
   (``first_exhausted``: stop when one source runs out; ``all_exhausted``: oversample until
   every source has been seen in full). The sources must have the same columns.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
MIX = "mix"
STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted")
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DataSource:
    """One dataset split to read preference pairs from.

    Args:
        path: hub id (``"Anthropic/hh-rlhf"``), local ``.json``/``.jsonl``/``.parquet`` file or
            glob, local dataset directory, or ``"synthetic"``.
        name: hub configuration name (``load_dataset(path, name)``).
        split: split to read (hub, directory or synthetic); ignored for single local files.
        schema: ``"auto"`` (detected from the columns) or a name from
            :data:`lightning_robust.data.schemas.SCHEMAS`.
        group_column: column holding the group name (overrides the schema's default group).
        data_dir: hub sub-folder (``load_dataset(path, data_dir=...)``), e.g. ``"harmless-base"``
            for ``Anthropic/hh-rlhf``.
        source_column: the column ``include_sources`` / ``exclude_sources`` read.
        include_sources: keep only rows whose ``source_column`` value is listed.
        exclude_sources: drop rows whose ``source_column`` value is listed.
        max_rows: keep a random subset of this many rows (after the filters), drawn with ``seed``.
        seed: seed of the ``max_rows`` subset and of the mixture's sampling.
        mix: with ``path: mix``, the sources to interleave (each a source or a mapping).
        mix_weights: sampling probability of each ``mix`` source (>= 0, normalised; equal when
            ``None``).
        stopping_strategy: ``"first_exhausted"`` or ``"all_exhausted"``
            (``datasets.interleave_datasets``).
    """

    path: str
    name: str | None = None
    split: str = "train"
    schema: str = "auto"
    group_column: str | None = None
    data_dir: str | None = None
    source_column: str = "source"
    include_sources: list[str] | None = None
    exclude_sources: list[str] | None = None
    max_rows: int | None = None
    seed: int = 0
    mix: list[DataSource] | None = None
    mix_weights: list[float] | None = None
    stopping_strategy: str = "first_exhausted"

    def __post_init__(self) -> None:
        if self.max_rows is not None and (isinstance(self.max_rows, bool) or self.max_rows < 1):
            raise ValueError(f"max_rows must be a positive integer, got {self.max_rows!r}")
        if self.stopping_strategy not in STOPPING_STRATEGIES:
            raise ValueError(
                f"unknown stopping_strategy={self.stopping_strategy!r}; expected one of "
                f"{list(STOPPING_STRATEGIES)}"
            )
        if self.path == MIX:
            if not self.mix:
                raise ValueError("path: mix needs `mix`, a list of at least one source")
            self.mix = [as_source(m) for m in self.mix]
            if self.mix_weights is not None:
                check_mix_weights(self.mix_weights, len(self.mix))
        elif self.mix is not None or self.mix_weights is not None:
            raise ValueError(f"`mix` / `mix_weights` need path: {MIX!r}, got path={self.path!r}")

    @property
    def is_mix(self) -> bool:
        """Whether rows come from several interleaved sources (``path: mix``)."""
        return self.path == MIX

    @property
    def is_synthetic(self) -> bool:
        """Whether rows come from the built-in generator."""
        return self.path == SYNTHETIC

    @property
    def local_builder(self) -> str | None:
        """``"json"``/``"parquet"`` for local data files, else ``None`` (hub id or directory)."""
        if self.is_mix:
            return None
        ext = os.path.splitext(self.path)[1].lower()
        return _LOCAL_BUILDERS.get(ext)

    def describe(self) -> str:
        """How errors name this source: the file path, or hub id, config and split."""
        if self.is_mix:
            return "mix(" + ", ".join(m.describe() for m in self.mix) + ")"
        if self.local_builder is not None:
            return self.path
        parts = [self.path]
        if self.name:
            parts.append(f"name={self.name}")
        if self.data_dir:
            parts.append(f"data_dir={self.data_dir}")
        parts.append(f"split={self.split}")
        return " ".join(parts)


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([DataSource])


def as_source(value: DataSource | str | Mapping) -> DataSource:
    """A :class:`DataSource` from a source, a path / hub id string, or a dict of its fields.

    ``"synthetic:<split>"`` names a split of the built-in generator.
    """
    if isinstance(value, DataSource):
        return value
    if isinstance(value, Mapping):
        return DataSource(**value)
    if isinstance(value, str):
        if value.startswith(SYNTHETIC + ":"):
            return DataSource(path=SYNTHETIC, split=value.split(":", 1)[1])
        return DataSource(path=value)
    raise TypeError(f"expected a DataSource or a path string, got {type(value).__name__}")


def check_mix_weights(weights, n: int) -> list[float]:
    """``weights`` normalised to probabilities; a clear error naming ``mix_weights`` otherwise."""
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"mix_weights has {len(weights)} entries for {n} `mix` sources")
    if any(not w >= 0 or w == float("inf") for w in weights):
        raise ValueError(f"mix_weights must be finite and >= 0, got {weights}")
    total = sum(weights)
    if not total > 0:
        raise ValueError(f"mix_weights must not sum to zero, got {weights}")
    return [w / total for w in weights]


def select_rows(ds, source: DataSource):
    """``source``'s filters and random ``max_rows`` subset applied to the ``datasets.Dataset`` ``ds``."""
    if source.include_sources is not None or source.exclude_sources is not None:
        column = source.source_column
        if column not in ds.column_names:
            raise ValueError(
                f"{source.describe()}: source_column {column!r} (read by include_sources / "
                f"exclude_sources) is not a column; columns: {ds.column_names}"
            )
        values = ds[column]
        present = set(values)
        for option, listed in (
            ("include_sources", source.include_sources),
            ("exclude_sources", source.exclude_sources),
        ):
            missing = sorted(set(listed or ()) - present)
            if missing:
                log.warning(
                    "%s: %s values %s never occur in column %r (values: %s)",
                    source.describe(),
                    option,
                    missing,
                    column,
                    sorted(map(str, present))[:20],
                )
        include = None if source.include_sources is None else set(source.include_sources)
        exclude = set(source.exclude_sources or ())
        keep = [
            i
            for i, v in enumerate(values)
            if (include is None or v in include) and v not in exclude
        ]
        if not keep:
            option = "include_sources" if include is not None else "exclude_sources"
            raise ValueError(
                f"{source.describe()}: {option} removed every row (include_sources="
                f"{source.include_sources}, exclude_sources={source.exclude_sources}); values of "
                f"{column!r}: {sorted(set(map(str, values)))[:20]}"
            )
        if len(keep) < len(ds):
            ds = ds.select(keep)
    if source.max_rows is not None and len(ds) > source.max_rows:
        ds = ds.shuffle(seed=source.seed).select(range(source.max_rows)).flatten_indices()
    return ds


def load_rows(source: DataSource, max_rows: int | None = None, cache_dir: str | None = None):
    """The rows of ``source`` as a ``datasets.Dataset``.

    ``max_rows`` (the data module's option) keeps the first rows read; then ``source``'s own
    filters, random ``max_rows`` subset and mixture apply (module docstring). Local files must
    exist (a clear ``FileNotFoundError`` otherwise); hub ids go through ``load_dataset`` as usual
    (``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` keep it on the local cache).
    """
    from datasets import interleave_datasets, load_dataset

    if source.is_mix:
        parts = [load_rows(m, max_rows, cache_dir) for m in source.mix]
        columns = [sorted(p.column_names) for p in parts]
        if any(c != columns[0] for c in columns):
            raise ValueError(
                "mix: the sources must have the same columns, got "
                + "; ".join(
                    f"{m.describe()}: {c}" for m, c in zip(source.mix, columns, strict=True)
                )
            )
        weights = check_mix_weights(source.mix_weights or [1.0] * len(parts), len(parts))
        if len(parts) == 1:
            return select_rows(parts[0], source)
        parts = [p.cast(parts[0].features) for p in parts]
        ds = interleave_datasets(
            parts,
            probabilities=weights,
            seed=source.seed,
            stopping_strategy=source.stopping_strategy,
        )
        return select_rows(ds, source)

    builder = source.local_builder
    if builder is not None:
        if not glob.glob(source.path):
            raise FileNotFoundError(f"data file not found: {source.path}")
        ds = load_dataset(builder, data_files=source.path, split="train", cache_dir=cache_dir)
    else:
        if os.path.isfile(source.path):
            raise ValueError(
                f"{source.path}: not a supported data file (expected .json, .jsonl or .parquet, "
                "a dataset directory or a hub id)"
            )
        kwargs = {"data_dir": source.data_dir} if source.data_dir else {}
        ds = load_dataset(
            source.path, source.name, split=source.split, cache_dir=cache_dir, **kwargs
        )
    if max_rows is not None and len(ds) > max_rows:
        ds = ds.select(range(max_rows))
    return select_rows(ds, source)
