"""Smoke tests of the robustness experiments, part B (issue 7: experiments 2 and 4).

Each runs the ``--quick`` form of one experiment into a temporary directory and checks the
table, the plot and exact invariants (independent LP for the water-filling policy, delta = 0
shaping equals GRPO, the raw-budget identity, labels that follow the mixture reward).
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.robustness import common, overoptimization, preference_shift, simplex
from lightning_robust.objectives.drro import (
    dro_policy,
    group_log_probs,
    hard_bonus,
    robust_utility,
    water_filling_policy,
)


def _finite(values) -> bool:
    return all(math.isfinite(float(v)) for v in values)


# ----------------------------------------------------------------------------- simplex (4a)
def test_simplex_water_filling_matches_an_independent_lp():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    for seed in range(5):
        inst = simplex.make_instance(seed)
        r = inst.proxy.numpy()
        k = len(r)
        for delta in (0.25, 1.0, 4.0):
            # max <p, r> - t  s.t.  r_j - delta p_j - t <= 0, sum p = 1, p >= 0 (variables p, t)
            c = [-x for x in r] + [1.0]
            a_ub = [[-delta if i == j else 0.0 for i in range(k)] + [-1.0] for j in range(k)]
            b_ub = [-x for x in r]
            lp = scipy_optimize.linprog(
                c,
                A_ub=a_ub,
                b_ub=b_ub,
                A_eq=[[1.0] * k + [0.0]],
                b_eq=[1.0],
                bounds=[(0, None)] * k + [(None, None)],
                method="highs",
            )
            p_exact = simplex.exact_policies(inst, delta)["DRRO (exact)"]
            assert robust_utility(p_exact, inst.proxy, delta) == pytest.approx(-lp.fun, abs=1e-8)
            # and it beats the DRO optimum and greedy in robust utility
            for other in (dro_policy(inst.proxy, delta), water_filling_policy(inst.proxy, 0.0)[0]):
                assert (
                    robust_utility(p_exact, inst.proxy, delta)
                    >= robust_utility(other, inst.proxy, delta) - 1e-12
                )


def test_simplex_instance_proxy_has_one_exploitable_error():
    inst = simplex.make_instance(3)
    differs = torch.nonzero(inst.proxy != inst.gold).flatten().tolist()
    assert differs == [inst.exploit]
    assert int(torch.argmax(inst.proxy)) == inst.exploit
    assert inst.gold[inst.exploit] < inst.gold.median()


def test_simplex_zero_budget_shaping_trains_exactly_like_grpo():
    grpo = simplex.train_softmax_policy(simplex.TrainJob("none", "fixed", 0.0, 1, steps=20))
    for shaping in ("drro_hard", "drro_soft", "dro"):
        zero = simplex.train_softmax_policy(simplex.TrainJob(shaping, "fixed", 0.0, 1, steps=20))
        assert [r["gold"] for r in zero] == [r["gold"] for r in grpo]
        assert [r["kl"] for r in zero] == [r["kl"] for r in grpo]


def test_simplex_raw_budget_gives_the_raw_probability_hard_winner():
    gen = torch.Generator().manual_seed(0)
    p_old = torch.softmax(torch.randn(8, generator=gen, dtype=torch.float64), 0)
    idx = torch.multinomial(p_old.expand(16, 8), 8, replacement=True, generator=gen)
    rewards = simplex.make_instance(0).proxy[idx]
    seq = p_old.log()[idx]
    delta = 1.5
    budget = delta * seq.exp().sum(-1)
    bonus = hard_bonus(rewards, group_log_probs(seq), budget)
    score = rewards - delta * seq.exp()
    winners = score == score.amax(-1, keepdim=True)
    assert torch.equal(bonus > 0, winners)


def test_simplex_quick_writes_tables_and_plots(tmp_path):
    out = simplex.main(["--quick", "--out-md", str(tmp_path / "r.md"), "--out-dir", str(tmp_path)])
    assert out["exact"] and out["finals"]
    assert _finite(r["gold"] for r in out["exact"]) and _finite(r["kl"] for r in out["curves"])
    text = (tmp_path / "r.md").read_text()
    assert "## 4." in text and "4a. Promptwise simplex" in text and "simplex_quick:begin" in text
    for path in out["figures"].values():
        if path is not None:
            assert path.exists() and path.stat().st_size > 0
    # delta = 0: all three exact policies are greedy on the proxy (the exploit)
    for r in out["exact"]:
        if r["delta"] == 0.0:
            assert r["exploit_mass"] == 1.0


def test_write_block_keeps_other_blocks_and_sections(tmp_path):
    path = tmp_path / "r.md"
    path.write_text("intro\n\n## 2. Two\n\nold two\n\n## 5. Five\n\nfive\n")
    common.write_block(path, 4, "Four", "a", "first A")
    common.write_block(path, 4, "Four", "b", "first B")
    common.write_block(path, 4, "Four", "a", "second A")
    text = path.read_text()
    assert text.index("## 2.") < text.index("## 4. Four") < text.index("## 5.")
    assert "second A" in text and "first A" not in text and "first B" in text and "old two" in text


# ----------------------------------------------------------------------------- preference shift (2)
def test_shift_labels_follow_the_mixture_reward():
    pairs = preference_shift.make_pairs(50, 0, "train")
    for a in (0.0, 0.8, 1.0):
        for row in preference_shift.label_pairs(pairs, a, 0.0, 0):
            assert preference_shift.mixture_reward(
                a, row["chosen"]
            ) >= preference_shift.mixture_reward(a, row["rejected"])
    # a policy whose margins are the true r_a gaps is right on every untied pair of that a
    for a in preference_shift.MIXTURES:
        margins = torch.tensor(
            [
                preference_shift.mixture_reward(a, p["y1"])
                - preference_shift.mixture_reward(a, p["y2"])
                for p in pairs
            ]
        )
        assert preference_shift.mixture_accuracies(margins, pairs, (a,))[a] == 1.0
    with pytest.raises(ValueError, match="mixture weight"):
        preference_shift.mixture_reward(1.5, "a b")
    with pytest.raises(ValueError, match="unknown method"):
        preference_shift.method_kwargs(preference_shift.ShiftJob("SFT", 0.0, 0))


@pytest.mark.slow
def test_preference_shift_quick_writes_table_and_plot(tmp_path):
    out = preference_shift.main(
        ["--quick", "--out-md", str(tmp_path / "r.md"), "--out-dir", str(tmp_path)]
    )
    records = out["records"]
    assert {r["a"] for r in records} == set(preference_shift.MIXTURES)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    assert "## 2." in (tmp_path / "r.md").read_text()
    if out["figure"] is not None:
        assert out["figure"].exists()


# ----------------------------------------------------------------------------- over-optimisation (4b)
@pytest.mark.slow
def test_overoptimization_quick_writes_table_and_plot(tmp_path):
    out = overoptimization.main(
        ["--quick", "--out-md", str(tmp_path / "r.md"), "--out-dir", str(tmp_path)]
    )
    records = out["records"]
    assert records and _finite(r["kl"] for r in records) and _finite(r["gold"] for r in records)
    # the step-0 point is the initial policy: the same for every method of a seed
    starts = {(r["kl"], r["proxy"], r["gold"]) for r in records if r["rollout"] == 0}
    assert len(starts) == 1
    assert "4b. Tiny LM" in (tmp_path / "r.md").read_text()
