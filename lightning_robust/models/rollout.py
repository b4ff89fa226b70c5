"""Rollouts for online RL: sample completions with Hugging Face ``generate`` and recompute
their per-token log-probs (docs/ALGORITHMS.md §4, §5.3).

Layout of a :class:`Rollout` (the layout every online module and objective shares):

- prompts are **left**-padded to a common width ``P`` so every response starts at column ``P``;
- ``input_ids[:, P:]`` are the sampled response tokens ``[N, R]``; after the first EOS the row
  is padding, and ``response_mask`` is True on the response tokens up to and including the
  first EOS (all ``R`` tokens when no EOS was sampled: ``has_eos`` is then False);
- ``prompt_index[i]`` is the prompt row that completion ``i`` answers: with ``G`` generations
  per prompt, rows ``g*G .. g*G+G-1`` answer prompt ``g`` (Hugging Face's
  ``num_return_sequences`` order).

Log-probs are those of the temperature-scaled policy, ``log softmax(logits / T)``, with
``position_ids`` from the attention mask (left padding moves positions as ``generate`` does),
so they equal the sampling distribution when ``top_p = 1`` and ``top_k = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """Sampled completions of a batch of prompts (layout in the module docstring)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    response_mask: torch.Tensor
    has_eos: torch.Tensor
    prompt_index: torch.Tensor

    @property
    def response_ids(self) -> torch.Tensor:
        """``[N, R]`` sampled tokens (padding after the first EOS)."""
        return self.input_ids[:, self.prompt_width :]

    @property
    def response_lengths(self) -> torch.Tensor:
        """``[N]`` response tokens, the EOS included."""
        return self.response_mask.sum(-1)

    @property
    def num_generations(self) -> int:
        return int(self.input_ids.shape[0] // max(int(self.prompt_index.max()) + 1, 1))


def first_eos_mask(
    response_ids: torch.Tensor, eos_token_id: int | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask [N, R], has_eos [N])``: True up to and including the first EOS of each row."""
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])
    is_eos = torch.isin(response_ids, eos_ids.to(response_ids.device))
    has_eos = is_eos.any(-1)
    # number of EOS tokens strictly before each position; keep positions with none before
    before = is_eos.long().cumsum(-1) - is_eos.long()
    return before == 0, has_eos


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only attended tokens (left padding gets position 0), as ``generate``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate_rollouts(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    eos_token_id: int | list[int],
    pad_token_id: int,
    num_generations: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    do_sample: bool = True,
) -> Rollout:
    """Sample ``num_generations`` completions per left-padded prompt with ``model.generate``
    (KV cache on). Rows past the first EOS are set to ``pad_token_id``."""
    if prompt_ids.shape[1] and bool((prompt_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be left-padded for generation (found padding on the right)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        sequences = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=top_k if do_sample else None,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_generations,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            use_cache=True,
        )
    finally:
        model.train(was_training)
    width = prompt_ids.shape[1]
    response = sequences[:, width:]
    mask, has_eos = first_eos_mask(response, eos_token_id)
    response = response.masked_fill(~mask, pad_token_id)
    prompt_index = torch.arange(prompt_ids.shape[0], device=prompt_ids.device).repeat_interleave(
        num_generations
    )
    full_mask = torch.cat([prompt_mask[prompt_index], mask.long()], dim=1)
    return Rollout(
        input_ids=torch.cat([sequences[:, :width], response], dim=1),
        attention_mask=full_mask,
        prompt_width=width,
        response_mask=mask,
        has_eos=has_eos,
        prompt_index=prompt_index,
    )


def token_logprobs(
    model, rollout: Rollout, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """``[N, R]`` float32 log-probs of the response tokens under ``softmax(logits / T)``;
    0 at masked positions. Runs with grad when the caller has it enabled; ``chunk_size`` rows at a
    time when given (for no-grad scoring of large rollouts)."""
    return token_logprobs_and_values(model, rollout, temperature, chunk_size=chunk_size)[0]


def token_logprobs_and_values(
    model,
    rollout: Rollout,
    temperature: float = 1.0,
    value_head: torch.nn.Module | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs as :func:`token_logprobs` and, with a ``value_head``, the values ``[N, R]`` from
    the same forward: ``value_head(h)`` on the decoder's last hidden state ``h`` at the position
    that predicts each response token (the state before the token is emitted), float32, 0 at
    masked positions; ``None`` without a head."""
    rows = rollout.input_ids.shape[0]
    step = chunk_size or rows
    logp_pieces, value_pieces = [], []
    width = rollout.prompt_width
    for start in range(0, rows, step):
        ids = rollout.input_ids[start : start + step]
        mask = rollout.attention_mask[start : start + step]
        response_mask = rollout.response_mask[start : start + step]
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            output_hidden_states=value_head is not None,
        )
        # logits at t predict token t+1: responses start at column P
        logits = out.logits[:, width - 1 : -1].float() / temperature
        targets = ids[:, width:]
        logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
            logits, dim=-1
        )
        logp_pieces.append(logps * response_mask)
        if value_head is not None:
            hidden = out.hidden_states[-1][:, width - 1 : -1]
            weight = next(value_head.parameters())
            values = value_head(hidden.to(weight.dtype)).squeeze(-1).float()
            value_pieces.append(values * response_mask)
    logps = torch.cat(logp_pieces, dim=0)
    return logps, (torch.cat(value_pieces, dim=0) if value_head is not None else None)


def select_rows(rollout: Rollout, rows: torch.Tensor) -> Rollout:
    """The completions ``rows`` (a LongTensor of row indices) of ``rollout``, as a Rollout
    (``prompt_index`` kept: it still names prompts of the original batch)."""
    return Rollout(
        input_ids=rollout.input_ids[rows],
        attention_mask=rollout.attention_mask[rows],
        prompt_width=rollout.prompt_width,
        response_mask=rollout.response_mask[rows],
        has_eos=rollout.has_eos[rows],
        prompt_index=rollout.prompt_index[rows],
    )
