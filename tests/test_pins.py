"""pyproject.toml: floors at least the versions whose APIs the code uses, satisfied by the installed
packages; upper bounds on the GPU extras; cvxpy imported only when the Cvxpy strategy is used.

A CI job that installs every floor would take minutes per run; this test checks the floors
against the API table below instead (each entry: the first release with the API the code calls).
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]

# package -> (first version with the API, where the code needs it)
API_FLOORS = {
    "transformers": (
        "4.56",
        "from_pretrained(dtype=...) in models/loading.py and models/causal_lm.py",
    ),
    "lightning": ("2.6", "load_from_checkpoint(weights_only=...) and the CLI's --weights_only"),
    "jsonargparse": ("4.39", "the jsonargparse floor of lightning 2.6's CLI"),
    "torch": ("2.4", "torch.load(weights_only=True, mmap=True) and torch._foreach_norm"),
}
GPU_EXTRAS = ("gpu", "deepspeed", "vllm", "eval")


def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def floor(requirement: Requirement) -> Version | None:
    lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def test_floors_cover_the_apis_the_code_uses():
    reqs = {Requirement(r).name: Requirement(r) for r in project()["dependencies"]}
    for name, (needed, why) in API_FLOORS.items():
        assert name in reqs, name
        low = floor(reqs[name])
        assert low is not None and low >= Version(needed), f"{name} floor {low} < {needed} ({why})"


def test_installed_versions_satisfy_the_requirements():
    for text in project()["dependencies"]:
        req = Requirement(text)
        try:
            installed = version(req.name)
        except PackageNotFoundError:  # pragma: no cover - the environment lacks a dependency
            raise AssertionError(f"{req.name} is not installed") from None
        assert req.specifier.contains(installed, prereleases=True), (
            f"{req.name} {installed} not in {req.specifier}"
        )


def test_gpu_extras_have_upper_bounds():
    extras = project()["optional-dependencies"]
    for extra in GPU_EXTRAS:
        for text in extras[extra]:
            req = Requirement(text)
            assert any(s.operator in ("<", "<=") for s in req.specifier), (
                f"{extra}: {text} has no upper bound"
            )


def test_tracking_extra_names_the_loggers():
    names = {Requirement(r).name for r in project()["optional-dependencies"]["tracking"]}
    assert {"tensorboard", "wandb"} <= names


def test_cvxpy_is_imported_lazily():
    code = (
        "import sys, lightning_robust.cli as c; c.register_classes();"
        "print(any(m.split('.')[0] in ('cvxpy', 'cvxpylayers') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
