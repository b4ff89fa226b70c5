"""Model and tokenizer loading, tiny offline models, and scorers."""

from lightning_robust.models.loading import (
    attention_implementation,
    load_sequence_classifier,
    load_tokenizer,
    minilm_path,
    resolve_name,
)
from lightning_robust.models.tiny import (
    TINY_MODEL_NAME,
    TINY_WORDS,
    tiny_llama_config,
    tiny_tokenizer,
)

__all__ = [
    "TINY_MODEL_NAME",
    "TINY_WORDS",
    "attention_implementation",
    "load_sequence_classifier",
    "load_tokenizer",
    "minilm_path",
    "resolve_name",
    "tiny_llama_config",
    "tiny_tokenizer",
]


def __getattr__(name: str):
    if name == "load_reward_scorer":  # moved up: one of its specs is a RewardModel checkpoint
        raise AttributeError(
            "load_reward_scorer moved to lightning_robust.modules (from lightning_robust.modules "
            "import load_reward_scorer): a .ckpt spec needs the RewardModel LightningModule"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
