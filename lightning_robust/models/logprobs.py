"""Sequence log-probabilities of responses under a causal LM (docs/ALGORITHMS.md §0).

``log pi(y|x) = sum over response tokens of log pi(y_t | x, y_<t)``: prompt and padding
positions are excluded and there is no length normalisation. Sequences are right-padded and
the response starts at ``prompt_len`` (the layout of the preference collator).

Only response positions go through the LM head (``fast_head=True``): the decoder's last hidden
states at the positions that predict response tokens are gathered first, so the
``[tokens, vocab]`` logits of prompt and padding positions are never formed — on CPU this is
most of a DPO step's log-prob cost (docs/ENVIRONMENT.md, "Speed reference"). Models whose logits are
not ``lm_head(hidden)`` (logit soft-capping, scaled logits) are detected and use the full path.
"""

from __future__ import annotations

import torch

from lightning_robust.models.logsoftmax_gather import logsoftmax_gather


def response_mask(attention_mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: True at response-token positions (``t >= prompt_len`` and not padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions.unsqueeze(0) >= prompt_len.unsqueeze(1)) & attention_mask.bool()


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` per row, computed in float32 (``[N, V]``, ``[N]`` -> ``[N]``;
    float64 logits stay float64). Row-chunked with a direct backward
    (:func:`~lightning_robust.models.logsoftmax_gather.logsoftmax_gather`): no ``[N, V]``
    log-softmax or zero-filled gather gradient is materialised."""
    return logsoftmax_gather(logits, targets)


def _plain_lm_head(model) -> bool:
    config = getattr(model, "config", None)
    if config is None:
        return False
    text = getattr(config, "get_text_config", lambda: config)()
    return not any(
        getattr(text, name, None) not in (None, 1.0, 0.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )


def _causal_lm(model):
    """The underlying ``*ForCausalLM`` of a (possibly peft-wrapped) model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    fast_head: bool = True,
    inputs_embeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``[B]`` (float32) and response token counts ``[B]``.

    ``model`` is a Hugging Face causal LM (optionally wrapped by peft). ``inputs_embeds`` may
    replace ``input_ids`` as the model input (WDPO differentiates through the embeddings); the
    targets are still ``input_ids``.
    """
    mask = response_mask(attention_mask, prompt_len)
    mask[:, 0] = False  # position 0 has no predecessor
    rows, cols = mask.nonzero(as_tuple=True)
    targets = input_ids[rows, cols]
    inputs = {"attention_mask": attention_mask}
    if inputs_embeds is not None:
        inputs["inputs_embeds"] = inputs_embeds
    else:
        inputs["input_ids"] = input_ids
    lm = _causal_lm(model)
    if fast_head and _plain_lm_head(lm):
        # the decoder stack through the (peft-aware) wrapper, then the head on needed rows only
        decoder = getattr(model, "model", None) if model is lm else None
        hidden = (
            decoder(**inputs).last_hidden_state
            if decoder is not None
            else model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        )
        logits = lm.get_output_embeddings()(hidden[rows, cols - 1])
    else:
        logits = model(**inputs).logits[rows, cols - 1]
    token_logps = logprobs_from_logits(logits, targets).float()
    batch = input_ids.shape[0]
    logps = torch.zeros(batch, dtype=torch.float32, device=input_ids.device).index_add(
        0, rows, token_logps
    )
    counts = torch.zeros(batch, dtype=torch.long, device=input_ids.device).index_add(
        0, rows, torch.ones_like(rows)
    )
    return logps, counts


#: attention implementations that take a custom 4-D mask (``masking_utils`` passes it through)
PAIR_ATTENTION = ("eager", "sdpa")


def supports_pair_rows(model) -> bool:
    """Whether ``model`` (possibly peft-wrapped) runs an attention implementation that accepts
    the custom 4-D mask of :func:`pair_layout` (eager, sdpa); others use two rows per pair."""
    config = getattr(_causal_lm(model), "config", None)
    return getattr(config, "_attn_implementation", None) in PAIR_ATTENTION


def pair_layout(prompt_len, chosen_end, length, width: int, dtype: torch.dtype, attn: str = "sdpa"):
    """Attention mask ``[B, 1, W, W]`` and position ids ``[B, W]`` of ``[prompt | chosen |
    rejected]`` rows (:func:`lightning_robust.data.collator.pack_shared_prompts`).

    Each token attends causally, except that rejected-answer tokens do not see the chosen
    answer, and the rejected answer's positions restart at ``P`` (right after the prompt): every
    rejected token then sees exactly the keys, at exactly the positions, it has in its own
    ``[prompt | rejected]`` row, so its hidden states and log-probs are those of the two-row
    computation (to float rounding). Padding keys are masked; every query keeps its own key so
    no softmax row is empty. ``attn="eager"`` gets an additive float mask, ``"sdpa"`` a boolean.
    """
    device = prompt_len.device
    j = torch.arange(width, device=device).unsqueeze(0)
    p, c, n = prompt_len.unsqueeze(1), chosen_end.unsqueeze(1), length.unsqueeze(1)
    rejected = (j >= c) & (j < n)
    chosen = (j >= p) & (j < c)
    positions = torch.where(j >= c, j - (c - p), j)
    q, k = j.unsqueeze(2), j.unsqueeze(1)  # [1, W, 1], [1, 1, W]
    allowed = (k <= q) & (k < n.unsqueeze(2))
    allowed &= ~(rejected.unsqueeze(2) & chosen.unsqueeze(1))
    allowed |= torch.eye(width, dtype=torch.bool, device=device).unsqueeze(0)
    allowed = allowed.unsqueeze(1)
    if attn == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    else:
        mask = allowed
    return mask, positions


def pair_logprobs(
    model,
    pair_ids: torch.Tensor,
    prompt_len: torch.Tensor,
    chosen_end: torch.Tensor,
    length: torch.Tensor,
    fast_head: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs ``[2B]`` (chosen rows first, then rejected; float32) and token
    counts ``[2B]`` from one ``[prompt | chosen | rejected]`` row per pair (:func:`pair_layout`);
    equal to :func:`sequence_logprobs` of the two rows ``[prompt | chosen]`` and
    ``[prompt | rejected]``. The first rejected token is predicted from the last prompt position.
    """
    batch, width = pair_ids.shape
    lm = _causal_lm(model)
    attn = getattr(lm.config, "_attn_implementation", "sdpa")
    dtype = lm.get_input_embeddings().weight.dtype
    mask, positions = pair_layout(prompt_len, chosen_end, length, width, dtype, attn)
    j = torch.arange(width, device=pair_ids.device).unsqueeze(0)
    p, c, n = prompt_len.unsqueeze(1), chosen_end.unsqueeze(1), length.unsqueeze(1)
    scored = (j >= p) & (j < n) & (j >= 1)
    scored &= ~(
        (j == c) & (p == 0)
    )  # a rejected answer without prompt: its first token has no predecessor
    predictor = torch.where(j == c, p - 1, j - 1)
    rows, cols = scored.nonzero(as_tuple=True)
    targets = pair_ids[rows, cols]
    pred = predictor[rows, cols]
    side = (cols >= chosen_end[rows]).long()
    inputs = {"input_ids": pair_ids, "attention_mask": mask, "position_ids": positions}
    if fast_head and _plain_lm_head(lm):
        decoder = getattr(model, "model", None) if model is lm else None
        hidden = (
            decoder(**inputs).last_hidden_state
            if decoder is not None
            else model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
        )
        logits = lm.get_output_embeddings()(hidden[rows, pred])
    else:
        logits = model(**inputs).logits[rows, pred]
    token_logps = logprobs_from_logits(logits, targets).float()
    slot = rows + side * batch
    logps = torch.zeros(2 * batch, dtype=torch.float32, device=pair_ids.device).index_add(
        0, slot, token_logps
    )
    counts = torch.zeros(2 * batch, dtype=torch.long, device=pair_ids.device).index_add(
        0, slot, torch.ones_like(slot)
    )
    return logps, counts


def _sequence_classifier_parts(model):
    """``(decoder, score_head)`` of a decoder-only ``*ForSequenceClassification`` (possibly
    peft-wrapped) whose attention takes a 4-D mask, else ``None``."""
    base = _causal_lm(model)
    decoder, head = getattr(base, "model", None), getattr(base, "score", None)
    config = getattr(base, "config", None)
    if decoder is None or head is None or getattr(config, "is_encoder_decoder", False):
        return None
    if getattr(config, "_attn_implementation", None) not in PAIR_ATTENTION:
        return None
    if not type(base).__name__.endswith("ForSequenceClassification"):
        return None
    return decoder, head


def supports_pair_scores(model) -> bool:
    """Whether :func:`pair_scores` applies (a decoder-only sequence classifier, eager/sdpa)."""
    return _sequence_classifier_parts(model) is not None


def pair_scores(model, pair_ids, prompt_len, chosen_end, length) -> torch.Tensor:
    """Rewards ``[2B]`` (chosen rows first; float32) of a decoder-only sequence classifier from
    one ``[prompt | chosen | rejected]`` row per pair (:func:`pair_layout`): the score head is
    read at each answer's last token (``chosen_end - 1`` and ``length - 1``), the position the
    classifier pools in the two-row computation (its last non-pad token)."""
    decoder, head = _sequence_classifier_parts(model)
    batch, width = pair_ids.shape
    attn = _causal_lm(model).config._attn_implementation
    dtype = head.weight.dtype if hasattr(head, "weight") else torch.float32
    mask, positions = pair_layout(prompt_len, chosen_end, length, width, dtype, attn)
    hidden = decoder(
        input_ids=pair_ids, attention_mask=mask, position_ids=positions
    ).last_hidden_state
    rows = torch.arange(batch, device=pair_ids.device).repeat(2)
    last = torch.cat([chosen_end, length]) - 1
    return head(hidden[rows, last])[:, 0].float()
