"""The ``speed`` option group (issue 14): set from a config, defaults unchanged, named errors,
``compile`` gives the eager loss, and Adam/AdamW take the fused kernel in a Lightning fit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from lightning_robust.modules import DPO, RewardModel
from lightning_robust.modules.speed import SpeedOptions, decoder_stack

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_speed_options_from_a_yaml_config(tmp_path, monkeypatch):
    from lightning_robust.cli import build_cli

    monkeypatch.chdir(tmp_path)
    speed = tmp_path / "speed.yaml"
    speed.write_text(
        "model:\n  init_args:\n    speed: {share_prompt: false, wdpo_chunk_pairs: 4}\n"
    )
    cli = build_cli(
        ["--config", str(CONFIGS / "dpo" / "tiny_wdpo.yaml"), "--config", str(speed)], run=False
    )
    model = cli.model
    assert isinstance(model, DPO)
    assert model.share_prompt is False and model.wdpo_chunk_pairs == 4
    assert model.speed_options == SpeedOptions(share_prompt=False, wdpo_chunk_pairs=4)
    assert model.hparams.speed == {
        "share_prompt": False,
        "wdpo_chunk_pairs": 4,
        "compile": False,
        "compile_kwargs": {},
    }
    # the reward model takes the group too (from the command line here)
    cli = build_cli(
        [
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            "--model.init_args.speed={share_prompt: false}",
        ],
        run=False,
    )
    assert isinstance(cli.model, RewardModel) and cli.model.share_prompt is False


def test_speed_defaults_and_named_errors():
    for model in (DPO(), RewardModel()):
        assert model.speed_options == SpeedOptions()
        assert model.share_prompt is True and model.speed_options.compile is False
    assert DPO().wdpo_chunk_pairs == 2
    assert DPO(speed={"wdpo_chunk_pairs": None}).wdpo_chunk_pairs is None
    model = DPO()
    model.share_prompt = False  # assignable, as the benchmarks do
    model.wdpo_chunk_pairs = None
    assert model.share_prompt is False and model.wdpo_chunk_pairs is None
    with pytest.raises(ValueError, match="speed.wdpo_chunk_pairs must be a positive integer"):
        DPO(speed={"wdpo_chunk_pairs": 0})
    with pytest.raises(ValueError, match=r"unknown speed option\(s\) \['share_prompts'\]"):
        RewardModel(speed={"share_prompts": False})
    with pytest.raises(ValueError, match="speed.compile_kwargs must be a mapping"):
        SpeedOptions(compile=True, compile_kwargs=["inductor"])


def _dpo_loss(model, batch):
    terms = model.step_terms(batch)
    return terms.losses.mean()


def test_compile_builds_and_gives_the_eager_loss():
    """``speed.compile`` compiles the policy's and the frozen reference's decoder stacks in place
    (parameter names unchanged) and the DPO loss and gradients equal the eager ones. The test
    compiles with the ``aot_eager`` backend (dynamo graph capture and AOT autograd, the parts
    that change how the step runs; inductor's code generation takes about a minute on one
    CPU thread, reported by ``benchmarks/reward_vs_trl.py --runs ...,ours_compile``)."""
    from tests.test_logprobs import _pair_batch

    torch.manual_seed(0)
    batch = _pair_batch([(3, 5, 2), (4, 4, 6), (2, 3, 3)])
    eager = DPO(backbone={"tiny_config": TINY})
    eager.configure_model()
    compiled = DPO(
        backbone={"tiny_config": TINY},
        speed={"compile": True, "compile_kwargs": {"backend": "aot_eager"}},
    )
    compiled.configure_model()
    compiled.backbone.load_state_dict(eager.backbone.state_dict())
    compiled.reference_model.load_state_dict(eager.reference_model.state_dict())
    for model in (compiled.backbone, compiled.reference_model):
        assert decoder_stack(model)._compiled_call_impl is not None
    assert eager.backbone.state_dict().keys() == compiled.backbone.state_dict().keys()
    torch._dynamo.reset()
    start = time.process_time()
    compiled_loss = _dpo_loss(compiled, batch)
    compiled_loss.backward()
    assert time.process_time() - start < 60
    eager_loss = _dpo_loss(eager, batch)
    eager_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(
        eager.backbone.named_parameters(), compiled.backbone.parameters(), strict=True
    ):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_adam_is_fused_in_a_fit_with_gradient_clipping(tmp_path):
    from lightning import Trainer

    from lightning_robust.data import PreferenceDataModule

    model = DPO(backbone={"tiny_config": TINY}, optimizer={"learning_rate": 1e-3})
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1e-3,
        default_root_dir=tmp_path,
    )
    dm = PreferenceDataModule(train="synthetic", batch_size=4, val_fraction=0.0)
    trainer.fit(model, datamodule=dm)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    # clipping by value keeps the foreach kernel (Lightning refuses to clip a fused optimiser
    # there); an explicit choice in optimizer.kwargs wins
    trainer.gradient_clip_algorithm = "value"
    assert model.configure_optimizers()["optimizer"].defaults["fused"] is None
    from lightning_robust.modules.optim import build_optimizer, fused_by_default

    params = list(model.backbone.parameters())
    assert not fused_by_default("AdamW", {"foreach": True}, params)
    assert not fused_by_default("SGD", {}, params)
    explicit = DPO(optimizer={"kwargs": {"foreach": True}}).optimizer_options
    built = build_optimizer(params, explicit, 10, fused=True)["optimizer"]
    assert built.defaults["foreach"] is True and not built.defaults["fused"]


def test_glibc_malloc_tuning_respects_the_environment(monkeypatch):
    import ctypes
    import sys

    from lightning_robust.modules import speed

    calls = []

    class FakeLibc:
        def mallopt(self, code, value):
            calls.append((code, value))
            return 1

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert speed.tune_glibc_malloc({}) is True
    assert calls == [(-3, 32 << 20), (-1, 256 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    calls.clear()
    assert speed.tune_glibc_malloc({"LIGHTNING_ROBUST_MALLOC_TUNING": "0"}) is False
    assert speed.tune_glibc_malloc({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    assert calls == []
