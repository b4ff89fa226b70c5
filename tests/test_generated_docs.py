"""Every generated figure outside results.md is checked against the raw file it comes from:
benchmarks/README.md's blocks (benchmarks/results/*.txt) and docs/results/smollm2_e2e.md (the
committed SmolLM2 reports)."""

from __future__ import annotations

import importlib.util
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
