"""MT-Bench human agreement (Zheng et al. 2023, arXiv:2306.05685, section 4.2).

Agreement is the fraction of human pairwise judgments whose winner the scorer also prefers
(``score(winner) > score(loser)`` strictly; equal scores disagree). Human ties are excluded by
default (``include_ties=True`` counts a tie as agreed when the two scores are equal).

Accepted schemas (read from the hub or from a local file with the same columns):

- hub ``lmsys/mt_bench_human_judgments``, split ``human``: ``question_id``, ``model_a``,
  ``model_b``, ``winner`` (``model_a`` / ``model_b`` / ``tie`` / ``tie (bothbad)``), ``judge``,
  ``turn`` (1 or 2), ``conversation_a`` / ``conversation_b`` (message lists with both turns).
  Turn 1 scores the first answer after the first question; turn 2 scores the second answer,
  each side with its OWN first exchange as context (multi-turn scoring), as the turn-2 judges
  saw it.
- LLMBar (``../shared/data/mt_bench_human_pairs``): ``input``, ``output_1``, ``output_2``,
  ``label`` in {1, 2}; turn 1 only (a ``turn`` column is honoured when present).

Metrics: ``turn_1``, ``turn_2`` (each when present) and ``overall`` (all judgments together).
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning_robust.evals.common import Evaluator, as_scorer, read_rows

# One judgment: (turn, prompt_a, response_a, prompt_b, response_b, winner in {"a", "b", "tie"}).
Judgment = tuple[int, object, str, object, str, str]


def _messages(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, Mapping) for m in value):
        raise ValueError(f"{where}: expected a list of messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def parse_hub_row(row: Mapping, where: str) -> Judgment:
    """A ``lmsys/mt_bench_human_judgments`` row as one judgment of its turn."""
    turn = int(row.get("turn") or 1)
    conv_a = _messages(row.get("conversation_a"), where)
    conv_b = _messages(row.get("conversation_b"), where)
    k = 2 * turn - 1  # index of the judged assistant message
    if len(conv_a) <= k or len(conv_b) <= k:
        raise ValueError(f"{where}: turn {turn} needs {k + 1} messages per conversation")
    winner = str(row.get("winner"))
    if winner.startswith("tie"):
        side = "tie"
    elif winner in ("model_a", "model_b"):
        side = winner[-1]
    else:
        raise ValueError(f"{where}: unknown winner {winner!r}")
    return turn, conv_a[:k], conv_a[k]["content"], conv_b[:k], conv_b[k]["content"], side


def parse_llmbar_row(row: Mapping, where: str) -> Judgment:
    """An LLMBar pair (``input``, ``output_1``, ``output_2``, ``label``) as a turn-1 judgment."""
    label = row.get("label")
    if label not in (1, 2):
        raise ValueError(f"{where}: label must be 1 or 2, got {label!r}")
    prompt = row["input"]
    side = "a" if label == 1 else "b"
    return int(row.get("turn") or 1), prompt, row["output_1"], prompt, row["output_2"], side


class MTBenchHuman(Evaluator):
    """Agreement of the scorer with MT-Bench expert human judgments, per turn and overall.

    Args:
        source: hub id (``lmsys/mt_bench_human_judgments``) or a local file in the hub or the
            LLMBar schema.
        split: hub split (``human``).
        include_ties: keep human ties (agreed when both scores are equal); default: excluded.
        turns: the turns to evaluate.
        max_rows: quick runs: read only the first rows.
    """

    name = "mt_bench"

    def __init__(
        self,
        source: str = "lmsys/mt_bench_human_judgments",
        split: str = "human",
        include_ties: bool = False,
        turns: list[int] | tuple[int, ...] = (1, 2),
        max_rows: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.source = source
        self.split = split
        self.include_ties = include_ties
        self.turns = list(turns)
        self.max_rows = max_rows
        self.cache_dir = cache_dir
        self.ties_in_source = 0

    def _load(self) -> list[Judgment]:
        rows = read_rows(
            self.source, split=self.split, max_rows=self.max_rows, cache_dir=self.cache_dir
        )
        out = []
        for k, row in enumerate(rows):
            where = f"{self.source} row {k}"
            if "conversation_a" in row:
                j = parse_hub_row(row, where)
            elif "output_1" in row:
                j = parse_llmbar_row(row, where)
            else:
                raise ValueError(f"{where}: neither the hub nor the LLMBar MT-Bench schema")
            if j[0] in self.turns:
                out.append(j)
        self.ties_in_source = sum(j[5] == "tie" for j in out)
        return out if self.include_ties else [j for j in out if j[5] != "tie"]

    def evaluate(self, scorer) -> dict[str, float]:
        judgments = self.rows()
        prompts, responses = [], []
        for _, pa, ra, pb, rb, _ in judgments:
            prompts += [pa, pb]
            responses += [ra, rb]
        scores = as_scorer(scorer).score(prompts, responses)
        sa, sb = scores[0::2].tolist(), scores[1::2].tolist()
        per_turn: dict[int, list[bool]] = {}
        for j, a, b in zip(judgments, sa, sb, strict=True):
            side = j[5]
            agree = a > b if side == "a" else b > a if side == "b" else a == b
            per_turn.setdefault(j[0], []).append(agree)
        metrics = {f"turn_{t}": sum(v) / len(v) for t, v in sorted(per_turn.items())}
        every = [x for v in per_turn.values() for x in v]
        if every:
            metrics["overall"] = sum(every) / len(every)
        self.details = {
            "counts": {f"turn_{t}": len(v) for t, v in sorted(per_turn.items())},
            "missing": [f"turn_{t}" for t in self.turns if t not in per_turn],
            "ties_excluded": 0 if self.include_ties else self.ties_in_source,
        }
        return metrics
