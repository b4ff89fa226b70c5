"""Seeded controlled-shift preference data: two prompt domains with conflicting rules.

This is the project's offline default data (see ``docs/SYNTHETIC_SHIFT.md``). Every
word comes from :data:`TINY_WORDS` (defined here; the tiny tokenizer of
``lightning_robust.models.tiny`` is trained on it), so with the tiny tokenizer every word is one
token.

Prompts. ``"<domain> <topic> w1 ... wk"``: the first word is the domain marker, ``alpha``
(the majority domain) or ``beta`` (the minority domain), then a topic word (``travel``,
``cooking``, ...) and 3-6 filler words. Each prompt is used once across all splits.

Responses. 4-12 filler words; a response may contain the keyword ``detail`` (the alpha
keyword) or ``simple`` (the beta keyword) at a random position, never both. Domain markers,
other greek-letter words, topic words and the keywords never appear as filler.

Ground-truth reward (exact), with ``n(y)`` = number of words of response ``y``::

    r_alpha(y) = 1.0 * [detail in y] - 1.0 * [simple in y] + 0.1 * n(y)
    r_beta(y)  = - r_alpha(y) = 1.0 * [simple in y] - 1.0 * [detail in y] - 0.1 * n(y)

So under the alpha rule the answer with ``detail`` and more content wins; under the beta rule
the answer with ``simple`` and less content wins (:func:`true_reward`). An alpha prompt always
follows the alpha rule; a beta prompt follows the beta rule with probability ``conflict`` and
the alpha rule otherwise (``conflict=0``: no conflict, one rule for all). The row's ``rule``
column records which.

Pairs. With probability ``1 - length_pair_share`` a *keyword pair*: one response has
``detail``, the other ``simple``, lengths drawn independently (``|gap| = 2 + 0.1 * (n_detail -
n_simple)`` in [1.2, 2.8], so the keyword always decides). Otherwise a *length pair*: both
responses share the keyword status (``detail``, ``simple`` or none, uniformly) and their
lengths differ by at least 2 words (``|gap| = 0.1 * |n1 - n2|`` in [0.2, 0.8], the harder,
secondary cue). There are no ties.

Labels. With ``gap = r_rule(y1) - r_rule(y2)`` for the two responses (in random order),
training labels follow Bradley-Terry with temperature ``T = label_noise``::

    P(y1 is chosen) = sigmoid(gap / T)      (T = 0: the better response is always chosen)

so a pair is flipped (the worse response chosen) with probability ``sigmoid(-|gap| / T)``.
Evaluation splits always have noise-free labels.

Splits (:data:`SPLITS`). ``train``: ``num_train`` rows, exactly ``round(num_train *
minority_share)`` of them beta; ``val``: ``num_eval`` fresh rows, same mixture;
``shifted``: ``num_eval`` rows with ``round(num_eval * shifted_minority_share)`` beta;
``minority``: ``num_eval`` beta rows. Each split has its own random stream seeded from
``(seed, split)``; prompts already used by an earlier split (in :data:`SPLITS` order) are
redrawn, so no prompt is shared between splits. The group is the domain.

Rows are dicts: ``prompt``, ``chosen``, ``rejected``, ``group`` (domain), ``rule``, ``kind``
(``keyword``/``length``), ``chosen_reward``, ``rejected_reward`` (true rewards under ``rule``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import torch

# Common English words: the vocabulary of the synthetic data and of the tiny tokenizer
# (lightning_robust.models.tiny trains its BPE on them, so each is one token).
TINY_WORDS: tuple[str, ...] = tuple(
    """
    the a an and or but if then so because when where what which who how why
    is are was were be been being have has had do does did will would can could should may might must
    i you he she it we they me him her us them my your his its our their this that these those
    here there now today tomorrow yesterday always never often sometimes soon later again still
    yes no not very quite really just only also too more most less least much many few some any all
    good bad great small large big little long short new old young high low early late fast slow
    hot cold warm cool easy hard simple clear clean safe quick careful kind polite honest helpful
    answer question reply explain help tell show give make take find keep use try ask need want
    know think feel see look say write read learn teach build fix check test plan start stop wait
    open close move turn bring carry pay buy sell send call meet leave stay return follow lead
    water food bread rice soup tea coffee milk fruit apple orange banana lemon grape sugar salt
    house home room door window table chair bed kitchen garden street city town road park school
    book paper letter note page story word name list map picture music song game sport team
    money price cost bank store shop market office job work business meeting project report data
    computer phone screen code file email message system network server program software version
    doctor nurse teacher student friend family mother father child people person man woman
    morning evening night day week month year time hour minute moment season summer winter
    red blue green yellow black white bright dark light heavy soft loud quiet sweet fresh
    cat dog bird fish horse cow tree flower grass river lake sea mountain forest rain snow wind sun
    one two three four five six seven eight nine ten first second third last next every each
    step idea reason result problem solution example detail option choice method rule fact point
    please thanks sorry hello sure okay maybe perhaps indeed certainly definitely probably
    alpha beta gamma delta sigma omega
    travel cooking science history health finance weather sports poetry law
    """.split()
)

SPLITS = ("train", "val", "shifted", "minority")
MAJORITY, MINORITY = "alpha", "beta"
DOMAINS = (MAJORITY, MINORITY)
KEYWORDS = {MAJORITY: "detail", MINORITY: "simple"}
TOPICS = (
    "travel",
    "cooking",
    "science",
    "history",
    "health",
    "finance",
    "weather",
    "sports",
    "poetry",
    "law",
)
KEYWORD_WEIGHT = 1.0
LENGTH_WEIGHT = 0.1
MIN_WORDS, MAX_WORDS = 4, 12
MIN_LENGTH_GAP = 2
PROMPT_FILLER = (3, 6)
_RESERVED = {*DOMAINS, "gamma", "delta", "sigma", "omega", *KEYWORDS.values(), *TOPICS}
FILLER = tuple(w for w in TINY_WORDS if w not in _RESERVED)


@dataclass(frozen=True)
class SyntheticShiftConfig:
    """Knobs of the controlled-shift generator (see the module docstring for the exact rule).

    Args:
        num_train: rows of the training split.
        num_eval: rows of each evaluation split (val, shifted, minority).
        minority_share: share of the minority domain ``beta`` in train and val.
        shifted_minority_share: share of ``beta`` in the shifted evaluation split.
        conflict: probability that a beta prompt follows the beta rule (the reverse of the
            alpha rule); otherwise it follows the alpha rule.
        label_noise: Bradley-Terry temperature T of the training labels,
            ``P(y1 chosen) = sigmoid((r(y1) - r(y2)) / T)``; 0 = deterministic labels.
        length_pair_share: share of pairs decided by length only (same keyword status).
        seed: seed of the generator.
    """

    num_train: int = 2000
    num_eval: int = 400
    minority_share: float = 0.1
    shifted_minority_share: float = 0.7
    conflict: float = 1.0
    label_noise: float = 0.0
    length_pair_share: float = 0.25
    seed: int = 0

    def __post_init__(self):
        for name in ("minority_share", "shifted_minority_share", "conflict", "length_pair_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.label_noise < 0:
            raise ValueError(f"label_noise must be >= 0, got {self.label_noise}")
        if self.num_train < 0 or self.num_eval < 0:
            raise ValueError("num_train and num_eval must be >= 0")


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([SyntheticShiftConfig])


def true_reward(rule: str, response: str) -> float:
    """Ground-truth reward of ``response`` under ``rule`` (``"alpha"`` or ``"beta"``)."""
    words = response.split()
    value = KEYWORD_WEIGHT * (
        (KEYWORDS[MAJORITY] in words) - (KEYWORDS[MINORITY] in words)
    ) + LENGTH_WEIGHT * len(words)
    if rule == MAJORITY:
        return value
    if rule == MINORITY:
        return -value
    raise ValueError(f"rule must be {MAJORITY!r} or {MINORITY!r}, got {rule!r}")


def flip_probability(gap: float, label_noise: float) -> float:
    """Probability that the Bradley-Terry label picks the worse response: sigmoid(-|gap| / T)."""
    if label_noise == 0:
        return 0.0
    return 1.0 / (1.0 + math.exp(abs(gap) / label_noise))


def _response(rng: random.Random, n_words: int, keyword: str | None) -> str:
    words = [rng.choice(FILLER) for _ in range(n_words - (keyword is not None))]
    if keyword is not None:
        words.insert(rng.randrange(len(words) + 1), keyword)
    return " ".join(words)


def _prompt(rng: random.Random, domain: str) -> str:
    filler = [rng.choice(FILLER) for _ in range(rng.randint(*PROMPT_FILLER))]
    return " ".join([domain, rng.choice(TOPICS), *filler])


def _pair(rng: random.Random, length_pair_share: float) -> tuple[str, str, str]:
    """Two responses (in random order) and the pair kind."""
    if rng.random() < length_pair_share:
        keyword = rng.choice([KEYWORDS[MAJORITY], KEYWORDS[MINORITY], None])
        while True:
            n1, n2 = rng.randint(MIN_WORDS, MAX_WORDS), rng.randint(MIN_WORDS, MAX_WORDS)
            if abs(n1 - n2) >= MIN_LENGTH_GAP:
                break
        return _response(rng, n1, keyword), _response(rng, n2, keyword), "length"
    a = _response(rng, rng.randint(MIN_WORDS, MAX_WORDS), KEYWORDS[MAJORITY])
    b = _response(rng, rng.randint(MIN_WORDS, MAX_WORDS), KEYWORDS[MINORITY])
    return (a, b, "keyword") if rng.random() < 0.5 else (b, a, "keyword")


def _split_plan(config: SyntheticShiftConfig, split: str) -> tuple[int, float, float]:
    """(rows, minority share, label noise) of a split."""
    return {
        "train": (config.num_train, config.minority_share, config.label_noise),
        "val": (config.num_eval, config.minority_share, 0.0),
        "shifted": (config.num_eval, config.shifted_minority_share, 0.0),
        "minority": (config.num_eval, 1.0, 0.0),
    }[split]


def _make_split(config: SyntheticShiftConfig, split: str, used: set[str]) -> list[dict]:
    rng = random.Random(f"lightning_robust.synthetic/{config.seed}/{split}")
    n, share, noise = _split_plan(config, split)
    n_minority = round(n * share)
    domains = [MINORITY] * n_minority + [MAJORITY] * (n - n_minority)
    rng.shuffle(domains)
    rows = []
    for domain in domains:
        prompt = _prompt(rng, domain)
        while prompt in used:
            prompt = _prompt(rng, domain)
        used.add(prompt)
        rule = MINORITY if domain == MINORITY and rng.random() < config.conflict else MAJORITY
        y1, y2, kind = _pair(rng, config.length_pair_share)
        gap = true_reward(rule, y1) - true_reward(rule, y2)
        if noise > 0:
            first_wins = rng.random() < 1.0 / (1.0 + math.exp(-gap / noise))
        else:
            first_wins = gap > 0
        chosen, rejected = (y1, y2) if first_wins else (y2, y1)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "group": domain,
                "rule": rule,
                "kind": kind,
                "chosen_reward": true_reward(rule, chosen),
                "rejected_reward": true_reward(rule, rejected),
            }
        )
    return rows


@lru_cache(maxsize=8)
def _generate_all(config: SyntheticShiftConfig) -> dict[str, tuple[dict, ...]]:
    used: set[str] = set()
    return {split: tuple(_make_split(config, split, used)) for split in SPLITS}


def generate(config: SyntheticShiftConfig | None = None) -> dict[str, list[dict]]:
    """All splits of :data:`SPLITS` as lists of row dicts (deterministic given ``config``)."""
    config = config or SyntheticShiftConfig()
    return {split: [dict(r) for r in rows] for split, rows in _generate_all(config).items()}


def generate_split(split: str, config: SyntheticShiftConfig | None = None) -> list[dict]:
    """Rows of one split (``train``, ``val``, ``shifted`` or ``minority``)."""
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {SPLITS}, got {split!r}")
    config = config or SyntheticShiftConfig()
    return [dict(r) for r in _generate_all(config)[split]]
