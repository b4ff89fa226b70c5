"""``kl_samples: reference`` (docs/ALGORITHMS.md §3.4, docs/DESIGN.md, further choices): the forward KL of
p-/dp-/e-DPO on samples of pi_ref, from a ``ref_samples`` column or generated once and cached."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from lightning import Trainer

import lightning_robust.modules.reference as reference_module
from lightning_robust.data import PreferenceDataModule, PreferenceExample, encode_examples
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.models.lora import LoraOptions
from lightning_robust.modules import DPO
from lightning_robust.modules.reference import reference_logps
from lightning_robust.objectives.dpo import preference_losses, preference_margin

LORA = LoraOptions(r=4, alpha=8, dropout=0.0)


def _dm(seed=1, num_train=16, batch_size=8):
    return PreferenceDataModule(
        train="synthetic",
        batch_size=batch_size,
        max_length=48,
        append_eos=True,
        seed=0,
        synthetic=SyntheticShiftConfig(
            num_train=num_train, num_eval=16, seed=seed, length_pair_share=0.0
        ),
    )


def _model(tmp_path, **kw):
    options = dict(
        kl_gamma_start=0.5,
        kl_samples="reference",
        reference_cache_dir=str(tmp_path / "cache"),
        kl_num_samples=2,
        kl_sample_max_new_tokens=6,
    )
    options.update(kw)
    return DPO(**options)


def _count_builds(monkeypatch):
    calls = []
    original = reference_module.generate_reference_samples
    monkeypatch.setattr(
        reference_module,
        "generate_reference_samples",
        lambda *a, **k: calls.append(1) or original(*a, **k),
    )
    return calls


def _capture(model):
    logged = {}
    model.log = lambda k, v, **kw: logged.__setitem__(k, v)
    model.log_dict = lambda d, **kw: logged.update(d)
    return logged


def test_generated_samples_are_reference_samples_and_cached(tmp_path, monkeypatch):
    calls = _count_builds(monkeypatch)
    dm = _dm()
    dm.setup("fit")
    train = dm.datasets["train"]
    model = _model(tmp_path)
    samples = model.prepare_reference_samples(dm)
    assert len(samples) == 2 * len(train) and calls == [1] and samples.source == "generated"
    ids = list(range(len(samples)))
    seqs = samples.sequences(ids)
    for s, seq in zip(ids, seqs, strict=True):
        item = train[int(samples.row[s])]
        plen = item["chosen_prompt_len"]
        assert int(samples.prompt_len[s]) == plen and seq[:plen] == list(
            item["chosen_input_ids"][:plen]
        )
        assert 1 <= len(seq) - plen <= 6
    # the cached reference log-probs are those of the frozen reference, sample by sample
    for s in (0, 5, len(samples) - 1):
        seq = torch.tensor([seqs[s]])
        direct = reference_logps(
            model.backbone,
            model.reference_model,
            seq,
            torch.ones_like(seq),
            samples.prompt_len[s : s + 1],
        )
        torch.testing.assert_close(direct, samples.ref_logps[s : s + 1], rtol=1e-5, atol=1e-5)
    # hit: same data, reference and settings -> read from disk
    again = _model(tmp_path).prepare_reference_samples(dm)
    assert calls == [1] and torch.equal(again.tokens, samples.tokens)
    # misses: other sampling settings, other data, other reference weights
    _model(tmp_path, kl_sample_seed=1).prepare_reference_samples(dm)
    dm2 = _dm(seed=2)
    dm2.setup("fit")
    _model(tmp_path).prepare_reference_samples(dm2)
    _model(tmp_path, init_seed=1).prepare_reference_samples(dm)
    assert calls == [1, 1, 1, 1]
    assert (
        len([f for f in os.listdir(tmp_path / "cache") if f.startswith("ref_samples-train")]) == 4
    )


def test_lora_disabled_reference_generates_the_frozen_copys_samples(tmp_path):
    dm = _dm()
    dm.setup("fit")
    frozen = _model(tmp_path / "a").prepare_reference_samples(dm)
    lora = _model(tmp_path / "b", lora=LORA)
    lora.configure_model()
    with torch.no_grad():  # adapters that act: the reference must still be the base model
        for n, p in lora.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    samples = lora.prepare_reference_samples(dm)
    assert torch.equal(samples.tokens, frozen.tokens)
    torch.testing.assert_close(samples.ref_logps, frozen.ref_logps, rtol=1e-5, atol=1e-5)


def _manual_logp(model, ids, plen):
    """Summed log-prob of ids[plen:] under model, one unpadded row, from the full logits."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    targets = torch.tensor(ids[1:])
    return logp[torch.arange(len(ids) - 1), targets][plen - 1 :].sum()


def test_ref_samples_column_gives_the_direct_kl_estimate(tmp_path, caplog):
    rows = []
    for i in range(6):
        rows.append(
            {
                "prompt": f"what is the colour of item {i}?",
                "chosen": "it is red and bright",
                "rejected": "no idea at all",
                "ref_samples": ["it is blue", "maybe green or red", "red"][: 1 + i % 3],
            }
        )
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = PreferenceDataModule(
        train=str(path),
        val_fraction=0.0,
        batch_size=6,
        shuffle=False,
        append_eos=True,
        max_length=48,
    )
    dm.setup("fit")
    gamma = 0.5
    model = _model(tmp_path, kl_gamma_start=gamma)
    model.configure_model()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    with caplog.at_level(logging.INFO, logger="lightning_robust.modules.reference"):
        samples = model.prepare_reference_samples(dm)
    assert "'ref_samples' column" in caplog.text and samples.source == "column"
    assert len(samples) == sum(len(r["ref_samples"]) for r in rows)
    batch = next(iter(dm.train_dataloader()))
    logged = _capture(model)
    loss = model.training_step(batch, 0)
    # direct: encode each (prompt, sample), score each alone, average per prompt, then over the batch
    kls = []
    train = dm.datasets["train"]
    for i in batch["index"].tolist():
        ex = train.examples[i]
        texts = rows[train.source_index[i]]["ref_samples"]
        encoded = encode_examples(
            [PreferenceExample(ex.prompt, t, t) for t in texts], dm.tokenizer, 48, append_eos=True
        )
        diffs = []
        for enc in encoded:
            ids, plen = list(enc.chosen_input_ids), enc.chosen_prompt_len
            with torch.no_grad():
                diffs.append(
                    _manual_logp(model.reference_model, ids, plen)
                    - _manual_logp(model.backbone, ids, plen)
                )
        kls.append(torch.stack(diffs).mean())
    kl = torch.stack(kls).mean()
    assert logged["train/kl/forward"].item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-5)
    policy, ref, _ = model.concatenated_logps(batch)
    h = preference_margin(*policy.chunk(2), *ref.chunk(2))
    expected = preference_losses("dpo", h, 0.1).mean() + gamma * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    loss.backward()  # the KL term's gradient (an SFT term on the samples) reaches the policy
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    # a bad entry is named with its row
    rows[3]["ref_samples"] = [""]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm_bad = PreferenceDataModule(train=str(path), val_fraction=0.0, batch_size=6, append_eos=True)
    dm_bad.setup("fit")
    with pytest.raises(ValueError, match=r"row 3.*ref_samples"):
        _model(tmp_path).prepare_reference_samples(dm_bad)


def test_fit_with_generated_reference_samples_lowers_the_loss(tmp_path, caplog):
    torch.manual_seed(0)
    model = DPO(
        kl_gamma_start=0.05,
        kl_samples="reference",
        kl_sample_max_new_tokens=8,
        learning_rate=2e-3,
        warmup_ratio=0.0,
    )
    dm = _dm(num_train=96, batch_size=16)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        log_every_n_steps=1,
    )
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    with caplog.at_level(logging.INFO, logger="lightning_robust.modules.reference"):
        trainer.fit(model, datamodule=dm)
    assert "generated from the reference" in caplog.text
    assert torch.isfinite(trainer.callback_metrics["train/kl/forward"])
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"]
    assert after["val/rewards/accuracies"] > 0.6 > before["val/rewards/accuracies"]
    files = os.listdir(tmp_path / "reference_cache")
    assert any(f.startswith("ref_samples-train-") for f in files)


def test_bad_kl_options_are_named():
    with pytest.raises(ValueError, match="kl_samples"):
        DPO(kl_samples="policy")
    with pytest.raises(ValueError, match="kl_num_samples"):
        DPO(kl_samples="reference", kl_num_samples=0)


def test_precomputed_full_weight_reference_builds_samples_only_untrained(tmp_path):
    dm = _dm()
    dm.setup("fit")
    frozen = _model(tmp_path / "a").prepare_reference_samples(dm)
    model = _model(tmp_path / "b", reference="precomputed")
    model.precompute_reference(dm)  # fingerprints the (initial) policy
    samples = model.prepare_reference_samples(dm, untrained=True)
    assert torch.equal(samples.tokens, frozen.tokens)  # the initial policy is the reference
    other = _model(tmp_path / "c", reference="precomputed")
    other.precompute_reference(dm)
    with pytest.raises(RuntimeError, match="trained"):  # may be trained by now: refuse to sample
        other.prepare_reference_samples(dm)
