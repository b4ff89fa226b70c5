"""Scorers: one number per (prompt, response), for benchmark evaluation (docs/DESIGN.md "Evals").

Every scorer has ``score(prompts, responses) -> torch.Tensor`` (float32, shape ``[n]``), runs
batched under ``torch.no_grad()`` with the model in eval mode (its mode is restored
afterwards), and renders (prompt, response) exactly as training does, through
:func:`lightning_robust.data.tokenize.encode_examples` (chat template when the tokenizer has one,
pair encoding for BERT-like tokenizers, plain concatenation otherwise).

- :class:`RewardModelScorer`: the scalar head of a sequence-classification model (any Hugging
  Face ``*ForSequenceClassification`` with ``num_labels=1``, or a ``RewardModel`` module: its
  ``.backbone`` and ``.tokenizer`` are used).
- :class:`DPOImplicitRewardScorer`: ``beta * (log pi(y|x) - log pi_ref(y|x))``, log-probs summed
  over response tokens (Rafailov et al. 2023, eq. 5; RewardBench ``rewardbench/dpo.py``
  ``DPOInference``). Without a reference model it is RewardBench's reference-free score: the
  average per-token log-prob ``log pi(y|x) / |y|`` (``ref_free_norm="norm"``, RewardBench's
  default) or the sum (``"sum"``).
- :class:`LikelihoodScorer`: ``log pi(y|x)`` summed over response tokens (seed 000 counts a pair
  correct when ``pi(y+|x) > pi(y-|x)``); ``normalize=True`` divides by the token count.

Tokenisation is cached per scorer (key: prompt and response text), so a benchmark scored again
after more training is not re-tokenised. Responses whose tokens alone exceed ``max_length`` are
cut on the right (as ``truncation=True`` in RewardBench's pipelines) and counted in
``scorer.truncated``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from lightning_robust.data.collator import pad_sequences
from lightning_robust.data.dialogue import prompt_key
from lightning_robust.data.example import TOO_LONG, BadRow, PreferenceExample
from lightning_robust.data.tokenize import encode_examples
from lightning_robust.models.logprobs import sequence_logprobs

_UNLIMITED = 10**9


@runtime_checkable
class Scorer(Protocol):
    """Anything with ``score(prompts, responses) -> Tensor[n]``."""

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor: ...


class TokenCache:
    """``(prompt, response) -> (input_ids, prompt_len)``, filled in batches by ``encode_examples``.

    Consecutive uncached items that share a prompt are encoded as one pair (the layout of
    pairwise benchmarks: chosen then rejected), so each text is tokenised once. ``max_items``
    bounds the cache (oldest entries dropped first): online RL scores fresh completions every
    step, which would otherwise grow it without limit.
    """

    def __init__(
        self,
        tokenizer,
        max_length: int,
        chat_template: bool | None = None,
        append_eos: bool = False,
        max_items: int | None = None,
    ):
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat_template = chat_template
        self.append_eos = append_eos
        self._store: dict[tuple[str, str], tuple[list[int], int]] = {}
        self.truncated = 0
        self.encoded = 0  # sequences tokenised so far (for tests of the cache)

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def key(prompt, response: str) -> tuple[str, str]:
        return prompt_key(prompt), response

    def _encode(self, items: list[tuple[object, str]]) -> None:
        examples, owners = [], []
        k = 0
        while k < len(items):
            p, r = items[k]
            if k + 1 < len(items) and prompt_key(items[k + 1][0]) == prompt_key(p):
                examples.append(PreferenceExample(p, r, items[k + 1][1]))
                owners.append((items[k], items[k + 1]))
                k += 2
            else:
                examples.append(PreferenceExample(p, r, r))
                owners.append((items[k], None))
                k += 1
        encoded = encode_examples(
            examples, self.tokenizer, self.max_length, self.chat_template, self.append_eos
        )
        retry = []
        for ex, enc, (a, b) in zip(examples, encoded, owners, strict=True):
            if isinstance(enc, BadRow):
                if enc.reason != TOO_LONG:
                    raise ValueError(f"cannot score response {a[1][:60]!r}...: {enc}")
                retry.append((ex, a, b))
                continue
            self._store[self.key(*a)] = (enc.chosen_input_ids, enc.chosen_prompt_len)
            if b is not None:
                self._store[self.key(*b)] = (enc.rejected_input_ids, enc.rejected_prompt_len)
            self.encoded += 1 if b is None else 2
        if retry:  # too long: encode without a limit, then cut on the right
            long = encode_examples(
                [ex for ex, _, _ in retry],
                self.tokenizer,
                _UNLIMITED,
                self.chat_template,
                self.append_eos,
            )
            for enc, (_, a, b) in zip(long, retry, strict=True):
                if isinstance(enc, BadRow):
                    raise ValueError(f"cannot score response {a[1][:60]!r}...: {enc}")
                for item, ids, plen in (
                    (a, enc.chosen_input_ids, enc.chosen_prompt_len),
                    (b, enc.rejected_input_ids, enc.rejected_prompt_len),
                ):
                    if item is None:
                        continue
                    if len(ids) > self.max_length:
                        ids = ids[: self.max_length]
                        plen = min(plen, self.max_length - 1)
                        self.truncated += 1
                    self._store[self.key(*item)] = (ids, plen)
                    self.encoded += 1

    def get(self, prompts: Sequence, responses: Sequence[str]) -> list[tuple[list[int], int]]:
        """Token ids and prompt lengths of every (prompt, response), encoding the missing ones."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        missing, seen = [], set()
        for p, r in zip(prompts, responses, strict=True):
            k = self.key(p, r)
            if k not in self._store and k not in seen:
                seen.add(k)
                missing.append((p, r))
        if missing:
            self._encode(missing)
        out = [self._store[self.key(p, r)] for p, r in zip(prompts, responses, strict=True)]
        if self.max_items is not None and len(self._store) > self.max_items:
            for key in list(self._store)[: len(self._store) - self.max_items]:  # oldest first
                del self._store[key]
        return out


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless model
        return torch.device("cpu")


class _BatchedScorer:
    """Tokenise (cached), sort by length, pad on the right, score batch by batch, unsort."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        batch_size: int,
        chat_template: bool | None,
        append_eos: bool,
        cache: TokenCache | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (set tokenizer.pad_token)")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # "is None", not "or": an empty cache is falsy (it has __len__) but is still the one to use
        self.cache = (
            cache
            if cache is not None
            else TokenCache(tokenizer, max_length, chat_template, append_eos)
        )

    @property
    def truncated(self) -> int:
        """Sequences cut on the right because the response alone exceeded ``max_length``."""
        return self.cache.truncated

    def _models(self) -> list:
        raise NotImplementedError

    def _score_batch(self, input_ids, attention_mask, prompt_len) -> torch.Tensor:
        raise NotImplementedError

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        """One float32 score per (prompt, response), on the CPU."""
        encoded = self.cache.get(list(prompts), list(responses))
        out = torch.empty(len(encoded), dtype=torch.float32)
        if not encoded:
            return out
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        models = self._models()
        modes = [m.training for m in models]
        device = _device(models[0])
        pad = self.tokenizer.pad_token_id
        try:
            for m in models:
                m.eval()
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    ids, mask = pad_sequences([encoded[i][0] for i in rows], pad)
                    plen = torch.tensor([encoded[i][1] for i in rows], dtype=torch.long)
                    scores = self._score_batch(ids.to(device), mask.to(device), plen.to(device))
                    out[torch.tensor(rows)] = scores.float().cpu()
        finally:
            for m, mode in zip(models, modes, strict=True):
                m.train(mode)
        return out


def _unwrap_module(model, tokenizer):
    """A ``RewardModel``-like module (``.backbone``, ``.tokenizer``) -> (backbone, tokenizer)."""
    backbone = getattr(model, "backbone", None)
    if backbone is not None:
        return backbone, tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ValueError("pass the tokenizer (or a module with .backbone and .tokenizer)")
    return model, tokenizer


class RewardModelScorer(_BatchedScorer):
    """Scalar score ``r(x, y)`` of a sequence-classification reward model.

    Args:
        model: a Hugging Face ``*ForSequenceClassification`` (``num_labels=1``; column 0 of
            the logits is used otherwise), or a module with ``.backbone`` and ``.tokenizer``
            (``lightning_robust.modules.RewardModel``).
        tokenizer: its tokenizer (taken from the module when omitted).
        max_length: longest sequence; prompts are cut from the left first (as in training).
        batch_size: sequences per forward pass.
        chat_template: ``None`` uses the tokenizer's template when it has one.
        append_eos: end every response with eos (match how the model was trained).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        max_length: int = 2048,
        batch_size: int = 16,
        chat_template: bool | None = None,
        append_eos: bool = False,
        cache: TokenCache | None = None,
    ):
        self.model, tokenizer = _unwrap_module(model, tokenizer)
        super().__init__(tokenizer, max_length, batch_size, chat_template, append_eos, cache)

    def _models(self) -> list:
        return [self.model]

    def _score_batch(self, input_ids, attention_mask, prompt_len) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


class LikelihoodScorer(_BatchedScorer):
    """``log pi(y|x)``: the summed response-token log-probs of a causal LM.

    ``normalize=True`` divides by the number of response tokens (the average log-prob).
    ``append_eos=True`` (default) scores the eos that ends each response, as DPO training
    (TRL) appends it.
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_length: int = 2048,
        batch_size: int = 8,
        chat_template: bool | None = None,
        append_eos: bool = True,
        normalize: bool = False,
        cache: TokenCache | None = None,
    ):
        super().__init__(tokenizer, max_length, batch_size, chat_template, append_eos, cache)
        self.model = model
        self.normalize = normalize

    def _models(self) -> list:
        return [self.model]

    def _score_batch(self, input_ids, attention_mask, prompt_len) -> torch.Tensor:
        logps, counts = sequence_logprobs(self.model, input_ids, attention_mask, prompt_len)
        return logps / counts.clamp(min=1) if self.normalize else logps


@runtime_checkable
class ReferenceView(Protocol):
    """A reference policy object (``lightning_robust.modules.reference.ReferencePolicy``):
    ``mode`` and ``view()``, a context manager yielding the model that computes ``pi_ref``."""

    mode: str

    def view(self): ...


@contextlib.contextmanager
def _adapters_disabled(policy):
    """Yield the LoRA ``policy`` with its adapters disabled (its base model)."""
    with policy.disable_adapter():
        yield policy


class _ViewLikelihood(LikelihoodScorer):
    """``log pi_ref(y|x)`` computed inside ``view()`` (a reference policy's model, or a LoRA
    policy with its adapters disabled, i.e. its base model)."""

    def __init__(self, model, view, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self._view = view

    def _score_batch(self, input_ids, attention_mask, prompt_len) -> torch.Tensor:
        with self._view() as model:
            logps, counts = sequence_logprobs(model, input_ids, attention_mask, prompt_len)
        return logps / counts.clamp(min=1) if self.normalize else logps


class DPOImplicitRewardScorer(_BatchedScorer):
    """DPO implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` (Rafailov et al. 2023).

    Args:
        policy: the trained causal LM.
        tokenizer: its tokenizer.
        reference: the reference causal LM, a reference policy object (:class:`ReferenceView`,
            e.g. the ``reference_policy`` of a DPO module), or ``"lora_disabled"`` (the LoRA
            policy with its adapters disabled, i.e. its base model); ``None`` gives RewardBench's reference-free score
            (``rewardbench/dpo.py``, ``ref_free_norm``): ``"norm"`` (default there) the average
            response-token log-prob of the policy, ``"sum"`` the summed log-prob (``beta`` is
            not applied in the reference-free case, as RewardBench).
        beta: DPO temperature (0.1: TRL's and RewardBench's default).
        reference_logps_cache: keep the reference's scores per (prompt, response) (the
            reference does not change during training), so it runs once per benchmark row.
    """

    def __init__(
        self,
        policy,
        tokenizer,
        reference=None,
        beta: float = 0.1,
        ref_free_norm: str = "norm",
        max_length: int = 2048,
        batch_size: int = 8,
        chat_template: bool | None = None,
        append_eos: bool = True,
        reference_logps_cache: bool = True,
        cache: TokenCache | None = None,
    ):
        if ref_free_norm not in ("norm", "sum"):
            raise ValueError(f"ref_free_norm must be 'norm' or 'sum', got {ref_free_norm!r}")
        if isinstance(reference, ReferenceView) and reference.mode == "none":
            reference = None
        super().__init__(tokenizer, max_length, batch_size, chat_template, append_eos, cache)
        self.policy = policy
        self.model = policy  # the model a leaderboard run evaluates
        self.reference = reference
        self.beta = beta
        self.ref_free_norm = ref_free_norm
        self._ref_cache: dict | None = {} if reference_logps_cache else None
        self._policy_only = LikelihoodScorer(
            policy,
            tokenizer,
            batch_size=batch_size,
            cache=self.cache,
            normalize=reference is None and ref_free_norm == "norm",
        )
        if reference is None:
            self._reference = None
        elif isinstance(reference, ReferenceView):
            self._reference = _ViewLikelihood(
                policy, reference.view, tokenizer, batch_size=batch_size, cache=self.cache
            )
        elif isinstance(reference, str):
            if reference != "lora_disabled" or not callable(
                getattr(policy, "disable_adapter", None)
            ):
                raise ValueError(
                    f"reference={reference!r}: a string reference must be 'lora_disabled' with a LoRA policy"
                )
            self._reference = _ViewLikelihood(
                policy,
                functools.partial(_adapters_disabled, policy),
                tokenizer,
                batch_size=batch_size,
                cache=self.cache,
            )
        else:
            self._reference = LikelihoodScorer(
                reference, tokenizer, batch_size=batch_size, cache=self.cache
            )

    def _reference_logps(self, prompts: list, responses: list) -> torch.Tensor:
        if self._ref_cache is None:
            return self._reference.score(prompts, responses)
        keys = [TokenCache.key(p, r) for p, r in zip(prompts, responses, strict=True)]
        todo = [i for i, k in enumerate(keys) if k not in self._ref_cache]
        if todo:
            values = self._reference.score([prompts[i] for i in todo], [responses[i] for i in todo])
            for i, v in zip(todo, values.tolist(), strict=True):
                self._ref_cache[keys[i]] = v
        return torch.tensor([self._ref_cache[k] for k in keys], dtype=torch.float32)

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = list(prompts), list(responses)
        policy = self._policy_only.score(prompts, responses)
        if self._reference is None:
            return policy
        return self.beta * (policy - self._reference_logps(prompts, responses))
