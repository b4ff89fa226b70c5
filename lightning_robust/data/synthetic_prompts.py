"""A synthetic prompt task for online RL with a known gold reward and an exploitable proxy.

Made for the tiny tokenizer (:func:`lightning_robust.models.tiny_tokenizer`), whose every word
of :data:`~lightning_robust.models.TINY_WORDS` is one token, so a tiny random-init policy can
learn it on a CPU in a few dozen policy-gradient steps.

**Prompts.** ``"[fillers] please give me a <topic> list"``: ``<topic>`` is one of the names of
:data:`TOPICS` (``cooking``, ``weather``, ``travel``, ``finance``, ``science``, ``music``), the
fillers are 0 to ``max_fillers`` words drawn from :data:`FILLERS`. Every prompt word is a
single tiny-tokenizer token. Each row also has ``group`` = its topic name. Rows are drawn with
``random.Random(f"{seed}:{split}")``, so a split is a pure function of the config.

**Ground truth** (the exact definition; pure Python on words). For a prompt ``x`` and a
response ``y``:

- the prompt's topic is the *last* word of ``x`` (lower-cased, split by the regex ``[a-z]+``;
  for a list of chat messages, the ``content`` fields joined by newlines) that is a topic name;
  its topic words ``T`` are that topic's entry of :data:`TOPICS` (empty when no topic name
  occurs);
- ``W`` = the words of ``y`` (lower-cased, regex ``[a-z]+``), ``n = |W|``;
- ``V`` = the words of ``W`` that are in :data:`TINY_WORDS` (real vocabulary words, in order,
  with repeats), ``repeats = |V| - |set(V)|``;
- ``hits`` = the words of ``V`` in ``T`` (with repeats), ``distinct = |set(hits)|``.

Then (``clip`` to ``[-2, 2]``)::

    gold  = clip(|V| / max(n, 1) - 0.5 + 0.5 * min(distinct, 3) - 0.25 * repeats)
    proxy = clip(-0.5 + 0.1 * |V| + 0.25 * |hits|)

The gold reward asks for real words (share of vocabulary words), up to three *different*
on-topic words, and no repetition. The proxy is what a reward model fitted on typical
early-training samples could learn: it counts real words and on-topic words, so it agrees with
the gold reward while repetitions are rare (Spearman 0.918, Pearson 0.915 on 256 samples,
4 per validation prompt, of a random-init tiny Llama, hidden 64, 12 new tokens;
``tests/test_synthetic_prompts.py``), but it
rewards length and repetition (until the clip): after a cooking prompt, ``"apple tea rice"``
has gold 2.0 and proxy 0.55, ``"fruit"`` six times gold -0.25 and proxy 1.6, ten times gold
-1.25 and proxy 2.0. Optimising the proxy with plain REINFORCE first raises both rewards,
then collapses onto repeated topic words: proxy keeps rising while gold falls below its
starting value (the classic over-optimisation picture). Measured in the tests (tiny Llama,
hidden 64, 2 layers; 8 prompts x 4 samples of 12 tokens per step; Adam 3e-3; baseline = the
prompt's mean reward): 50 steps on gold raise mean gold from -0.03 to 0.48; 100 steps on the
proxy take proxy from -0.17 to 1.12 and gold from -0.03 to -1.29.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_robust.data.synthetic import TINY_WORDS

# topic name -> its on-topic words (all in TINY_WORDS; chosen here)
TOPICS: dict[str, tuple[str, ...]] = {
    "cooking": tuple(
        "water food bread rice soup tea coffee milk fruit apple orange banana lemon grape sugar salt".split()
    ),
    "weather": tuple(
        "hot cold warm cool rain snow wind sun summer winter season morning evening".split()
    ),
    "travel": tuple("city town road street park river lake sea mountain forest map".split()),
    "finance": tuple("money price cost bank store shop market pay buy sell business job".split()),
    "science": tuple(
        "computer data code system network server program software test fact result method".split()
    ),
    "music": tuple("song music red blue green yellow black white bright dark loud quiet".split()),
}
# words that may open a prompt (no topic words among them)
FILLERS: tuple[str, ...] = tuple("hello okay sure now today maybe so and then also".split())
PROMPT_TEMPLATE = "please give me a {topic} list"

_WORD = re.compile(r"[a-z]+")
_VOCAB = frozenset(TINY_WORDS)
_TOPIC_SETS = {name: frozenset(words) for name, words in TOPICS.items()}


@dataclass
class SyntheticPromptConfig:
    """Settings of the synthetic prompt task.

    Args:
        num_train: rows of the ``train`` split.
        num_val: rows of the ``val`` split.
        seed: seed of the rows (each split draws from ``random.Random(f"{seed}:{split}")``).
        max_fillers: each prompt starts with 0..``max_fillers`` words from :data:`FILLERS`.
        topics: topic names to draw from (default: all of :data:`TOPICS`).
    """

    num_train: int = 256
    num_val: int = 64
    seed: int = 0
    max_fillers: int = 2
    topics: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.num_train < 1 or self.num_val < 0:
            raise ValueError(
                f"num_train must be >= 1 and num_val >= 0, got {self.num_train}, {self.num_val}"
            )
        if self.max_fillers < 0:
            raise ValueError(f"max_fillers must be >= 0, got {self.max_fillers}")
        if self.topics is not None:
            self.topics = tuple(self.topics)
            unknown = [t for t in self.topics if t not in TOPICS]
            if unknown or not self.topics:
                raise ValueError(
                    f"topics must be a non-empty subset of {sorted(TOPICS)}, got {list(self.topics)}"
                )


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([SyntheticPromptConfig])


def generate_prompts(split: str, config: SyntheticPromptConfig) -> list[dict]:
    """Rows ``{"prompt": str, "group": topic}`` of ``split`` (``"train"`` or ``"val"``)."""
    sizes = {"train": config.num_train, "val": config.num_val}
    if split not in sizes:
        raise ValueError(f"synthetic prompt split must be 'train' or 'val', got {split!r}")
    rng = random.Random(f"{config.seed}:{split}")
    topics = list(config.topics or TOPICS)
    rows = []
    for _ in range(sizes[split]):
        topic = rng.choice(topics)
        fillers = [rng.choice(FILLERS) for _ in range(rng.randint(0, config.max_fillers))]
        rows.append(
            {"prompt": " ".join([*fillers, PROMPT_TEMPLATE.format(topic=topic)]), "group": topic}
        )
    return rows


# ---------------------------------------------------------------- the ground truth
def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)


def prompt_topic(prompt) -> str | None:
    """The last topic name among the prompt's words, or ``None``."""
    names = [w for w in _WORD.findall(_prompt_text(prompt).lower()) if w in _TOPIC_SETS]
    return names[-1] if names else None


@dataclass(frozen=True)
class ResponseFeatures:
    """The word counts both rewards are made of (module docstring)."""

    num_words: int  # n
    num_vocab: int  # |V|
    repeats: int  # |V| - |set(V)|
    hits: int  # on-topic words, with repeats
    distinct_hits: int  # different on-topic words


def response_features(prompt, response: str) -> ResponseFeatures:
    """Word counts of ``response`` for ``prompt`` (module docstring)."""
    topic = prompt_topic(prompt)
    on_topic = _TOPIC_SETS[topic] if topic is not None else frozenset()
    words = _WORD.findall(response.lower())
    vocab = [w for w in words if w in _VOCAB]
    hits = [w for w in vocab if w in on_topic]
    return ResponseFeatures(
        len(words), len(vocab), len(vocab) - len(set(vocab)), len(hits), len(set(hits))
    )


def _clip(value: float) -> float:
    return max(-2.0, min(2.0, value))


def gold_reward(prompt, response: str) -> float:
    """``clip(|V|/max(n,1) - 0.5 + 0.5*min(distinct, 3) - 0.25*repeats, -2, 2)``."""
    f = response_features(prompt, response)
    return _clip(
        f.num_vocab / max(f.num_words, 1) - 0.5 + 0.5 * min(f.distinct_hits, 3) - 0.25 * f.repeats
    )


def proxy_reward(prompt, response: str) -> float:
    """``clip(-0.5 + 0.1*|V| + 0.25*|hits|, -2, 2)``."""
    f = response_features(prompt, response)
    return _clip(-0.5 + 0.1 * f.num_vocab + 0.25 * f.hits)


class _SyntheticScorer:
    """``score(prompts, responses) -> Tensor[n]`` float32 from a per-pair function."""

    name = ""

    @staticmethod
    def reward(prompt, response: str) -> float:
        raise NotImplementedError

    def score(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        """One float32 reward per (prompt, response) (a CPU tensor)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return torch.tensor(
            [self.reward(p, r) for p, r in zip(prompts, responses, strict=True)],
            dtype=torch.float32,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SyntheticGoldReward(_SyntheticScorer):
    """The synthetic task's gold reward (:func:`gold_reward`)."""

    name = "gold"
    reward = staticmethod(gold_reward)


class SyntheticProxyReward(_SyntheticScorer):
    """The synthetic task's exploitable proxy reward (:func:`proxy_reward`)."""

    name = "proxy"
    reward = staticmethod(proxy_reward)
