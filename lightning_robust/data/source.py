"""Where preference rows come from: :class:`DataSource` and the row loader.

A source is a Hugging Face hub dataset (``datasets.load_dataset(path, name, split=split)``), a
local ``.json`` / ``.jsonl`` / ``.parquet`` file (or a glob of them; loaded with
``load_dataset("json" | "parquet", data_files=path, split="train")``), a local directory that
``load_dataset`` understands, or ``"synthetic"`` (the built-in controlled-shift generator, see
:mod:`lightning_robust.data.synthetic`; ``split`` picks train / val / shifted / minority).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

SYNTHETIC = "synthetic"
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
    """

    path: str
    name: str | None = None
    split: str = "train"
    schema: str = "auto"
    group_column: str | None = None
    data_dir: str | None = None

    @property
    def is_synthetic(self) -> bool:
        """Whether rows come from the built-in generator."""
        return self.path == SYNTHETIC

    @property
    def local_builder(self) -> str | None:
        """``"json"``/``"parquet"`` for local data files, else ``None`` (hub id or directory)."""
        ext = os.path.splitext(self.path)[1].lower()
        return _LOCAL_BUILDERS.get(ext)

    def describe(self) -> str:
        """How errors name this source: the file path, or hub id, config and split."""
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


def load_rows(source: DataSource, max_rows: int | None = None, cache_dir: str | None = None):
    """The rows of ``source`` as a ``datasets.Dataset`` (first ``max_rows`` rows when given).

    Local files must exist (a clear ``FileNotFoundError`` otherwise); hub ids go through
    ``load_dataset`` as usual (``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` keep it on the
    local cache).
    """
    from datasets import load_dataset

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
        ds = load_dataset(source.path, source.name, split=source.split, cache_dir=cache_dir, **kwargs)
    if max_rows is not None and len(ds) > max_rows:
        ds = ds.select(range(max_rows))
    return ds
