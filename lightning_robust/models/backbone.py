"""The one backbone loader of the modules: model-loading options as a dataclass and
:func:`load_backbone` (tokenizer, model, dropout policy) shared by RewardModel, DPO, GRPO and PPO.

What each module does after loading stays in the module: the reference copy (DPO, GRPO/PPO),
frozen parameters (RewardModel), then :func:`~lightning_robust.models.lora.prepare_for_training`
(gradient checkpointing and LoRA, in that order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning_robust.models.causal_lm import load_causal_lm
from lightning_robust.models.loading import (
    load_causal_tokenizer,
    load_sequence_classifier,
    load_tokenizer,
)
from lightning_robust.models.lora import disable_dropout

DTYPES = ("float32", "bfloat16", "float16")
BackboneKind = Literal["causal_lm", "sequence_classifier"]


@dataclass(frozen=True)
class ModelOptions:
    """How a module loads its backbone.

    Attributes:
        name_or_path: ``"tiny"`` (random-init tiny Llama, offline), a local directory, a hub id,
            a ``.gguf`` file or ``"smollm2"`` (causal LMs), ``"minilm"`` (sequence classifiers).
        tiny_config: overrides of the tiny Llama config (``name_or_path="tiny"`` only).
        dtype: ``float32`` | ``bfloat16`` | ``float16`` | ``None`` (the checkpoint's own).
        attn_implementation: ``None`` (flash-attn 2 when available, else SDPA), ``"sdpa"``,
            ``"eager"``, ``"flash_attention_2"``.
        gradient_checkpointing: non-reentrant activation checkpointing.
        dropout: ``False`` zeroes every dropout probability (TRL's ``disable_dropout=True``).
        trust_remote_code: allow custom model code from a directory / hub id.
        init_seed: seed of the tiny model's random initialisation.
    """

    name_or_path: str = "tiny"
    tiny_config: dict | None = None
    dtype: str | None = None
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    dropout: bool = False
    trust_remote_code: bool = False
    init_seed: int = 0

    def __post_init__(self):
        if not isinstance(self.name_or_path, str) or not self.name_or_path.strip():
            raise ValueError(
                f"model_name_or_path must be a non-empty string, got {self.name_or_path!r}"
            )
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(
                f"unknown dtype={self.dtype!r}; expected one of {list(DTYPES)} or null"
            )


def load_backbone(
    options: ModelOptions,
    kind: BackboneKind,
    padding_side: str = "right",
    attn_implementation: str | None = None,
    quantization_config=None,
):
    """``(tokenizer, model)`` for ``options``: the tokenizer (pad token guaranteed), the causal
    LM or scalar sequence classifier, and the dropout policy applied. ``attn_implementation``
    overrides ``options.attn_implementation`` (a module's own requirement, e.g. WDPO's SDPA);
    ``quantization_config`` is QLoRA's 4-bit ``BitsAndBytesConfig`` (``LoraOptions``)."""
    attn = attn_implementation or options.attn_implementation
    if kind == "causal_lm":
        tokenizer = load_causal_tokenizer(
            options.name_or_path,
            trust_remote_code=options.trust_remote_code,
            padding_side=padding_side,
        )
        load = load_causal_lm
    elif kind == "sequence_classifier":
        tokenizer = load_tokenizer(
            options.name_or_path,
            trust_remote_code=options.trust_remote_code,
            padding_side=padding_side,
        )
        load = load_sequence_classifier
    else:
        raise ValueError(f"unknown backbone kind={kind!r}")
    model = load(
        options.name_or_path,
        tokenizer,
        tiny_config=options.tiny_config,
        dtype=options.dtype,
        attn_implementation=attn,
        trust_remote_code=options.trust_remote_code,
        seed=options.init_seed,
        quantization_config=quantization_config,
    )
    if not options.dropout:
        disable_dropout(model)
    return tokenizer, model
