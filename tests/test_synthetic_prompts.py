"""The synthetic prompt task: exact rewards, proxy/gold agreement and exploitability, learnability."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from lightning_robust.data import PromptDataModule, SyntheticPromptConfig
from lightning_robust.data.synthetic_prompts import (
    TOPICS,
    SyntheticGoldReward,
    SyntheticProxyReward,
    generate_prompts,
    gold_reward,
    prompt_topic,
    proxy_reward,
    response_features,
)
from lightning_robust.models import TINY_WORDS, tiny_llama_config
from lightning_robust.models.rollout import generate_rollouts, token_logprobs

COOKING = "hello please give me a cooking list"


def test_rewards_follow_the_documented_formulas_on_hand_computed_cases():
    # "apple tea rice": n=3, |V|=3, no repeats, 3 distinct hits
    assert gold_reward(COOKING, "apple tea rice") == pytest.approx(1 - 0.5 + 1.5)
    assert proxy_reward(COOKING, "apple tea rice") == pytest.approx(-0.5 + 0.3 + 0.75)
    # garbage pieces are words but not vocabulary words: n=3, |V|=1 ("definitely")
    assert gold_reward(COOKING, " lt sevenry definitely") == pytest.approx(1 / 3 - 0.5)
    assert proxy_reward(COOKING, " lt sevenry definitely") == pytest.approx(-0.5 + 0.1)
    # off-topic vocabulary words count for |V| but not as hits; repeats are penalised
    f = response_features(COOKING, "dog dog apple, Apple")
    assert (f.num_words, f.num_vocab, f.repeats, f.hits, f.distinct_hits) == (4, 4, 2, 2, 1)
    assert gold_reward(COOKING, "dog dog apple, Apple") == pytest.approx(1 - 0.5 + 0.5 - 0.5)
    # at most three distinct topic words count for gold; both are clipped to [-2, 2]
    assert gold_reward(COOKING, "apple tea rice milk soup") == pytest.approx(2.0)
    assert proxy_reward(COOKING, " ".join(["fruit"] * 20)) == 2.0
    assert gold_reward(COOKING, " ".join(["fruit"] * 20)) == -2.0
    # empty response: n = 0
    assert gold_reward(COOKING, "") == pytest.approx(-0.5)
    assert proxy_reward(COOKING, "") == pytest.approx(-0.5)


def test_topic_is_the_last_topic_name_of_the_prompt_text_or_messages():
    assert prompt_topic("please give me a music list") == "music"
    assert prompt_topic("cooking or weather ? weather it is") == "weather"
    assert prompt_topic([{"role": "user", "content": "a travel list"}]) == "travel"
    assert prompt_topic("no topic here") is None
    # no topic: nothing is on topic
    assert gold_reward("no topic here", "apple tea") == pytest.approx(1 - 0.5)
    # a message-list prompt scores like its text
    msgs = [{"role": "user", "content": COOKING}]
    assert gold_reward(msgs, "apple tea") == gold_reward(COOKING, "apple tea")


def test_all_task_words_are_single_tiny_tokens_in_the_vocabulary():
    words = {w for ws in TOPICS.values() for w in ws} | set(TOPICS)
    assert words <= set(TINY_WORDS)


def test_scorers_return_float32_and_check_lengths():
    prompts, responses = [COOKING, COOKING], ["apple tea rice", "fruit fruit"]
    gold = SyntheticGoldReward().score(prompts, responses)
    proxy = SyntheticProxyReward().score(prompts, responses)
    assert gold.dtype == proxy.dtype == torch.float32 and gold.shape == (2,)
    torch.testing.assert_close(
        gold, torch.tensor([gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)])
    )
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        SyntheticGoldReward().score(prompts, responses[:1])


def test_repeating_a_topic_word_keeps_raising_the_proxy_while_gold_falls():
    gold = [gold_reward(COOKING, " ".join(["fruit"] * k)) for k in range(1, 8)]
    proxy = [proxy_reward(COOKING, " ".join(["fruit"] * k)) for k in range(1, 8)]
    assert all(b > a for a, b in pairwise(proxy))
    assert all(b < a for a, b in pairwise(gold))
    # and the proxy prefers the degenerate answer to the best one, the gold reward the reverse
    best, hacked = "apple tea rice", " ".join(["fruit"] * 6)
    assert proxy_reward(COOKING, hacked) > proxy_reward(COOKING, best)
    assert gold_reward(COOKING, hacked) < gold_reward(COOKING, best)


def test_prompts_are_deterministic_given_the_seed():
    cfg = SyntheticPromptConfig(num_train=50, num_val=10, seed=3)
    assert generate_prompts("train", cfg) == generate_prompts("train", cfg)
    assert generate_prompts("train", cfg) != generate_prompts(
        "train", SyntheticPromptConfig(num_train=50, seed=4)
    )
    assert generate_prompts("train", cfg) != generate_prompts(
        "val", SyntheticPromptConfig(num_train=50, num_val=50, seed=3)
    )
    rows = generate_prompts("train", cfg)
    assert all(prompt_topic(r["prompt"]) == r["group"] for r in rows)
    with pytest.raises(ValueError, match="split"):
        generate_prompts("test", cfg)
    with pytest.raises(ValueError, match="topics"):
        SyntheticPromptConfig(topics=("nope",))


# ---------------------------------------------------------------- with a tiny policy
@pytest.fixture
def one_thread():
    """One intra-op thread for the duration of a test (restored after): tiny models gain
    nothing from more, and on a shared CPU they lose a lot to oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _policy(seed: int = 0):
    from transformers import LlamaForCausalLM

    dm = PromptDataModule(
        batch_size=8, synthetic=SyntheticPromptConfig(num_train=64, num_val=64, seed=seed)
    )
    dm.setup("fit")
    tok = dm.tokenizer
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id))
    return dm, tok, model


def _sample(model, tok, batch, generations=4, new_tokens=12):
    rollout = generate_rollouts(
        model,
        batch["prompt_input_ids"],
        batch["prompt_attention_mask"],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        num_generations=generations,
        max_new_tokens=new_tokens,
    )
    texts = tok.batch_decode(rollout.response_ids, skip_special_tokens=True)
    prompts = [batch["prompts"][i] for i in rollout.prompt_index.tolist()]
    return rollout, prompts, texts


def _evaluate(model, tok, dm, seed=123):
    """Mean gold and proxy rewards of 4 samples for each validation prompt."""
    torch.manual_seed(seed)
    gold, proxy = [], []
    for batch in dm.val_dataloader():
        _, prompts, texts = _sample(model, tok, batch)
        gold.append(SyntheticGoldReward().score(prompts, texts))
        proxy.append(SyntheticProxyReward().score(prompts, texts))
    return torch.cat(gold), torch.cat(proxy)


def _reinforce(model, tok, dm, scorer, steps, lr=3e-3, seed=0):
    """Plain REINFORCE with a per-prompt mean baseline (GRPO-style, no std scaling, no KL)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    done = 0
    while done < steps:
        for batch in dm.train_dataloader():
            rollout, prompts, texts = _sample(model, tok, batch)
            rewards = scorer.score(prompts, texts).view(-1, 4)
            advantages = (rewards - rewards.mean(1, keepdim=True)).view(-1)
            loss = -(advantages * token_logprobs(model, rollout).sum(-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break


def test_proxy_agrees_with_gold_on_initial_policy_samples(one_thread):
    dm, tok, model = _policy()
    gold, proxy = _evaluate(model, tok, dm)
    assert gold.numel() == 256
    rho = spearmanr(gold.numpy(), proxy.numpy()).statistic
    r = pearsonr(gold.numpy(), proxy.numpy()).statistic
    print(f"initial-policy samples: Spearman {rho:.3f}, Pearson {r:.3f}")
    assert rho > 0.7 and r > 0.7


def test_reinforce_on_gold_raises_gold_within_50_steps(one_thread):
    dm, tok, model = _policy()
    before, _ = _evaluate(model, tok, dm)
    _reinforce(model, tok, dm, SyntheticGoldReward(), steps=50)
    after, _ = _evaluate(model, tok, dm)
    print(f"gold before {before.mean():.3f} after {after.mean():.3f}")
    assert after.mean() > before.mean() + 0.25


@pytest.mark.slow
def test_optimising_the_proxy_longer_raises_proxy_while_gold_falls(one_thread):
    dm, tok, model = _policy()
    gold0, proxy0 = _evaluate(model, tok, dm)
    _reinforce(model, tok, dm, SyntheticProxyReward(), steps=100)
    gold1, proxy1 = _evaluate(model, tok, dm)
    print(
        f"proxy {proxy0.mean():.3f} -> {proxy1.mean():.3f}; gold {gold0.mean():.3f} -> {gold1.mean():.3f}"
    )
    assert proxy1.mean() > proxy0.mean() + 0.5
    assert gold1.mean() < gold0.mean()
