"""Schema adapters: one function per dataset format, each turning a row into a
:class:`~lightning_robust.data.example.PreferenceExample` or raising
:class:`~lightning_robust.data.example.BadRow`.

Accepted schemas (``schema=`` name: required columns -> canonical example):

- ``preference``: ``prompt``, ``chosen``, ``rejected`` strings (TRL standard, explicit prompt).
  Group column by default: ``group`` when present.
- ``hh_rlhf``: ``chosen``, ``rejected`` full transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.
  prompt = ``chosen`` up to and including its last ``"\\n\\nAssistant:"``, response = the rest;
  a row whose ``rejected`` has a different prefix is bad (``prompt_mismatch``).
- ``conversational``: ``chosen``, ``rejected`` chat message lists (TRL conversational), either
  whole conversations (prompt = all but the last message, which must be the assistant's and
  must be shared) or answers with a separate ``prompt`` message list. Group: ``group``.
- ``unified_feedback``: ``conv_A``, ``conv_B`` message lists, ``conv_A_rating``,
  ``conv_B_rating`` (higher wins; equal ratings are dropped as ``tie``, not an error), prompt
  prefixes must match. Group: ``source``.
- ``rewardbench``: ``prompt``, ``chosen``, ``rejected``, ``subset``. Group: ``subset``.
- ``hhh``: HHH-Alignment, ``input`` and ``targets = {choices: [a, b], labels: [1, 0]}``;
  chosen = the choice labelled 1 (whatever its position). Group: ``category`` when present.
- ``pair_label``: LLMBar / MT-Bench pairs, ``input``, ``output_1``, ``output_2``, ``label`` in
  {1, 2} (the better output). Group: ``category`` when present.
- ``mt_bench_human``: the hub schema of ``lmsys/mt_bench_human_judgments``:
  ``conversation_a``, ``conversation_b`` (message lists), ``winner`` in {model_a, model_b, tie,
  ...}, optional ``turn`` (default 1): the judged turn-1 answers with the first question as
  prompt. Ties are dropped as ``tie``; turn-2 judgments are dropped as ``later_turn`` (each side's
  turn-2 prompt holds its own turn-1 answer, so there is no shared prompt). No default group.

``detect_schema`` picks one from the columns (and the type of ``chosen`` in a sample row).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lightning_robust.data.dialogue import check_messages, split_hh_transcript
from lightning_robust.data.example import (
    BAD_LABEL,
    EMPTY,
    IDENTICAL,
    LATER_TURN,
    MISSING,
    PROMPT_MISMATCH,
    TIE,
    WRONG_TYPE,
    BadRow,
    Message,
    PreferenceExample,
)

Row = Mapping[str, object]


# ---------------------------------------------------------------- field helpers
def _text(row: Row, field: str, allow_empty: bool = False) -> str:
    value = row.get(field)
    if value is None:
        raise BadRow(MISSING, field, "is missing")
    if not isinstance(value, str):
        raise BadRow(WRONG_TYPE, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRow(EMPTY, field, "is empty")
    return value


def _group(row: Row, column: str | None) -> str | None:
    if column is None:
        return None
    value = row.get(column)
    return None if value is None else str(value)


def _margin(row: Row) -> float | None:
    """The optional numeric ``margin`` column (TRL reward data), ``None`` when absent."""
    value = row.get("margin")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise BadRow(WRONG_TYPE, "margin", f"expected a finite number, got {value!r}")
    return float(value)


def _scores(row: Row, column: str) -> tuple[float, ...] | None:
    """An optional reward-score column: a finite number or a non-empty list of them."""
    value = row.get(column)
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or v != v
        or v in (float("inf"), float("-inf"))
        for v in values
    ):
        raise BadRow(
            WRONG_TYPE, column, f"expected a finite number or a list of them, got {value!r}"
        )
    return tuple(float(v) for v in values)


def _attach_scores(example: PreferenceExample, row: Row) -> None:
    chosen, rejected = _scores(row, "chosen_scores"), _scores(row, "rejected_scores")
    if (chosen is None) != (rejected is None) or (
        chosen is not None and len(chosen) != len(rejected)
    ):
        raise BadRow(
            WRONG_TYPE,
            "rejected_scores",
            "chosen_scores and rejected_scores must both be given, with equal length",
        )
    example.chosen_scores, example.rejected_scores = chosen, rejected


def _pair(prompt, chosen: str, rejected: str, group: str | None) -> PreferenceExample:
    if chosen.strip() == rejected.strip():
        raise BadRow(IDENTICAL, "chosen", "chosen and rejected are identical")
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, group=group)


def _answer(messages: list[Message], field: str) -> tuple[list[Message], str]:
    """Split a conversation into (prompt messages, final assistant answer)."""
    last = messages[-1]
    if last["role"] != "assistant":
        raise BadRow(WRONG_TYPE, field, f"last message has role {last['role']!r}, not 'assistant'")
    if not last["content"].strip():
        raise BadRow(EMPTY, field, "the final assistant message is empty")
    return messages[:-1], last["content"]


def _same_prompt(a: list[Message], b: list[Message], field: str) -> None:
    if a != b:
        raise BadRow(PROMPT_MISMATCH, field, "the conversations do not share the prompt turns")


# ---------------------------------------------------------------- adapters
def adapt_preference(row: Row, group_column: str | None) -> PreferenceExample:
    """``prompt``/``chosen``/``rejected`` strings (a message-list prompt is accepted too)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        prompt = check_messages(prompt, "prompt")
    else:
        prompt = _text(row, "prompt")
    example = _pair(prompt, _text(row, "chosen"), _text(row, "rejected"), _group(row, group_column))
    example.margin = _margin(row)
    _attach_scores(example, row)
    return example


def adapt_hh_rlhf(row: Row, group_column: str | None) -> PreferenceExample:
    """hh-rlhf transcripts: split at the last ``"\\n\\nAssistant:"`` of ``chosen``."""
    chosen_text, rejected_text = _text(row, "chosen"), _text(row, "rejected")
    try:
        prompt, chosen = split_hh_transcript(chosen_text)
    except ValueError as err:
        raise BadRow(WRONG_TYPE, "chosen", str(err)) from None
    if not rejected_text.startswith(prompt):
        raise BadRow(
            PROMPT_MISMATCH,
            "rejected",
            "does not start with the prompt of 'chosen' (up to its last '\\n\\nAssistant:')",
        )
    rejected = rejected_text[len(prompt) :]
    if not chosen.strip():
        raise BadRow(EMPTY, "chosen", "the final assistant answer is empty")
    if not rejected.strip():
        raise BadRow(EMPTY, "rejected", "the final assistant answer is empty")
    return _pair(prompt, chosen, rejected, _group(row, group_column))


def adapt_conversational(row: Row, group_column: str | None) -> PreferenceExample:
    """TRL conversational rows: message lists, with or without a separate ``prompt``."""
    chosen_msgs = check_messages(row.get("chosen"), "chosen")
    rejected_msgs = check_messages(row.get("rejected"), "rejected")
    c_prefix, chosen = _answer(chosen_msgs, "chosen")
    r_prefix, rejected = _answer(rejected_msgs, "rejected")
    _same_prompt(c_prefix, r_prefix, "rejected")
    if row.get("prompt") is not None:
        raw = row["prompt"]
        head = (
            [{"role": "user", "content": _text(row, "prompt")}]
            if isinstance(raw, str)
            else (check_messages(raw, "prompt"))
        )
        prompt = head + c_prefix
    else:
        prompt = c_prefix
    if not prompt:
        raise BadRow(MISSING, "chosen", "no prompt turns before the final answer")
    return _pair(prompt, chosen, rejected, _group(row, group_column))


def _rating(row: Row, field: str) -> float:
    value = row.get(field)
    if value is None:
        raise BadRow(MISSING, field, "is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRow(WRONG_TYPE, field, f"expected a number, got {type(value).__name__}")
    if math.isnan(value):
        raise BadRow(BAD_LABEL, field, "is NaN")
    return float(value)


def adapt_unified_feedback(row: Row, group_column: str | None) -> PreferenceExample:
    """Unified-Feedback: the higher-rated conversation's last assistant turn is chosen."""
    conv_a = check_messages(row.get("conv_A"), "conv_A")
    conv_b = check_messages(row.get("conv_B"), "conv_B")
    rating_a, rating_b = _rating(row, "conv_A_rating"), _rating(row, "conv_B_rating")
    prefix_a, answer_a = _answer(conv_a, "conv_A")
    prefix_b, answer_b = _answer(conv_b, "conv_B")
    _same_prompt(prefix_a, prefix_b, "conv_B")
    if not prefix_a:
        raise BadRow(MISSING, "conv_A", "no prompt turns before the final answer")
    if rating_a == rating_b:
        raise BadRow(TIE, "conv_A_rating", "equal ratings")
    if rating_a > rating_b:
        return _pair(prefix_a, answer_a, answer_b, _group(row, group_column))
    return _pair(prefix_a, answer_b, answer_a, _group(row, group_column))


def adapt_rewardbench(row: Row, group_column: str | None) -> PreferenceExample:
    """RewardBench rows: ``prompt``/``chosen``/``rejected`` strings, grouped by ``subset``."""
    return adapt_preference(row, group_column)


def adapt_hhh(row: Row, group_column: str | None) -> PreferenceExample:
    """HHH-Alignment: chosen is the choice labelled 1, never assumed to be the first."""
    prompt = _text(row, "input")
    targets = row.get("targets")
    if targets is None:
        raise BadRow(MISSING, "targets", "is missing")
    if not isinstance(targets, Mapping):
        raise BadRow(WRONG_TYPE, "targets", f"expected a dict, got {type(targets).__name__}")
    choices, labels = targets.get("choices"), targets.get("labels")
    if not isinstance(choices, list | tuple) or not isinstance(labels, list | tuple):
        raise BadRow(WRONG_TYPE, "targets", "needs lists 'choices' and 'labels'")
    if len(choices) != 2 or len(labels) != 2:
        raise BadRow(
            BAD_LABEL,
            "targets",
            f"expected 2 choices and 2 labels, got {len(choices)}/{len(labels)}",
        )
    if sorted(labels) != [0, 1] or any(isinstance(x, bool) for x in labels):
        raise BadRow(BAD_LABEL, "targets", f"labels must be one 1 and one 0, got {list(labels)}")
    for k, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise BadRow(WRONG_TYPE, "targets", f"choice {k} is not a string")
        if not choice.strip():
            raise BadRow(EMPTY, "targets", f"choice {k} is empty")
    good = list(labels).index(1)
    return _pair(prompt, choices[good], choices[1 - good], _group(row, group_column))


def adapt_pair_label(row: Row, group_column: str | None) -> PreferenceExample:
    """LLMBar / MT-Bench pairs: ``label`` (1 or 2) names the better of ``output_1``/``output_2``."""
    prompt = _text(row, "input")
    out1, out2 = _text(row, "output_1"), _text(row, "output_2")
    label = row.get("label")
    if label is None:
        raise BadRow(MISSING, "label", "is missing")
    if isinstance(label, bool) or not isinstance(label, int):
        raise BadRow(WRONG_TYPE, "label", f"expected 1 or 2, got {type(label).__name__}")
    if label not in (1, 2):
        raise BadRow(BAD_LABEL, "label", f"expected 1 or 2, got {label}")
    chosen, rejected = (out1, out2) if label == 1 else (out2, out1)
    return _pair(prompt, chosen, rejected, _group(row, group_column))


def adapt_mt_bench_human(row: Row, group_column: str | None) -> PreferenceExample:
    """``lmsys/mt_bench_human_judgments`` rows: the judged turn-1 answers of two conversations."""
    conv_a = check_messages(row.get("conversation_a"), "conversation_a")
    conv_b = check_messages(row.get("conversation_b"), "conversation_b")
    turn = row.get("turn", 1)
    turn = 1 if turn is None else turn
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        raise BadRow(BAD_LABEL, "turn", f"expected a positive turn number, got {turn!r}")
    if turn > 1:
        raise BadRow(LATER_TURN, "turn", f"turn {turn} judgment (no shared prompt)")
    if len(conv_a) < 2 or len(conv_b) < 2:
        raise BadRow(MISSING, "conversation_a", "fewer than 2 messages")
    prefix_a, answer_a = _answer(conv_a[:2], "conversation_a")
    prefix_b, answer_b = _answer(conv_b[:2], "conversation_b")
    _same_prompt(prefix_a, prefix_b, "conversation_b")
    winner = row.get("winner")
    if winner is None:
        raise BadRow(MISSING, "winner", "is missing")
    if not isinstance(winner, str):
        raise BadRow(WRONG_TYPE, "winner", f"expected a string, got {type(winner).__name__}")
    if winner.startswith("tie"):
        raise BadRow(TIE, "winner", f"tie verdict {winner!r}")
    if winner not in ("model_a", "model_b"):
        raise BadRow(BAD_LABEL, "winner", f"expected 'model_a', 'model_b' or a tie, got {winner!r}")
    group = _group(row, group_column)
    if winner == "model_a":
        return _pair(prefix_a, answer_a, answer_b, group)
    return _pair(prefix_a, answer_b, answer_a, group)


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Schema:
    """A named adapter with the columns it requires and its default group column."""

    name: str
    columns: tuple[str, ...]
    adapt: Callable[[Row, str | None], PreferenceExample]
    group_column: str | None = None


SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema("preference", ("prompt", "chosen", "rejected"), adapt_preference, "group"),
        Schema("hh_rlhf", ("chosen", "rejected"), adapt_hh_rlhf),
        Schema("conversational", ("chosen", "rejected"), adapt_conversational, "group"),
        Schema(
            "unified_feedback",
            ("conv_A", "conv_B", "conv_A_rating", "conv_B_rating"),
            adapt_unified_feedback,
            "source",
        ),
        Schema(
            "rewardbench", ("prompt", "chosen", "rejected", "subset"), adapt_rewardbench, "subset"
        ),
        Schema("hhh", ("input", "targets"), adapt_hhh, "category"),
        Schema(
            "pair_label", ("input", "output_1", "output_2", "label"), adapt_pair_label, "category"
        ),
        Schema(
            "mt_bench_human",
            ("conversation_a", "conversation_b", "winner"),
            adapt_mt_bench_human,
        ),
    )
}


def unknown_schema_error(columns, name: str | None = None) -> ValueError:
    """The error for rows no schema fits (or an unknown ``schema=`` name)."""
    accepted = "; ".join(f"{s.name} ({', '.join(s.columns)})" for s in SCHEMAS.values())
    head = f"unknown schema {name!r}" if name else "cannot detect the data schema"
    return ValueError(f"{head}: columns found {sorted(columns)}; schemas accepted: {accepted}")


def detect_schema(columns, sample: Row | None = None) -> str:
    """Name of the schema that fits ``columns`` (``sample``: a row, to tell text from messages)."""
    cols = set(columns)

    def has(*names: str) -> bool:
        return cols.issuperset(names)

    if has(*SCHEMAS["unified_feedback"].columns):
        return "unified_feedback"
    if has(*SCHEMAS["mt_bench_human"].columns):
        return "mt_bench_human"
    if has(*SCHEMAS["hhh"].columns):
        return "hhh"
    if has(*SCHEMAS["pair_label"].columns):
        return "pair_label"
    if has("chosen", "rejected"):
        chosen = None if sample is None else sample.get("chosen")
        if isinstance(chosen, list | tuple):
            return "conversational"
        if has("prompt", "subset"):
            return "rewardbench"
        if has("prompt"):
            return "preference"
        return "hh_rlhf"
    raise unknown_schema_error(columns)


def get_schema(name: str, columns, sample: Row | None = None) -> Schema:
    """The :class:`Schema` called ``name`` (``"auto"``: detected) after checking its columns."""
    if name == "auto":
        name = detect_schema(columns, sample)
    if name not in SCHEMAS:
        raise unknown_schema_error(columns, name)
    schema = SCHEMAS[name]
    missing = [c for c in schema.columns if c not in set(columns)]
    if missing:
        raise ValueError(
            f"schema {name!r} needs columns {list(schema.columns)}; missing {missing} "
            f"(columns found {sorted(columns)})"
        )
    return schema
