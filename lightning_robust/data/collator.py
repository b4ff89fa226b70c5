"""Collate tokenised pairs into padded tensors (dynamic padding, chosen and rejected alike)."""

from __future__ import annotations

import torch

BATCH_KEYS = (
    "chosen_input_ids",
    "chosen_attention_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
    "chosen_prompt_len",
    "rejected_prompt_len",
    "group",
    "index",
)


def pad_sequences(
    seqs,
    pad_token_id: int,
    width: int | None = None,
    side: str = "right",
    multiple_of: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` LongTensors ``[len(seqs), width]``: each token-id list placed on the left
    (``side="right"`` padding) or the right (``side="left"``, for generation), the rest
    ``pad_token_id`` with mask 0. ``width`` defaults to the longest sequence, rounded up to
    ``multiple_of``."""
    if width is None:
        width = max(len(s) for s in seqs)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


class PreferenceCollator:
    """Right-pad chosen and rejected sequences of a batch to one common width.

    The width is the longest of all chosen and rejected sequences in the batch (rounded up to
    ``pad_to_multiple_of``), so a model can run ``cat([chosen, rejected])`` as one ``[2B, L]``
    batch. Returns the LongTensors of :data:`BATCH_KEYS`: ids and masks ``[B, L]``; prompt
    lengths, ``group`` (-1: no group) and ``index`` (row within its split) ``[B]``; plus a
    float ``margin`` ``[B]`` when every example of the batch has one, and float
    ``chosen_scores`` / ``rejected_scores`` ``[B, K]`` (reward-model scores, for distillation)
    likewise.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        chosen = [f["chosen_input_ids"] for f in features]
        rejected = [f["rejected_input_ids"] for f in features]
        # one width for chosen and rejected, so they run as one [2B, L] batch
        ids, mask = pad_sequences(
            chosen + rejected, self.pad_token_id, multiple_of=self.pad_to_multiple_of
        )
        n = len(chosen)
        chosen_ids, rejected_ids = ids[:n], ids[n:]
        chosen_mask, rejected_mask = mask[:n], mask[n:]

        def column(key: str) -> torch.Tensor:
            return torch.tensor([f[key] for f in features], dtype=torch.long)

        batch = {
            "chosen_input_ids": chosen_ids,
            "chosen_attention_mask": chosen_mask,
            "rejected_input_ids": rejected_ids,
            "rejected_attention_mask": rejected_mask,
            "chosen_prompt_len": column("chosen_prompt_len"),
            "rejected_prompt_len": column("rejected_prompt_len"),
            "group": column("group"),
            "index": column("index"),
        }
        if all("margin" in f for f in features):  # optional float column (TRL reward margins)
            batch["margin"] = torch.tensor([f["margin"] for f in features], dtype=torch.float32)
        if all(
            "chosen_scores" in f for f in features
        ):  # optional reward scores [B, K] (distillation)
            for key in ("chosen_scores", "rejected_scores"):
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
        return batch


#: keys :func:`pack_shared_prompts` adds to a batch
PAIR_KEYS = ("pair_input_ids", "pair_chosen_end", "pair_length")


def pack_shared_prompts(batch: dict) -> dict[str, torch.Tensor] | None:
    """One ``[prompt | chosen answer | rejected answer]`` row per pair, when every pair's chosen
    and rejected sequences start with the same prompt tokens (else ``None``).

    From a collated (right-padded) batch: ``pair_input_ids`` ``[B, W]`` (``W`` = the longest
    ``P + C + R``; pad positions hold 0 and are never attended to or scored),
    ``pair_chosen_end`` ``[B]`` (``P + C``: where the rejected answer starts) and
    ``pair_length`` ``[B]`` (``P + C + R``); ``P`` is ``chosen_prompt_len``. The prompt then runs
    through the model once per pair instead of twice (issue 14): with 64-token prompts and
    answers, 192 instead of 256 tokens per pair. :func:`~lightning_robust.models.logprobs.pair_layout`
    gives the attention mask and position ids that make this exact.
    """
    chosen, rejected = batch["chosen_input_ids"], batch["rejected_input_ids"]
    plen = batch["chosen_prompt_len"]
    if not torch.equal(plen, batch["rejected_prompt_len"]):
        return None
    lc = batch["chosen_attention_mask"].sum(1)
    lr = batch["rejected_attention_mask"].sum(1)
    if bool((plen > lc).any() or (plen > lr).any()):
        return None
    width = min(chosen.shape[1], rejected.shape[1])
    cols = torch.arange(width)
    in_prompt = cols.unsqueeze(0) < plen.unsqueeze(1)
    if not bool(((chosen[:, :width] == rejected[:, :width]) | ~in_prompt).all()):
        return None
    length = lc + lr - plen
    total = int(length.max())
    j = torch.arange(total).unsqueeze(0)
    from_chosen = j < lc.unsqueeze(1)
    from_rejected = ~from_chosen & (j < length.unsqueeze(1))
    chosen_part = chosen.gather(1, j.clamp(max=chosen.shape[1] - 1).expand(len(plen), -1))
    src = (j - lc.unsqueeze(1) + plen.unsqueeze(1)).clamp(0, rejected.shape[1] - 1)
    rejected_part = rejected.gather(1, src)
    ids = torch.where(from_chosen, chosen_part, torch.where(from_rejected, rejected_part, 0))
    return {"pair_input_ids": ids, "pair_chosen_end": lc, "pair_length": length}
