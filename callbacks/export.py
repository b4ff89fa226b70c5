"""Hugging Face outputs at the end of ``fit``: a ``save_pretrained`` directory, a model card, and
an optional ``push_to_hub``.

:class:`HFExport` calls the module's ``export`` (weights, config and tokenizer; LoRA merged, or the
adapter alone with ``merge_lora: false``), writes ``README.md`` (:func:`model_card`: base model,
data, method, the robust weighting with its radius/temperature and scope, the validation and
benchmark figures of the run, and how to load it) and, when ``push_to_hub`` names a repository,
uploads the directory with ``huggingface_hub.HfApi.upload_folder``. Only rank 0 writes and uploads.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from lightning.pytorch import Callback

log = logging.getLogger(__name__)

# hyperparameters a card reports when the module or its weighting has them
ROBUST_KNOBS = ("rho", "tau", "alpha", "eta", "form", "divergence", "scope")
METHOD_KNOBS = (
    "loss_type",
    "beta",
    "label_smoothing",
    "wdpo_rho",
    "wdpo_form",
    "dr_version",
    "bonus",
    "budget",
    "delta",
    "delta0",
    "budget_c",
    "num_generations",
    "kl_coef",
    "learning_rate",
    "lr_schedule",
)
SOURCES = {
    "RewardModel": "Mandal et al., Distributionally Robust Reinforcement Learning with Human Feedback (arXiv:2503.00539)",
    "DPO": "Rafailov et al. 2023 (DPO); robust variants: arXiv:2503.00539 (DR-DPO), arXiv:2502.01930 (WDPO, KLDPO)",
    "PPO": "Mandal et al. (arXiv:2503.00539), DR-PPO",
    "GRPO": "Wang, Liu, Blanchet, Wasserstein Distributionally Robust Regret Optimization for RLHF (DRRO-GRPO)",
}


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 6)
    return value


def describe_run(pl_module, trainer=None) -> dict:
    """The facts a model card states, from the module, its weighting and the data module."""
    hp = dict(getattr(pl_module, "hparams", {}) or {})
    weighting = getattr(pl_module, "weighting", None)
    robust = {}
    if weighting is not None:
        robust["strategy"] = type(weighting).__name__
        robust.update(
            {k: _plain(getattr(weighting, k)) for k in ROBUST_KNOBS if hasattr(weighting, k)}
        )
    data = {}
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    for key, value in dict(getattr(datamodule, "hparams", {}) or {}).items():
        if key in ("train", "val", "eval_sets", "test") and value is not None:
            data[key] = (
                value
                if isinstance(value, str)
                else getattr(value, "path", None)
                or (value.get("path") if isinstance(value, dict) else str(value))
            )
    metrics = {}
    if trainer is not None:
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.startswith(("val/", "eval/")) and "/group/" not in key:
                metrics[key] = _plain(value)
    return {
        "module": type(pl_module).__name__,
        "base_model": hp.get("model_name_or_path"),
        "method": {k: _plain(hp[k]) for k in METHOD_KNOBS if k in hp},
        "robust": robust,
        "data": data,
        "metrics": metrics,
        "steps": getattr(trainer, "global_step", None),
        "lora": bool(hp.get("lora")),
    }


def model_card(facts: dict, adapter_only: bool = False, repo_id: str | None = None) -> str:
    """The ``README.md`` text of the exported model (YAML front matter plus Markdown)."""
    module = facts["module"]
    base = facts.get("base_model")
    tags = ["lightning_robust", "distributionally-robust", module.lower()]
    front = ["---", f"library_name: {'peft' if adapter_only else 'transformers'}"]
    if base and base != "tiny":
        front.append(f"base_model: {base}")
    front += ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    title = repo_id or f"{module} trained with lightning_robust"
    lines = [f"# {title}", ""]
    kind = "reward model" if module == "RewardModel" else "policy"
    lines.append(
        f"A {kind} trained with lightning_robust (`{module}`) from `{base}` for "
        f"{facts.get('steps')} optimiser steps."
    )
    lines += [
        "",
        "## Method",
        "",
        f"- module: `{module}` (source: {SOURCES.get(module, 'see docs/ALGORITHMS.md')})",
    ]
    lines += [f"- {k}: `{v}`" for k, v in facts["method"].items()]
    robust = facts.get("robust") or {}
    if robust:
        knobs = ", ".join(f"{k}={v}" for k, v in robust.items() if k != "strategy")
        lines.append(
            f"- robust weighting: `{robust['strategy']}` ({knobs}); the worst case is taken over "
            "the minibatch losses (scope `global`: all ranks; `local`: per device), "
            "see docs/ALGORITHMS.md §1"
        )
    if facts.get("lora"):
        lines.append(
            f"- LoRA: {'adapter only (load with peft)' if adapter_only else 'merged into the weights'}"
        )
    lines += ["", "## Data", ""]
    lines += [f"- {k}: `{v}`" for k, v in (facts.get("data") or {}).items()] or ["- (not recorded)"]
    lines += ["", "## Results (last validation and benchmarks of the run)", ""]
    if facts.get("metrics"):
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in facts["metrics"].items()
        ]
    else:
        lines.append("No validation or benchmark figures were recorded.")
    loader = (
        "AutoModelForSequenceClassification" if module == "RewardModel" else "AutoModelForCausalLM"
    )
    lines += ["", "## Use", "", "```python"]
    if adapter_only:
        lines += [
            "from peft import AutoPeftModel",
            f"model = AutoPeftModel.from_pretrained({(repo_id or 'path')!r})",
        ]
    else:
        lines += [
            f"from transformers import {loader}, AutoTokenizer",
            f"model = {loader}.from_pretrained({(repo_id or 'path')!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({(repo_id or 'path')!r})",
        ]
    lines += ["```", ""]
    return "\n".join(front + lines)


class HFExport(Callback):
    """At the end of ``fit``: ``save_pretrained`` directory, model card, optional upload.

    Args:
        output_dir: the directory (default ``<log_dir>/hf_model``).
        merge_lora: merge LoRA adapters into the weights (``False``: write the adapter only).
        model_card: write ``README.md``.
        push_to_hub: a hub repository id to upload to (``None``: no upload).
        private: create the hub repository private.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        merge_lora: bool = True,
        model_card: bool = True,
        push_to_hub: str | None = None,
        private: bool = True,
    ):
        self.output_dir = output_dir
        self.merge_lora = merge_lora
        self.write_card = model_card
        self.push_to_hub = push_to_hub
        self.private = private
        self.path: str | None = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # after every callback's on_fit_end, so the end-of-fit benchmark figures reach the card
        if stage != "fit" or not trainer.is_global_zero or trainer.interrupted:
            return
        if not callable(getattr(pl_module, "export", None)):
            raise TypeError(
                f"{type(pl_module).__name__} has no export(path, merge_lora): cannot write a HF directory"
            )
        folder = self.output_dir or os.path.join(
            trainer.log_dir or trainer.default_root_dir, "hf_model"
        )
        self.path = pl_module.export(folder, merge_lora=self.merge_lora)
        adapter_only = not self.merge_lora and bool(
            (getattr(pl_module, "hparams", {}) or {}).get("lora")
        )
        if self.write_card:
            card = model_card(describe_run(pl_module, trainer), adapter_only, self.push_to_hub)
            with open(os.path.join(self.path, "README.md"), "w", encoding="utf-8") as f:
                f.write(card)
        log.info("wrote the Hugging Face directory %s", self.path)
        if self.push_to_hub:
            upload(self.path, self.push_to_hub, self.private)


def upload(folder: str, repo_id: str, private: bool = True) -> None:
    """Create ``repo_id`` if needed and upload ``folder`` to it (``huggingface_hub``)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=folder, repo_id=repo_id, commit_message="Upload from lightning_robust"
    )
