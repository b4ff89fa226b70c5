"""``PreferenceDataModule``: any supported preference schema -> padded pair batches.

Works with a Trainer and LightningCLI, and in a notebook without one::

    dm = PreferenceDataModule(train="synthetic", tokenizer="tiny")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Literal

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, SequentialSampler

from lightning_robust.data.collator import PreferenceCollator
from lightning_robust.data.dataset import TokenizedPreferenceDataset
from lightning_robust.data.example import BadRow
from lightning_robust.data.reading import (
    Examples,
    adapt_rows,
    bad_row_error,
    first_bad_json_line,
    no_usable_rows_error,
)
from lightning_robust.data.resumable import ResumableTrainData
from lightning_robust.data.sampler import LengthGroupedSampler
from lightning_robust.data.schemas import get_schema
from lightning_robust.data.source import DataSource, as_source, load_rows
from lightning_robust.data.split import split_by_prompt
from lightning_robust.data.synthetic import SyntheticShiftConfig, generate_split
from lightning_robust.data.tokenize import encode_examples
from lightning_robust.models.loading import load_tokenizer

log = logging.getLogger(__name__)

VAL = "val"
SYNTHETIC_EVAL_SETS = ("shifted", "minority")


def check_positive_int(name: str, value) -> None:
    """``ValueError`` naming the option unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def plain_value(value):
    """``value`` with dataclass instances (``DataSource``, ``SyntheticShiftConfig``) turned into
    dicts, recursively through dicts, so a checkpoint holding it loads with ``weights_only=True``."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
    return value


def input_embedding_size(module) -> int | None:
    """Rows of the first Hugging Face input-embedding table inside ``module`` (``None``: none)."""
    for sub in module.modules():
        get = getattr(sub, "get_input_embeddings", None)
        if sub is module or not callable(get):
            continue
        try:
            table = get()
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(table, torch.nn.Embedding):
            return table.num_embeddings
    return None


def source_option(option: str, value) -> DataSource:
    """:func:`as_source` with a ``ValueError`` naming the option for unknown fields or types."""
    try:
        return as_source(value)
    except TypeError as err:
        raise ValueError(
            f"{option}: {err}; a data source is a path / hub id string or a mapping with the fields "
            f"{[f.name for f in fields(DataSource)]}"
        ) from None


class PreferenceDataModule(ResumableTrainData, LightningDataModule):
    """Preference pairs from the hub, local files or the synthetic generator.

    Args:
        train: training data: a :class:`DataSource`, a hub id / local file path, or
            ``"synthetic"`` (the controlled-shift generator, the offline default).
        val: in-distribution validation data. ``None``: with synthetic training data its
            ``val`` split; otherwise a held-out part of ``train`` split by PROMPT
            (``val_fraction`` of the distinct prompts, drawn with ``seed``; all pairs of a
            prompt go to one side, so no validation row is trained on).
        eval_sets: named extra validation / test sets, e.g. ``{"rewardbench": "x.jsonl"}``.
            With synthetic training data ``shifted`` and ``minority`` come first; a user set
            with the same name replaces the default one.
        tokenizer: tokenizer name or path for :func:`lightning_robust.models.load_tokenizer`
            (``"tiny"``, ``"minilm"``, a local directory or a hub id).
        max_length: longest sequence (prompt + answer + special tokens); prompts are cut from
            the left, answers never; a pair whose answer alone does not fit is ``too_long``.
        batch_size: training batch size.
        eval_batch_size: validation / test batch size (default: ``batch_size``).
        num_workers: DataLoader workers.
        on_bad_row: ``"error"`` raises naming the source, row and field; ``"skip"`` skips bad
            rows and counts them per reason in :attr:`skipped_rows` (one warning is logged).
        group_column: column holding the group name for every source that has it (required in
            train); overrides the schema default (e.g. ``subset`` for RewardBench). A
            ``DataSource.group_column`` takes precedence.
        chat_template: ``None`` renders with the tokenizer's chat template when it has one;
            ``False`` never; ``True`` requires one.
        append_eos: end every answer with the eos token (for causal-LM policies).
        max_rows: read at most this many rows of each source (before filtering).
        val_fraction: share of the training prompts held out when ``val`` is ``None`` and the
            training data is not synthetic; ``0`` means no in-distribution ``val`` set.
        seed: seed of the prompt split and of the training shuffle.
        synthetic: settings of the synthetic generator (used by ``"synthetic"`` sources); a
            dict of its fields is accepted too (saved hyperparameters hold that dict, so
            checkpoints load with ``weights_only=True``).
        pad_to_multiple_of: round the padded width up to a multiple of this.
        shuffle: shuffle the training set each epoch (a ``torch.Generator`` seeded with
            ``seed``); ``False``: file order.
        group_by_length: draw training batches of similar length
            (:class:`~lightning_robust.data.sampler.LengthGroupedSampler`: megabatches of
            ``megabatch_factor x batch_size`` pairs sorted by length, batch order shuffled
            with ``seed + epoch``), so dynamic padding wastes little on variable-length data.
            Under data parallelism the sampler shards itself by the Trainer's rank.
        megabatch_factor: batches per length-sorted megabatch (``None``: transformers' rule
            ``min(n // (4 x global batch), 50)``); only with ``group_by_length``.
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).
        tokenize_cache: tokenise files and hub data with ``Dataset.map`` once and keep the
            token ids in ``<cache_dir>/lightning_robust_tokenized`` (keyed by tokenizer,
            options and text), so every rank and later launch loads them
            (:func:`~lightning_robust.data.tokenize.encode_examples_cached`); with a Trainer the
            work happens in ``prepare_data``. Synthetic data is always tokenised in memory.
        tokenize_num_proc: processes of that ``Dataset.map`` (``None``: one; more pays off on
            large data with idle cores, see ``benchmarks/tokenize_speed.py``).

    After :meth:`setup`: ``datasets`` (split name -> :class:`TokenizedPreferenceDataset`),
    ``val_set_names`` (``"val"`` first when present, then the eval sets, in order; one
    validation / test loader per name), ``group_names`` (group id -> name, from train first,
    sorted within each split; empty when no source has groups) and ``skipped_rows``
    (``{split: {reason: count}}``, only splits and reasons with skipped rows).
    """

    def __init__(
        self,
        train: DataSource | str = "synthetic",
        val: DataSource | str | None = None,
        eval_sets: dict[str, DataSource | str] | None = None,
        tokenizer: str = "tiny",
        max_length: int = 512,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        on_bad_row: Literal["error", "skip"] = "error",
        group_column: str | None = None,
        chat_template: bool | None = None,
        append_eos: bool = False,
        max_rows: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        synthetic: SyntheticShiftConfig | Mapping = SyntheticShiftConfig(),
        pad_to_multiple_of: int | None = None,
        shuffle: bool = True,
        cache_dir: str | None = None,
        group_by_length: bool = False,
        megabatch_factor: int | None = None,
        tokenize_cache: bool = True,
        tokenize_num_proc: int | None = None,
    ):
        super().__init__()
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        check_positive_int("batch_size", batch_size)
        check_positive_int("max_length", max_length)
        if eval_batch_size is not None:
            check_positive_int("eval_batch_size", eval_batch_size)
        if megabatch_factor is not None:
            check_positive_int("megabatch_factor", megabatch_factor)
        if max_rows is not None:
            check_positive_int("max_rows", max_rows)
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        self.save_hyperparameters()
        # checkpoints must load with torch.load(weights_only=True) (resume, load_from_checkpoint):
        # keep only plain containers in the saved hyperparameters, never our dataclasses
        self.hparams.update(
            {
                key: plain_value(self.hparams[key])
                for key in ("train", "val", "eval_sets", "synthetic")
            }
        )
        if isinstance(synthetic, Mapping):
            synthetic = SyntheticShiftConfig(**synthetic)
        self.train_source = source_option("train", train)
        self.val_source = None if val is None else source_option("val", val)
        self.eval_sources = {
            name: source_option(f"eval_sets[{name!r}]", s) for name, s in (eval_sets or {}).items()
        }
        if VAL in self.eval_sources:
            raise ValueError(f"eval_sets may not be named {VAL!r} (the in-distribution set)")
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.on_bad_row = on_bad_row
        self.group_column = group_column
        self.chat_template = chat_template
        self.append_eos = append_eos
        self.max_rows = max_rows
        self.val_fraction = val_fraction
        self.seed = seed
        self.synthetic = synthetic
        self.pad_to_multiple_of = pad_to_multiple_of
        self.shuffle = shuffle
        self.cache_dir = cache_dir
        self.group_by_length = group_by_length
        self.megabatch_factor = megabatch_factor
        self.tokenize_cache = tokenize_cache
        self.tokenize_num_proc = tokenize_num_proc
        self._tokenizer = None
        self.datasets: dict[str, TokenizedPreferenceDataset] = {}
        self.val_set_names: list[str] = []
        self.group_names: list[str] = []
        self.skipped_rows: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------ tokenizer / collator
    @property
    def tokenizer(self):
        """The loaded tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def collator(self) -> PreferenceCollator:
        """The batch collator (pads with the tokenizer's pad id)."""
        return PreferenceCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    @property
    def num_groups(self) -> int:
        """Number of distinct groups (0 when the data has none)."""
        return len(self.group_names)

    # ------------------------------------------------------------ reading
    def _sources(self) -> dict[str, DataSource | None]:
        """Split name -> source, in val_set order (``val`` None: split from train)."""
        sources: dict[str, DataSource | None] = {}
        if self.val_source is not None:
            sources[VAL] = self.val_source
        elif self.train_source.is_synthetic:
            sources[VAL] = DataSource(path="synthetic", split="val")
        elif self.val_fraction > 0:
            sources[VAL] = None
        evals: dict[str, DataSource] = {}
        if self.train_source.is_synthetic:
            evals = {name: DataSource(path="synthetic", split=name) for name in SYNTHETIC_EVAL_SETS}
        evals.update(self.eval_sources)
        sources.update(evals)
        return sources

    def _read(self, source: DataSource, is_train: bool) -> Examples:
        """Canonical examples of ``source`` under the bad-row policy."""
        if source.is_synthetic:
            rows = generate_split(source.split, self.synthetic)
            if self.max_rows is not None:
                rows = rows[: self.max_rows]
            columns = list(rows[0]) if rows else ["prompt", "chosen", "rejected", "group"]
        else:
            rows = self._load_rows(source)
            columns = list(rows.column_names)
        where = self._where(source)
        if len(rows) == 0:
            raise ValueError(f"{where}: the data source has no rows (empty dataset)")
        sample = rows[0] if len(rows) else None
        try:
            schema = get_schema(source.schema, columns, sample)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        group_column = self._group_column(source, schema.group_column, columns, is_train, where)
        return adapt_rows(rows, schema, group_column, self.on_bad_row, where)

    def _load_rows(self, source: DataSource):
        """``load_rows`` with the reader's failures turned into errors naming the source."""
        from datasets.exceptions import DatasetGenerationError

        where = self._where(source)
        json_log = logging.getLogger("datasets.packaged_modules.json.json")
        level = json_log.level
        json_log.setLevel(logging.CRITICAL)  # its traceback of a bad line: reported below instead
        try:
            return load_rows(source, self.max_rows, self.cache_dir)
        except StopIteration:  # the json builder's way of saying the file is empty
            raise ValueError(f"{where}: the data source has no rows (empty dataset)") from None
        except DatasetGenerationError as err:
            cause = err.__cause__ or err.__context__ or err
            bad_line = first_bad_json_line(source.path) if source.local_builder == "json" else None
            if bad_line is not None:
                raise ValueError(f"{bad_line}; expected valid JSON lines, JSON or Parquet") from err
            raise ValueError(
                f"{where}: cannot read the data ({type(cause).__name__}: {cause}); "
                "expected valid JSON lines, JSON or Parquet"
            ) from err
        finally:
            json_log.setLevel(level)

    def _group_column(self, source, default, columns, is_train, where) -> str | None:
        if source.group_column is not None:
            if source.group_column not in columns:
                raise ValueError(f"{where}: group column {source.group_column!r} not in {columns}")
            return source.group_column
        if self.group_column is not None:
            if self.group_column in columns:
                return self.group_column
            if is_train:
                raise ValueError(f"{where}: group column {self.group_column!r} not in {columns}")
        return default if default in columns else None

    @staticmethod
    def _where(source: DataSource) -> str:
        return f"synthetic:{source.split}" if source.is_synthetic else source.describe()

    # ------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """Download hub datasets into the cache (local files and synthetic data need nothing);
        with ``tokenize_cache``, also tokenise once here (Lightning calls this on one process
        per node before ``setup``), so every rank's ``setup`` loads the cached token ids."""
        sources = [self.train_source, *[s for s in self._sources().values() if s]]
        for source in sources:
            if not source.is_synthetic and source.local_builder is None:
                load_rows(source, None, self.cache_dir)
        if self.tokenize_cache and any(not s.is_synthetic for s in sources):
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        """Read, adapt, split and tokenise every split once (later calls do nothing)."""
        if self.datasets:
            return
        limit = getattr(self.tokenizer, "model_max_length", None)
        if limit is not None and self.max_length > limit:
            log.warning(
                "max_length=%d exceeds the tokenizer's model_max_length=%d (%s)",
                self.max_length,
                limit,
                self.tokenizer_name,
            )
        skipped: dict[str, Counter] = {}
        read: dict[str, tuple[Examples, DataSource]] = {}
        train = self._read(self.train_source, is_train=True)
        skipped["train"] = train.skipped
        sources = self._sources()
        if VAL in sources and sources[VAL] is None:
            kept, held = split_by_prompt(train.examples, self.val_fraction, self.seed)
            if held:
                read[VAL] = (train.subset(held), self.train_source)
                train = train.subset(kept)
            else:
                log.warning("val_fraction=%s holds out no prompt: no 'val' set", self.val_fraction)
                del sources[VAL]
        read = {"train": (train, self.train_source), **read}
        for name, source in sources.items():
            if source is not None:
                examples = self._read(source, is_train=False)
                skipped[name] = examples.skipped
                read[name] = (examples, source)
        self._build_groups([read["train"][0]] + [read[n][0] for n in sources])
        datasets = {
            name: self._tokenize(name, examples, source, skipped)
            for name, (examples, source) in read.items()
        }
        self.datasets = datasets  # only now: a failed setup can be retried
        self.val_set_names = list(sources)
        self.skipped_rows = {
            name: dict(sorted(c.items())) for name, c in skipped.items() if sum(c.values())
        }
        if self.skipped_rows:
            log.warning(
                "PreferenceDataModule dropped rows (on_bad_row=%r; ties are always dropped): %s",
                self.on_bad_row,
                "; ".join(
                    f"{name}: " + ", ".join(f"{k}={v}" for k, v in counts.items())
                    for name, counts in self.skipped_rows.items()
                ),
            )

    def _build_groups(self, splits: list[Examples]) -> None:
        names: list[str] = []
        for examples in splits:
            new = {ex.group for ex in examples.examples if ex.group is not None} - set(names)
            names += sorted(new)
        self.group_names = names
        self._group_ids = {name: k for k, name in enumerate(names)}

    def _tokenize(self, name, examples: Examples, source, skipped) -> TokenizedPreferenceDataset:
        from lightning_robust.data.tokenize import encode_examples_cached

        options = {"chat_template": self.chat_template, "append_eos": self.append_eos}
        if self.tokenize_cache and not source.is_synthetic:
            encoded = encode_examples_cached(
                examples.examples,
                self.tokenizer,
                self.max_length,
                **options,
                cache_dir=None
                if self.cache_dir is None
                else os.path.join(self.cache_dir, "lightning_robust_tokenized"),
                num_proc=self.tokenize_num_proc,
            )
        else:
            encoded = encode_examples(examples.examples, self.tokenizer, self.max_length, **options)
        keep = []
        for pos, enc in enumerate(encoded):
            if isinstance(enc, BadRow):
                if self.on_bad_row == "error":
                    raise bad_row_error(self._where(source), examples.source_index[pos], enc)
                skipped.setdefault(name, Counter())[enc.reason] += 1
            else:
                keep.append(pos)
        if not keep:
            raise ValueError(
                no_usable_rows_error(name, self._where(source), len(examples), skipped.get(name))
            )
        return TokenizedPreferenceDataset(
            [encoded[p] for p in keep],
            [self._group_ids.get(examples.examples[p].group, -1) for p in keep],
            [examples.source_index[p] for p in keep],
            [examples.examples[p] for p in keep],
        )

    # ------------------------------------------------------------ loaders
    def _loader(self, dataset, batch_size: int, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _require_setup(self) -> None:
        if not self.datasets:
            raise RuntimeError("call setup() first (a Trainer does it for you)")

    def _data_parallel_rank(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the attached Trainer (``(1, 0)`` without one)."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def check_model_vocab(self, module) -> None:
        """``ValueError`` when ``module`` (the LightningModule to train) cannot take this data's
        token ids: an id beyond its input-embedding table, or a model tokenizer whose vocabulary
        differs from the data module's ``tokenizer`` (ids would mean other tokens: silent garbage).

        Called by the loaders when a Trainer with a model is attached (once per model).
        """
        if module is None or getattr(self, "_vocab_checked_for", None) is module:
            return
        table = input_embedding_size(module)
        max_id = max(d.max_token_id for d in self.datasets.values())
        hint = (
            f"the data module's tokenizer={self.tokenizer_name!r} does not match the model; "
            "tokenise the data with the model's own tokenizer"
        )
        if table is not None and max_id >= table:
            raise ValueError(
                f"token id {max_id} in the data is outside the model's vocabulary "
                f"(input embeddings: {table} rows): {hint}"
            )
        model_tokenizer = getattr(module, "tokenizer", None)
        if (
            model_tokenizer is not None
            and model_tokenizer is not self.tokenizer
            and hasattr(model_tokenizer, "get_vocab")
            and model_tokenizer.get_vocab() != self.tokenizer.get_vocab()
        ):
            raise ValueError(
                f"vocabulary mismatch: the model's tokenizer has {len(model_tokenizer)} tokens, "
                f"the data module's {len(self.tokenizer)} with different ids: {hint}"
            )
        self._vocab_checked_for = module

    def _attached_module(self):
        trainer = self.trainer
        try:
            return trainer.lightning_module if trainer is not None else None
        except (AttributeError, RuntimeError):
            return None

    def train_dataloader(self) -> DataLoader:
        """Training loader; the shuffle order of epoch ``e`` is seeded by ``seed + e``
        (deterministic, and resumable mid-epoch unless ``group_by_length``)."""
        self._require_setup()
        self.check_model_vocab(self._attached_module())
        dataset = self.datasets["train"]
        if self.group_by_length:
            num_replicas, rank = self._data_parallel_rank()
            sampler = LengthGroupedSampler(
                dataset.lengths,
                self.batch_size,
                megabatch_factor=self.megabatch_factor,
                shuffle=self.shuffle,
                seed=self.seed,
                num_replicas=num_replicas,
                rank=rank,
            )
            return self._loader(dataset, self.batch_size, sampler)
        # resumable mid-epoch: the order of epoch e depends on (seed, e) only; the position is
        # saved with this module's state_dict and restored whenever the loader is built
        # (data/resumable.py); the sampler shards itself by rank, so Lightning does not wrap it
        return self.resumable_train_loader(
            dataset,
            self.batch_size,
            seed=self.seed,
            shuffle=self.shuffle,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per name of :attr:`val_set_names`, in that order."""
        self._require_setup()
        self.check_model_vocab(self._attached_module())
        return [
            self._loader(
                self.datasets[n], self.eval_batch_size, SequentialSampler(self.datasets[n])
            )
            for n in self.val_set_names
        ]

    def test_dataloader(self) -> list[DataLoader]:
        """The same loaders as :meth:`val_dataloader`."""
        return self.val_dataloader()
