"""DataModules, dataset-format adapters and collators for preference and prompt data."""

from lightning_robust.data.collator import BATCH_KEYS, PreferenceCollator
from lightning_robust.data.dataset import TokenizedPreferenceDataset
from lightning_robust.data.example import BAD_ROW_REASONS, BadRow, PreferenceExample
from lightning_robust.data.prompts import (
    PROMPT_SCHEMAS,
    PromptCollator,
    PromptExample,
    TokenizedPromptDataset,
    detect_prompt_schema,
    encode_prompts,
    render_prompt,
)
from lightning_robust.data.resumable import ResumableDataLoader, ResumableSampler
from lightning_robust.data.sampler import LengthGroupedSampler
from lightning_robust.data.schemas import SCHEMAS, detect_schema
from lightning_robust.data.source import DataSource
from lightning_robust.data.synthetic import SyntheticShiftConfig, true_reward
from lightning_robust.data.synthetic_prompts import (
    SyntheticGoldReward,
    SyntheticPromptConfig,
    SyntheticProxyReward,
)
from lightning_robust.data.tokenize import EncodedPair, encode_examples


def __getattr__(name: str):
    """Import the LightningDataModules lazily, so ``lightning_robust.evals`` (which uses the
    adapters and tokenisation here) runs without importing Lightning."""
    if name == "PreferenceDataModule":
        from lightning_robust.data.datamodule import PreferenceDataModule

        return PreferenceDataModule
    if name == "PromptDataModule":
        from lightning_robust.data.prompt_datamodule import PromptDataModule

        return PromptDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BAD_ROW_REASONS",
    "BATCH_KEYS",
    "PROMPT_SCHEMAS",
    "SCHEMAS",
    "BadRow",
    "DataSource",
    "LengthGroupedSampler",
    "EncodedPair",
    "PreferenceCollator",
    "PreferenceDataModule",
    "PreferenceExample",
    "PromptCollator",
    "PromptDataModule",
    "PromptExample",
    "ResumableDataLoader",
    "ResumableSampler",
    "SyntheticGoldReward",
    "SyntheticPromptConfig",
    "SyntheticProxyReward",
    "SyntheticShiftConfig",
    "TokenizedPreferenceDataset",
    "TokenizedPromptDataset",
    "detect_prompt_schema",
    "detect_schema",
    "encode_examples",
    "encode_prompts",
    "render_prompt",
    "true_reward",
]
