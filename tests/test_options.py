"""Grouped options: ModelOptions / OptimizerOptions checks, the shared backbone loader and the
optimiser built from the options."""

from __future__ import annotations

import pytest
import torch

from lightning_robust.models.backbone import ModelOptions, load_backbone, translate_legacy_hparams
from lightning_robust.modules import DPO, GRPO, RewardModel
from lightning_robust.modules.optim import (
    OptimizerOptions,
    TorchOptimizer,
    build_optimizer,
    no_weight_decay_ids,
)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"name": "AdamQ"}, "unknown optimizer='AdamQ'"),
        ({"kwargs": {"lr": 1.0}}, "must not set 'lr'"),
    ],
)
def test_optimizer_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerOptions(**kwargs)


def test_model_options_are_checked_by_every_module():
    with pytest.raises(ValueError, match="unknown dtype='fp8'"):
        ModelOptions(dtype="fp8")
    for cls in (DPO, RewardModel, GRPO):
        with pytest.raises(ValueError, match="unknown dtype"):
            cls(backbone={"dtype": "fp8"})
        with pytest.raises(ValueError, match="warmup_ratio"):
            cls(optimizer={"warmup_ratio": -0.5})
    assert DPO(backbone={"init_seed": 3}).model_options == ModelOptions(init_seed=3)


def test_one_loader_for_both_kinds():
    tok, lm = load_backbone(ModelOptions(init_seed=1), "causal_lm", padding_side="left")
    assert tok.padding_side == "left" and lm.config.pad_token_id == tok.pad_token_id
    assert all(m.p == 0 for m in lm.modules() if isinstance(m, torch.nn.Dropout))
    _, again = load_backbone(ModelOptions(init_seed=1), "causal_lm")
    assert all(
        torch.equal(a, b)
        for a, b in zip(lm.state_dict().values(), again.state_dict().values(), strict=True)
    )
    _, rm = load_backbone(ModelOptions(), "sequence_classifier")
    assert rm.config.num_labels == 1
    with pytest.raises(ValueError, match="unknown backbone kind"):
        load_backbone(ModelOptions(), "encoder")


def test_any_torch_optimizer_by_name_with_its_arguments():
    model = torch.nn.Linear(3, 2)
    options = OptimizerOptions(
        learning_rate=0.1, name="SGD", kwargs={"momentum": 0.9}, warmup_ratio=0.0
    )
    built = build_optimizer(model.parameters(), options, total_steps=10)
    opt = built["optimizer"]
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["lr"] == 0.1
    adamw = build_optimizer(
        model.parameters(), OptimizerOptions(kwargs={"betas": (0.9, 0.95)}), 10
    )["optimizer"]
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.95)


def test_weight_decay_spares_biases_and_norm_weights():
    """Behaviour change (issue 15 item 8): as HF Trainer / TRL, biases and normalisation weights
    take no weight decay. Checked by effect: one AdamW step with zero gradients moves a weight
    only by its decay, ``p <- p (1 - lr wd)``."""
    model = RewardModel(
        optimizer={
            "weight_decay": 0.1,
            "learning_rate": 0.5,
            "warmup_ratio": 0.0,
            "lr_schedule": "constant",
        }
    )
    model.configure_model()
    named = dict(model.backbone.named_parameters())
    before = {k: v.detach().clone() for k, v in named.items()}
    optimizer = build_optimizer(
        model.backbone.parameters(),
        model.optimizer_options,
        10,
        no_decay=no_weight_decay_ids(model),
    )["optimizer"]
    for p in named.values():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    norms = [k for k in named if "norm" in k]
    decayed = [k for k in named if "norm" not in k and not k.endswith("bias")]
    assert norms and decayed
    for k in norms:
        torch.testing.assert_close(named[k].detach(), before[k], rtol=0, atol=0)
    for k in decayed:
        torch.testing.assert_close(named[k].detach(), before[k] * (1 - 0.5 * 0.1))
    # weight_decay 0: a single group, exactly as before
    assert (
        len(
            build_optimizer(model.backbone.parameters(), OptimizerOptions(), 10, {1})[
                "optimizer"
            ].param_groups
        )
        == 1
    )


def test_no_decay_set_names_biases_and_norm_layers():
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 1, bias=False)
    )
    ids = no_weight_decay_ids(model)
    assert ids == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_lora_options_pass_peft_arguments_through():
    from lightning_robust.models.lora import LoraOptions

    plain = LoraOptions(r=4, alpha=8, dropout=0.0).peft_config("CAUSAL_LM")
    assert plain.r == 4 and plain.lora_alpha == 8 and not plain.use_dora and not plain.use_rslora
    rich = LoraOptions(
        r=4,
        alpha=8,
        dropout=0.0,
        use_dora=True,
        use_rslora=True,
        bias="lora_only",
        rank_pattern={"q_proj": 2},
        extra={"fan_in_fan_out": False},
    ).peft_config("SEQ_CLS")
    assert (
        rich.use_dora
        and rich.use_rslora
        and rich.bias == "lora_only"
        and rich.rank_pattern == {"q_proj": 2}
    )
    with pytest.raises(ValueError, match="not peft.LoraConfig arguments"):
        LoraOptions(extra={"rank": 3})
    with pytest.raises(ValueError, match="use the LoraOptions fields"):
        LoraOptions(extra={"use_dora": True})
    with pytest.raises(ValueError, match="lora.r"):
        LoraOptions(r=0)
    with pytest.raises(ValueError, match="unknown lora.bias"):
        LoraOptions(bias="some")


def test_dora_module_trains_its_magnitude_vectors():
    model = DPO(lora={"r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True})  # the CLI's plain dict
    model.configure_model()
    names = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    assert model.reference_model is None  # still the adapters-disabled reference


def test_qlora_without_bitsandbytes_is_a_clear_error():
    import importlib.util

    from lightning_robust.models.lora import LoraOptions

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ValueError, match="needs bitsandbytes"):
        LoraOptions(load_in_4bit=True)
    with pytest.raises(ValueError, match="needs bitsandbytes"):
        DPO(lora={"r": 4, "load_in_4bit": True})


def test_optimizer_choice_from_the_command_line(tmp_path, monkeypatch):
    from pathlib import Path

    from lightning_robust.cli import build_cli

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    cli = build_cli(
        [
            "--config",
            str(config),
            "--model.init_args.optimizer={name: SGD, kwargs: {momentum: 0.9}}",
        ],
        run=False,
    )
    options = cli.model.optimizer_options
    assert options.name == "SGD" and options.kwargs == {"momentum": 0.9}
    cli.model.configure_model()
    opt = build_optimizer(cli.model.backbone.parameters(), options, 10)["optimizer"]
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optimizer='Adamm'"):
        GRPO(optimizer={"name": "Adamm"})
    betas = DPO(optimizer={"kwargs": {"betas": [0.9, 0.95]}}).optimizer_options.kwargs["betas"]
    assert betas == (0.9, 0.95)
    assert DPO().optimizer_options.name == "AdamW"  # the default stays AdamW


TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}

#: the hyperparameters a RewardModel checkpoint held before the grouped options (flat)
LEGACY_HPARAMS = {
    "model_name_or_path": "tiny",
    "weighting": None,
    "lora": None,
    "learning_rate": 2e-3,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "lr_schedule": "linear",
    "min_lr_ratio": 0.2,
    "optimizer": TorchOptimizer(name="AdamW", kwargs={"betas": (0.9, 0.95)}),
    "use_margin": False,
    "center_rewards_coefficient": None,
    "tiny_config": TINY,
    "dtype": None,
    "attn_implementation": None,
    "gradient_checkpointing": False,
    "dropout": False,
    "frozen_parameters": None,
    "trust_remote_code": False,
    "init_seed": 5,
    "nonfinite": "error",
    "micro_batch_size": None,
    "atomic_checkpoints": True,
}


def test_legacy_flat_hparams_translate_to_the_groups():
    grouped = translate_legacy_hparams(LEGACY_HPARAMS)
    assert grouped["backbone"] == {
        "name_or_path": "tiny",
        "tiny_config": TINY,
        "dtype": None,
        "attn_implementation": None,
        "gradient_checkpointing": False,
        "dropout": False,
        "trust_remote_code": False,
        "init_seed": 5,
    }
    assert grouped["optimizer"] == {
        "name": "AdamW",
        "kwargs": {"betas": (0.9, 0.95)},
        "learning_rate": 2e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "lr_schedule": "linear",
        "min_lr_ratio": 0.2,
    }
    assert grouped["use_margin"] is False and "learning_rate" not in grouped
    assert translate_legacy_hparams(grouped) == grouped  # grouped hparams pass unchanged
    # a partial legacy optimiser takes the module's own defaults (GRPO: constant, no warmup)
    partial = translate_legacy_hparams({"model_name_or_path": "tiny", "learning_rate": 1e-3})
    grpo = GRPO.OPTIMIZER_OPTIONS.coerce(partial["optimizer"])
    assert (grpo.learning_rate, grpo.lr_schedule, grpo.warmup_ratio) == (1e-3, "constant", 0.0)


def test_checkpoint_with_flat_hparams_reloads_to_the_same_model(tmp_path):
    """A checkpoint written before the grouped options (flat hyperparameters, built here by
    writing the old hparams dict) loads through ``load_from_checkpoint`` to the same model."""
    import lightning

    model = RewardModel(
        backbone={"tiny_config": TINY, "init_seed": 5},
        optimizer={
            "learning_rate": 2e-3,
            "weight_decay": 0.01,
            "warmup_ratio": 0.1,
            "lr_schedule": "linear",
            "min_lr_ratio": 0.2,
            "kwargs": {"betas": (0.9, 0.95)},
        },
    )
    model.configure_model()
    with torch.no_grad():  # move the weights off their seeded initialisation
        for p in model.backbone.parameters():
            p.add_(0.01)
    path = tmp_path / "legacy.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(LEGACY_HPARAMS),
            "pytorch-lightning_version": lightning.__version__,
            "epoch": 0,
            "global_step": 0,
        },
        path,
    )
    loaded = RewardModel.load_from_checkpoint(path, map_location="cpu")
    assert loaded.model_options == model.model_options
    assert loaded.optimizer_options == model.optimizer_options
    loaded.configure_model()
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    ids = torch.tensor([[1, 5, 7, 9]])
    mask = torch.ones_like(ids)
    model.eval(), loaded.eval()
    assert torch.equal(model(ids, mask), loaded(ids, mask))
