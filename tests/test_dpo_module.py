"""DPO module: reference policies, the on-disk reference cache, reductions to plain DPO, logging,
training on the synthetic data, regularisers and export (tiny random-init Llama, offline)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from lightning import Trainer

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.models.lora import LoraOptions
from lightning_robust.modules import DPO
from lightning_robust.objectives.dpo import dr_dpo_loss, preference_losses, preference_margin
from lightning_robust.weighting import ChiSquareBall, KLPenalty, TVBall

LORA = LoraOptions(r=4, alpha=8, dropout=0.0)


def _dm(seed=1, num_train=64, batch_size=8, **kw):
    return PreferenceDataModule(
        train="synthetic",
        batch_size=batch_size,
        max_length=48,
        append_eos=True,
        seed=0,
        synthetic=SyntheticShiftConfig(
            num_train=num_train, num_eval=16, seed=seed, length_pair_share=0.0
        ),
        **kw,
    )


def _batch(dm, n=8):
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=n, collate_fn=dm.collator)
    return next(iter(loader))


def _perturb_lora(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _silence(model):
    model.log = lambda *a, **k: None
    model.log_dict = lambda *a, **k: None
    return model


def test_lora_disabled_reference_equals_frozen_copy():
    batch = _batch(_dm())
    lora = DPO(lora=LORA)  # reference defaults to lora_disabled
    frozen = DPO()  # reference defaults to frozen_copy
    lora.configure_model(), frozen.configure_model()
    assert lora.hparams.reference == "lora_disabled" and frozen.hparams.reference == "frozen_copy"
    assert lora.reference_model is None  # no second copy with LoRA
    _perturb_lora(lora)
    with torch.no_grad():  # train the full-weight policy a bit: its frozen copy must not move
        for p in frozen.backbone.parameters():
            p.add_(0.01)
    pol_lora, ref_lora, _ = lora.concatenated_logps(batch)
    pol_full, ref_full, _ = frozen.concatenated_logps(batch)
    torch.testing.assert_close(ref_lora, ref_full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pol_lora, ref_lora, atol=1e-3)  # the adapters act on the policy
    assert not torch.allclose(pol_full, ref_full, atol=1e-3)
    assert not ref_lora.requires_grad and pol_lora.requires_grad
    # LoRA + an explicit frozen copy gives the same reference as well
    both = DPO(lora=LORA, reference="frozen_copy")
    both.configure_model()
    torch.testing.assert_close(both.concatenated_logps(batch)[1], ref_full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="lora_disabled"):
        DPO(reference="lora_disabled")


def test_precomputed_cache_matches_live_and_is_invalidated(tmp_path, monkeypatch):
    import lightning_robust.modules.reference as reference_module

    calls = []
    original = reference_module.compute_split_logps
    monkeypatch.setattr(
        reference_module,
        "compute_split_logps",
        lambda *a, **k: calls.append(1) or original(*a, **k),
    )
    dm = _dm()
    dm.setup("fit")
    cache = tmp_path / "cache"
    live = _silence(DPO())
    cached = _silence(DPO(reference="precomputed", reference_cache_dir=str(cache)))
    cached.precompute_reference(dm)
    splits = set(dm.datasets)
    assert len(calls) == len(splits) and len(os.listdir(cache)) == len(splits)
    loader = torch.utils.data.DataLoader(
        dm.datasets["train"],
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=dm.collator,
    )
    batch = next(iter(loader))  # shuffled: rows are found by `index`
    live.configure_model()
    loss_live = live.training_step(batch, 0)
    loss_cached = cached.training_step(batch, 0)
    torch.testing.assert_close(loss_cached, loss_live, rtol=1e-6, atol=1e-6)
    # the val split is cached too
    vbatch = next(
        iter(torch.utils.data.DataLoader(dm.datasets["val"], batch_size=8, collate_fn=dm.collator))
    )
    torch.testing.assert_close(
        cached.concatenated_logps(vbatch, "val")[1], live.concatenated_logps(vbatch, "val")[1]
    )

    # same data and model in a new module: read from disk, nothing computed
    again = DPO(reference="precomputed", reference_cache_dir=str(cache))
    tables = again.precompute_reference(dm)
    assert len(calls) == len(splits)
    torch.testing.assert_close(tables["train"], cached._ref_tables["train"])
    # a data change (other synthetic rows) invalidates the cache
    dm2 = _dm(seed=2)
    dm2.setup("fit")
    DPO(reference="precomputed", reference_cache_dir=str(cache)).precompute_reference(dm2)
    assert len(calls) == 2 * len(splits)
    # a model change (other initial weights) invalidates it too
    other = DPO(reference="precomputed", reference_cache_dir=str(cache), init_seed=1)
    other.precompute_reference(dm)
    assert len(calls) == 3 * len(splits)
    assert not torch.allclose(other._ref_tables["train"], cached._ref_tables["train"])
    assert len(os.listdir(cache)) == 3 * len(splits)


def test_precomputed_with_lora_uses_the_base_model(tmp_path):
    dm = _dm()
    batch = _batch(dm)
    model = DPO(lora=LORA, reference="precomputed", reference_cache_dir=str(tmp_path))
    model.configure_model()
    _perturb_lora(model)
    model.precompute_reference(dm)
    live = DPO(lora=LORA)
    live.configure_model()
    torch.testing.assert_close(
        model.concatenated_logps(batch)[1], live.concatenated_logps(batch)[1], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weighting": TVBall(rho=0.0)},
        {"weighting": ChiSquareBall(rho=0.0)},
        {"weighting": KLPenalty(tau=float("inf"))},
        {"wdpo_rho": 0.0},
        {"kl_gamma_start": 0.0},
    ],
    ids=["tv_rho0", "chi2_rho0", "kl_tau_inf", "wdpo_rho0", "kl_gamma0"],
)
def test_robust_variants_reduce_to_plain_dpo_exactly(kwargs):
    batch = _batch(_dm())
    plain = _silence(DPO())
    robust = _silence(DPO(**kwargs))
    plain.configure_model(), robust.configure_model()
    a, b = plain.training_step(batch, 0), robust.training_step(batch, 0)
    assert torch.equal(a, b), (a.item(), b.item())
    # and the value is the mean DPO loss computed by hand
    policy, ref, _ = plain.concatenated_logps(batch)
    h = preference_margin(*policy.chunk(2), *ref.chunk(2))
    assert a.item() == pytest.approx(preference_losses("dpo", h, 0.1).mean().item(), rel=1e-6)
    assert a.item() == pytest.approx(math.log(2), rel=1e-6)  # policy == reference at init


def test_kldpo_seed_tau_inf_equals_dpo():
    batch = _batch(_dm())
    plain, robust = (
        _silence(DPO()),
        _silence(DPO(weighting=KLPenalty(tau=float("inf"), form="seed"))),
    )
    plain.configure_model(), robust.configure_model()
    torch.testing.assert_close(
        plain.training_step(batch, 0), robust.training_step(batch, 0), rtol=1e-7, atol=0
    )


def _trainer(tmp_path, **kw):
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    options.update(kw)
    return Trainer(**options)


def test_fit_logs_trl_names_robust_stats_and_val_sets(tmp_path):
    model = DPO(weighting=TVBall(rho=0.4), learning_rate=1e-3)
    trainer = _trainer(tmp_path, limit_train_batches=3)
    trainer.fit(model, datamodule=_dm())
    m = trainer.callback_metrics
    names = [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ]
    expected = [f"train/{n}" for n in names] + [f"val/{n}" for n in names]
    expected += [f"val/shifted/{n}" for n in names] + [f"val/minority/{n}" for n in names]
    expected += ["train/robust/ess", "train/robust/max_weight", "train/robust/entropy"]
    for key in expected:
        assert key in m, f"{key} not logged; have {sorted(m)}"
    assert any("/group/" in k for k in m), "per-group metrics missing"
    assert float(m["train/robust/ess"]) < 8.0


def test_fit_with_precomputed_reference_writes_the_cache(tmp_path):
    model = DPO(reference="precomputed", learning_rate=1e-3)
    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=_dm())
    files = os.listdir(tmp_path / "reference_cache")
    assert {f.split("-")[0] for f in files} == {"train", "val", "shifted", "minority"}
    assert "val/rewards/accuracies" in trainer.callback_metrics


def test_wdpo_penalty_and_forward_kl_are_added_and_logged():
    batch = _batch(_dm())
    logged = {}
    model = DPO(lora=LORA, wdpo_rho=10.0, kl_gamma_start=0.5, kl_samples="data")
    model.configure_model()
    _perturb_lora(model)
    model.log = lambda k, v, **kw: logged.__setitem__(k, v)
    model.log_dict = lambda d, **kw: logged.update(d)
    loss = model.training_step(batch, 0)
    assert logged["train/wdpo/penalty"] > 0 and logged["train/kl/gamma"] == pytest.approx(0.5)
    policy, ref, _ = model.concatenated_logps(batch)
    h = preference_margin(*policy.chunk(2), *ref.chunk(2))
    base = preference_losses("dpo", h, 0.1).mean().item() + 0.5 * logged["train/kl/forward"].item()
    assert loss.item() == pytest.approx(base + logged["train/wdpo/penalty"].item(), rel=1e-5)
    loss.backward()  # double backprop through the penalty reaches the adapters
    grads = [p.grad for n, p in model.backbone.named_parameters() if "lora_" in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_export_round_trip_merges_lora(tmp_path):
    from transformers import AutoModelForCausalLM

    batch = _batch(_dm())
    model = DPO(lora=LORA)
    model.configure_model()
    _perturb_lora(model)
    expected = model.concatenated_logps(batch)[0].detach()
    path = model.export(tmp_path / "policy", merge_lora=True)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    from lightning_robust.models.logprobs import sequence_logprobs

    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    plen = torch.cat([batch["chosen_prompt_len"], batch["rejected_prompt_len"]])
    with torch.no_grad():
        got = sequence_logprobs(loaded, ids, mask, plen)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert any("lora_" in n for n, _ in model.backbone.named_parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"loss_type": "ipo"},
        {"loss_type": "cdpo", "label_smoothing": 0.1},
        {"loss_type": "rdpo", "label_smoothing": 0.1},
        {"weighting": TVBall(rho=0.4)},
        {"weighting": ChiSquareBall(rho=0.2)},
        {"weighting": KLPenalty(tau=1.0, form="seed")},
        {"wdpo_rho": 1.0},
        {"wdpo_rho": 1.0, "wdpo_form": "sqrt"},
        {"kl_gamma_start": 0.1, "kl_gamma_end": 0.0, "kl_samples": "data"},
        {"lora": LORA, "learning_rate": 1e-2},
        {"loss_type": "dr_dpo", "beta_prime": 1.0},
    ],
    ids=[
        "dpo",
        "ipo",
        "cdpo",
        "rdpo",
        "dr_tv",
        "dr_chi2",
        "kldpo",
        "wdpo",
        "wdpo_sqrt",
        "pdpo",
        "lora",
        "dr_dpo",
    ],
)
def test_every_method_learns_on_synthetic_data(kwargs, tmp_path):
    torch.manual_seed(0)
    options = {"learning_rate": 2e-3, "warmup_ratio": 0.0, **kwargs}
    model = DPO(**options)
    dm = _dm(num_train=96, batch_size=16)
    trainer = _trainer(tmp_path, max_epochs=2, limit_val_batches=1)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"]
    assert after["val/rewards/accuracies"] > 0.6 > before["val/rewards/accuracies"]


def test_checkpoint_omits_the_frozen_reference_and_restores(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = DPO(learning_rate=1e-3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(
        tmp_path,
        limit_train_batches=2,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[ckpt],
    )
    trainer.fit(model, datamodule=_dm())
    saved = torch.load(ckpt.last_model_path, weights_only=False)["state_dict"]
    assert saved and not any(k.startswith("reference_model.") for k in saved)
    restored = DPO.load_from_checkpoint(ckpt.last_model_path, weights_only=False)
    batch = _batch(_dm())
    torch.testing.assert_close(
        restored.concatenated_logps(batch)[0], model.concatenated_logps(batch)[0]
    )
    # the reference is still the initial model, not the trained policy
    fresh = DPO()
    fresh.configure_model()
    torch.testing.assert_close(
        restored.concatenated_logps(batch)[1], fresh.concatenated_logps(batch)[1]
    )


def test_precomputed_after_training_reads_the_cache_and_refuses_to_refill_it(tmp_path):
    dm = _dm()
    model = DPO(reference="precomputed", learning_rate=1e-2)
    trainer = _trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    # validate after training: the cache of the initial model is read (not recomputed from the trained policy)
    fresh = DPO()
    fresh.configure_model()
    batch = _batch(dm)
    trainer.validate(model, datamodule=dm, verbose=False)
    torch.testing.assert_close(
        model.concatenated_logps(batch)[1], fresh.concatenated_logps(batch)[1], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(RuntimeError, match="has been trained"):
        trainer.validate(model, datamodule=_dm(seed=5), verbose=False)


def test_kl_gamma_is_annealed_linearly_over_the_fit(tmp_path):
    seen = []

    class Spy(DPO):
        def training_step(self, batch, batch_idx):
            seen.append(self.kl_gamma())
            return super().training_step(batch, batch_idx)

    model = Spy(kl_gamma_start=0.4, kl_gamma_end=0.0, learning_rate=1e-3, kl_samples="data")
    assert model.kl_gamma() == 0.4  # outside a fit: the start value
    trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(model, datamodule=_dm())
    assert seen == pytest.approx([0.4, 0.3, 0.2, 0.1])


def test_dr_dpo_equals_the_objective_on_a_batch():
    batch = _batch(_dm())
    model = _silence(DPO(loss_type="dr_dpo", beta_prime=0.5))
    model.configure_model()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    loss = model.training_step(batch, 0)
    policy, ref, _ = model.concatenated_logps(batch)
    losses = preference_losses("dpo", preference_margin(*policy.chunk(2), *ref.chunk(2)), 0.1)
    torch.testing.assert_close(loss, dr_dpo_loss(losses, 0.5))
    by_hand = -0.5 * math.log(sum(math.exp(-v / 0.5) for v in losses.tolist()) / len(losses))
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert loss.item() < losses.mean().item()  # optimistic: below the mean loss (Jensen)
    with pytest.raises(ValueError, match="dr_dpo"):
        DPO(loss_type="dr_dpo", weighting=TVBall(rho=0.2))
    with pytest.raises(ValueError, match="beta_prime"):
        DPO(loss_type="dr_dpo", beta_prime=0.0)


def test_per_group_train_metrics_are_epoch_means_of_each_group(tmp_path):
    seen = []

    class Spy(DPO):
        def _pair_metrics(self, policy, ref, losses, beta):
            values = super()._pair_metrics(policy, ref, losses, beta)
            if self.training:
                seen.append(({k: v.clone() for k, v in values.items()}, self._last_groups))
            return values

        def training_step(self, batch, batch_idx):
            self._last_groups = batch["group"].clone()
            return super().training_step(batch, batch_idx)

    dm = _dm()
    model = Spy(learning_rate=1e-3)
    trainer = _trainer(tmp_path, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    m = trainer.callback_metrics
    assert len(seen) == 3 and dm.group_names
    groups = torch.cat([g for _, g in seen])
    for name in ("loss", "rewards/accuracies", "rewards/margins"):
        values = torch.cat([v[name] for v, _ in seen]).double()
        for g, group in enumerate(dm.group_names):
            key = f"train/group/{group}/{name}"
            if (groups == g).any():
                expected = values[groups == g].mean().item()
                assert float(m[key]) == pytest.approx(expected, rel=1e-5, abs=1e-6), key
            else:
                assert key not in m


def test_wdpo_refuses_gradient_checkpointing():
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        DPO(wdpo_rho=0.1, gradient_checkpointing=True)
