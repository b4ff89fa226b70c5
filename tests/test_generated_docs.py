"""Every generated figure outside results.md is checked against the raw file it comes from:
benchmarks/README.md's blocks (benchmarks/results/*.txt) and docs/results/smollm2_e2e.md (the
committed SmolLM2 reports)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(relative: str):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_readme_blocks_match_the_raw_outputs():
    assert _load("benchmarks/results/fill_readme.py").main(["--check"]) == 0


def test_fill_readme_replaces_a_hand_edited_block(tmp_path):
    fill = _load("benchmarks/results/fill_readme.py")
    (tmp_path / "speed.txt").write_text("ratio 2.5x\n  round 1: noise\n")
    text = "intro\n<!-- begin speed -->\nratio 9.9x (typed)\n<!-- end speed -->\n<!-- begin gone -->x<!-- end gone -->\n"
    assert fill.filled(text, tmp_path) == (
        "intro\n<!-- begin speed -->\n```\nratio 2.5x\n```\n<!-- end speed -->\n"
        "<!-- begin gone -->x<!-- end gone -->\n"
    )


def test_smollm2_summary_matches_the_committed_reports(tmp_path):
    render = _load("scripts/render_smollm2_summary.py")
    assert render.main(["--check"]) == 0
    edited = tmp_path / "smollm2_e2e.md"
    edited.write_text(render.render().replace("0.", "0,", 1), encoding="utf-8")
    assert render.main(["--check", "--output", str(edited)]) == 1
    derived: dict = {}
    render.render(derived)  # the DR-DPO vs DPO figures are returned, not written
    comparison = render.RESULTS / "smollm2_dr_dpo_vs_dpo.json"
    assert derived[comparison] == comparison.read_text(encoding="utf-8")


def test_drro_vs_grpo_is_paired_by_prompt(tmp_path, monkeypatch):
    render = _load("scripts/render_smollm2_summary.py")
    monkeypatch.setattr(render, "REPO", tmp_path)
    before = {"gold": [0.1, 0.2, 0.3], "kl": [0.0, 0.0, 0.0]}
    runs = {
        "e2e.json": {"gold": [0.4, 0.1, 0.5], "kl": [0.2, 0.3, 0.1]},  # DRRO
        "grpo_e2e.json": {"gold": [0.1, 0.2, 0.3], "kl": [0.5, 0.5, 0.5]},
    }
    for name, after in runs.items():
        (tmp_path / name).write_text(json.dumps({"per_prompt": {"before": before, "after": after}}))
    lines = render.drro_vs_grpo_lines(tmp_path / "e2e.json", tmp_path / "grpo_e2e.json")
    assert "identical completions" in lines[1]
    gold = next(line for line in lines if line.startswith("| gold"))
    # differences +0.3, -0.1, +0.2: mean +0.1333, 2 higher / 1 lower, sign test p = 1
    assert gold.startswith("| gold | 0.2000 | 0.3333 | +0.1333 |") and "| 2 / 1 | 1 |" in gold
    kl = next(line for line in lines if line.startswith("| kl"))
    assert "| 0.5000 | 0.2000 | -0.3000 |" in kl and "| 0 / 3 | 0.25 |" in kl
    assert render.drro_vs_grpo_lines(tmp_path / "e2e.json", tmp_path / "absent.json") == []
