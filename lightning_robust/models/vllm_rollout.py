"""Rollouts with vLLM (``rollout_backend="vllm"`` of the online RL modules) -- EXPERIMENTAL.

**Status: experimental.** No GPU (and no vLLM install) has been available to this project, so
this backend has never run against a real vLLM; it follows vLLM's documented offline API
(``LLM``, ``SamplingParams``, token-id prompts) and is tested only against a stand-in of that API.
The Hugging Face backend (:mod:`lightning_robust.models.rollout`) is the tested default.
Constructing the engine logs a warning saying so. vLLM is imported lazily, so the package and its
tests never need it.

Weight push (:meth:`VLLMRolloutEngine.push_weights`): current vLLM (the V1 engine) no longer
exposes ``llm.llm_engine.model_executor.driver_worker.model_runner.model``; the model lives in
the engine's worker and is reached with ``LLM.apply_model(fn)``, which runs ``fn(model)`` in
every worker (``model.load_weights(weights)`` here). The engine is created with
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (unless the environment sets it) so the worker runs in this
process and the weights are handed over without serialisation, as colocated trainers do. Older
releases without ``apply_model`` fall back to the V0 attribute path; when neither exists the
push fails with an error naming the vLLM version instead of training on stale weights.

The engine samples completions from token-id prompts and returns the same :class:`Rollout`
layout as the Hugging Face backend (left-padded prompts, response from column ``P``, padding
after the first EOS). The policy's log-probs are then recomputed by the trainer
(``old_logprobs: recompute``, docs/ALGORITHMS.md §8.5b). After every optimiser phase the module
calls :meth:`VLLMRolloutEngine.push_weights` with the policy (LoRA merged into a copy of the
weights first), so the next rollout samples the updated policy.
"""

from __future__ import annotations

import logging
import os

import torch

from lightning_robust.models.lora import is_peft_model
from lightning_robust.models.rollout import Rollout, first_eos_mask

log = logging.getLogger(__name__)

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
    """A vLLM ``LLM`` that samples rollouts for the trainer (experimental; see the module docstring).

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
        # the worker in this process: apply_model then hands tensors over without pickling them
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = import_vllm()
        log.warning(
            "rollout_backend='vllm' is experimental: it has not run on a GPU in this project "
            "(vLLM %s); compare a few rollouts with rollout_backend='hf' first",
            getattr(vllm, "__version__", "?"),
        )
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
        # a completion shorter than the longest one ends there even without an EOS (a stop
        # condition of the engine): its padding is not response
        lengths = torch.tensor([len(r) for r in responses], device=response.device)
        mask &= torch.arange(width, device=response.device) < lengths[:, None]
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
            weights = policy_weights(model)
            load_weights_into_engine(self.llm, weights, getattr(self._vllm, "__version__", "?"))
        finally:
            if merged:
                policy.unmerge_adapter()


def policy_weights(model) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of a (LoRA-merged) Hugging Face policy as vLLM's ``load_weights`` takes
    them: PEFT's ``base_layer.`` infix dropped, the adapters' own tensors left out."""
    return [
        (name.replace("base_layer.", ""), tensor)
        for name, tensor in model.state_dict().items()
        if "lora_" not in name
    ]


def load_weights_into_engine(
    llm, weights: list[tuple[str, torch.Tensor]], version: str = "?"
) -> None:
    """``model.load_weights(weights)`` on the model inside a vLLM ``LLM`` (module docstring):
    ``LLM.apply_model`` (current vLLM), else the V0 attribute path, else a clear error."""
    apply_model = getattr(llm, "apply_model", None)
    if callable(apply_model):
        apply_model(lambda model: model.load_weights(weights))
        return
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    runner = getattr(worker, "model_runner", None) or getattr(
        getattr(worker, "worker", None), "model_runner", None
    )
    model = getattr(runner, "model", None)
    if model is None or not callable(getattr(model, "load_weights", None)):
        raise RuntimeError(
            f"cannot push the policy's weights into vLLM {version}: it has neither LLM.apply_model "
            "nor llm_engine.model_executor.driver_worker.model_runner.model (the vLLM backend is "
            "experimental); use rollout_backend='hf'"
        )
    model.load_weights(weights)
