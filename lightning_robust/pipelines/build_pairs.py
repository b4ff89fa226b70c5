"""On-policy preference pairs: sample, score, pair (S002's pipeline; on-policy DPO).

For every prompt of a prompt source, :func:`build_pairs`

1. samples ``K = num_samples`` completions from the policy (Hugging Face ``generate`` through
   :func:`lightning_robust.models.rollout.generate_rollouts`; ``backend="vllm"`` uses
   :class:`lightning_robust.models.vllm_rollout.VLLMRolloutEngine`, experimental);
2. scores each completion with every reward model (``load_reward_scorer`` specs: a Hugging Face
   sequence classifier directory / hub id, a ``RewardModel`` ``.ckpt``, ``"tiny"``; a
   :class:`~lightning_robust.models.scorers.Scorer`; or a multi-objective head
   ``{"path": dir, "objectives": {"helpfulness": 0.8, "safety": 0.2}}`` whose score is the
   weighted sum of the named outputs of ``config.id2label``);
3. combines the reward models into one ranking score ``s = sum_m w_m r_m`` (``reward_weights``,
   equal by default) and writes, per prompt, the ``max_min`` pair (chosen = argmax s, rejected =
   argmin s; S002) or ``all`` pairs with ``s_i > s_j``. Prompts whose completions all score the
   same, empty completions and identical texts are skipped and counted.

Output rows (``.jsonl`` or ``.parquet``; the ``preference`` schema the data module reads, and
the distillation columns of :mod:`lightning_robust.annotate`): ``prompt``, ``chosen``,
``rejected``, ``chosen_score`` / ``rejected_score`` (combined), ``chosen_scores`` /
``rejected_scores`` (one per reward model), ``source_row`` (the prompt's row).

Cache and resume: ``<output>.meta.json`` holds a fingerprint of every input (prompts, policy and
reward-model identities, sampling settings, seed). Samples and scores are appended per batch of
prompts to ``<output>.samples.jsonl``; a rerun with the same fingerprint skips the prompts
already there (each batch is sampled with ``seed + batch index``, so a resumed run writes what
an uninterrupted one would) and a finished output is a cache hit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_robust.annotate import (
    _file_digest,
    _output_format,
    _path_fingerprint,
    _weights_fingerprint,
    _write,
    reward_model_fingerprint,
)
from lightning_robust.data.collator import pad_sequences
from lightning_robust.data.prompts import adapt_prompt_rows, encode_prompts, get_prompt_schema
from lightning_robust.data.source import DataSource, as_source, load_rows

log = logging.getLogger(__name__)

PAIRING = ("max_min", "all")
BACKENDS = ("hf", "vllm")
PAIRS_FORMAT = 1


# ---------------------------------------------------------------- prompts
def read_prompts(
    source: DataSource | str | Mapping,
    schema: str = "auto",
    max_prompts: int | None = None,
    on_bad_row: str = "error",
    cache_dir: str | None = None,
):
    """``(raw prompts, source rows)`` of a prompt source (the prompt schemas of
    :mod:`lightning_robust.data.prompts`; hh-rlhf gives its first human turn)."""
    src = as_source(source)
    if src.is_synthetic:
        from lightning_robust.data.synthetic_prompts import SyntheticPromptConfig, generate_prompts

        rows = generate_prompts(src.split, SyntheticPromptConfig())
        rows = rows[:max_prompts] if max_prompts is not None else rows
        columns, where = list(rows[0]) if rows else ["prompt"], f"synthetic:{src.split}"
    else:
        rows = load_rows(src, max_prompts, cache_dir)
        columns, where = list(rows.column_names), src.describe()
    name = src.schema if src.schema != "auto" else schema
    try:
        prompt_schema = get_prompt_schema(name, columns, rows[0] if len(rows) else None)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    read = adapt_prompt_rows(rows, prompt_schema, None, on_bad_row, where)
    if not read.examples:
        raise ValueError(f"{where}: no usable prompts")
    return [e.prompt for e in read.examples], list(read.source_index)


# ---------------------------------------------------------------- reward models
def _multi_objective_scorer(
    spec: Mapping, batch_size: int, max_length: int, trust_remote_code: bool
):
    """A scorer whose score is ``sum_k w_k logits[:, k]`` over the named objectives of a
    multi-output sequence classifier (``config.id2label`` names the outputs)."""
    from transformers import AutoModelForSequenceClassification

    from lightning_robust.models.loading import load_tokenizer
    from lightning_robust.models.scorers import RewardModelScorer, TokenCache

    path, objectives = spec.get("path"), spec.get("objectives")
    if not isinstance(path, str) or not isinstance(objectives, Mapping) or not objectives:
        raise ValueError(
            "reward_models: a multi-objective entry is {'path': <dir or hub id>, 'objectives': "
            f"{{name: weight, ...}}}}, got {dict(spec)!r}"
        )
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, trust_remote_code=trust_remote_code
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    unknown = sorted(set(objectives) - set(names))
    if unknown:
        raise ValueError(
            f"reward_models: objectives {unknown} are not outputs of {path!r}; it has {names}"
        )
    weights = torch.tensor([float(objectives.get(n, 0.0)) for n in names])

    class MultiObjectiveScorer(RewardModelScorer):
        def _score_batch(self, input_ids, attention_mask, prompt_len):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            return logits @ weights.to(logits.device)

    model.eval()
    return MultiObjectiveScorer(
        model,
        tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        cache=TokenCache(tokenizer, max_length, None, False),
    )


def resolve_reward_model(
    spec,
    *,
    policy_tokenizer,
    batch_size: int,
    max_length: int,
    trust_remote_code: bool = False,
    index: int = 0,
):
    """A :class:`~lightning_robust.models.scorers.Scorer` for one ``reward_models`` entry."""
    from lightning_robust.models.scorers import RewardModelScorer, Scorer
    from lightning_robust.modules.reward_loading import load_reward_scorer

    if isinstance(spec, (str, os.PathLike)):
        return load_reward_scorer(
            os.fspath(spec),
            batch_size=batch_size,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
        )
    if isinstance(spec, Mapping):
        return _multi_objective_scorer(spec, batch_size, max_length, trust_remote_code)
    if isinstance(spec, torch.nn.Module):
        # a bare module has no tokenizer of its own: it is fed the policy's tokens, which must fit
        vocab = spec.get_input_embeddings().num_embeddings
        if vocab < len(policy_tokenizer):
            raise ValueError(
                f"reward_models[{index}]: its vocabulary ({vocab} tokens) differs from the policy "
                f"tokenizer's ({len(policy_tokenizer)}); give a spec or Scorer with its own tokenizer"
            )
        return RewardModelScorer(
            spec, policy_tokenizer, max_length=max_length, batch_size=batch_size
        )
    if isinstance(spec, Scorer):
        return spec
    raise ValueError(
        f"reward_models[{index}]: {spec!r} is neither a spec, a mapping, a module nor a Scorer"
    )


def _spec_fingerprint(spec) -> str:
    if isinstance(spec, Mapping):
        return "multi:" + json.dumps(
            {
                "path": _path_fingerprint(str(spec.get("path"))),
                "objectives": dict(spec.get("objectives") or {}),
            },
            sort_keys=True,
        )
    if isinstance(spec, torch.nn.Module):
        return "weights:" + _weights_fingerprint(spec)
    return reward_model_fingerprint(spec)


def check_same_tokenizer(policy_tokenizer, scorer, index: int) -> None:
    """Error naming ``reward_models[index]`` when its tokenizer's vocabulary differs from the
    policy's (``require_same_tokenizer=True``: where scores must be read on the policy's tokens)."""
    tok = getattr(scorer, "tokenizer", None)
    if tok is None:
        raise ValueError(f"reward_models[{index}]: has no tokenizer to compare with the policy's")
    if tok.get_vocab() != policy_tokenizer.get_vocab():
        raise ValueError(
            f"reward_models[{index}]: its tokenizer ({type(tok).__name__}, {len(tok)} tokens) differs "
            f"from the policy's ({type(policy_tokenizer).__name__}, {len(policy_tokenizer)} tokens); "
            "require_same_tokenizer=True needs the same vocabulary"
        )


# ---------------------------------------------------------------- pairing
def select_pairs(
    scores: Sequence[float], texts: Sequence[str], pairing: str = "max_min"
) -> tuple[list, Counter]:
    """``([(chosen_index, rejected_index), ...], skip counts)`` of one prompt's completions.

    ``max_min``: (argmax, argmin) of ``scores`` over the non-empty completions; ``all``: every
    ``(i, j)`` with ``scores[i] > scores[j]``. Equal scores and identical texts make no pair.
    """
    skipped: Counter = Counter()
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if len(keep) < len(texts):
        skipped["empty_completion"] += len(texts) - len(keep)
    if len(keep) < 2:
        skipped["fewer_than_2_completions"] += 1
        return [], skipped
    if pairing == "max_min":
        best = max(keep, key=lambda i: (scores[i], -i))
        worst = min(keep, key=lambda i: (scores[i], i))
        if not scores[best] > scores[worst]:
            skipped["all_scores_equal"] += 1
            return [], skipped
        if texts[best] == texts[worst]:
            skipped["identical_texts"] += 1
            return [], skipped
        return [(best, worst)], skipped
    pairs = []
    for i in keep:
        for j in keep:
            if scores[i] > scores[j]:
                if texts[i] == texts[j]:
                    skipped["identical_texts"] += 1
                else:
                    pairs.append((i, j))
    if not pairs:
        skipped["all_scores_equal"] += 1
    return pairs, skipped


def _rows_from_records(
    records: list[dict], pairing: str, reward_weights: list[float]
) -> tuple[list[dict], Counter]:
    rows, skipped = [], Counter()
    w = torch.tensor(reward_weights, dtype=torch.float64)
    for rec in records:
        per_model = torch.tensor(rec["scores"], dtype=torch.float64)  # [K, M]
        combined = (per_model @ w).tolist()
        pairs, why = select_pairs(combined, rec["completions"], pairing)
        skipped.update(why)
        for i, j in pairs:
            prompt = rec["prompt"]
            chosen, rejected = rec["completions"][i], rec["completions"][j]
            if not isinstance(prompt, str):  # a chat prompt: TRL's conversational pairs
                chosen = [{"role": "assistant", "content": chosen}]
                rejected = [{"role": "assistant", "content": rejected}]
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_score": combined[i],
                    "rejected_score": combined[j],
                    "chosen_scores": rec["scores"][i],
                    "rejected_scores": rec["scores"][j],
                    "source_row": rec["source_row"],
                }
            )
    return rows, skipped


# ---------------------------------------------------------------- sampling
def _load_policy(policy, tokenizer, dtype, trust_remote_code, seed):
    from lightning_robust.models.causal_lm import load_causal_lm
    from lightning_robust.models.loading import load_causal_tokenizer

    if isinstance(policy, (str, os.PathLike)):
        spec = os.fspath(policy)
        tok = load_causal_tokenizer(spec, trust_remote_code=trust_remote_code, padding_side="left")
        model = load_causal_lm(
            spec, tok, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed
        )
        return model, tok, "spec:" + _path_fingerprint(spec)
    if not isinstance(policy, torch.nn.Module) or tokenizer is None:
        raise ValueError(
            "policy: give a model spec string, or a causal LM module together with `tokenizer`"
        )
    return policy, tokenizer, "weights:" + _weights_fingerprint(policy)


def _eos_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


# ---------------------------------------------------------------- steps of build_pairs
def _check_sampling(num_samples, pairing, backend, batch_size, max_new_tokens, temperature):
    """Errors naming the sampling option at fault."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(
            f"num_samples (K) must be an integer >= 2 to form a pair, got {num_samples!r}"
        )
    if pairing not in PAIRING:
        raise ValueError(f"unknown pairing={pairing!r}; expected one of {list(PAIRING)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend={backend!r}; expected one of {list(BACKENDS)}")
    if batch_size < 1 or max_new_tokens < 1 or not temperature > 0:
        raise ValueError(
            f"batch_size >= 1, max_new_tokens >= 1 and temperature > 0 needed, got {batch_size}, "
            f"{max_new_tokens}, {temperature}"
        )


def _reward_weights(reward_models, reward_weights) -> list[float]:
    """The weight of each reward model in the ranking score (equal by default)."""
    if not reward_models:
        raise ValueError("reward_models is empty: give at least one reward model")
    weights = (
        [1.0] * len(reward_models) if reward_weights is None else [float(w) for w in reward_weights]
    )
    if len(weights) != len(reward_models):
        raise ValueError(
            f"reward_weights has {len(weights)} entries for {len(reward_models)} reward_models"
        )
    return weights


def _load_scorers(
    reward_models, tok, batch_size, max_length, trust_remote_code, require_same_tokenizer
) -> list:
    """One scorer per ``reward_models`` entry (tokenizers checked when asked)."""
    scorers = [
        resolve_reward_model(
            spec,
            policy_tokenizer=tok,
            batch_size=batch_size,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            index=i,
        )
        for i, spec in enumerate(reward_models)
    ]
    if require_same_tokenizer:
        for i, scorer in enumerate(scorers):
            check_same_tokenizer(tok, scorer, i)
    return scorers


def _prompts_digest(raw_prompts, source_rows) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([raw_prompts, source_rows], ensure_ascii=False).encode())
    return h.hexdigest()


def _fingerprint(key: dict) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class _PairCache:
    """``<output>.meta.json`` (the fingerprinted settings) and ``<output>.samples.jsonl``."""

    output: str
    key: dict
    fingerprint: str

    @property
    def meta_path(self) -> str:
        return self.output + ".meta.json"

    @property
    def samples_path(self) -> str:
        return self.output + ".samples.jsonl"

    def open(self, force: bool, num_prompts: int) -> dict[int, dict] | None:
        """``None`` when a finished output of this fingerprint is on disk (cache hit), else the
        records already sampled by an interrupted run of it (empty for a fresh start)."""
        meta = _read_json(self.meta_path)
        same = not force and meta is not None and meta.get("fingerprint") == self.fingerprint
        if (
            same
            and meta.get("done")
            and os.path.exists(self.output)
            and meta.get("output_digest") == _file_digest(self.output)
        ):
            log.info(
                "build_pairs cache hit: %s is up to date (fingerprint %s)",
                self.output,
                self.fingerprint,
            )
            return None
        if same and os.path.exists(self.samples_path):
            done = _read_samples(self.samples_path)
            log.info(
                "build_pairs: resuming, %d of %d prompts already sampled", len(done), num_prompts
            )
            return done
        os.makedirs(os.path.dirname(os.path.abspath(self.output)), exist_ok=True)
        open(self.samples_path, "w").close()
        _write_json(self.meta_path, {**self.key, "fingerprint": self.fingerprint, "done": False})
        return {}

    def finish(self, rows: list[dict], fmt: str, num_prompts: int, skipped: Counter) -> None:
        """Write the pairs and mark the fingerprint done (with the output's digest)."""
        _write(rows, self.output, fmt, self.fingerprint)
        _write_json(
            self.meta_path,
            {
                **self.key,
                "fingerprint": self.fingerprint,
                "done": True,
                "rows": len(rows),
                "prompts": num_prompts,
                "skipped": {k: v for k, v in skipped.items() if v},
                "output_digest": _file_digest(self.output),
            },
        )


@dataclass
class _Sampler:
    """The policy (Hugging Face ``generate`` or a vLLM engine) and the sampling settings."""

    model: torch.nn.Module
    tokenizer: object
    engine: object | None
    num_samples: int
    max_new_tokens: int
    temperature: float
    top_p: float

    def sample(self, input_ids: list) -> tuple[list[str], list[int]]:
        """``(texts, prompt of each text)``: ``num_samples`` completions of each prompt, in
        prompt order (positions in ``input_ids``)."""
        tok = self.tokenizer
        ids, mask = pad_sequences(input_ids, tok.pad_token_id, side="left")
        kwargs = dict(
            eos_token_id=_eos_ids(tok, self.model),
            pad_token_id=tok.pad_token_id,
            num_generations=self.num_samples,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
        )
        if self.engine is not None:
            rollout = self.engine.generate(ids, mask, **kwargs)
        else:
            from lightning_robust.models.rollout import generate_rollouts

            dev = next(self.model.parameters()).device
            rollout = generate_rollouts(self.model, ids.to(dev), mask.to(dev), **kwargs)
        response = rollout.response_ids.masked_fill(~rollout.response_mask, tok.pad_token_id)
        texts = tok.batch_decode(response.cpu(), skip_special_tokens=True)
        return texts, [int(p) for p in rollout.prompt_index.cpu()]


def _vllm_engine(policy, seed: int):
    from lightning_robust.models.vllm_rollout import VLLMRolloutEngine

    if not isinstance(policy, (str, os.PathLike)):
        raise ValueError("backend='vllm' needs the policy as a spec string (the engine loads it)")
    return VLLMRolloutEngine(os.fspath(policy), seed=seed)


def score_completions(scorers: Sequence, prompts: list, texts: list[str]) -> torch.Tensor:
    """``[len(texts), M]`` float64 scores of each completion by each reward model; an error
    naming ``reward_models[m]`` on a wrong count or a non-finite score."""
    per_model = []
    for m, scorer in enumerate(scorers):
        s = torch.as_tensor(scorer.score(prompts, texts), dtype=torch.float64).reshape(-1)
        if s.shape[0] != len(texts) or not torch.isfinite(s).all():
            raise ValueError(
                f"reward_models[{m}] gave {s.shape[0]} scores (non-finite or wrong count) "
                f"for {len(texts)} completions"
            )
        per_model.append(s)
    return torch.stack(per_model, 1)


def _sample_and_score(
    sampler: _Sampler,
    scorers: Sequence,
    raw_prompts: list,
    source_rows: list,
    encoded,
    *,
    batch_size: int,
    seed: int,
    done: dict[int, dict],
    samples_path: str,
) -> None:
    """Sample and score every prompt not in ``done`` by batches of ``batch_size`` prompts (batch
    ``b`` after ``torch.manual_seed(seed + b)``), appending each batch's records to
    ``samples_path`` (flushed and synced) and to ``done``."""
    k_per = sampler.num_samples
    with open(samples_path, "a", encoding="utf-8") as out:
        for b, start in enumerate(range(0, len(raw_prompts), batch_size)):
            idx = range(start, min(start + batch_size, len(raw_prompts)))
            usable = [i for i in idx if encoded.input_ids[i] is not None]
            if all(i in done for i in idx) or not usable:
                continue
            torch.manual_seed(seed + b)
            texts, prompt_index = sampler.sample([encoded.input_ids[i] for i in usable])
            scores = score_completions(
                scorers, [raw_prompts[usable[p]] for p in prompt_index], texts
            )  # [B*K, M]
            for k, i in enumerate(usable):
                if i in done:
                    continue
                rows = slice(k * k_per, (k + 1) * k_per)
                rec = {
                    "prompt_index": i,
                    "source_row": source_rows[i],
                    "prompt": raw_prompts[i],
                    "completions": texts[rows],
                    "scores": scores[rows].tolist(),
                }
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[i] = rec
            out.flush()
            os.fsync(out.fileno())


def _prompt_skips(encoded, max_prompt_length: int, skipped: Counter) -> None:
    """Log the prompts cut to ``max_prompt_length``; count those that encode to nothing."""
    if encoded.truncated:
        log.info(
            "build_pairs: %d prompts cut to max_prompt_length=%d",
            encoded.truncated,
            max_prompt_length,
        )
    empty_prompts = sum(1 for x in encoded.input_ids if x is None)
    if empty_prompts:
        skipped["prompt_encodes_to_nothing"] += empty_prompts


# ---------------------------------------------------------------- entry point
def build_pairs(
    prompts: DataSource | str | Mapping,
    policy,
    reward_models: Sequence,
    output: str | os.PathLike,
    *,
    tokenizer=None,
    num_samples: int = 4,
    pairing: Literal["max_min", "all"] = "max_min",
    reward_weights: Sequence[float] | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    max_prompts: int | None = None,
    max_prompt_length: int = 512,
    chat_template: bool | None = None,
    prompt_schema: str = "auto",
    batch_size: int = 8,
    reward_batch_size: int = 16,
    reward_max_length: int = 1024,
    backend: Literal["hf", "vllm"] = "hf",
    dtype: str | None = None,
    require_same_tokenizer: bool = False,
    trust_remote_code: bool = False,
    device: str | None = None,
    force: bool = False,
) -> str:
    """Sample ``num_samples`` completions per prompt, score and pair them (module docstring).

    Args:
        prompts: prompt source (anything ``PromptDataModule`` reads; filters/mixing included).
        policy: causal LM spec (``"tiny"``, ``"smollm2"``, a directory, a hub id) or a module
            with ``tokenizer``.
        reward_models: one or more reward models (module docstring).
        output: ``.jsonl`` / ``.json`` / ``.parquet`` file of preference rows.
        num_samples: completions per prompt, ``K >= 2``.
        pairing: ``max_min`` (S002) or ``all``.
        reward_weights: weight of each reward model in the ranking score (equal by default).
        max_new_tokens, temperature, top_p, seed: sampling settings (batch ``b`` of prompts is
            sampled after ``torch.manual_seed(seed + b)``).
        max_prompts, max_prompt_length, chat_template, prompt_schema: prompt reading/rendering.
        batch_size: prompts per generate call (and per resume step).
        reward_batch_size, reward_max_length: reward-model scoring.
        backend: ``hf`` or ``vllm`` (experimental, GPU; needs the ``vllm`` extra).
        require_same_tokenizer: error unless each reward model's tokenizer equals the policy's.
        force: ignore the cache and the samples already written.

    Returns the output path.
    """
    _check_sampling(num_samples, pairing, backend, batch_size, max_new_tokens, temperature)
    weights = _reward_weights(reward_models, reward_weights)
    output = os.fspath(output)
    fmt = _output_format(output)
    raw_prompts, source_rows = read_prompts(prompts, prompt_schema, max_prompts)
    # steps 1-2: the policy and the reward models
    model, tok, policy_id = _load_policy(policy, tokenizer, dtype, trust_remote_code, seed)
    scorers = _load_scorers(
        reward_models,
        tok,
        reward_batch_size,
        reward_max_length,
        trust_remote_code,
        require_same_tokenizer,
    )
    # cache and resume: every input that changes the rows is in the fingerprint
    key = {
        "format": PAIRS_FORMAT,
        "prompts": _prompts_digest(raw_prompts, source_rows),
        "policy": policy_id,
        "reward_models": [_spec_fingerprint(s) for s in reward_models],
        "reward_weights": weights,
        "num_samples": num_samples,
        "pairing": pairing,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "batch_size": batch_size,
        "max_prompt_length": max_prompt_length,
        "chat_template": chat_template,
        "reward_max_length": reward_max_length,
        "backend": backend,
    }
    cache = _PairCache(output, key, _fingerprint(key))
    done = cache.open(force, len(raw_prompts))
    if done is None:
        return output
    # sampling and scoring, batch by batch (resumable)
    if device is not None:
        model = model.to(device)
    sampler = _Sampler(
        model,
        tok,
        _vllm_engine(policy, seed) if backend == "vllm" else None,
        num_samples,
        max_new_tokens,
        temperature,
        top_p,
    )
    encoded = encode_prompts(raw_prompts, tok, max_prompt_length, chat_template)
    _sample_and_score(
        sampler,
        scorers,
        raw_prompts,
        source_rows,
        encoded,
        batch_size=batch_size,
        seed=seed,
        done=done,
        samples_path=cache.samples_path,
    )
    # step 3: pair selection, then the output and the finished cache entry
    records = [done[i] for i in sorted(done)]
    rows, skipped = _rows_from_records(records, pairing, weights)
    _prompt_skips(encoded, max_prompt_length, skipped)
    if not rows:
        raise ValueError(
            f"build_pairs: no pair was formed from {len(records)} prompts (skipped: {dict(skipped)})"
        )
    cache.finish(rows, fmt, len(records), skipped)
    log.info(
        "build_pairs: %d pairs from %d prompts into %s (skipped: %s)",
        len(rows),
        len(records),
        output,
        dict(skipped),
    )
    return output


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _read_samples(path: str) -> dict[int, dict]:
    """Records already written (a truncated last line from an interrupted run is dropped)."""
    done = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                break
            done[int(rec["prompt_index"])] = rec
    return done


# ---------------------------------------------------------------- command line
def _parse_reward(text: str):
    """``path`` or ``path:name=w,name=w`` (a multi-objective head with named weights)."""
    if "=" in text and ":" in text:
        path, spec = text.rsplit(":", 1)
        objectives = {}
        for part in spec.split(","):
            name, _, weight = part.partition("=")
            objectives[name.strip()] = float(weight)
        return {"path": path, "objectives": objectives}
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightning_robust.pipelines.build_pairs --prompts SRC --policy SPEC
    --reward-model SPEC [--reward-model ...] --output FILE [options]``."""
    p = argparse.ArgumentParser(prog="build_pairs", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--prompts",
        required=True,
        help="prompt source: file, hub id, 'synthetic', or a JSON DataSource mapping",
    )
    p.add_argument(
        "--policy", required=True, help="causal LM: 'tiny', 'smollm2', a directory or hub id"
    )
    p.add_argument(
        "--reward-model",
        action="append",
        required=True,
        dest="reward_models",
        help="reward model spec; 'DIR:name=w,name=w' for a multi-objective head (repeatable)",
    )
    p.add_argument("--reward-weight", action="append", type=float, dest="reward_weights")
    p.add_argument("--output", required=True)
    p.add_argument("--num-samples", "-k", type=int, default=4)
    p.add_argument("--pairing", choices=PAIRING, default="max_min")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-prompts", type=int)
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reward-batch-size", type=int, default=16)
    p.add_argument("--reward-max-length", type=int, default=1024)
    p.add_argument("--backend", choices=BACKENDS, default="hf")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device")
    p.add_argument("--require-same-tokenizer", action="store_true")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    prompts = json.loads(args.prompts) if args.prompts.lstrip().startswith("{") else args.prompts
    try:
        path = build_pairs(
            prompts,
            args.policy,
            [_parse_reward(r) for r in args.reward_models],
            args.output,
            num_samples=args.num_samples,
            pairing=args.pairing,
            reward_weights=args.reward_weights,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            max_prompts=args.max_prompts,
            max_prompt_length=args.max_prompt_length,
            batch_size=args.batch_size,
            reward_batch_size=args.reward_batch_size,
            reward_max_length=args.reward_max_length,
            backend=args.backend,
            dtype=args.dtype,
            device=args.device,
            require_same_tokenizer=args.require_same_tokenizer,
            force=args.force,
        )
    except (ValueError, FileNotFoundError) as err:
        p.exit(2, f"build_pairs: error: {err}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
