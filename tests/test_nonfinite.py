"""Non-finite losses, rewards and gradients never reach the optimiser silently (issue 6).

``nonfinite="error"`` raises naming the step and what was not finite; ``"skip"`` drops the
optimiser step -- parameters and AdamW state (moments and step count) stay exactly as they
were -- and counts it in ``train/skipped_steps``. Injected faults: an infinite ``margin``
column (an infinite BT loss), an infinite reward (a forward hook; the BT loss stays finite),
and a NaN gradient (a tensor hook), for the RewardModel and for DPO, which inherits the
gradient screen from ``BackboneModule``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning import Callback, Trainer

from lightning_robust.data import PreferenceDataModule
from lightning_robust.data.synthetic import SyntheticShiftConfig
from lightning_robust.modules import DPO, RewardModel
from lightning_robust.modules.base import NonFiniteError
from lightning_robust.weighting import TVBall

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
STEPS = 3
BAD_STEP = 1


def _batches(n_batches=STEPS, n=4, *, append_eos=False):
    dm = PreferenceDataModule(
        train="synthetic",
        batch_size=n,
        max_length=40,
        val_fraction=0.0,
        shuffle=False,
        append_eos=append_eos,
        synthetic=SyntheticShiftConfig(
            num_train=n * n_batches, num_eval=4, seed=4, length_pair_share=0.0
        ),
    )
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=n, collate_fn=dm.collator)
    batches = list(loader)
    for b in batches:
        b["margin"] = torch.zeros(n)
    return batches


def _loader(batches):
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


class Snapshots(Callback):
    """Parameters and optimiser state before and after every training batch."""

    def __init__(self):
        self.before, self.after, self.logged = [], [], []

    @staticmethod
    def _state(trainer, module):
        params = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
        return params, copy.deepcopy(trainer.optimizers[0].state_dict()["state"])

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before.append(self._state(trainer, module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self._state(trainer, module))
        self.logged.append(float(trainer.callback_metrics.get("train/skipped_steps", -1)))


def _fit(model, batches):
    snaps = Snapshots()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[snaps],
    )
    trainer.fit(model, train_dataloaders=_loader(batches))
    return trainer, snaps


def _same(a, b) -> bool:
    (pa, sa), (pb, sb) = a, b
    same_params = all(torch.equal(pa[k], pb[k]) for k in pa)
    same_state = sa.keys() == sb.keys() and all(
        torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])) for i in sa for k in sa[i]
    )
    return same_params and same_state


def _assert_only_bad_step_skipped(snaps, model):
    for step in range(STEPS):
        unchanged = _same(snaps.before[step], snaps.after[step])
        assert unchanged == (step == BAD_STEP), f"step {step}: unchanged={unchanged}"
    assert model.skipped_steps == 1
    assert snaps.logged[BAD_STEP:] == [1.0] * (STEPS - BAD_STEP) and snaps.logged[0] == 0.0


def _reward_model(**kw):
    return RewardModel(
        tiny_config=TINY, use_margin=True, learning_rate=1e-2, warmup_ratio=0.0, **kw
    )


def _nan_gradient_at(model, step: int, name_part: str):
    """Make the gradient of the first parameter whose name contains ``name_part`` NaN at ``step``."""
    model.configure_model()
    name, param = next((n, p) for n, p in model.backbone.named_parameters() if name_part in n)
    param.register_hook(lambda g: g * float("nan") if model.global_step == step else g)
    return name


def test_infinite_loss_raises_naming_step_and_position():
    batches = _batches()
    batches[BAD_STEP]["margin"][2] = float("inf")
    with pytest.raises(
        NonFiniteError, match=rf"global step {BAD_STEP} .*per-example losses at positions \[2\]"
    ):
        _fit(_reward_model(), batches)


def test_infinite_loss_is_skipped_and_counted():
    batches = _batches()
    batches[BAD_STEP]["margin"][2] = float("inf")
    model = _reward_model(nonfinite="skip")
    _, snaps = _fit(model, batches)
    _assert_only_bad_step_skipped(snaps, model)
    # the Adam step counter really stayed put: 2 updates for 3 batches
    assert all(int(s["step"]) == STEPS - 1 for s in snaps.after[-1][1].values())


def test_infinite_reward_with_finite_loss_is_caught():
    """An infinite chosen reward gives a BT loss of exactly 0: the reward check catches it."""
    model = _reward_model()
    model.configure_model()

    def poison(module, args, output):
        if model.global_step == BAD_STEP and model.training:
            output.logits[0, 0] = float("inf")
        return output

    model.backbone.register_forward_hook(poison)
    with pytest.raises(NonFiniteError, match=r"chosen rewards at positions \[0\]"):
        _fit(model, _batches())


def test_nan_gradient_raises_naming_the_parameter():
    model = _reward_model()
    name = _nan_gradient_at(model, BAD_STEP, "score")
    with pytest.raises(
        NonFiniteError, match=rf"gradients of \['backbone\.{name}'\] at global step {BAD_STEP}"
    ):
        _fit(model, _batches())


def test_nan_gradient_is_skipped_and_counted():
    model = _reward_model(nonfinite="skip")
    _nan_gradient_at(model, BAD_STEP, "score")
    _, snaps = _fit(model, _batches())
    _assert_only_bad_step_skipped(snaps, model)


@pytest.mark.slow
def test_skip_under_the_accumulated_scope():
    """Manual optimisation (scope='accumulated') goes through the same screen."""
    batches = _batches()
    batches[BAD_STEP]["margin"][3] = float("inf")
    model = _reward_model(
        nonfinite="skip", micro_batch_size=2, weighting=TVBall(0.3, scope="accumulated")
    )
    _, snaps = _fit(model, batches)
    _assert_only_bad_step_skipped(snaps, model)


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        _reward_model(nonfinite="ignore")


def _dpo(**kw):
    return DPO(tiny_config=TINY, learning_rate=1e-2, warmup_ratio=0.0, **kw)


@pytest.mark.slow
def test_dpo_inherits_the_gradient_screen():
    batches = _batches(append_eos=True)
    model = _dpo()
    name = _nan_gradient_at(model, BAD_STEP, "lm_head")
    with pytest.raises(NonFiniteError, match=rf"gradients of \['backbone\.{name}'\]"):
        _fit(model, batches)
    skipping = _dpo()
    skipping.nonfinite = "skip"  # DPO has no constructor argument for it yet
    _nan_gradient_at(skipping, BAD_STEP, "lm_head")
    _, snaps = _fit(skipping, batches)
    _assert_only_bad_step_skipped(snaps, skipping)


@pytest.mark.slow
def test_dpo_non_finite_loss_is_never_silent():
    """DPO's training step goes through the shared robust step: the error names the step and the
    positions of the bad losses and log-probs."""
    batches = _batches(append_eos=True)
    model = _dpo()
    model.configure_model()

    def poison(module, args, output):  # the LM head (DPO's fast path calls it on its own)
        if model.global_step == BAD_STEP and model.training:
            return output * float("nan")
        return output

    model.backbone.get_output_embeddings().register_forward_hook(poison)
    with pytest.raises(
        NonFiniteError,
        match=r"global step 1 .*per-example losses at positions \[0, 1, 2, 3\].*chosen log-probs",
    ):
        _fit(model, batches)
