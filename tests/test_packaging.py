"""The wheel installs callbacks/ and evals/ under the lightning_robust namespace; the sdist carries
the user docs, the recipes and the examples besides the code (MANIFEST.in)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
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


def test_sdist_carries_docs_configs_and_examples(tmp_path):
    """Docs live in the repository and its source distribution, not in the wheel (the code):
    every file under docs/, configs/ and examples/ is in the sdist, caches and runs are not."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sdist,) = tmp_path.glob("lightning_robust-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    for folder in ("docs", "configs", "examples"):
        expected = {
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts
        }
        assert expected and expected <= names, sorted(expected - names)[:10]
    assert {"README.md", "pyproject.toml", "cli.py", "lightning_robust/__init__.py"} <= names
    assert not any(
        n.startswith(("runs/", ".venv/", ".hf_home/")) or n.endswith(".pyc") for n in names
    )
