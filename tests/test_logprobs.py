"""Response log-probs: the fast head path equals a direct per-token sum, with and without LoRA."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from lightning_robust.models import tiny_llama_config, tiny_tokenizer
from lightning_robust.models.logprobs import response_mask, sequence_logprobs


def _model_and_batch():
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)).double()
    ids = torch.randint(4, len(tok), (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = tok.pad_token_id
    return model, ids, mask, torch.tensor([3, 2, 5])


def _direct(model, ids, mask, prompt_len):
    logps = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    out = []
    for b in range(ids.shape[0]):
        total = sum(
            logps[b, t - 1, ids[b, t]].item()
            for t in range(int(prompt_len[b]), ids.shape[1])
            if mask[b, t]
        )
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_fast_and_full_head_equal_the_direct_sum():
    model, ids, mask, prompt_len = _model_and_batch()
    expected = _direct(model, ids, mask, prompt_len)
    fast, counts = sequence_logprobs(model, ids, mask, prompt_len)
    full, _ = sequence_logprobs(model, ids, mask, prompt_len, fast_head=False)
    torch.testing.assert_close(fast.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(full.double(), expected, rtol=0, atol=1e-5)
    assert counts.tolist() == [7, 5, 5]  # response tokens only, padding excluded
    assert response_mask(mask, prompt_len).sum().item() == 17


def test_peft_wrapped_model_and_inputs_embeds():
    from peft import LoraConfig, get_peft_model

    model, ids, mask, prompt_len = _model_and_batch()
    embeds = model.get_input_embeddings()(ids)
    by_embeds, _ = sequence_logprobs(model, ids, mask, prompt_len, inputs_embeds=embeds)
    expected = _direct(model, ids, mask, prompt_len)
    torch.testing.assert_close(by_embeds.double(), expected, rtol=0, atol=1e-5)
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    with_adapter, _ = sequence_logprobs(wrapped, ids, mask, prompt_len)
    assert not torch.allclose(with_adapter.double(), expected, atol=1e-4)  # adapters are applied
    with wrapped.disable_adapter():
        without, _ = sequence_logprobs(wrapped, ids, mask, prompt_len)
    torch.testing.assert_close(without.double(), expected, rtol=0, atol=1e-5)


def test_chunked_logsoftmax_gather_equals_the_plain_path_values_and_gradients():
    """The row-chunked kernel with its direct backward against ``log_softmax(z).gather`` (float64),
    for chunk sizes that do and do not divide N, first and second derivatives."""
    from lightning_robust.models.logsoftmax_gather import logsoftmax_gather

    torch.manual_seed(0)
    z = torch.randn(37, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    g = torch.randn(37, dtype=torch.float64)
    plain = torch.log_softmax(z, -1).gather(-1, targets[:, None])[:, 0]
    (expected_grad,) = torch.autograd.grad(plain, z, g)
    for chunk in (None, 1, 8, 37, 100):
        got = logsoftmax_gather(z, targets, chunk_rows=chunk)
        torch.testing.assert_close(got, plain, rtol=0, atol=1e-12)
        (grad,) = torch.autograd.grad(got, z, g)
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)

    # second derivatives (WDPO's double backward): against the plain path's
    def hvp(fn):
        (first,) = torch.autograd.grad(fn(z), z, g, create_graph=True)
        return torch.autograd.grad(first.pow(2).sum(), z)[0]

    torch.testing.assert_close(
        hvp(lambda x: logsoftmax_gather(x, targets, chunk_rows=8)),
        hvp(lambda x: torch.log_softmax(x, -1).gather(-1, targets[:, None])[:, 0]),
        rtol=0,
        atol=1e-12,
    )
    small = z.detach()[:6, :7].clone().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x: logsoftmax_gather(x, targets[:6] % 7, 4), (small,)
    )
    # low precision: float32 results and a gradient in the logits' dtype
    zb = z.detach().bfloat16().requires_grad_()
    out = logsoftmax_gather(zb, targets, chunk_rows=8)
    assert out.dtype == torch.float32
    ref = torch.log_softmax(zb.float(), -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    out.sum().backward()
    assert zb.grad.dtype == torch.bfloat16


def _pair_batch(shapes=((3, 5, 2), (0, 4, 6), (6, 1, 1), (2, 7, 7))):
    from lightning_robust.data.collator import PreferenceCollator

    tok = tiny_tokenizer()
    gen = torch.Generator().manual_seed(0)

    def draw(k):
        return torch.randint(4, len(tok), (k,), generator=gen).tolist()

    feats = []
    for i, (p, c, r) in enumerate(shapes):
        prompt = draw(p)
        feats.append(
            {
                "chosen_input_ids": prompt + draw(c),
                "rejected_input_ids": prompt + draw(r),
                "chosen_prompt_len": p,
                "rejected_prompt_len": p,
                "group": -1,
                "index": i,
            }
        )
    return PreferenceCollator(tok.pad_token_id)(feats)


def test_prompt_shared_pair_rows_equal_the_two_row_computation():
    """One [prompt | chosen | rejected] row per pair (4-D mask, restarted positions) gives the
    log-probs and gradients of the two rows, for eager and sdpa attention (float64)."""
    from lightning_robust.data.collator import pack_shared_prompts
    from lightning_robust.models.logprobs import pair_logprobs

    batch = _pair_batch()
    packed = pack_shared_prompts(batch)
    assert packed["pair_chosen_end"].tolist() == [8, 4, 7, 9]
    assert packed["pair_length"].tolist() == [10, 10, 8, 16]
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
    plen = torch.cat([batch["chosen_prompt_len"], batch["rejected_prompt_len"]])
    tok = tiny_tokenizer()
    for attn in ("eager", "sdpa"):
        config = tiny_llama_config(len(tok), tok.pad_token_id)
        config._attn_implementation = attn
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).double()
        two, two_counts = sequence_logprobs(model, ids, mask, plen)
        (g_two,) = torch.autograd.grad(
            two.sum() + two[0], model.model.layers[0].self_attn.q_proj.weight
        )
        one, one_counts = pair_logprobs(
            model,
            packed["pair_input_ids"],
            batch["chosen_prompt_len"],
            packed["pair_chosen_end"],
            packed["pair_length"],
        )
        (g_one,) = torch.autograd.grad(
            one.sum() + one[0], model.model.layers[0].self_attn.q_proj.weight
        )
        assert one_counts.tolist() == two_counts.tolist() == [5, 3, 1, 7, 2, 5, 1, 7]
        torch.testing.assert_close(one, two, rtol=0, atol=1e-5)
        torch.testing.assert_close(g_one, g_two, rtol=1e-4, atol=1e-7)  # float32 sums
        full, _ = pair_logprobs(
            model,
            packed["pair_input_ids"],
            batch["chosen_prompt_len"],
            packed["pair_chosen_end"],
            packed["pair_length"],
            fast_head=False,
        )
        torch.testing.assert_close(full, two, rtol=0, atol=1e-5)


def test_pairs_with_different_prompts_are_not_packed():
    from lightning_robust.data.collator import pack_shared_prompts

    batch = _pair_batch()
    batch["rejected_input_ids"][0, 1] += 1  # a prompt token differs
    assert pack_shared_prompts(batch) is None
    batch = _pair_batch()
    batch["rejected_prompt_len"][2] -= 1
    assert pack_shared_prompts(batch) is None
