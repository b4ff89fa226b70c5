"""Tiny random-init models and a built-in tokenizer, for tests and the offline quickstart.

Nothing here touches the network. The tokenizer is a byte-level BPE trained in-process on a
fixed word list, so every word of :data:`TINY_WORDS` is a single token and any other text still
encodes (byte fallback); training is deterministic, so the same vocabulary is rebuilt in every
process (the model's embedding and the data module's tokenizer agree without sharing files).
"""

from __future__ import annotations

from functools import lru_cache

# the word list lives with the synthetic data that draws its vocabulary from it (data sits below
# models: models may import data, never the reverse); re-exported here for the tokenizer
from lightning_robust.data.synthetic import TINY_WORDS

TINY_MODEL_NAME = "tiny"

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """Byte-level BPE over :data:`TINY_WORDS` (pad ``<pad>``, eos ``</s>``, no chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Every word several times, in a fixed order: BPE learns a single token per word.
    backend.train_from_iterator([" ".join(TINY_WORDS)] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=1024,
    )


def tiny_llama_config(vocab_size: int, pad_token_id: int, **overrides):
    """A small Llama config (about 0.1 M parameters by default) for CPU tests.

    Defaults chosen here: hidden 64, 2 layers, 4 heads, MLP 128, positions 1024.
    """
    from transformers import LlamaConfig

    options = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    options.update(overrides)
    return LlamaConfig(**options)
