"""LoRA adapters through peft, and export of a (merged) Hugging Face directory."""

from __future__ import annotations

import copy
import importlib.util
import os
from dataclasses import dataclass, field

import torch

#: LoraConfig arguments set by LoraOptions' own fields (or by the module), not through ``extra``
_OWN_ARGS = {
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "modules_to_save",
    "use_dora",
    "use_rslora",
    "bias",
    "init_lora_weights",
    "layers_to_transform",
    "rank_pattern",
    "alpha_pattern",
    "exclude_modules",
    "task_type",
}
LORA_BIAS = ("none", "all", "lora_only")


@dataclass
class LoraOptions:
    """LoRA settings, passed to ``peft.LoraConfig``; defaults r=32, alpha=64, dropout 0.05 from
    S000 Table 7 (docs/ALGORITHMS.md §2).

    Attributes:
        r, alpha, dropout: rank, ``lora_alpha`` and ``lora_dropout``.
        target_modules: ``"all-linear"`` (peft's shorthand) or a list of module names.
        modules_to_save: modules trained in full beside the adapters.
        use_dora: DoRA (weight-decomposed LoRA, Liu et al. 2024).
        use_rslora: rank-stabilised scaling ``alpha / sqrt(r)`` (Kalajdzievski 2023).
        bias: ``none`` | ``all`` | ``lora_only`` (which biases train).
        init_lora_weights: peft's initialisation (``true``, ``"gaussian"``, ``"pissa"``, ...).
        layers_to_transform, rank_pattern, alpha_pattern, exclude_modules: as in peft.
        extra: any other ``LoraConfig`` argument by name (checked against peft's fields).
        load_in_4bit: QLoRA (Dettmers et al. 2023): the base weights load in 4-bit NF4 through
            bitsandbytes (a CUDA GPU and ``pip install bitsandbytes`` needed; a clear error
            otherwise), prepared with peft's ``prepare_model_for_kbit_training``.
        bnb_4bit_quant_type, bnb_4bit_use_double_quant, bnb_4bit_compute_dtype: the 4-bit
            settings of ``transformers.BitsAndBytesConfig`` (compute dtype default: bfloat16).
    """

    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)
    # defaults are plain values (not factories) so options pickled by older versions, which lack
    # these attributes, read them from the class
    use_dora: bool = False
    use_rslora: bool = False
    bias: str = "none"
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    rank_pattern: dict | None = None
    alpha_pattern: dict | None = None
    exclude_modules: str | list[str] | None = None
    extra: dict | None = None
    load_in_4bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: str = "bfloat16"

    def __post_init__(self):
        if not (isinstance(self.r, int) and self.r >= 1):
            raise ValueError(f"lora.r must be an integer >= 1, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.bias not in LORA_BIAS:
            raise ValueError(f"unknown lora.bias={self.bias!r}; expected one of {list(LORA_BIAS)}")
        if self.extra:
            clash = sorted(set(self.extra) & _OWN_ARGS)
            if clash:
                raise ValueError(
                    f"lora.extra sets {clash}: use the LoraOptions fields of those names"
                )
            known = lora_config_fields()
            unknown = sorted(set(self.extra) - known)
            if unknown:
                raise ValueError(f"lora.extra: {unknown} are not peft.LoraConfig arguments")
        if self.load_in_4bit:
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError(
                    "lora.load_in_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes "
                    "(and a CUDA GPU); or set load_in_4bit: false"
                )
            if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
                raise ValueError(f"unknown lora.bnb_4bit_quant_type={self.bnb_4bit_quant_type!r}")

    @classmethod
    def coerce(cls, value) -> LoraOptions | None:
        """``None``, a ``LoraOptions`` or the plain dict LightningCLI hands over."""
        return cls(**value) if isinstance(value, dict) else value

    def peft_config(self, task_type: str):
        """The ``peft.LoraConfig`` of these options (``task_type``: a peft ``TaskType`` name)."""
        from peft import LoraConfig, TaskType

        kwargs = dict(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=list(self.modules_to_save) or None,
            task_type=getattr(TaskType, task_type),
        )
        optional = {
            "use_dora": self.use_dora,
            "use_rslora": self.use_rslora,
            "bias": self.bias,
            "init_lora_weights": self.init_lora_weights,
            "layers_to_transform": self.layers_to_transform,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            "exclude_modules": self.exclude_modules,
        }
        defaults = {
            "use_dora": False,
            "use_rslora": False,
            "bias": "none",
            "init_lora_weights": True,
        }
        # only what differs from peft's defaults, so older configs give the same LoraConfig
        kwargs |= {
            k: v for k, v in optional.items() if v is not None and defaults.get(k, None) != v
        }
        kwargs |= dict(self.extra or {})
        return LoraConfig(**kwargs)

    def quantization_config(self):
        """``transformers.BitsAndBytesConfig`` for QLoRA, or ``None`` without ``load_in_4bit``."""
        if not self.load_in_4bit:
            return None
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=self.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.bnb_4bit_compute_dtype),
        )


def lora_config_fields() -> set[str]:
    """The argument names ``peft.LoraConfig`` accepts (this peft version)."""
    import dataclasses

    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig)}


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([LoraOptions])


def apply_lora(model, options: LoraOptions, task_type: str):
    """Wrap ``model`` with LoRA adapters (peft ``get_peft_model``; it changes ``model`` in place).

    ``task_type`` is a peft ``TaskType`` name (``SEQ_CLS`` keeps the score head trainable).
    """
    from peft import get_peft_model

    return get_peft_model(model, options.peft_config(task_type))


def prepare_for_training(
    model, gradient_checkpointing: bool, lora: LoraOptions | None, task_type: str
):
    """The training set-up every module's backbone shares, in its required order: non-reentrant
    gradient checkpointing (with LoRA, input embeddings made to require grad so checkpointed
    segments see a grad-requiring input), then the LoRA adapters; returns the model in train
    mode (``from_pretrained`` returns eval mode and Lightning keeps modes as it finds them)."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model.enable_input_require_grads()
    if lora is not None:
        if getattr(lora, "load_in_4bit", False):  # QLoRA: cast norms/head, input grads
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
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
