"""``PromptDataModule``: prompts for online RL (PPO / GRPO) as left-padded token batches.

Works with a Trainer and LightningCLI, and in a notebook without one::

    dm = PromptDataModule()  # the synthetic prompt task, offline
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch["prompt_input_ids"], batch["prompts"]
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Literal

from lightning import LightningDataModule
from torch.utils.data import DataLoader, SequentialSampler

from lightning_robust.data.example import EMPTY, BadRow
from lightning_robust.data.prompts import (
    PromptCollator,
    PromptRows,
    TokenizedPromptDataset,
    adapt_prompt_rows,
    encode_prompts,
    get_prompt_schema,
)
from lightning_robust.data.reading import bad_row_error
from lightning_robust.data.resumable import ResumableTrainData
from lightning_robust.data.source import DataSource, as_source, load_rows
from lightning_robust.data.split import split_by_prompt
from lightning_robust.data.synthetic_prompts import SyntheticPromptConfig, generate_prompts
from lightning_robust.models.loading import TINY_MODEL_NAME, load_causal_tokenizer

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"


class PromptDataModule(ResumableTrainData, LightningDataModule):
    """Prompts from the hub, local files or the synthetic prompt task.

    Args:
        train: training prompts: a :class:`DataSource`, a hub id / local file path, or
            ``"synthetic"``. ``None`` (and no other source): the synthetic prompt task
            (:mod:`lightning_robust.data.synthetic_prompts`), the offline default.
        val: validation prompts. ``None``: with synthetic training data its ``val`` split;
            otherwise ``val_fraction`` of the distinct training prompts (none by default).
        tokenizer: tokenizer name or path (``"tiny"``, a local directory, a hub id, a GGUF
            file); the CLI links it to ``model.init_args.model_name_or_path``.
        schema: ``"auto"`` or a name of :data:`~lightning_robust.data.prompts.PROMPT_SCHEMAS`
            (a ``DataSource.schema`` other than ``"auto"`` wins for its source).
        max_prompt_length: longest prompt in tokens (special tokens included); longer prompts
            are cut from the left and counted in :attr:`truncated_prompts`.
        batch_size: training batch size (prompts per step).
        val_batch_size: validation batch size (default: ``batch_size``).
        chat_template: ``None`` renders with the tokenizer's chat template when it has one;
            ``False`` never; ``True`` requires one.
        synthetic: settings of the synthetic prompt task (``None``: the defaults).
        on_bad_row: ``"error"`` raises naming the source, row and field; ``"skip"`` skips bad
            rows and counts them per reason in :attr:`skipped_rows` (one warning is logged).
        num_workers: DataLoader workers.
        seed: seed of the training shuffle and of the ``val_fraction`` split.
        val_fraction: share of the training prompts held out as ``val`` when ``val`` is ``None``
            and the data is not synthetic.
        shuffle: shuffle the training prompts each epoch (seeded); ``False``: file order.
        max_rows: read at most this many rows of each source.
        cache_dir: ``datasets`` cache directory.

    After :meth:`setup`: :attr:`train_dataset`, :attr:`val_dataset` (``None`` without a
    validation set), :attr:`group_names` (group id -> name), :attr:`skipped_rows`
    (reason -> count, all splits), :attr:`skipped_rows_by_split` and
    :attr:`truncated_prompts` (split -> prompts cut from the left).
    """

    def __init__(
        self,
        train: DataSource | str | None = None,
        val: DataSource | str | None = None,
        tokenizer: str = "tiny",
        schema: str = "auto",
        max_prompt_length: int = 128,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        chat_template: bool | None = None,
        synthetic: SyntheticPromptConfig | None = None,
        on_bad_row: Literal["error", "skip"] = "error",
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.0,
        shuffle: bool = True,
        max_rows: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        if max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be positive, got {max_prompt_length}")
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch sizes must be positive, got {batch_size}, {val_batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        if isinstance(synthetic, dict):  # LightningCLI may hand the dataclass over as a dict
            synthetic = SyntheticPromptConfig(**synthetic)
        self.train_source = as_source(train if train is not None else "synthetic")
        self.val_source = None if val is None else as_source(val)
        self.tokenizer_name = tokenizer
        self.schema = schema
        self.max_prompt_length = max_prompt_length
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.chat_template = chat_template
        self.synthetic = synthetic or SyntheticPromptConfig()
        self.on_bad_row = on_bad_row
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.shuffle = shuffle
        self.max_rows = max_rows
        self.cache_dir = cache_dir
        self._tokenizer = None
        self.datasets: dict[str, TokenizedPromptDataset] = {}
        self.group_names: list[str] = []
        self.skipped_rows_by_split: dict[str, dict[str, int]] = {}
        self.truncated_prompts: dict[str, int] = {}

    # ------------------------------------------------------------ properties
    @property
    def tokenizer(self):
        """The tokenizer (loaded on first use, ``padding_side="left"``; the shared in-process tiny
        tokenizer is copied first, so other users keep their padding side)."""
        if self._tokenizer is None:
            tokenizer = load_causal_tokenizer(self.tokenizer_name)
            if self.tokenizer_name == TINY_MODEL_NAME:
                tokenizer = copy.deepcopy(tokenizer)
            tokenizer.padding_side = "left"
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def collator(self) -> PromptCollator:
        """The left-padding collator (pads with the tokenizer's pad id)."""
        return PromptCollator(self.tokenizer.pad_token_id)

    @property
    def train_dataset(self) -> TokenizedPromptDataset:
        self._require_setup()
        return self.datasets[TRAIN]

    @property
    def val_dataset(self) -> TokenizedPromptDataset | None:
        self._require_setup()
        return self.datasets.get(VAL)

    @property
    def skipped_rows(self) -> dict[str, int]:
        """Bad rows skipped under ``on_bad_row="skip"``: reason -> count over all splits."""
        total: Counter = Counter()
        for counts in self.skipped_rows_by_split.values():
            total.update(counts)
        return dict(sorted(total.items()))

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    # ------------------------------------------------------------ reading
    @staticmethod
    def _where(source: DataSource) -> str:
        return f"synthetic:{source.split}" if source.is_synthetic else source.describe()

    def _read(self, source: DataSource) -> PromptRows:
        where = self._where(source)
        if source.is_synthetic:
            rows = generate_prompts(source.split, self.synthetic)
            if self.max_rows is not None:
                rows = rows[: self.max_rows]
            columns = ["prompt", "group"]
        else:
            rows = load_rows(source, self.max_rows, self.cache_dir)
            columns = list(rows.column_names)
        name = source.schema if source.schema != "auto" else self.schema
        try:
            schema = get_prompt_schema(name, columns, rows[0] if len(rows) else None)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        group_column = source.group_column
        if group_column is not None and group_column not in columns:
            raise ValueError(f"{where}: group column {group_column!r} not in {columns}")
        if group_column is None and schema.group_column in columns:
            group_column = schema.group_column
        return adapt_prompt_rows(rows, schema, group_column, self.on_bad_row, where)

    def prepare_data(self) -> None:
        """Download hub datasets into the cache (local files and synthetic data need nothing)."""
        for source in (self.train_source, self.val_source):
            if source is not None and not source.is_synthetic and source.local_builder is None:
                load_rows(source, None, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Read, adapt and tokenise every split once (later calls do nothing)."""
        if self.datasets:
            return
        train = self._read(self.train_source)
        read: dict[str, tuple[PromptRows, DataSource]] = {TRAIN: (train, self.train_source)}
        if self.val_source is not None:
            read[VAL] = (self._read(self.val_source), self.val_source)
        elif self.train_source.is_synthetic:
            if self.synthetic.num_val > 0:
                source = DataSource(path="synthetic", split=VAL)
                read[VAL] = (self._read(source), source)
        elif self.val_fraction > 0:
            kept, held = split_by_prompt(train.examples, self.val_fraction, self.seed)
            if held:
                held_rows, kept_rows = train.subset(held), train.subset(kept)
                kept_rows.skipped = train.skipped
                read = {TRAIN: (kept_rows, self.train_source), VAL: (held_rows, self.train_source)}
        names: list[str] = []
        for rows, _ in read.values():
            names += sorted({ex.group for ex in rows.examples if ex.group is not None} - set(names))
        group_ids = {name: k for k, name in enumerate(names)}
        skipped = {split: Counter(rows.skipped) for split, (rows, _) in read.items()}
        truncated: dict[str, int] = {}
        datasets = {
            split: self._tokenize(split, rows, source, group_ids, skipped, truncated)
            for split, (rows, source) in read.items()
        }
        self.datasets = datasets  # only now: a failed setup can be retried
        self.group_names = names
        self.truncated_prompts = truncated
        self.skipped_rows_by_split = {
            s: dict(sorted(c.items())) for s, c in skipped.items() if sum(c.values())
        }
        if self.skipped_rows_by_split:
            log.warning(
                "PromptDataModule skipped bad rows (on_bad_row='skip'): %s",
                "; ".join(
                    f"{s}: " + ", ".join(f"{k}={v}" for k, v in c.items())
                    for s, c in self.skipped_rows_by_split.items()
                ),
            )
        if any(truncated.values()):
            log.info(
                "prompts cut from the left to max_prompt_length=%d: %s",
                self.max_prompt_length,
                truncated,
            )

    def _tokenize(
        self, split, rows: PromptRows, source, group_ids, skipped, truncated
    ) -> TokenizedPromptDataset:
        encoded = encode_prompts(
            [ex.prompt for ex in rows.examples],
            self.tokenizer,
            self.max_prompt_length,
            self.chat_template,
        )
        keep = []
        for pos, ids in enumerate(encoded.input_ids):
            if ids is None:
                err = BadRow(EMPTY, "prompt", "the prompt encodes to no tokens")
                if self.on_bad_row == "error":
                    raise bad_row_error(self._where(source), rows.source_index[pos], err)
                skipped[split][err.reason] += 1
            else:
                keep.append(pos)
        if not keep:
            raise ValueError(f"{split} ({self._where(source)}): no usable prompts")
        truncated[split] = encoded.truncated
        return TokenizedPromptDataset(
            [encoded.input_ids[p] for p in keep],
            [rows.examples[p].prompt for p in keep],
            [group_ids.get(rows.examples[p].group, -1) for p in keep],
            [rows.source_index[p] for p in keep],
            has_groups=rows.has_groups,
        )

    # ------------------------------------------------------------ loaders
    def _require_setup(self) -> None:
        if not self.datasets:
            raise RuntimeError("call setup() first (a Trainer does it for you)")

    def _loader(self, dataset, batch_size: int, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Training prompts; the order of epoch ``e`` is seeded by ``seed + e`` (deterministic,
        resumable mid-epoch, sharded by rank: data/resumable.py)."""
        dataset = self.train_dataset
        return self.resumable_train_loader(
            dataset,
            self.batch_size,
            seed=self.seed,
            shuffle=self.shuffle,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        """Validation prompts in order (an empty list when there is no validation set)."""
        dataset = self.val_dataset
        if dataset is None:
            return []
        return self._loader(dataset, self.val_batch_size, SequentialSampler(dataset))
