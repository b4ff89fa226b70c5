"""The collator: common width for chosen and rejected, right padding, prompt lengths."""

import torch

from lightning_robust.data import BATCH_KEYS, PreferenceCollator, PreferenceExample, encode_examples
from lightning_robust.data.dataset import TokenizedPreferenceDataset
from lightning_robust.models import load_tokenizer


def features():
    return [
        {
            "chosen_input_ids": [5, 6, 7],
            "chosen_prompt_len": 2,
            "rejected_input_ids": [5, 6, 8, 9, 10],
            "rejected_prompt_len": 2,
            "group": 1,
            "index": 0,
        },
        {
            "chosen_input_ids": [4, 3],
            "chosen_prompt_len": 1,
            "rejected_input_ids": [4, 2],
            "rejected_prompt_len": 1,
            "group": -1,
            "index": 7,
        },
    ]


def test_shapes_padding_and_masks():
    batch = PreferenceCollator(pad_token_id=0)(features())
    assert tuple(batch) == BATCH_KEYS
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape == (2, 5)
    assert batch["chosen_input_ids"].tolist() == [[5, 6, 7, 0, 0], [4, 3, 0, 0, 0]]
    assert batch["rejected_input_ids"].tolist() == [[5, 6, 8, 9, 10], [4, 2, 0, 0, 0]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert batch["rejected_attention_mask"].sum(1).tolist() == [5, 2]
    assert batch["chosen_prompt_len"].tolist() == [2, 1]
    assert batch["group"].tolist() == [1, -1] and batch["index"].tolist() == [0, 7]


def test_pad_to_multiple_of_and_pad_id():
    batch = PreferenceCollator(pad_token_id=99, pad_to_multiple_of=4)(features())
    assert batch["chosen_input_ids"].shape == (2, 8)
    assert (batch["chosen_input_ids"][batch["chosen_attention_mask"] == 0] == 99).all()


def test_decoded_boundary_from_tokenised_pairs():
    tok = load_tokenizer("minilm")
    examples = [
        PreferenceExample("what is two plus two?", "it is four.", "five"),
        PreferenceExample("name a colour", "blue", "i do not know any colours at all"),
    ]
    ds = TokenizedPreferenceDataset(encode_examples(examples, tok, 64), [0, 1], [0, 1])
    batch = PreferenceCollator(tok.pad_token_id)([ds[0], ds[1]])
    for i, ex in enumerate(examples):
        for side in ("chosen", "rejected"):
            ids = batch[f"{side}_input_ids"][i][batch[f"{side}_attention_mask"][i] == 1].tolist()
            plen = int(batch[f"{side}_prompt_len"][i])
            assert tok.decode(ids[:plen], skip_special_tokens=True) == ex.prompt
            assert tok.decode(ids[plen:], skip_special_tokens=True) == getattr(ex, side)
            assert ids[plen - 1] == tok.sep_token_id
