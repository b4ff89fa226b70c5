"""The reference policy of the DPO family (docs/DESIGN.md, "Reference policy").

Three ways to get ``log pi_ref(y|x)`` (summed over response tokens, docs/ALGORITHMS.md §0):

- ``lora_disabled``: the policy itself under ``disable_adapter()`` — with LoRA the base model *is*
  the reference, so no second copy is held (peft gives exactly the base outputs);
- ``frozen_copy``: a deep copy of the initial policy, frozen (``requires_grad=False``);
- ``precomputed``: reference log-probs computed once per split in no-grad batches and cached on
  disk as ``<cache_dir>/<split>-<data fingerprint>-<model fingerprint>.pt``. The data fingerprint
  hashes the tokenised id lists (and prompt lengths) of the split in row order; the model
  fingerprint hashes the reference's name, dtype and every base weight. A change of either gives
  a new file name, so a stale cache is never read (old files stay until deleted). Rows are
  selected by the batch's ``index`` key.

:class:`ReferencePolicy` is the one home of the reference: the mode (resolved once from the
options), the frozen copy, the fingerprint of the reference's identity, the precomputed tables,
the samples of ``pi_ref`` for the forward KL of p-/dp-/e-DPO, and every reference forward.
``DPO``, ``GRPO``/``PPO`` (through ``OnlineRLModule``) and the DPO implicit-reward scorer use it;
the functions below are its building blocks.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_robust.data.collator import pad_sequences
from lightning_robust.data.example import BadRow, PreferenceExample
from lightning_robust.data.source import load_rows
from lightning_robust.data.tokenize import encode_examples
from lightning_robust.models.logprobs import sequence_logprobs
from lightning_robust.models.lora import is_peft_model
from lightning_robust.models.rollout import generate_rollouts, token_logprobs_and_values
from lightning_robust.modules.checkpoint_io import atomic_torch_save
from lightning_robust.objectives.dpo import forward_kl_estimate

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
# ``kl_samples: reference`` of p-/dp-/e-DPO (docs/ALGORITHMS.md §3.4; docs/DESIGN.md, further choices): the
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
        input_ids, mask = pad_sequences(seqs, int(pad_token_id))
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
    seqs, plens, rows = [], [], []
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), reference_view(policy, frozen) as model:
        torch.manual_seed(seed)
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            prompts = [list(it["chosen_input_ids"][: it["chosen_prompt_len"]]) for it in items]
            ids, mask = pad_sequences(prompts, int(pad_token_id), side="left")
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
        ids, mask = pad_sequences(seqs[start : start + batch_size], int(pad_token_id))
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


# ---------------------------------------------------------------- the reference as one object
#: every mode :class:`ReferencePolicy` knows; ``none`` (no reference: reference-free scoring) is
#: not offered by the training modules, which take :data:`REFERENCE_MODES`
POLICY_MODES = (*REFERENCE_MODES, "none")


def resolve_reference_mode(
    mode: str | None, lora: bool, allowed: tuple[str, ...] = REFERENCE_MODES
) -> str:
    """The reference mode an option asks for: ``None`` is ``lora_disabled`` with LoRA (the base
    model is the reference, no second copy) and ``frozen_copy`` without. Unknown modes and
    ``lora_disabled`` without LoRA are named errors."""
    if mode is None:
        mode = "lora_disabled" if lora else "frozen_copy"
    if mode not in allowed:
        raise ValueError(f"unknown reference={mode!r}; expected one of {list(allowed)}")
    if mode == "lora_disabled" and not lora:
        raise ValueError("reference='lora_disabled' needs `lora` (the base model is the reference)")
    return mode


@dataclass(frozen=True)
class KLSampleOptions:
    """How the samples of ``pi_ref`` for the forward KL are generated when the data has no
    ``ref_samples`` column: ``num_samples`` completions per prompt, at most ``max_new_tokens``
    new tokens, sampling seed ``seed`` (temperature 1, no top-p / top-k)."""

    num_samples: int = 2
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 1 or self.max_new_tokens < 1:
            raise ValueError(
                "kl_num_samples and kl_sample_max_new_tokens must be >= 1, got "
                f"{self.num_samples} and {self.max_new_tokens}"
            )


def column_samples(datamodule, dataset):
    """``(sequences, prompt lengths, rows)`` from the training source's ``ref_samples`` column,
    tokenised as the data module renders answers; ``None`` without that column."""
    source = getattr(datamodule, "train_source", None)
    if source is None or source.is_synthetic or dataset.examples is None:
        return None
    rows = load_rows(source, datamodule.max_rows, datamodule.cache_dir)
    if "ref_samples" not in rows.column_names:
        return None
    column = rows["ref_samples"]
    examples, owners = [], []
    for i, src in enumerate(dataset.source_index):
        value = column[src]
        value = [value] if isinstance(value, str) else value
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise ValueError(
                f"{source.describe()}, row {src}: 'ref_samples' must be a non-empty list of "
                f"non-empty response strings, got {value!r}"
            )
        for text in value:
            examples.append(PreferenceExample(dataset.examples[i].prompt, text, text))
            owners.append(i)
    encoded = encode_examples(
        examples,
        datamodule.tokenizer,
        datamodule.max_length,
        chat_template=datamodule.chat_template,
        append_eos=datamodule.append_eos,
    )
    seqs, plens = [], []
    for enc, i in zip(encoded, owners, strict=True):
        if isinstance(enc, BadRow):
            raise ValueError(
                f"{source.describe()}, row {dataset.source_index[i]}: a 'ref_samples' entry "
                f"cannot be encoded: {enc}"
            )
        seqs.append(list(enc.chosen_input_ids))
        plens.append(int(enc.chosen_prompt_len))
    return seqs, plens, owners


def _forward_context(trainer):
    return (
        trainer.precision_plugin.forward_context()
        if trainer is not None
        else contextlib.nullcontext()
    )


def _is_writer(trainer) -> bool:
    return trainer is None or trainer.is_global_zero


def _barrier(trainer, name: str) -> None:
    if trainer is not None and trainer.world_size > 1:
        trainer.strategy.barrier(name)


class ReferencePolicy:
    """The reference policy ``pi_ref`` of a module, in one place (docs/DESIGN.md, "Reference policy").

    Owns the mode (``lora_disabled`` | ``frozen_copy`` | ``precomputed`` | ``none``, resolved
    once by :func:`resolve_reference_mode`), the frozen copy (made by :meth:`build` before LoRA
    wraps the model; the owning LightningModule registers it as ``reference_model`` so it moves
    with the module and stays out of checkpoints), the fingerprint of the reference's identity
    (taken once, from the initial weights), the precomputed ``[N, 2]`` tables per split and the
    samples of ``pi_ref`` for the forward KL. The policy itself is attached by :meth:`attach`.

    Args:
        mode: the reference option (``None``: the default for ``lora``).
        lora: the policy carries LoRA adapters (its base model can be the reference).
        name: identity of the initial model for the fingerprint (model name and dtype).
        cache_dir: directory of the on-disk caches (``None``: ``<default_root_dir>/reference_cache``).
        fast_head: score only response positions through the LM head (same values, faster).
        allowed: the modes the owner offers.
    """

    def __init__(
        self,
        mode: str | None,
        *,
        lora: bool,
        name: str,
        cache_dir: str | None = None,
        fast_head: bool = True,
        allowed: tuple[str, ...] = REFERENCE_MODES,
    ):
        self.mode = resolve_reference_mode(mode, lora, allowed)
        self.lora = bool(lora)
        self.name = name
        self.cache_dir = cache_dir
        self.fast_head = fast_head
        self.policy = None
        self.frozen = None
        self.tables: dict[str, torch.Tensor] = {}
        self.samples: dict[str, ReferenceSamples] = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ models
    def build(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The frozen copy of ``model`` when the mode asks for one (call before LoRA:
        ``get_peft_model`` edits the model in place), else ``None``."""
        self.frozen = frozen_copy(model) if self.mode == "frozen_copy" else None
        return self.frozen

    def attach(self, policy: torch.nn.Module) -> None:
        """The trained policy (the reference itself under ``lora_disabled``)."""
        self.policy = policy

    def _compute_model(self):
        """The ``frozen`` argument of :func:`reference_view` that computes ``pi_ref``: the frozen
        copy, else ``None`` (adapters disabled) with LoRA, else the policy itself (valid only
        while it has its initial weights)."""
        if self.frozen is not None:
            return self.frozen
        return None if self.lora else self.policy

    def view(self):
        """Context manager yielding the model that computes ``pi_ref`` (the frozen copy, or the
        LoRA policy with its adapters disabled)."""
        if self.mode == "none":
            raise ValueError("reference='none': there is no reference model")
        if self.frozen is None and not self.lora:
            raise ValueError(
                f"reference={self.mode!r} without LoRA keeps no reference model, only its cached "
                "log-probs of the data module's rows: use LoRA or reference='frozen_copy' to "
                "score other text against the reference"
            )
        return reference_view(self.policy, self.frozen)

    #: where the owning module registers the frozen copy (its state_dict prefix)
    STATE_PREFIX = "reference_model."

    def drop_from_checkpoint(self, checkpoint: dict) -> None:
        """The frozen copy equals the initial model, rebuilt by ``configure_model``: not saved."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(self.STATE_PREFIX)]:
            del state[key]

    def fill_checkpoint(self, checkpoint: dict) -> None:
        """Put the rebuilt frozen copy's weights into a loaded checkpoint that lacks them, so a
        strict ``load_state_dict`` of the owning module accepts it."""
        if self.frozen is not None and "state_dict" in checkpoint:
            for key, value in self.frozen.state_dict().items():
                checkpoint["state_dict"].setdefault(f"{self.STATE_PREFIX}{key}", value)

    # ------------------------------------------------------------------ identity
    @property
    def fingerprinted(self) -> bool:
        """Whether the identity has been taken (after that, a full-weight policy may be trained)."""
        return self._fingerprint is not None

    def fingerprint(self) -> str:
        """Hash of the reference's identity (:func:`model_fingerprint`): the frozen copy when
        there is one, else the policy's base weights (LoRA adapters skipped); taken once."""
        if self._fingerprint is None:
            model = self.frozen if self.frozen is not None else self.policy
            self._fingerprint = model_fingerprint(model, self.name)
        return self._fingerprint

    def cache_directory(self, trainer=None) -> str:
        if self.cache_dir:
            return self.cache_dir
        root = trainer.default_root_dir if trainer is not None else "."
        return os.path.join(root, "reference_cache")

    # ------------------------------------------------------------------ log-probs
    def logps(self, input_ids, attention_mask, prompt_len) -> torch.Tensor:
        """``log pi_ref`` of each row (``[B]``, float32), no graph."""
        return reference_logps(
            self.policy,
            self.frozen,
            input_ids,
            attention_mask,
            prompt_len,
            fast_head=self.fast_head,
        )

    def pair_logps(
        self, batch: dict, split: str, input_ids, attention_mask, prompt_len
    ) -> torch.Tensor:
        """``[2B]`` reference log-probs of a pair batch (chosen rows first): the precomputed
        table's rows of ``batch["index"]``, or a no-grad forward."""
        if self.mode == "precomputed":
            table = self.tables.get(split)
            if table is None:
                raise KeyError(f"no precomputed reference log-probs for split {split!r}")
            rows = table[batch["index"].cpu()].to(input_ids.device)
            return torch.cat([rows[:, 0], rows[:, 1]])
        return self.logps(input_ids, attention_mask, prompt_len)

    @torch.no_grad()
    def token_logprobs(self, rollout, temperature: float) -> torch.Tensor:
        """``[N, R]`` reference log-probs of a rollout's response tokens, no graph (online RL)."""
        with self.view() as model:
            return token_logprobs_and_values(model, rollout, temperature)[0]

    # ------------------------------------------------------------------ precomputed tables
    def precompute(self, datamodule, device, trainer=None) -> dict[str, torch.Tensor]:
        """Fill the tables of every split of ``datamodule`` from the disk cache, computing
        (no-grad batches) and saving the missing ones (rank 0 writes, the others read after a
        barrier). A full-weight policy may only compute before its identity was taken: later
        calls (validate/test after fit) may only read the cache."""
        if datamodule is None or not getattr(datamodule, "datasets", None):
            raise ValueError(
                "reference='precomputed' needs a PreferenceDataModule (its tokenised splits)"
            )
        policy = self.policy
        policy.to(device)
        first = not self.fingerprinted
        model_fp = self.fingerprint()
        can_compute = first or self.lora
        batch_size = getattr(datamodule, "eval_batch_size", None) or 16
        was_training = policy.training
        policy.eval()

        def table(split, dataset, is_writer):
            return load_or_compute(
                self.cache_directory(trainer),
                split,
                dataset,
                model_fp,
                functools.partial(
                    self._compute_table,
                    split,
                    dataset,
                    datamodule.collator,
                    batch_size,
                    device,
                    trainer,
                    can_compute,
                ),
                is_writer=is_writer,
            )[0]

        try:
            if _is_writer(
                trainer
            ):  # always through the disk key: the split's data may have changed
                for split, dataset in datamodule.datasets.items():
                    self.tables[split] = table(split, dataset, True)
            _barrier(trainer, "reference_cache")  # rank 0 has written every split
            if not _is_writer(trainer):
                for split, dataset in datamodule.datasets.items():
                    self.tables[split] = table(split, dataset, False)
        finally:
            policy.train(was_training)
        return self.tables

    def _compute_table(self, split, dataset, collator, batch_size, device, trainer, can_compute):
        if not can_compute:
            raise RuntimeError(
                f"reference log-probs of split {split!r} are not in the cache and the "
                "full-weight policy has been trained since the reference was fingerprinted: "
                "precompute them before training (same data module), or use LoRA"
            )
        with _forward_context(trainer):
            return compute_split_logps(
                self.policy,
                self._compute_model(),
                dataset,
                collator,
                batch_size,
                device,
                fast_head=self.fast_head,
            )

    # ------------------------------------------------------------------ samples (forward KL)
    def prepare_samples(
        self,
        datamodule,
        tokenizer,
        options: KLSampleOptions,
        device,
        trainer=None,
        untrained: bool | None = None,
    ) -> ReferenceSamples:
        """Samples of ``pi_ref`` for the forward KL of the training split, with their reference
        log-probs: from the ``ref_samples`` column, or generated once; read from / written to the
        disk cache. Logs which source is used. ``untrained``: the policy still has its initial
        weights (default: no fingerprint taken yet); a full-weight policy may only build then."""
        if datamodule is None or "train" not in (getattr(datamodule, "datasets", None) or {}):
            raise ValueError(
                "kl_samples='reference' needs a PreferenceDataModule with a train split"
            )
        self.policy.to(device)
        if self.frozen is not None:
            self.frozen.to(device)
        first = not self.fingerprinted if untrained is None else untrained
        model_fp = self.fingerprint()
        # a full-weight policy is its own reference only before it is trained
        can_build = first or self._compute_model() is not self.policy
        dataset = datamodule.datasets["train"]
        batch_size = getattr(datamodule, "eval_batch_size", None) or 16
        column = column_samples(datamodule, dataset)
        if column is not None:
            digest = hashlib.blake2b(repr(column).encode(), digest_size=16).hexdigest()
            settings = {"source": "column", "samples": digest}
        else:
            settings = {
                "source": "generated",
                "num_samples": options.num_samples,
                "max_new_tokens": options.max_new_tokens,
                "seed": options.seed,
                "eos": tokenizer.eos_token_id,
            }
        settings["fast_head"] = bool(self.fast_head)
        build = functools.partial(
            self._build_samples,
            column,
            dataset,
            tokenizer,
            options,
            settings["source"],
            batch_size,
            device,
            trainer,
            can_build,
        )
        cache_dir = self.cache_directory(trainer)
        if _is_writer(trainer):
            samples, built, path = load_or_build_samples(
                cache_dir, "train", dataset, model_fp, settings, build
            )
        _barrier(trainer, "reference_samples")
        if not _is_writer(trainer):
            samples, built, path = load_or_build_samples(
                cache_dir, "train", dataset, model_fp, settings, build, is_writer=False
            )
        what = (
            "the training data's 'ref_samples' column"
            if column is not None
            else f"{options.num_samples} completion(s) per prompt generated from the reference "
            f"(max {options.max_new_tokens} new tokens, seed {options.seed})"
        )
        log.info(
            "forward-KL pessimism: kl_samples='reference' uses %d samples of pi_ref from %s; %s %s",
            len(samples),
            what,
            "built and cached in" if built else "read from the cache",
            path,
        )
        self.samples["train"] = samples
        return samples

    def _build_samples(
        self, column, dataset, tokenizer, options, source, batch_size, device, trainer, can_build
    ) -> ReferenceSamples:
        if not can_build:
            raise RuntimeError(
                "reference samples are not in the cache and the full-weight policy has been "
                "trained since the reference was fingerprinted: prepare them before training"
            )
        frozen = self._compute_model()
        pad = tokenizer.pad_token_id
        was_training = self.policy.training
        self.policy.eval()
        try:
            if column is not None:
                seqs, plens, rows = column
            else:
                seqs, plens, rows = generate_reference_samples(
                    self.policy,
                    frozen,
                    dataset,
                    num_samples=options.num_samples,
                    max_new_tokens=options.max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=pad,
                    batch_size=batch_size,
                    device=device,
                    seed=options.seed,
                )
            with _forward_context(trainer):
                logps = samples_reference_logps(
                    self.policy, frozen, seqs, plens, pad, batch_size, device, self.fast_head
                )
        finally:
            self.policy.train(was_training)
        return ReferenceSamples.from_lists(seqs, plens, rows, logps, source)

    def sample_kl(self, batch: dict, pad_token_id: int) -> torch.Tensor:
        """``KL_hat(x_i)`` ``[B]`` of the batch's prompts on their cached ``pi_ref`` samples: the
        policy's log-probs (with grad) against the cached reference log-probs (§3.4)."""
        samples = self.samples.get("train")
        if samples is None:
            raise RuntimeError(
                "kl_samples='reference': no reference samples prepared; fit with a "
                "PreferenceDataModule or call prepare_reference_samples(datamodule) first"
            )
        device = batch["chosen_input_ids"].device
        rows = batch["index"].tolist()
        s = samples.batch(rows, pad_token_id, device)
        policy, _ = sequence_logprobs(
            self.policy,
            s["input_ids"],
            s["attention_mask"],
            s["prompt_len"],
            fast_head=self.fast_head,
        )
        return forward_kl_estimate(
            s["ref_logps"].to(policy.dtype), policy, prompt_index=s["owner"], num_prompts=len(rows)
        )
