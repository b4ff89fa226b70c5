"""scripts/gpu_check.py: argument handling, the no-GPU answer and the CPU smoke mode, the latter
with every package beyond torch / lightning / transformers / peft / torchmetrics made unimportable."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
#: importable packages the GPU machine does not have preinstalled
BLOCKED = [
    "datasets",
    "pyarrow",
    "pandas",
    "deepspeed",
    "vllm",
    "flash_attn",
    "lm_eval",
    "cvxpy",
    "cvxpylayers",
    "jsonargparse",
    "gguf",
]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments():
    gc = _load()
    args = gc.parse_args(["--cpu-smoke"])
    assert args.runs == list(gc.RUNS) and args.steps == 2 and args.batch_size == 2
    args = gc.parse_args(["--runs", "dpo, wdpo", "--steps", "3"])
    assert args.runs == ["dpo", "wdpo"] and args.steps == 3 and args.batch_size == 8
    for bad in (
        ["--runs", "dpo,ppo"],
        ["--steps", "0"],
        ["--batch-size", "-1"],
        ["--max-length", "4"],
    ):
        with pytest.raises(SystemExit) as err:
            gc.parse_args(bad)
        assert err.value.code == 2
    assert str(ROOT) in sys.path  # the repository is importable without installing it


def test_without_a_gpu_it_says_so(monkeypatch, capsys, tmp_path):
    gc = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main(["--output", str(tmp_path / "x.json")]) == 2
    assert "no CUDA GPU found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_cpu_smoke_runs_with_only_the_preinstalled_packages(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    # a sitecustomize that hides each package from the path finder, as if it were not installed
    (blocked / "sitecustomize.py").write_text(
        "import importlib.machinery as m\n"
        f"BLOCKED = {set(BLOCKED)!r}\n"
        "_find = m.PathFinder.find_spec.__func__\n"
        "def find_spec(cls, name, path=None, target=None):\n"
        "    return None if name.split('.')[0] in BLOCKED else _find(cls, name, path, target)\n"
        "m.PathFinder.find_spec = classmethod(find_spec)\n"
    )
    out = tmp_path / "smoke.json"
    env = dict(os.environ, PYTHONPATH=str(blocked), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--output", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "datasets" in BLOCKED and "ModuleNotFoundError" not in proc.stderr
    report = json.loads(out.read_text())
    status = {r["run"]: r["status"] for r in report["runs"]}
    assert status == {
        "reward": "ok",
        "dpo": "ok",
        "dr_dpo": "ok",
        "wdpo": "ok",
        "drro_grpo": "ok",
        "zero2": "skipped",
        "zero3": "skipped",
    }
    for r in report["runs"]:
        if r["status"] == "ok":
            assert r["tokens_per_s"] > 0 and r["steps_timed"] == 2 and r["attn_used"] == "sdpa"
            assert r["peak_rss_gib"] > 0
    assert report["mode"] == "cpu-smoke" and not report["environment"]["cuda"]
