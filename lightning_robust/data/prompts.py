"""Prompts for online RL: schema adapters, the tokenised prompt dataset and a left-padding collator.

Accepted schemas (``schema=`` name: required columns -> raw prompt):

- ``prompt``: a ``prompt`` column, a string or a list of chat messages (TRL prompt-only data;
  also the explicit prompt of preference / RewardBench rows). Group column: ``group``.
- ``messages``: a ``messages`` chat list; the prompt is the messages before the last
  ``assistant`` message (all of them when there is none). Group: ``group``.
- ``hh_rlhf``: ``chosen`` transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the prompt is the
  FIRST human turn only, as the string ``"\\n\\nHuman: {turn}\\n\\nAssistant:"``.
- ``conversational``: ``chosen`` chat lists (TRL conversational preference data); the prompt
  is the messages before the last assistant message. Group: ``group``.
- ``unified_feedback``: ``conv_A`` chat lists; the prompt is ``conv_A`` before its last
  assistant message. Group: ``source``.

Detection (``detect_prompt_schema``): ``conv_A`` -> unified_feedback; ``messages`` -> messages;
``prompt`` -> prompt; ``chosen`` holding a list -> conversational; ``chosen`` text -> hh_rlhf.

The raw prompt (a string or a message list) is what :class:`~lightning_robust.models.scorers.Scorer`
implementations take. The policy sees it rendered as the preference data renders prompts
(:mod:`lightning_robust.data.tokenize`): with the tokenizer's chat template (the prompt's
messages, ``add_generation_prompt=True``; an hh string is parsed into its turns, so the hh
prompt becomes a one-message chat) unless ``chat_template=False`` or there is none; otherwise
as plain text (a message list becomes hh-style text ending with ``"\\n\\nAssistant:"``), after
the tokenizer's own special prefix (BOS for Llama-like tokenizers, nothing for ``tiny``).
Prompts longer than ``max_prompt_length`` tokens are cut from the left, keeping the special
prefix, and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from lightning_robust.data.collator import pad_sequences
from lightning_robust.data.dialogue import (
    HH_ASSISTANT,
    HH_HUMAN,
    check_messages,
    hh_to_messages,
    messages_to_plain,
    prompt_to_messages,
)
from lightning_robust.data.example import EMPTY, MISSING, WRONG_TYPE, BadRow, Message
from lightning_robust.data.reading import ON_BAD_ROW, bad_row_error
from lightning_robust.data.tokenize import CHAT, _special_prefix, render_mode

Row = Mapping[str, object]
PROMPT_BATCH_KEYS = ("prompt_input_ids", "prompt_attention_mask", "index", "prompts")


@dataclass
class PromptExample:
    """One prompt: the raw prompt (string or chat messages) and its optional group name."""

    prompt: str | list[Message]
    group: str | None = None


# ---------------------------------------------------------------- adapters
def _group(row: Row, column: str | None) -> str | None:
    if column is None or row.get(column) is None:
        return None
    return str(row[column])


def _before_last_assistant(messages: list[Message], field_name: str) -> list[Message]:
    cut = max(
        (k for k, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages)
    )
    prompt = messages[:cut]
    if not prompt or not any(m["content"].strip() for m in prompt):
        raise BadRow(EMPTY, field_name, "no prompt messages before the last assistant message")
    return prompt


def adapt_prompt(row: Row, group_column: str | None) -> PromptExample:
    """A ``prompt`` column: a string or a chat message list."""
    value = row.get("prompt")
    if isinstance(value, list | tuple):
        messages = check_messages(value, "prompt")
        if not any(m["content"].strip() for m in messages):
            raise BadRow(EMPTY, "prompt", "all messages are empty")
        return PromptExample(messages, _group(row, group_column))
    if value is None:
        raise BadRow(MISSING, "prompt", "is missing")
    if not isinstance(value, str):
        raise BadRow(
            WRONG_TYPE, "prompt", f"expected a string or a message list, got {type(value).__name__}"
        )
    if not value.strip():
        raise BadRow(EMPTY, "prompt", "is empty")
    return PromptExample(value, _group(row, group_column))


def _adapt_message_column(column: str) -> Callable[[Row, str | None], PromptExample]:
    def adapt(row: Row, group_column: str | None) -> PromptExample:
        messages = check_messages(row.get(column), column)
        return PromptExample(_before_last_assistant(messages, column), _group(row, group_column))

    adapt.__doc__ = f"The ``{column}`` chat list before its last assistant message."
    return adapt


def hh_first_turn_prompt(transcript: str) -> str:
    """``"\\n\\nHuman: {turn}\\n\\nAssistant:"`` for the first human turn of an hh-rlhf transcript."""
    messages = hh_to_messages(transcript)
    turn = next((m["content"] for m in messages if m["role"] == "user"), "")
    if not turn.strip():
        raise ValueError("no non-empty human turn")
    return f"{HH_HUMAN} {turn}{HH_ASSISTANT}"


def adapt_hh_rlhf(row: Row, group_column: str | None) -> PromptExample:
    """hh-rlhf: the first human turn of the ``chosen`` transcript."""
    value = row.get("chosen")
    if value is None:
        raise BadRow(MISSING, "chosen", "is missing")
    if not isinstance(value, str):
        raise BadRow(
            WRONG_TYPE, "chosen", f"expected a transcript string, got {type(value).__name__}"
        )
    if HH_HUMAN not in value:
        raise BadRow(WRONG_TYPE, "chosen", "no '\\n\\nHuman:' turn in the transcript")
    try:
        prompt = hh_first_turn_prompt(value)
    except ValueError:
        raise BadRow(EMPTY, "chosen", "the first human turn is empty") from None
    return PromptExample(prompt, _group(row, group_column))


@dataclass(frozen=True)
class PromptSchema:
    """A named prompt adapter, the columns it requires and its default group column."""

    name: str
    columns: tuple[str, ...]
    adapt: Callable[[Row, str | None], PromptExample]
    group_column: str | None = None


PROMPT_SCHEMAS: dict[str, PromptSchema] = {
    s.name: s
    for s in (
        PromptSchema("prompt", ("prompt",), adapt_prompt, "group"),
        PromptSchema("messages", ("messages",), _adapt_message_column("messages"), "group"),
        PromptSchema("hh_rlhf", ("chosen",), adapt_hh_rlhf),
        PromptSchema("conversational", ("chosen",), _adapt_message_column("chosen"), "group"),
        PromptSchema("unified_feedback", ("conv_A",), _adapt_message_column("conv_A"), "source"),
    )
}


def _schema_error(columns, name: str | None = None) -> ValueError:
    accepted = "; ".join(f"{s.name} ({', '.join(s.columns)})" for s in PROMPT_SCHEMAS.values())
    head = f"unknown prompt schema {name!r}" if name else "cannot detect the prompt schema"
    return ValueError(f"{head}: columns found {sorted(columns)}; schemas accepted: {accepted}")


def detect_prompt_schema(columns, sample: Row | None = None) -> str:
    """Name of the prompt schema that fits ``columns`` (``sample``: a row, to tell text from messages)."""
    cols = set(columns)
    if "conv_A" in cols:
        return "unified_feedback"
    if "messages" in cols:
        return "messages"
    if "prompt" in cols:
        return "prompt"
    if "chosen" in cols:
        chosen = None if sample is None else sample.get("chosen")
        return "conversational" if isinstance(chosen, list | tuple) else "hh_rlhf"
    raise _schema_error(columns)


def get_prompt_schema(name: str, columns, sample: Row | None = None) -> PromptSchema:
    """The :class:`PromptSchema` called ``name`` (``"auto"``: detected) after checking its columns."""
    if name == "auto":
        name = detect_prompt_schema(columns, sample)
    if name not in PROMPT_SCHEMAS:
        raise _schema_error(columns, name)
    schema = PROMPT_SCHEMAS[name]
    missing = [c for c in schema.columns if c not in set(columns)]
    if missing:
        raise ValueError(
            f"prompt schema {name!r} needs columns {list(schema.columns)}; missing {missing}"
        )
    return schema


@dataclass
class PromptRows:
    """Prompt examples of one source with their 0-based source rows and skip counts."""

    examples: list[PromptExample] = field(default_factory=list)
    source_index: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    has_groups: bool = False  # whether the source has a group column

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, positions: Iterable[int]) -> PromptRows:
        """The rows at ``positions`` (skip counts are not carried over)."""
        positions = list(positions)
        return PromptRows(
            [self.examples[p] for p in positions],
            [self.source_index[p] for p in positions],
            has_groups=self.has_groups,
        )


def adapt_prompt_rows(
    rows: Iterable[Row], schema: PromptSchema, group_column: str | None, on_bad_row: str, where: str
) -> PromptRows:
    """Apply ``schema`` to every row: a bad row raises (naming ``where``, row and field) or is counted."""
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    out = PromptRows(has_groups=group_column is not None)
    for index, row in enumerate(rows):
        try:
            example = schema.adapt(row, group_column)
        except BadRow as err:
            if on_bad_row == "skip":
                out.skipped[err.reason] += 1
                continue
            raise bad_row_error(where, index, err) from None
        out.examples.append(example)
        out.source_index.append(index)
    return out


# ---------------------------------------------------------------- rendering and tokenising
def render_prompt(prompt, tokenizer, chat_template: bool | None = None) -> str:
    """The text the policy is conditioned on (module docstring)."""
    if render_mode(tokenizer, chat_template) == CHAT:
        return tokenizer.apply_chat_template(
            prompt_to_messages(prompt), tokenize=False, add_generation_prompt=True
        )
    return prompt if isinstance(prompt, str) else messages_to_plain(prompt)


@dataclass
class EncodedPrompts:
    """Token ids per prompt (``None`` where a prompt encodes to no tokens) and the cut count."""

    input_ids: list[list[int] | None]
    truncated: int


def encode_prompts(
    prompts: Sequence,
    tokenizer,
    max_prompt_length: int,
    chat_template: bool | None = None,
    chunk_size: int = 512,
) -> EncodedPrompts:
    """Tokenise rendered prompts; those over ``max_prompt_length`` keep their special prefix and
    their LAST tokens (cut from the left) and are counted in ``truncated``."""
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be positive, got {max_prompt_length}")
    mode = render_mode(tokenizer, chat_template)
    prefix = [] if mode == CHAT else _special_prefix(tokenizer)
    bos = tokenizer.bos_token_id
    out, truncated = [], 0
    for start in range(0, len(prompts), chunk_size):
        texts = [
            render_prompt(p, tokenizer, chat_template) for p in prompts[start : start + chunk_size]
        ]
        for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
            ids = list(ids)
            head = prefix
            if mode == CHAT and ids and bos is not None and ids[0] == bos:
                head, ids = ids[:1], ids[1:]
            if not ids:
                out.append(None)
                continue
            room = max_prompt_length - len(head)
            if room < 1:
                raise ValueError(
                    f"max_prompt_length={max_prompt_length} leaves no room after the special tokens"
                )
            if len(ids) > room:
                ids = ids[len(ids) - room :]
                truncated += 1
            out.append(list(head) + ids)
    return EncodedPrompts(out, truncated)


class TokenizedPromptDataset(Dataset):
    """Tokenised prompts of one split.

    Item ``i``: ``prompt_input_ids`` (list of ints), ``prompt`` (the raw prompt), ``index`` (= ``i``)
    and ``group`` (int id, -1 for none). ``source_index[i]`` is the 0-based source row,
    ``has_groups`` whether the source has a group column.
    """

    def __init__(
        self,
        input_ids: Sequence[list[int]],
        prompts: Sequence,
        groups: Sequence[int],
        source_index: Sequence[int],
        has_groups: bool = False,
    ):
        if not (len(input_ids) == len(prompts) == len(groups) == len(source_index)):
            raise ValueError(
                "input_ids, prompts, groups and source_index must have the same length"
            )
        self.input_ids = list(input_ids)
        self.prompts = list(prompts)
        self.groups = list(groups)
        self.source_index = list(source_index)
        self.has_groups = has_groups

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"prompt_input_ids": self.input_ids[i], "prompt": self.prompts[i], "index": i}
        if self.has_groups:
            item["group"] = self.groups[i]
        return item


class PromptCollator:
    """LEFT-pad prompts to the batch's longest (so every response starts at one column).

    Returns ``prompt_input_ids`` and ``prompt_attention_mask`` ``[B, P]`` (long; the last column
    is always attended), ``index`` ``[B]`` long, ``prompts`` (list of raw prompts) and, when the
    items carry one, ``group`` ``[B]`` long (-1: no group).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        ids, mask = pad_sequences(
            [f["prompt_input_ids"] for f in features],
            self.pad_token_id,
            side="left",
            multiple_of=self.pad_to_multiple_of,
        )
        batch = {
            "prompt_input_ids": ids,
            "prompt_attention_mask": mask,
            "index": torch.tensor([f["index"] for f in features], dtype=torch.long),
            "prompts": [f["prompt"] for f in features],
        }
        if all("group" in f for f in features):
            batch["group"] = torch.tensor([f["group"] for f in features], dtype=torch.long)
        return batch
