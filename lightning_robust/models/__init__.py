"""Model and tokenizer loading, tiny offline models, and scorers."""

from lightning_robust.models.loading import (
    attention_implementation,
    load_sequence_classifier,
    load_tokenizer,
    minilm_path,
    resolve_name,
)
from lightning_robust.models.reward_loading import load_reward_scorer
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
    "load_reward_scorer",
    "load_sequence_classifier",
    "load_tokenizer",
    "minilm_path",
    "resolve_name",
    "tiny_llama_config",
    "tiny_tokenizer",
]
