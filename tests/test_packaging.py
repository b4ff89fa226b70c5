"""The wheel installs callbacks/ and evals/ under the lightning_robust namespace."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_callbacks_and_evals_under_the_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    wheel = next((tmp_path / "dist").glob("lightning_robust-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lightning_robust/callbacks/__init__.py" in names
    assert "lightning_robust/evals/__init__.py" in names
    assert not any(n.startswith(("callbacks/", "evals/")) for n in names), (
        "top-level packages leaked"
    )
    # Install it (non-editable) into a scratch prefix and import from there, outside the repo.
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    code = (
        "import lightning_robust, lightning_robust.callbacks as c, lightning_robust.evals as e;"
        "print(lightning_robust.__file__); print(c.__file__); print(e.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    files = result.stdout.split()
    assert len(files) == 3 and all(f.startswith(str(target)) for f in files), files
