"""The quickstart table quoted in README.md is the committed output of ``examples/quickstart.py``
(docs/results/quickstart.txt), and rerunning the quickstart reproduces it (the accuracy columns;
fit seconds are machine-dependent)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "results" / "quickstart.txt"
ROW = re.compile(r"^(DR reward model \(TV, rho=0\.4\)|Bradley-Terry \(ERM\))\s+(.*?)\s+[\d.]+s\s*$")


def accuracy_rows(text: str) -> dict[str, str]:
    """method -> its accuracy columns (``mean ± std`` three times), from a quickstart table."""
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line.strip())
        if match:
            rows[match.group(1)] = " ".join(match.group(2).split())
    return rows


def test_readme_quotes_the_committed_quickstart_output():
    committed = accuracy_rows(COMMITTED.read_text(encoding="utf-8"))
    assert len(committed) == 2, COMMITTED
    readme = accuracy_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert readme == committed, "README's quickstart table differs from docs/results/quickstart.txt"


@pytest.mark.slow
def test_rerunning_the_quickstart_reproduces_the_committed_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert accuracy_rows(result.stdout) == accuracy_rows(COMMITTED.read_text(encoding="utf-8"))
    # the default output is the summary alone: the fits' metric tables go to <run>/console.txt
    assert "== validation at step" not in result.stdout and len(result.stdout.splitlines()) < 15
    consoles = list((ROOT / "runs" / "quickstart").glob("*_seed0/console.txt"))
    assert len(consoles) == 2 and all("== end of fit" in c.read_text() for c in consoles)
