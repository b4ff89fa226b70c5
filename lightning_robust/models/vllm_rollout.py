"""Rollouts with vLLM (``rollout_backend="vllm"`` of the online RL modules) -- UNTESTED.

**Status: untested.** No GPU (and no vLLM install) was available when this was written; the
code follows vLLM's documented offline API (``LLM``, ``SamplingParams``, token-id prompts) but
has never run. The Hugging Face backend (:mod:`lightning_robust.models.rollout`) is the tested
default. vLLM is imported lazily, so the package and its tests never need it.

The engine samples completions from token-id prompts and returns the same :class:`Rollout`
layout as the Hugging Face backend (left-padded prompts, response from column ``P``, padding
after the first EOS). The policy's log-probs are then recomputed by the trainer
(``old_logprobs: recompute``, ALGORITHMS.md §8.5b). After every optimiser phase the module
calls :meth:`VLLMRolloutEngine.push_weights` with the policy (LoRA merged into a copy of the
weights first), so the next rollout samples the updated policy.
"""

from __future__ import annotations

import torch

from lightning_robust.models.lora import is_peft_model
from lightning_robust.models.rollout import Rollout, first_eos_mask

MISSING_VLLM = (
    "rollout_backend='vllm' needs vLLM: install the extra with `pip install \"lightning-robust[vllm]\"` "
    "(GPU only), or use rollout_backend='hf'"
)


def import_vllm():
    """The ``vllm`` module, or an ImportError naming the extra."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(MISSING_VLLM) from err
    return vllm


class VLLMRolloutEngine:
    """A vLLM ``LLM`` that samples rollouts for the trainer (untested; see the module docstring).

    Args:
        model_name_or_path: the policy's initial weights (hub id or directory) for the engine.
        dtype: engine dtype (``"bfloat16"``).
        gpu_memory_utilization: share of the GPU the engine may take (the trainer shares it).
        seed: the engine's sampling seed.
        max_model_len: engine context length (``None``: the model's).
    """

    def __init__(
        self,
        model_name_or_path: str,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        seed: int = 0,
        max_model_len: int | None = None,
    ):
        vllm = import_vllm()
        self._vllm = vllm
        kwargs = {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization, "seed": seed}
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(model=model_name_or_path, **kwargs)

    def generate(
        self,
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
        """Sample like :func:`lightning_robust.models.rollout.generate_rollouts` (same layout)."""
        params = self._vllm.SamplingParams(
            n=num_generations,
            temperature=temperature if do_sample else 0.0,
            top_p=top_p if do_sample else 1.0,
            top_k=top_k if (do_sample and top_k > 0) else -1,
            max_tokens=max_new_tokens,
        )
        prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()}
            for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu(), strict=True)
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        responses = [list(c.token_ids) for out in outputs for c in out.outputs]
        width = max((len(r) for r in responses), default=1) or 1
        response = torch.full((len(responses), width), pad_token_id, dtype=torch.long)
        for i, tokens in enumerate(responses):
            response[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        response = response.to(prompt_ids.device)
        mask, has_eos = first_eos_mask(response, eos_token_id)
        response = response.masked_fill(~mask, pad_token_id)
        prompt_index = torch.arange(
            prompt_ids.shape[0], device=prompt_ids.device
        ).repeat_interleave(num_generations)
        return Rollout(
            input_ids=torch.cat([prompt_ids[prompt_index], response], dim=1),
            attention_mask=torch.cat([prompt_mask[prompt_index], mask.long()], dim=1),
            prompt_width=prompt_ids.shape[1],
            response_mask=mask,
            has_eos=has_eos,
            prompt_index=prompt_index,
        )

    @torch.no_grad()
    def push_weights(self, policy) -> None:
        """Load the policy's current weights into the engine (LoRA merged, adapters kept)."""
        merged = is_peft_model(policy)
        if merged:
            policy.merge_adapter()
        try:
            model = policy.get_base_model() if merged else policy
            weights = [
                (name.replace("base_layer.", ""), tensor)
                for name, tensor in model.state_dict().items()
                if "lora_" not in name
            ]
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(weights)
        finally:
            if merged:
                policy.unmerge_adapter()
