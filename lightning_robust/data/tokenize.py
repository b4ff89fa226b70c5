"""Tokenise preference examples once, in batches, into ``input_ids`` plus the prompt length.

Rendering (``render_mode``):

- ``"chat"`` (the tokenizer has a chat template and ``chat_template`` is not ``False``):
  prompt messages (a hh-style text prompt is parsed into turns, another text prompt becomes
  one user turn) rendered with ``apply_chat_template(..., tokenize=False,
  add_generation_prompt=True)``; the answer text is what the template adds for the final
  assistant turn. Both parts are tokenised without extra special tokens (the template has them).
- ``"pair"`` (BERT-like: a sep token and a pair template): pair encoding
  ``tokenizer(prompt_text, response_text)`` -> ``[CLS] prompt [SEP] response [SEP]``; the
  boundary comes from ``sequence_ids()``.
- ``"concat"`` (no pair template: the tiny tokenizer, Llama-like): the single-sequence special
  prefix (e.g. BOS), then the prompt ids, then the response ids.

Message prompts outside chat mode are rendered as hh-style text (``"\\n\\nHuman: ..."``).

Truncation: the response is always kept whole. If the sequence is longer than ``max_length``,
prompt tokens are cut from the LEFT (special tokens are kept). If the response with the
special tokens (and the appended eos) alone exceeds ``max_length`` the pair is over-long
(reason ``too_long``). This equals ``truncation="only_first"`` with ``truncation_side="left"``
for the rows that fit, and a batch never fails because of one over-long row.

``prompt_len`` is the number of tokens before the first response token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lightning_robust.data.dialogue import messages_to_plain, prompt_to_messages
from lightning_robust.data.example import EMPTY, TOO_LONG, BadRow, PreferenceExample

CHAT, PAIR, CONCAT = "chat", "pair", "concat"


@dataclass
class EncodedPair:
    """Token ids of one example: chosen and rejected sequences and their prompt lengths."""

    chosen_input_ids: list[int]
    chosen_prompt_len: int
    rejected_input_ids: list[int]
    rejected_prompt_len: int


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def is_pair_tokenizer(tokenizer) -> bool:
    """BERT-like: a separator token and more special tokens for pairs than for single texts."""
    return tokenizer.sep_token is not None and tokenizer.num_special_tokens_to_add(
        pair=True
    ) > tokenizer.num_special_tokens_to_add(pair=False)


def render_mode(tokenizer, chat_template: bool | None = None) -> str:
    """``"chat"``, ``"pair"`` or ``"concat"`` (see the module docstring)."""
    if chat_template and not has_chat_template(tokenizer):
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    if has_chat_template(tokenizer) and chat_template is not False:
        return CHAT
    return PAIR if is_pair_tokenizer(tokenizer) else CONCAT


def _chat_texts(tokenizer, prompt, responses: Sequence[str]) -> tuple[str, list[str]]:
    """Prompt text and answer texts rendered with the chat template."""
    messages = prompt_to_messages(prompt)
    prompt_text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    answers = []
    for response in responses:
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response.strip()}], tokenize=False
        )
        if not full.startswith(prompt_text):
            raise ValueError(
                "the chat template does not render the prompt (with add_generation_prompt=True) "
                "as a prefix of prompt + answer; pass chat_template=False to use plain text"
            )
        answers.append(full[len(prompt_text) :])
    return prompt_text, answers


def _plain_prompt(prompt) -> str:
    return prompt if isinstance(prompt, str) else messages_to_plain(prompt)


def _special_prefix(tokenizer) -> list[int]:
    """Special ids the tokenizer puts before a single text (BOS for Llama-like, none for tiny)."""
    with_special = tokenizer("hello", add_special_tokens=True)["input_ids"]
    without = tokenizer("hello", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(without) + 1):
        if with_special[k : k + len(without)] == without:
            return list(with_special[:k])
    return []


def _assemble(head, prompt, middle, response, tail, max_length: int, eos_id: int | None):
    """``(input_ids, prompt_len)``, the prompt cut from the left; ``None`` when over-long."""
    response = list(response)
    if eos_id is not None and (not response or response[-1] != eos_id):
        response.append(eos_id)
    fixed = len(head) + len(middle) + len(response) + len(tail)
    if fixed > max_length:
        return None
    keep = min(len(prompt), max_length - fixed)
    prompt = list(prompt[len(prompt) - keep :])
    prompt_len = len(head) + len(prompt) + len(middle)
    return list(head) + prompt + list(middle) + response + list(tail), prompt_len


def _pair_segments(ids: list[int], seq_ids: list[int | None]):
    """Split a pair encoding into (head, prompt, middle, response, tail)."""
    first = [k for k, s in enumerate(seq_ids) if s == 0]
    second = [k for k, s in enumerate(seq_ids) if s == 1]
    if not second:
        return ids, [], [], [], []
    rs, re_ = second[0], second[-1] + 1
    if first:
        ps, pe = first[0], first[-1] + 1
        return ids[:ps], ids[ps:pe], ids[pe:rs], ids[rs:re_], ids[re_:]
    return ids[:rs], [], [], ids[rs:re_], ids[re_:]


def _encode_chunk(tokenizer, examples, mode, max_length, eos_id, prefix):
    prompts, responses = [], []  # two entries per example: chosen then rejected
    for ex in examples:
        if mode == CHAT:
            prompt_text, answers = _chat_texts(tokenizer, ex.prompt, (ex.chosen, ex.rejected))
        else:
            prompt_text, answers = _plain_prompt(ex.prompt), [ex.chosen, ex.rejected]
        prompts += [prompt_text, prompt_text]
        responses += answers
    segments = []
    if mode == PAIR:
        enc = tokenizer(prompts, responses, add_special_tokens=True, verbose=False)
        for k, ids in enumerate(enc["input_ids"]):
            segments.append(_pair_segments(list(ids), enc.sequence_ids(k)))
    else:
        p_ids = tokenizer(prompts[0::2], add_special_tokens=False, verbose=False)["input_ids"]
        r_ids = tokenizer(responses, add_special_tokens=False, verbose=False)["input_ids"]
        bos = tokenizer.bos_token_id
        for k, r in enumerate(r_ids):
            p = list(p_ids[k // 2])
            head = prefix
            if mode == CHAT:
                head = p[:1] if p and bos is not None and p[0] == bos else []
                p = p[len(head) :]
            segments.append((head, p, [], list(r), []))
    out: list[EncodedPair | BadRow] = []
    for k in range(len(examples)):
        parts, bad = [], None
        for name, seg in (("chosen", segments[2 * k]), ("rejected", segments[2 * k + 1])):
            if not seg[3]:
                bad = bad or BadRow(EMPTY, name, "the answer encodes to no tokens")
                continue
            done = _assemble(*seg, max_length=max_length, eos_id=eos_id)
            if done is None:
                n = len(seg[0]) + len(seg[2]) + len(seg[3]) + len(seg[4]) + (eos_id is not None)
                bad = bad or BadRow(
                    TOO_LONG,
                    name,
                    f"the answer needs {n} tokens with special tokens > max_length={max_length}",
                )
            parts.append(done)
        out.append(bad if bad is not None else EncodedPair(*parts[0], *parts[1]))
    return out


def encode_examples(
    examples: Sequence[PreferenceExample],
    tokenizer,
    max_length: int,
    chat_template: bool | None = None,
    append_eos: bool = False,
    chunk_size: int = 512,
) -> list[EncodedPair | BadRow]:
    """Tokenise ``examples`` in batches; over-long / empty pairs come back as :class:`BadRow`.

    Args:
        examples: canonical examples.
        tokenizer: a (fast) Hugging Face tokenizer.
        max_length: the longest sequence allowed (prompt + answer + special tokens).
        chat_template: ``None`` uses the template when there is one, ``False`` never, ``True``
            requires it.
        append_eos: end every answer with the eos token (unless it already ends with it).
        chunk_size: examples per tokenizer call.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    mode = render_mode(tokenizer, chat_template)
    eos_id = None
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("append_eos=True but the tokenizer has no eos token")
        eos_id = tokenizer.eos_token_id
    prefix = _special_prefix(tokenizer) if mode == CONCAT else []
    out: list[EncodedPair | BadRow] = []
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start : start + chunk_size]
        out.extend(_encode_chunk(tokenizer, chunk, mode, max_length, eos_id, prefix))
    return out


# ---------------------------------------------------------------- datasets-native, cached
TOKENIZED_COLUMNS = (
    "chosen_input_ids",
    "chosen_prompt_len",
    "rejected_input_ids",
    "rejected_prompt_len",
    "bad_reason",
    "bad_field",
    "bad_detail",
)


def _map_batch(batch: dict, tokenizer, mode, max_length, eos_id, prefix) -> dict:
    """``Dataset.map`` function: one batch of (prompt, chosen, rejected) -> token columns."""
    import json
    from types import SimpleNamespace

    examples = [
        SimpleNamespace(prompt=json.loads(p), chosen=c, rejected=r)
        for p, c, r in zip(batch["prompt"], batch["chosen"], batch["rejected"], strict=True)
    ]
    out = {name: [] for name in TOKENIZED_COLUMNS}
    for enc in _encode_chunk(tokenizer, examples, mode, max_length, eos_id, prefix):
        bad = isinstance(enc, BadRow)
        out["chosen_input_ids"].append([] if bad else enc.chosen_input_ids)
        out["chosen_prompt_len"].append(0 if bad else enc.chosen_prompt_len)
        out["rejected_input_ids"].append([] if bad else enc.rejected_input_ids)
        out["rejected_prompt_len"].append(0 if bad else enc.rejected_prompt_len)
        out["bad_reason"].append(enc.reason if bad else "")
        out["bad_field"].append(enc.field if bad else "")
        out["bad_detail"].append(enc.detail if bad else "")
    return out


def tokenized_fingerprint(examples, tokenizer, max_length, chat_template, append_eos) -> str:
    """Hash of everything the token ids depend on: the tokenizer (vocabulary, template, special
    tokens), the options and the examples' text (``datasets``' own :class:`Hasher`)."""
    from datasets.fingerprint import Hasher

    hasher = Hasher()
    hasher.update(("lightning_robust.tokenize/1", max_length, chat_template, append_eos))
    hasher.update(tokenizer)
    hasher.update([(e.prompt, e.chosen, e.rejected) for e in examples])
    return hasher.hexdigest()


def encode_examples_cached(
    examples: Sequence[PreferenceExample],
    tokenizer,
    max_length: int,
    chat_template: bool | None = None,
    append_eos: bool = False,
    cache_dir: str | None = None,
    num_proc: int | None = None,
    batch_size: int = 512,
) -> list[EncodedPair | BadRow]:
    """:func:`encode_examples` through ``datasets``: ``Dataset.map`` (batched, ``num_proc``
    processes) writes the token ids once to ``<cache_dir>/pairs-<fingerprint>`` (Arrow,
    :func:`tokenized_fingerprint`); any later call with the same tokenizer, options and examples
    -- another rank, another launch -- loads them instead of tokenising again. The result equals
    :func:`encode_examples` exactly.

    Args:
        cache_dir: where the tokenised sets live (default ``<datasets cache>/lightning_robust_tokenized``).
        num_proc: tokenising processes on a cache miss (``None``: one).
    """
    import json
    import os
    import uuid

    from datasets import Dataset, config, load_from_disk

    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    mode = render_mode(tokenizer, chat_template)
    eos_id = None
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("append_eos=True but the tokenizer has no eos token")
        eos_id = tokenizer.eos_token_id
    prefix = _special_prefix(tokenizer) if mode == CONCAT else []
    if not examples:  # nothing to cache (an empty Arrow table does not round-trip)
        return []
    root = cache_dir or os.path.join(config.HF_DATASETS_CACHE, "lightning_robust_tokenized")
    key = tokenized_fingerprint(examples, tokenizer, max_length, chat_template, append_eos)
    path = os.path.join(root, f"pairs-{key}")
    if os.path.isdir(path):
        data = load_from_disk(path)
    else:
        source = Dataset.from_dict(
            {
                "prompt": [json.dumps(e.prompt) for e in examples],
                "chosen": [e.chosen for e in examples],
                "rejected": [e.rejected for e in examples],
            }
        )
        data = source.map(
            _map_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc,
            remove_columns=source.column_names,
            desc="tokenising pairs",
            fn_kwargs={
                "tokenizer": tokenizer,
                "mode": mode,
                "max_length": max_length,
                "eos_id": eos_id,
                "prefix": prefix,
            },
        )
        partial = f"{path}.{uuid.uuid4().hex}.partial"  # atomic: a reader never sees half a set
        try:
            data.save_to_disk(partial)
        except OSError as err:  # read-only or full cache: keep the result in memory, say so
            import logging

            logging.getLogger(__name__).warning(
                "could not cache the tokenised pairs in %s (%s): later launches tokenise again",
                root,
                err,
            )
        else:
            try:
                os.replace(partial, path)
            except OSError:  # another rank or launch finished first: use its copy
                import shutil

                shutil.rmtree(partial, ignore_errors=True)
            data = load_from_disk(path)
    columns = data[:]  # one Arrow -> Python conversion per column
    out: list[EncodedPair | BadRow] = []
    for k in range(len(data)):
        if columns["bad_reason"][k]:
            out.append(
                BadRow(columns["bad_reason"][k], columns["bad_field"][k], columns["bad_detail"][k])
            )
        else:
            out.append(
                EncodedPair(
                    columns["chosen_input_ids"][k],
                    int(columns["chosen_prompt_len"][k]),
                    columns["rejected_input_ids"][k],
                    int(columns["rejected_prompt_len"][k]),
                )
            )
    return out
