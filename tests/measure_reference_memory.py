"""Peak host memory of a short DPO fit per reference mode (CPU; printed as a table).

Usage: ``python tests/measure_reference_memory.py [hidden_size] [layers]``. Each mode runs in a
fresh subprocess (so peaks do not mix); the figure is the process's peak resident set size
(``ru_maxrss``) minus its resident size after imports, i.e. model + reference + optimiser +
activations of 4 steps (batch 8, length <= 64) of a random-init Llama of the given shape.
On a GPU, ``torch.cuda.max_memory_allocated`` plays the same role (docs/scale.md).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

MODES = {
    "full weights + frozen_copy": {"reference": "frozen_copy"},
    "full weights + precomputed": {"reference": "precomputed"},
    "LoRA + lora_disabled": {
        "reference": "lora_disabled",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    },
    "LoRA + frozen_copy": {
        "reference": "frozen_copy",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    },
}


def run_one(options: dict, hidden: int, layers: int) -> dict:
    import tempfile

    from lightning import Trainer

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.synthetic import SyntheticShiftConfig
    from lightning_robust.models.lora import LoraOptions
    from lightning_robust.modules import DPO

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kw = dict(options)
    if "lora" in kw:
        kw["lora"] = LoraOptions(**kw["lora"])
    tiny = {
        "hidden_size": hidden,
        "intermediate_size": int(hidden * 2.75),
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 64),
    }
    model = DPO(tiny_config=tiny, learning_rate=1e-4, **kw)
    root = tempfile.mkdtemp()
    data = PreferenceDataModule(
        train="synthetic",
        batch_size=8,
        max_length=64,
        append_eos=True,
        synthetic=SyntheticShiftConfig(num_train=32, num_eval=8, seed=0),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=data)
    params = sum(p.numel() for p in model.backbone.parameters())
    trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    ref = (
        sum(p.numel() for p in model.reference_model.parameters())
        if model.reference_model is not None
        else 0
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "params": params,
        "trainable": trainable,
        "reference_params": ref,
        "peak_mib": (peak - base) / 1024,
    }


def main(argv: list[str]) -> None:
    hidden = int(argv[1]) if len(argv) > 1 else 512
    layers = int(argv[2]) if len(argv) > 2 else 8
    if len(argv) > 3:  # child
        print(json.dumps(run_one(json.loads(argv[3]), hidden, layers)))
        return
    print(
        "| reference mode | parameters | trainable | reference copy | peak memory over imports (MiB) |"
    )
    print("|---|---|---|---|---|")
    for name, options in MODES.items():
        out = subprocess.run(
            [sys.executable, __file__, str(hidden), str(layers), json.dumps(options)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {r['params']:,} | {r['trainable']:,} | {r['reference_params']:,} | {r['peak_mib']:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv)
