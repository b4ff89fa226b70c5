"""Reward annotation for reward-model distillation (d-/dp-/e-DPO, docs/ALGORITHMS.md §3.4): the
library function :func:`annotate_pairs` and its command.

    python -m lightning_robust.annotate --data pairs.jsonl \\
        --reward-model runs/rm/last.ckpt --reward-model my-hf-rm-dir --output scored.jsonl

It sits at the top of the package (above ``data``, ``models`` and ``modules``): it reads data,
scores with models and resolves reward specs (a ``RewardModel`` ``.ckpt`` among them).

:func:`annotate_pairs` reads a preference source (anything ``PreferenceDataModule`` reads: a
:class:`~lightning_robust.data.source.DataSource`, a hub id, a local ``.json``/``.jsonl``/
``.parquet`` file, ``"synthetic[:split]"``), scores every ``(prompt, chosen)`` and
``(prompt, rejected)`` once with each of ``K`` reward models and writes the canonical rows
(``prompt``, ``chosen``, ``rejected``, ``group``, ``margin`` when present, ``source_row``) plus
``chosen_scores`` / ``rejected_scores``: lists of ``K`` floats, one per reward model in the order
given. That is the ``preference`` schema the data module reads for distillation: one model gives
d-/dp-DPO data, ``K > 1`` e-DPO data.

Cache: ``<output>.meta.json`` records a fingerprint of the inputs (the canonical examples, the
reward models' identities and the scoring settings) and of the written file; a second call with
the same inputs finds both unchanged and does nothing. A changed input (or an edited output)
rewrites the file. Reward-model identity: a spec string (local directory / ``.ckpt`` / hub id)
is identified by its text plus, for local paths, every file's name, size and modification time;
a :class:`~lightning_robust.models.scorers.Scorer` object by its ``fingerprint`` attribute when
it has one, else by a hash of its model's weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning_robust.data.example import PreferenceExample
from lightning_robust.data.reading import Examples, adapt_rows
from lightning_robust.data.schemas import get_schema
from lightning_robust.data.source import DataSource, as_source, load_rows
from lightning_robust.data.synthetic import SyntheticShiftConfig, generate_split
from lightning_robust.models.scorers import RewardModelScorer, Scorer
from lightning_robust.modules.reward_loading import load_reward_scorer

log = logging.getLogger(__name__)

META_SUFFIX = ".meta.json"
ANNOTATION_FORMAT = 1
_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


# ---------------------------------------------------------------- reading
def read_examples(
    source: DataSource | str,
    *,
    on_bad_row: str = "error",
    max_rows: int | None = None,
    group_column: str | None = None,
    cache_dir: str | None = None,
) -> Examples:
    """Canonical examples of ``source`` through the data module's schema adapters."""
    src = as_source(source)
    if src.is_synthetic:
        rows = generate_split(src.split, SyntheticShiftConfig())
        rows = rows[:max_rows] if max_rows is not None else rows
        columns = list(rows[0]) if rows else ["prompt", "chosen", "rejected"]
        where = f"synthetic:{src.split}"
    else:
        rows = load_rows(src, max_rows, cache_dir)
        columns = list(rows.column_names)
        where = src.describe()
    try:
        schema = get_schema(src.schema, columns, rows[0] if len(rows) else None)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    column = src.group_column or group_column or schema.group_column
    if column is not None and column not in columns:
        if src.group_column or group_column:
            raise ValueError(f"{where}: group column {column!r} not in {columns}")
        column = None
    examples = adapt_rows(rows, schema, column, on_bad_row, where)
    if not examples.examples:
        raise ValueError(f"{where}: no usable rows to annotate")
    return examples


# ---------------------------------------------------------------- fingerprints
def examples_fingerprint(examples: Examples) -> str:
    """Hash of the canonical examples (prompt, answers, group, margin, source row), in order."""
    h = hashlib.blake2b(digest_size=16)
    for ex, row in zip(examples.examples, examples.source_index, strict=True):
        record = [row, ex.prompt, ex.chosen, ex.rejected, ex.group, ex.margin]
        h.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _weights_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__name__.encode())
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _path_fingerprint(spec: str) -> str:
    """A spec's text plus (local paths) each file's relative name, size and mtime."""
    h = hashlib.blake2b(digest_size=16)
    h.update(spec.encode())
    path = Path(spec)
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            h.update(
                f"{p.relative_to(path) if path.is_dir() else p.name}:{st.st_size}:{st.st_mtime_ns};".encode()
            )
    return h.hexdigest()


def reward_model_fingerprint(reward_model) -> str:
    """Identity of one reward model (a spec string or a scorer object)."""
    if isinstance(reward_model, (str, os.PathLike)):
        return "spec:" + _path_fingerprint(os.fspath(reward_model))
    explicit = getattr(reward_model, "fingerprint", None)
    if isinstance(explicit, str):
        return "scorer:" + explicit
    model = getattr(reward_model, "model", None)
    if isinstance(model, torch.nn.Module):
        return "weights:" + _weights_fingerprint(model)
    raise ValueError(
        f"cannot identify reward model {reward_model!r} for the annotation cache: give a spec "
        "string, a scorer with a `.model` torch module, or one with a `fingerprint` string"
    )


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- scoring
def _resolve_scorer(reward_model, tokenizer, batch_size: int, max_length: int):
    if isinstance(reward_model, (str, os.PathLike)):
        return load_reward_scorer(
            os.fspath(reward_model), batch_size=batch_size, max_length=max_length
        )
    if isinstance(reward_model, torch.nn.Module):
        return RewardModelScorer(
            reward_model, tokenizer, max_length=max_length, batch_size=batch_size
        )
    if isinstance(reward_model, Scorer):
        return reward_model
    raise ValueError(f"reward model {reward_model!r} is neither a spec string nor a Scorer")


def score_pairs(scorer, examples: Sequence[PreferenceExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen [n], rejected [n])`` scores of one scorer; chosen and rejected are interleaved
    so the scorer's token cache encodes each pair's prompt once."""
    prompts, responses = [], []
    for ex in examples:
        prompts += [ex.prompt, ex.prompt]
        responses += [ex.chosen, ex.rejected]
    scores = torch.as_tensor(scorer.score(prompts, responses), dtype=torch.float32).reshape(-1)
    if scores.shape[0] != len(responses):
        raise ValueError(
            f"scorer {scorer!r} returned {scores.shape[0]} scores for {len(responses)}"
        )
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).nonzero()[0, 0]) // 2
        raise ValueError(f"scorer {scorer!r} gave a non-finite score on example {bad}")
    return scores[0::2], scores[1::2]


# ---------------------------------------------------------------- writing
def _output_format(output: str) -> str:
    ext = os.path.splitext(output)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"output {output!r}: expected a .jsonl, .json or .parquet file")
    return _FORMATS[ext]


def _rows(examples: Examples, chosen: torch.Tensor, rejected: torch.Tensor) -> list[dict]:
    rows = []
    for i, (ex, src) in enumerate(zip(examples.examples, examples.source_index, strict=True)):
        row = {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}
        if ex.group is not None:
            row["group"] = ex.group
        if ex.margin is not None:
            row["margin"] = ex.margin
        row["chosen_scores"] = chosen[i].tolist()
        row["rejected_scores"] = rejected[i].tolist()
        row["source_row"] = src
        rows.append(row)
    return rows


def _write(rows: list[dict], output: str, fmt: str, fingerprint: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    if fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        meta = dict(table.schema.metadata or {})
        meta[b"lightning_robust.annotation_fingerprint"] = fingerprint.encode()
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, output)


def _read_meta(output: str) -> dict | None:
    try:
        with open(output + META_SUFFIX, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- entry point
def annotate_pairs(
    source: DataSource | str,
    reward_models: Sequence,
    output: str | os.PathLike,
    *,
    tokenizer=None,
    batch_size: int = 16,
    max_length: int = 1024,
    on_bad_row: str = "error",
    max_rows: int | None = None,
    group_column: str | None = None,
    cache_dir: str | None = None,
    force: bool = False,
) -> str:
    """Score every pair of ``source`` with each reward model and write the annotated rows.

    Args:
        source: preference data (``DataSource``, hub id, local file, ``"synthetic[:split]"``).
        reward_models: ``K >= 1`` reward models: spec strings (resolved by
            ``lightning_robust.modules.load_reward_scorer``: a Hugging Face
            sequence-classifier directory / hub id or a ``RewardModel`` ``.ckpt``), ``Scorer``
            objects, or ``*ForSequenceClassification`` modules (with ``tokenizer``).
        output: ``.jsonl`` (or ``.json``, written as JSON lines) or ``.parquet`` file.
        tokenizer: tokenizer of module reward models (scorers and specs bring their own).
        batch_size, max_length: scoring batch size and longest sequence for modules and specs.
        on_bad_row, max_rows, group_column, cache_dir: as ``PreferenceDataModule``.
        force: rescore and rewrite even when the cache matches.

    Returns the output path. ``chosen_scores[i][k]`` is reward model ``k``'s score of row ``i``.
    """
    if not reward_models:
        raise ValueError("reward_models is empty: give at least one reward model")
    if batch_size < 1 or max_length < 2:
        raise ValueError(
            f"batch_size >= 1 and max_length >= 2 needed, got {batch_size}, {max_length}"
        )
    output = os.fspath(output)
    fmt = _output_format(output)
    examples = read_examples(
        source,
        on_bad_row=on_bad_row,
        max_rows=max_rows,
        group_column=group_column,
        cache_dir=cache_dir,
    )
    model_ids = [reward_model_fingerprint(m) for m in reward_models]
    key = {
        "format": ANNOTATION_FORMAT,
        "data": examples_fingerprint(examples),
        "reward_models": model_ids,
        "max_length": max_length,
    }
    fingerprint = hashlib.blake2b(
        json.dumps(key, sort_keys=True).encode(), digest_size=16
    ).hexdigest()
    meta = _read_meta(output)
    if (
        not force
        and meta is not None
        and meta.get("fingerprint") == fingerprint
        and os.path.exists(output)
        and meta.get("output_digest") == _file_digest(output)
    ):
        log.info("annotation cache hit: %s is up to date (fingerprint %s)", output, fingerprint)
        return output
    chosen, rejected = [], []
    for spec in reward_models:
        scorer = _resolve_scorer(spec, tokenizer, batch_size, max_length)
        c, r = score_pairs(scorer, examples.examples)
        chosen.append(c)
        rejected.append(r)
    rows = _rows(examples, torch.stack(chosen, 1), torch.stack(rejected, 1))
    _write(rows, output, fmt, fingerprint)
    record = {
        **key,
        "fingerprint": fingerprint,
        "rows": len(rows),
        "skipped": dict(examples.skipped),
        "reward_model_names": [
            os.fspath(m) if isinstance(m, (str, os.PathLike)) else type(m).__name__
            for m in reward_models
        ],
        "output_digest": _file_digest(output),
    }
    with open(output + META_SUFFIX, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    log.info(
        "annotated %d pairs with %d reward model(s) into %s", len(rows), len(model_ids), output
    )
    return output


# ---------------------------------------------------------------- command
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_robust.annotate",
        description="Score preference pairs with reward models for d-/dp-/e-DPO (docs/ALGORITHMS.md §3.4).",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="hub id, local .json/.jsonl/.parquet file or synthetic[:split]",
    )
    parser.add_argument("--split", default="train", help="split of a hub dataset or directory")
    parser.add_argument("--name", default=None, help="hub configuration name")
    parser.add_argument("--data-dir", default=None, help="hub sub-folder (e.g. harmless-base)")
    parser.add_argument("--schema", default="auto", help="data schema (default: detected)")
    parser.add_argument(
        "--reward-model",
        action="append",
        required=True,
        dest="reward_models",
        help="HF sequence-classifier dir / hub id or RewardModel .ckpt; repeat for an ensemble (e-DPO)",
    )
    parser.add_argument("--output", required=True, help=".jsonl or .parquet file to write")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    parser.add_argument("--group-column", default=None)
    parser.add_argument("--force", action="store_true", help="rescore even when the cache matches")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = args.data
    if not args.data.startswith("synthetic"):
        source = DataSource(
            path=args.data,
            name=args.name,
            split=args.split,
            schema=args.schema,
            data_dir=args.data_dir,
        )
    path = annotate_pairs(
        source,
        args.reward_models,
        args.output,
        batch_size=args.batch_size,
        max_length=args.max_length,
        on_bad_row=args.on_bad_row,
        max_rows=args.max_rows,
        group_column=args.group_column,
        force=args.force,
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
