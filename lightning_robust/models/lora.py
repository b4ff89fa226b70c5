"""LoRA adapters through peft, and export of a (merged) Hugging Face directory."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch


@dataclass
class LoraOptions:
    """LoRA settings; defaults r=32, alpha=64, dropout 0.05 from S000 Table 7 (ALGORITHMS.md §2).

    ``target_modules``: ``"all-linear"`` (peft's shorthand) or a list of module names.
    """

    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([LoraOptions])


def apply_lora(model, options: LoraOptions, task_type: str):
    """Wrap ``model`` with LoRA adapters (peft ``get_peft_model``; it changes ``model`` in place).

    ``task_type`` is a peft ``TaskType`` name (``SEQ_CLS`` keeps the score head trainable).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        modules_to_save=list(options.modules_to_save) or None,
        task_type=getattr(TaskType, task_type),
    )
    return get_peft_model(model, config)


def prepare_for_training(model, gradient_checkpointing: bool, lora: LoraOptions | None, task_type: str):
    """The training set-up every module's backbone shares, in its required order: non-reentrant
    gradient checkpointing (with LoRA, input embeddings made to require grad so checkpointed
    segments see a grad-requiring input), then the LoRA adapters; returns the model in train
    mode (``from_pretrained`` returns eval mode and Lightning keeps modes as it finds them)."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model.enable_input_require_grads()
    if lora is not None:
        model = apply_lora(model, lora, task_type=task_type)
    return model.train()


def freeze_parameters(model, patterns: list[str]) -> int:
    """Set ``requires_grad=False`` on parameters whose name matches any regex in ``patterns``
    (``re.search``); returns how many parameters were frozen. Raises when a pattern matches
    nothing, so a typo cannot silently train the whole model."""
    import re

    frozen = 0
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = [p for name, p in model.named_parameters() if regex.search(name)]
        if not hits:
            raise ValueError(f"frozen_parameters: pattern {pattern!r} matches no parameter name")
        for p in hits:
            frozen += p.requires_grad
            p.requires_grad_(False)
    return frozen


def disable_dropout(model) -> int:
    """Set ``p = 0`` on every ``torch.nn.Dropout`` of ``model`` (TRL's ``disable_dropout``
    default for reward and preference training); returns how many were changed."""
    import torch

    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p = 0.0
            changed += 1
    return changed


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def _dequantised_gguf(model):
    """A GGUF-loaded model (``smollm2``, ``*.gguf``) holds de-quantised weights but keeps GGUF's
    quantiser, so ``save_pretrained`` refuses it: rebuild the architecture without the
    quantisation settings and load the same weights (as ``causal_lm.convert_gguf`` does)."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    plain = type(model)(config).to(dtype)
    plain.load_state_dict(model.state_dict())
    return plain


def export_pretrained(model, tokenizer, path: str | os.PathLike, merge_lora: bool = True) -> str:
    """Write ``model`` and ``tokenizer`` with ``save_pretrained`` into ``path``.

    A peft model is merged into its base first when ``merge_lora`` (on a copy: the training model
    keeps its adapters), so ``AutoModel*.from_pretrained(path)`` loads it without peft; with
    ``merge_lora=False`` only the adapter is written (load it with peft).
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    if is_peft_model(model) and merge_lora:
        model = copy.deepcopy(model).merge_and_unload()
    model = _dequantised_gguf(model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
