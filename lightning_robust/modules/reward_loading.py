"""Build a reward :class:`~lightning_robust.models.scorers.Scorer` from one string (online RL,
annotation, evaluation).

It sits beside the modules (not in ``models``) because one spec is a ``RewardModel`` checkpoint:
loading it needs the LightningModule, and ``models`` never imports ``modules``.

``spec`` accepts:

- ``"synthetic:gold"`` / ``"synthetic:proxy"``: the synthetic prompt task's rewards
  (:mod:`lightning_robust.data.synthetic_prompts`), pure Python;
- ``"tiny"``: a random-init tiny ``LlamaForSequenceClassification`` (seed 0) for smoke tests;
- a path ending in ``.ckpt``: a Lightning checkpoint of
  :class:`lightning_robust.modules.RewardModel` (loaded with ``weights_only=True`` unless told
  otherwise; its backbone and tokenizer are scored);
- a local Hugging Face directory (``save_pretrained``) or a hub id: a sequence classifier with
  ``num_labels=1`` and its tokenizer.

Model-backed specs are wrapped in :class:`~lightning_robust.models.scorers.RewardModelScorer`,
which renders (prompt, response) as training does. ``trust_remote_code`` stays off unless
turned on.
"""

from __future__ import annotations

import os
import pickle
import zipfile

from lightning_robust.data.synthetic_prompts import SyntheticGoldReward, SyntheticProxyReward
from lightning_robust.models.loading import load_sequence_classifier, load_tokenizer
from lightning_robust.models.scorers import RewardModelScorer, TokenCache
from lightning_robust.models.tiny import TINY_MODEL_NAME
from lightning_robust.modules.reward_model import RewardModel

SYNTHETIC_PREFIX = "synthetic:"


def _synthetic_scorer(spec: str):
    kinds = {"gold": SyntheticGoldReward, "proxy": SyntheticProxyReward}
    kind = spec[len(SYNTHETIC_PREFIX) :]
    if kind not in kinds:
        raise ValueError(
            f"unknown synthetic reward {spec!r}: use 'synthetic:gold' or 'synthetic:proxy'"
        )
    return kinds[kind]()


def _load_checkpoint(path: str, device, weights_only: bool):
    # a corrupt or truncated file is not a refused pickle: say so before loading, and never
    # advise weights_only=False for it
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise ValueError(
            f"reward checkpoint {path!r} is unreadable (truncated or corrupt: not a torch zip archive)"
        )
    try:
        module = RewardModel.load_from_checkpoint(
            path, map_location=device or "cpu", weights_only=weights_only
        )
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"reward checkpoint {path!r} holds objects that weights_only=True refuses ({err}); "
            "pass weights_only=False if you trust the file"
        ) from None
    return module.backbone, module.tokenizer


def _is_local_path(spec: str) -> bool:
    """A path (absolute, ``./``, ``../``, ``~``, or existing) rather than a hub id."""
    return spec.startswith(("/", "./", "../", "~")) or os.path.exists(spec)


def load_reward_scorer(
    spec: str,
    *,
    max_length: int = 1024,
    batch_size: int = 16,
    device=None,
    chat_template: bool | None = None,
    append_eos: bool = False,
    trust_remote_code: bool = False,
    weights_only: bool = True,
    cache_size: int | None = None,
):
    """A scorer for ``spec`` (module docstring); model-backed scorers run on ``device``.

    Args:
        spec: ``"synthetic:gold"``, ``"synthetic:proxy"``, ``"tiny"``, a ``.ckpt`` file, a local
            Hugging Face directory or a hub id.
        max_length, batch_size, chat_template, append_eos: passed to ``RewardModelScorer``
            (match how the reward model was trained).
        device: where the reward model runs (default: CPU).
        trust_remote_code: allow custom model code from a directory / hub id.
        weights_only: load ``.ckpt`` files with ``torch.load(weights_only=True)``.
        cache_size: most (prompt, response) tokenisations kept (``None``: all, right for fixed
            benchmarks; online RL passes a bound since every rollout brings new responses).

    Raises:
        ValueError: an unknown ``synthetic:`` name, a missing file or directory, or a hub id
            that cannot be loaded (the message names ``spec``).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward spec must be a non-empty string, got {spec!r}")
    if spec.startswith(SYNTHETIC_PREFIX):
        return _synthetic_scorer(spec)

    if spec.endswith(".ckpt"):
        path = os.path.expanduser(spec)
        if not os.path.isfile(path):
            raise ValueError(f"reward checkpoint not found: {spec!r}")
        model, tokenizer = _load_checkpoint(path, device, weights_only)
    elif spec == TINY_MODEL_NAME:
        tokenizer = load_tokenizer(spec)
        model = load_sequence_classifier(spec, tokenizer, seed=0)
    else:
        spec_path = os.path.expanduser(spec)
        if _is_local_path(spec) and not os.path.isdir(spec_path):
            raise ValueError(f"reward model directory not found: {spec!r}")
        try:
            tokenizer = load_tokenizer(spec_path, trust_remote_code=trust_remote_code)
            model = load_sequence_classifier(
                spec_path, tokenizer, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load reward model {spec!r}: {err}") from err
    if device is not None:
        model = model.to(device)
    model.eval()
    return RewardModelScorer(
        model,
        tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        cache=TokenCache(tokenizer, max_length, chat_template, append_eos, max_items=cache_size),
    )
