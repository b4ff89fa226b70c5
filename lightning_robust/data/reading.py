"""Turn raw rows into canonical examples, applying the bad-row policy.

``on_bad_row="error"`` raises a ``ValueError`` naming the source (file, or hub id and split),
the 0-based row index, the field and the reason; ``"skip"`` drops the row and counts it per
reason. Ties (equal ratings, tie verdicts) are always dropped and counted, never an error.
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lightning_robust.data.example import DROP_REASONS, BadRow, PreferenceExample
from lightning_robust.data.schemas import Schema

ON_BAD_ROW = ("error", "skip")


def bad_row_error(where: str, index: int, err: BadRow) -> ValueError:
    """The error raised for a bad row under ``on_bad_row="error"``."""
    return ValueError(
        f"bad row in {where}, row {index} (0-based): {err}. "
        "Fix the data, or set on_bad_row='skip' to skip and count such rows."
    )


def no_usable_rows_error(
    split: str, where: str, read: int, skipped: Mapping[str, int] | None
) -> str:
    """The message when a split keeps no row: how many rows were dropped, and why."""
    counts = {k: v for k, v in sorted((skipped or {}).items()) if v}
    if not counts:
        return f"{split} ({where}): no usable rows ({read} row(s) read)"
    detail = ", ".join(f"{k}={v}" for k, v in counts.items())
    return (
        f"{split} ({where}): no usable rows: all {sum(counts.values())} row(s) dropped ({detail})"
    )


def first_bad_json_line(pattern: str, limit_bytes: int = 1 << 30) -> str | None:
    """``"<file>, line <n>: <json error>"`` for the first line of the JSON-lines file(s)
    ``pattern`` that is not a JSON object, or ``None`` (the files are JSON lines, or one JSON
    document). Only called after the reader failed, to name the line."""
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(limit_bytes)
        except (OSError, UnicodeDecodeError) as err:
            return f"{path}: cannot read it as text ({err})"
        try:
            json.loads(text)
            continue  # one JSON document: not a JSON-lines problem
        except ValueError:
            pass
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                return f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})"
            if not isinstance(value, dict):
                return f"{path}, line {number}: expected a JSON object, got {type(value).__name__}"
    return None


@dataclass
class Examples:
    """Canonical examples of one source, with their 0-based row indices and skip counts."""

    examples: list[PreferenceExample] = field(default_factory=list)
    source_index: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, positions: Iterable[int]) -> Examples:
        """The examples at ``positions`` (skip counts are not carried over)."""
        positions = list(positions)
        return Examples(
            [self.examples[p] for p in positions], [self.source_index[p] for p in positions]
        )


def adapt_rows(
    rows: Iterable[Mapping],
    schema: Schema,
    group_column: str | None,
    on_bad_row: str,
    where: str,
) -> Examples:
    """Apply ``schema`` to every row; bad rows raise or are counted (see module docstring)."""
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    out = Examples()
    for index, row in enumerate(rows):
        try:
            example = schema.adapt(row, group_column)
        except BadRow as err:
            if err.reason in DROP_REASONS or on_bad_row == "skip":
                out.skipped[err.reason] += 1
                continue
            raise bad_row_error(where, index, err) from None
        out.examples.append(example)
        out.source_index.append(index)
    return out
