"""Helpers for dialogue text: hh-rlhf transcripts and chat message lists.

The hh-rlhf format is ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; a prompt in that format ends
with ``"\\n\\nAssistant:"`` (the point where the answer starts).
"""

from __future__ import annotations

import re

from lightning_robust.data.example import EMPTY, MISSING, WRONG_TYPE, BadRow, Message

HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant|System):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant", "System": "system"}
_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def split_hh_transcript(text: str) -> tuple[str, str]:
    """Split an hh-rlhf transcript at its last ``"\\n\\nAssistant:"``.

    Returns ``(prompt, response)``: the prompt includes the marker, the response is the rest
    (it keeps its leading space, as in the source). Raises ``ValueError`` when there is no
    assistant turn.
    """
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn in the transcript")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def is_hh_prompt(text: str) -> bool:
    """Whether ``text`` looks like an hh-rlhf prompt (has a Human turn, ends at an Assistant turn)."""
    return HH_HUMAN in text and text.rstrip().endswith(HH_ASSISTANT.strip())


def hh_to_messages(prompt: str) -> list[Message]:
    """Parse an hh-rlhf prompt into chat messages; the trailing empty Assistant turn is dropped.

    Text before the first turn marker (normally nothing) becomes part of the first message.
    """
    parts = _HH_TURN.split(prompt)
    head, rest = parts[0], parts[1:]
    messages: list[Message] = []
    for role, content in zip(rest[0::2], rest[1::2], strict=True):
        messages.append({"role": _HH_ROLES[role], "content": content.strip()})
    if head.strip():
        if messages:
            messages[0]["content"] = (head.strip() + "\n" + messages[0]["content"]).strip()
        else:
            messages.append({"role": "user", "content": head.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def prompt_to_messages(prompt: str | list[Message]) -> list[Message]:
    """Chat messages for a prompt: hh text is parsed into turns, other text is one user turn."""
    if isinstance(prompt, list):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    if is_hh_prompt(prompt):
        return hh_to_messages(prompt)
    return [{"role": "user", "content": prompt}]


def messages_to_plain(messages: list[Message]) -> str:
    """Render messages as hh-style plain text ending with ``"\\n\\nAssistant:"`` (no template)."""
    turns = [
        f"\n\n{_PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}"
        for m in messages
    ]
    return "".join(turns) + HH_ASSISTANT


def prompt_key(prompt: str | list[Message]) -> str:
    """A hashable key identifying a prompt (used to split data by prompt)."""
    if isinstance(prompt, str):
        return "s:" + prompt
    return "m:" + "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt)


def check_messages(value, field: str) -> list[Message]:
    """Validate a chat message list, returning ``[{"role", "content"}]`` copies.

    Raises :class:`BadRow` for a missing, non-list or empty value, or a malformed message.
    """
    if value is None:
        raise BadRow(MISSING, field, "is missing")
    if not isinstance(value, list | tuple):
        raise BadRow(WRONG_TYPE, field, f"expected a list of messages, got {type(value).__name__}")
    if not value:
        raise BadRow(EMPTY, field, "is an empty message list")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRow(WRONG_TYPE, field, f"message {k} is not a {{'role', 'content'}} dict")
        if not isinstance(m.get("content"), str):
            raise BadRow(WRONG_TYPE, field, f"message {k} has non-text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out
