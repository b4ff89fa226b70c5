"""Where our SmolLM2-135M DPO step goes, and what bounds its ratio to TRL's (issue 14).

    OMP_NUM_THREADS=1 python benchmarks/smollm2_profile.py [--steps 5]

One process, 1 thread, the first batch of ``benchmarks/dpo_vs_trl.py --smollm2`` (batch 2, 64
prompt + 64 answer tokens per side, fp32). The phases of our default step are timed by process
CPU time with the same functions the DPO module calls (reference and policy log-probs of the
prompt-shared rows, the DPO loss and its backward, the gradient norm and clipping, the AdamW
step, fused and foreach), median over ``--steps`` steps after one warm-up step.

Then a multiply-accumulate count of the step of each trainer from the model config: the decoder
(projections, MLP, causal attention) over the tokens it runs, the LM head over the rows it scores,
times the passes (forward = 1, backward = 2, recomputation = 1):

* ours: one ``[prompt | chosen | rejected]`` row per pair (192 tokens), the LM head on answer
  positions only; reference forward, policy forward and backward: 4 passes of each.
* TRL 1.16 default on CPU: two rows per pair (2 x 128 tokens), the fused LM head on every
  position (``add_fused_lm_head`` scores only the labelled positions on Triton devices, every
  position elsewhere), gradient checkpointing on by default (``DPOConfig``): reference
  forward, policy forward, recomputation and backward: 5 passes of the decoder and of the head
  (its backward recomputes each logits tile).

The bound: if both trainers ran their multiply-accumulates at the same rate, TRL's step would take
``MAC_TRL / MAC_ours`` times our compute time, plus the same optimiser step, so our ratio is at
most ``(c * r + o) / (c + o)`` with ``c`` our measured compute, ``o`` the optimiser (+ clipping)
time and ``r`` the MAC ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def macs(config, tokens_per_row: list[int], head_rows: int) -> tuple[float, float]:
    """(decoder, LM head) multiply-accumulates of one forward pass."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    kv = h // heads * kv_heads
    per_token = layers * (2 * h * h + 2 * h * kv + 3 * h * i)
    # causal attention: scores and weighted values, 2 * h per (query, earlier key) per layer
    attention = sum(layers * h * t * (t + 1) for t in tokens_per_row)
    return per_token * sum(tokens_per_row) + attention, head_rows * h * config.vocab_size


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from dpo_vs_trl import anchor_rows

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.collator import pack_shared_prompts
    from lightning_robust.models.causal_lm import load_causal_lm
    from lightning_robust.models.loading import load_causal_tokenizer
    from lightning_robust.models.logprobs import pair_logprobs
    from lightning_robust.objectives.dpo import preference_losses

    tokenizer = load_causal_tokenizer("smollm2")
    model = load_causal_lm("smollm2", tokenizer)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"smollm2_profile_{os.getpid()}.jsonl")
    with open(path, "w") as f:
        for row in anchor_rows(2):
            f.write(json.dumps(row) + "\n")
    dm = PreferenceDataModule(
        train={"path": path},
        tokenizer="smollm2",
        chat_template=False,
        batch_size=2,
        max_length=1024,
        append_eos=True,
        val_fraction=0.0,
        shuffle=False,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    os.remove(path)
    packed = pack_shared_prompts(batch)
    plen = batch["chosen_prompt_len"]
    args = (packed["pair_input_ids"], plen, packed["pair_chosen_end"], packed["pair_length"])
    params = [q for q in model.parameters() if q.requires_grad]
    optimizers = {
        "AdamW step, fused (our default)": torch.optim.AdamW(params, lr=1e-5, fused=True),
        "AdamW step, foreach (before)": torch.optim.AdamW(params, lr=1e-5, foreach=True),
    }
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.process_time()
        out = fn()
        times.setdefault(name, []).append(time.process_time() - start)
        return out

    for _ in range(a.steps + 1):
        with torch.no_grad():
            ref = timed("reference forward (pair rows)", lambda: pair_logprobs(reference, *args)[0])
        policy = timed("policy forward (pair rows)", lambda: pair_logprobs(model, *args)[0])

        def backward(policy=policy, ref=ref):
            pc, pr = policy.chunk(2)
            rc, rr = ref.chunk(2)
            preference_losses("dpo", pc - rc - (pr - rr), 0.1).mean().backward()

        timed("DPO loss + backward", backward)
        timed("gradient norm + clipping", lambda: torch.nn.utils.clip_grad_norm_(params, 1.0))
        for name, optimizer in optimizers.items():
            timed(name, optimizer.step)
        model.zero_grad(set_to_none=True)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    compute = sum(v for k, v in med.items() if not k.startswith(("AdamW", "gradient")))
    other = med["gradient norm + clipping"] + med["AdamW step, fused (our default)"]
    total = compute + other
    print(
        f"SmolLM2-135M DPO step, ours (batch 2, 64+64 tokens per side, fp32, 1 thread, CPU-seconds, "
        f"median of {a.steps} steps; machine shared, load {os.getloadavg()[0]:.1f})"
    )
    for name, value in med.items():
        share = f"{value / total:6.1%}" if "foreach" not in name else "  (not in the step)"
        print(f"  {name:40s} {value:7.3f} s {share}")
    print(f"  {'step (fused AdamW)':40s} {total:7.3f} s")
    config = model.config
    b, p_len = plen.shape[0], int(plen[0])
    lc = batch["chosen_attention_mask"].sum(1).tolist()
    lr = batch["rejected_attention_mask"].sum(1).tolist()
    ours_tokens = [int(x) for x in packed["pair_length"].tolist()]
    ours_rows = sum(c - p_len for c in lc) + sum(r - p_len for r in lr)
    trl_tokens = [int(x) for x in lc + lr]
    trl_rows = sum(t - 1 for t in trl_tokens)
    ours_dec, ours_head = macs(config, ours_tokens, ours_rows)
    trl_dec, trl_head = macs(config, trl_tokens, trl_rows)
    ours_step = 4 * (ours_dec + ours_head)
    trl_step = 5 * (trl_dec + trl_head)
    ratio = trl_step / ours_step
    print(
        f"multiply-accumulates per step: ours {ours_step / 1e9:.1f} G ({b} rows of {ours_tokens} tokens, "
        f"LM head on {ours_rows} rows, 4 passes); TRL default on CPU {trl_step / 1e9:.1f} G "
        f"({len(trl_tokens)} rows of {trl_tokens[0]} tokens, LM head on {trl_rows} rows, 5 passes with "
        f"gradient checkpointing); ratio {ratio:.2f}"
    )
    trl_no_ckpt = 4 * (trl_dec + trl_head)
    print(
        f"  TRL without gradient checkpointing: {trl_no_ckpt / 1e9:.1f} G, ratio {trl_no_ckpt / ours_step:.2f}"
    )
    bound = (compute * ratio + other) / total
    print(
        f"bound on ours vs TRL default at equal multiply-accumulate throughput, the optimiser step "
        f"({other:.3f} s with clipping) paid alike: ({compute:.3f} x {ratio:.2f} + {other:.3f}) / "
        f"{total:.3f} = {bound:.2f}x"
    )


if __name__ == "__main__":
    main()
