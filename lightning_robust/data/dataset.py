"""A map-style dataset of tokenised preference pairs (tokenised once, kept as id lists)."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from lightning_robust.data.example import PreferenceExample
from lightning_robust.data.tokenize import EncodedPair


class TokenizedPreferenceDataset(Dataset):
    """Tokenised pairs of one split.

    Item ``i`` is a dict with ``chosen_input_ids``, ``rejected_input_ids`` (lists of ints),
    ``chosen_prompt_len``, ``rejected_prompt_len``, ``group`` (int id, -1 for none) and
    ``index`` (= ``i``, the row's position in this split). ``source_index[i]`` is the 0-based row
    of the source file it came from, ``examples[i]`` its canonical example.
    """

    def __init__(
        self,
        pairs: Sequence[EncodedPair],
        groups: Sequence[int],
        source_index: Sequence[int],
        examples: Sequence[PreferenceExample] | None = None,
    ):
        if not (len(pairs) == len(groups) == len(source_index)):
            raise ValueError("pairs, groups and source_index must have the same length")
        self.pairs = list(pairs)
        self.groups = list(groups)
        self.source_index = list(source_index)
        self.examples = list(examples) if examples is not None else None

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def lengths(self) -> list[int]:
        """Padded width each pair needs: the longer of its chosen and rejected sequences."""
        return [max(len(p.chosen_input_ids), len(p.rejected_input_ids)) for p in self.pairs]

    @property
    def max_token_id(self) -> int:
        """The largest token id of the split (-1 when it is empty)."""
        if not hasattr(self, "_max_token_id"):
            self._max_token_id = max(
                (max(p.chosen_input_ids + p.rejected_input_ids) for p in self.pairs), default=-1
            )
        return self._max_token_id

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[i]
        item = {
            "chosen_input_ids": pair.chosen_input_ids,
            "chosen_prompt_len": pair.chosen_prompt_len,
            "rejected_input_ids": pair.rejected_input_ids,
            "rejected_prompt_len": pair.rejected_prompt_len,
            "group": self.groups[i],
            "index": i,
        }
        if self.examples is not None and self.examples[i].margin is not None:
            item["margin"] = self.examples[i].margin
        if self.examples is not None and self.examples[i].chosen_scores is not None:
            item["chosen_scores"] = list(self.examples[i].chosen_scores)
            item["rejected_scores"] = list(self.examples[i].rejected_scores)
        return item
