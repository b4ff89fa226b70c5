"""The reference policy of the DPO family (DESIGN.md, "Reference policy").

Three ways to get ``log pi_ref(y|x)`` (summed over response tokens, ALGORITHMS.md §0):

- ``lora_disabled``: the policy itself under ``disable_adapter()`` — with LoRA the base model *is*
  the reference, so no second copy is held (peft gives exactly the base outputs);
- ``frozen_copy``: a deep copy of the initial policy, frozen (``requires_grad=False``);
- ``precomputed``: reference log-probs computed once per split in no-grad batches and cached on
  disk as ``<cache_dir>/<split>-<data fingerprint>-<model fingerprint>.pt``. The data fingerprint
  hashes the tokenised id lists (and prompt lengths) of the split in row order; the model
  fingerprint hashes the reference's name, dtype and every base weight. A change of either gives
  a new file name, so a stale cache is never read (old files stay until deleted). Rows are
  selected by the batch's ``index`` key.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_robust.models.logprobs import sequence_logprobs
from lightning_robust.models.lora import is_peft_model
from lightning_robust.modules.checkpoint_io import atomic_torch_save

log = logging.getLogger(__name__)

ReferenceMode = Literal["lora_disabled", "frozen_copy", "precomputed"]
REFERENCE_MODES = ("lora_disabled", "frozen_copy", "precomputed")
CACHE_FORMAT = 1


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@contextlib.contextmanager
def reference_view(policy, frozen=None):
    """Yield the model that computes reference log-probs: ``frozen`` when given, else ``policy``
    with its LoRA adapters disabled (an error when it has none)."""
    if frozen is not None:
        yield frozen
        return
    if not is_peft_model(policy):
        raise ValueError("reference='lora_disabled' needs a LoRA policy (set `lora`)")
    with policy.disable_adapter():
        yield policy


@torch.no_grad()
def reference_logps(
    policy, frozen, input_ids, attention_mask, prompt_len, fast_head: bool = True
) -> torch.Tensor:
    """``log pi_ref`` of each row (``[B]``, float32), without a graph."""
    with reference_view(policy, frozen) as model:
        return sequence_logprobs(model, input_ids, attention_mask, prompt_len, fast_head=fast_head)[
            0
        ]


# ---------------------------------------------------------------- fingerprints
def data_fingerprint(dataset) -> str:
    """Hash of a tokenised preference split: its rows' id lists and prompt lengths, in order."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"n={len(dataset)};".encode())
    for i in range(len(dataset)):
        item = dataset[i]
        for key in ("chosen_input_ids", "rejected_input_ids"):
            ids = item[key]
            h.update(torch.as_tensor(list(ids), dtype=torch.int64).numpy().tobytes())
            h.update(b"|")
        h.update(f"{item['chosen_prompt_len']},{item['rejected_prompt_len']};".encode())
    return h.hexdigest()


def model_fingerprint(model, name: str) -> str:
    """Hash of the reference model's identity: ``name`` plus every base weight (name, dtype, shape,
    bytes). LoRA adapter weights are skipped: with ``lora_disabled`` they do not act."""
    h = hashlib.blake2b(digest_size=16)
    h.update(name.encode())
    for key, tensor in model.state_dict().items():
        if "lora_" in key:
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------- on-disk cache
def cache_path(cache_dir: str | os.PathLike, split: str, data_fp: str, model_fp: str) -> str:
    return os.path.join(os.fspath(cache_dir), f"{split}-{data_fp[:16]}-{model_fp[:16]}.pt")


@torch.no_grad()
def compute_split_logps(
    policy, frozen, dataset, collator, batch_size: int, device, fast_head: bool = True
):
    """``[N, 2]`` float32 (chosen, rejected) reference log-probs of every row of ``dataset``."""
    out = torch.zeros(len(dataset), 2, dtype=torch.float32)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collator
    )
    for batch in loader:
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]).to(device)
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]]).to(
            device
        )
        plen = torch.cat([batch["chosen_prompt_len"], batch["rejected_prompt_len"]]).to(device)
        logps = reference_logps(policy, frozen, ids, mask, plen, fast_head=fast_head).float().cpu()
        out[batch["index"]] = torch.stack(logps.chunk(2), dim=1)
    return out


def read_cache(path: str):
    """The object saved at ``path`` (``torch.load(weights_only=True)``), or ``None`` when there
    is no file or it is unreadable -- not a zip archive (truncated, garbage), or a zip archive
    the reader fails on (``RuntimeError``, ``EOFError``, ``zipfile.BadZipFile``) -- which is
    logged as a warning so the caller recomputes and overwrites it. A readable archive whose
    pickle ``weights_only=True`` refuses still raises ``pickle.UnpicklingError``: a cache holding
    foreign objects is a security signal, not a corrupt file."""
    if not os.path.exists(path):
        return None
    try:
        if not zipfile.is_zipfile(path):
            raise EOFError("not a torch zip archive: truncated or corrupt")
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        log.warning("reference cache %s is unreadable (%s); recomputing", path, err)
        return None


def load_or_compute(
    cache_dir,
    split: str,
    dataset,
    model_fp: str,
    compute,
    is_writer: bool = True,
) -> tuple[torch.Tensor, bool]:
    """Read the cached ``[N, 2]`` log-probs of ``split`` or compute them with ``compute()`` and
    save them (only when ``is_writer``). Returns ``(table, computed)``."""
    data_fp = data_fingerprint(dataset)
    path = cache_path(cache_dir, split, data_fp, model_fp)
    saved = read_cache(path)
    if saved is not None:
        if (
            isinstance(saved, dict)
            and saved.get("format") == CACHE_FORMAT
            and saved.get("data_fingerprint") == data_fp
            and saved.get("model_fingerprint") == model_fp
            and saved["logps"].shape == (len(dataset), 2)
        ):
            return saved["logps"], False
        log.warning("reference cache %s does not match its key; recomputing", path)
    table = compute()
    if is_writer:
        atomic_torch_save(
            {
                "format": CACHE_FORMAT,
                "data_fingerprint": data_fp,
                "model_fingerprint": model_fp,
                "logps": table,
            },
            path,
        )
        log.info("reference log-probs of %r (%d rows) cached in %s", split, len(dataset), path)
    return table, True


# ---------------------------------------------------------------- reference samples (forward KL)
# ``kl_samples: reference`` of p-/dp-/e-DPO (ALGORITHMS.md §3.4; DESIGN.md settled point): the
# forward KL(pi_ref || pi_theta) is estimated on samples y_k ~ pi_ref(.|x). They come from the
# data's ``ref_samples`` column when it has one, else from the reference, generated once (no
# grad, temperature 1, no top-p / top-k: exact pi_ref samples). Either way their reference
# log-probs are computed once too, and both are cached on disk as
# ``<cache_dir>/ref_samples-<split>-<data fp>-<model fp>-<settings fp>.pt`` (settings: source,
# number of samples, max new tokens, seed; for the column, a hash of its token ids).

SAMPLES_FORMAT = 1


@dataclass
class ReferenceSamples:
    """Samples of one split, flat: sample ``s`` is ``tokens[starts[s]:starts[s] + lengths[s]]``
    (prompt then response, the response starting at ``prompt_len[s]``) and answers dataset row
    ``row[s]``; ``ref_logps[s]`` is its summed response log-prob under the reference. Rows own
    samples ``offsets[i]:offsets[i+1]`` (sorted by row)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    prompt_len: torch.Tensor
    row: torch.Tensor
    ref_logps: torch.Tensor
    source: str

    def __post_init__(self):
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        num_rows = int(self.row.max()) + 1 if self.row.numel() else 0
        counts = torch.bincount(self.row, minlength=num_rows)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])

    @classmethod
    def from_lists(cls, seqs, prompt_len, row, ref_logps, source) -> ReferenceSamples:
        order = sorted(range(len(seqs)), key=lambda s: row[s])
        return cls(
            torch.tensor([t for s in order for t in seqs[s]], dtype=torch.long),
            torch.tensor([len(seqs[s]) for s in order], dtype=torch.long),
            torch.tensor([prompt_len[s] for s in order], dtype=torch.long),
            torch.tensor([row[s] for s in order], dtype=torch.long),
            torch.as_tensor(ref_logps, dtype=torch.float32)[order]
            if len(order)
            else torch.zeros(0),
            source,
        )

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def sequences(self, ids) -> list[list[int]]:
        return [
            self.tokens[self.starts[s] : self.starts[s] + self.lengths[s]].tolist() for s in ids
        ]

    def of_rows(self, rows: list[int]) -> tuple[list[int], list[int]]:
        """``(sample ids, position in rows)`` of every sample of the given dataset rows."""
        ids, owner = [], []
        for pos, r in enumerate(rows):
            if r + 1 >= len(self.offsets):
                raise KeyError(f"no reference samples for row {r}")
            span = range(int(self.offsets[r]), int(self.offsets[r + 1]))
            ids += span
            owner += [pos] * len(span)
        return ids, owner

    def batch(self, rows: list[int], pad_token_id: int, device=None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask``/``prompt_len``/``ref_logps``/``owner``
        (position of each sample's row in ``rows``) of the samples of ``rows``."""
        ids, owner = self.of_rows(rows)
        if not ids:
            raise ValueError(f"rows {rows} have no reference samples")
        seqs = self.sequences(ids)
        input_ids, mask = pad_right(seqs, pad_token_id)
        out = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "prompt_len": self.prompt_len[ids],
            "ref_logps": self.ref_logps[ids],
            "owner": torch.tensor(owner, dtype=torch.long),
        }
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    def state(self) -> dict:
        return {
            "tokens": self.tokens,
            "lengths": self.lengths,
            "prompt_len": self.prompt_len,
            "row": self.row,
            "ref_logps": self.ref_logps,
            "source": self.source,
        }


def pad_right(seqs: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _pad_left(seqs: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def generate_reference_samples(
    policy,
    frozen,
    dataset,
    *,
    num_samples: int,
    max_new_tokens: int,
    eos_token_id,
    pad_token_id: int,
    batch_size: int,
    device,
    seed: int = 0,
) -> tuple[list[list[int]], list[int], list[int]]:
    """``num_samples`` completions ``y ~ pi_ref(.|x)`` of every row's prompt (the tokens before
    ``chosen_prompt_len``), sampled at temperature 1 without top-p / top-k. Returns
    ``(sequences, prompt lengths, rows)``: prompt + response up to and including the first eos."""
    from lightning_robust.models.rollout import generate_rollouts

    seqs, plens, rows = [], [], []
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), reference_view(policy, frozen) as model:
        torch.manual_seed(seed)
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            prompts = [list(it["chosen_input_ids"][: it["chosen_prompt_len"]]) for it in items]
            ids, mask = _pad_left(prompts, pad_token_id)
            rollout = generate_rollouts(
                model,
                ids.to(device),
                mask.to(device),
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
                num_generations=num_samples,
                max_new_tokens=max_new_tokens,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
            )
            response = rollout.response_ids.cpu()
            keep = rollout.response_mask.cpu()
            for k, p in enumerate(rollout.prompt_index.cpu().tolist()):
                seqs.append(prompts[p] + response[k][keep[k]].tolist())
                plens.append(len(prompts[p]))
                rows.append(start + p)
    return seqs, plens, rows


@torch.no_grad()
def samples_reference_logps(
    policy,
    frozen,
    seqs,
    prompt_len,
    pad_token_id: int,
    batch_size: int,
    device,
    fast_head: bool = True,
) -> torch.Tensor:
    """``[S]`` float32 reference log-probs of the samples (right-padded no-grad batches)."""
    out = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_right(seqs[start : start + batch_size], pad_token_id)
        plen = torch.as_tensor(prompt_len[start : start + batch_size], dtype=torch.long)
        out.append(
            reference_logps(
                policy,
                frozen,
                ids.to(device),
                mask.to(device),
                plen.to(device),
                fast_head=fast_head,
            )
            .float()
            .cpu()
        )
    return torch.cat(out) if out else torch.zeros(0)


def samples_cache_path(cache_dir, split: str, data_fp: str, model_fp: str, settings_fp: str) -> str:
    name = f"ref_samples-{split}-{data_fp[:16]}-{model_fp[:16]}-{settings_fp[:16]}.pt"
    return os.path.join(os.fspath(cache_dir), name)


def settings_fingerprint(settings: dict) -> str:
    text = ";".join(f"{k}={settings[k]}" for k in sorted(settings))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def load_or_build_samples(
    cache_dir, split: str, dataset, model_fp: str, settings: dict, build, is_writer: bool = True
) -> tuple[ReferenceSamples, bool, str]:
    """The cached samples of ``split`` or ``build()`` (-> ReferenceSamples) saved under the key.
    Returns ``(samples, built, path)``."""
    data_fp = data_fingerprint(dataset)
    settings_fp = settings_fingerprint(settings)
    path = samples_cache_path(cache_dir, split, data_fp, model_fp, settings_fp)
    saved = read_cache(path)
    if saved is not None:
        if (
            isinstance(saved, dict)
            and saved.get("format") == SAMPLES_FORMAT
            and saved.get("data_fingerprint") == data_fp
            and saved.get("model_fingerprint") == model_fp
            and saved.get("settings_fingerprint") == settings_fp
        ):
            return ReferenceSamples(**saved["samples"]), False, path
        log.warning("reference-sample cache %s does not match its key; rebuilding", path)
    samples = build()
    if is_writer:
        atomic_torch_save(
            {
                "format": SAMPLES_FORMAT,
                "data_fingerprint": data_fp,
                "model_fingerprint": model_fp,
                "settings_fingerprint": settings_fp,
                "samples": samples.state(),
            },
            path,
        )
    return samples, True, path
