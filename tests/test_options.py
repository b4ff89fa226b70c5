"""Grouped options: ModelOptions / OptimizerOptions checks, the shared backbone loader and the
optimiser built from the options."""

from __future__ import annotations

import pytest
import torch

from lightning_robust.models.backbone import ModelOptions, load_backbone
from lightning_robust.modules import DPO, GRPO, RewardModel
from lightning_robust.modules.optim import OptimizerOptions, build_optimizer, no_weight_decay_ids


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
            cls(dtype="fp8")
        with pytest.raises(ValueError, match="warmup_ratio"):
            cls(warmup_ratio=-0.5)
    assert DPO(init_seed=3).model_options == ModelOptions(init_seed=3)


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
        weight_decay=0.1, learning_rate=0.5, warmup_ratio=0.0, lr_schedule="constant"
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
