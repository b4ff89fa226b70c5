"""Does a 2-process gloo DDP fit equal one process on the same global batch?

``python benchmarks/ddp_equivalence.py`` (CPU, ~2 minutes): the RewardModel (GroupDRO) and DPO
(TV ball, ``scope="global"``) fit for 2 epochs of 40 synthetic pairs through the CLI, once with
one process and batch 8, once with 2 gloo processes and batch 4 each (the ``ResumableSampler``
gives rank ``r`` every 2nd example of the same order, so global batch ``j`` is batch ``j`` of the
single process). Printed: the largest parameter difference, and the validation metrics of both
(full validation, no ``limit_val_batches``) for an even validation set (8 pairs per set) and an
uneven one (9 pairs: ``DistributedSampler`` pads each rank to 5 by repeating a pair).
Output committed in docs/results/ddp_equivalence.txt; explained in docs/scale.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import resume_helpers as h  # noqa: E402
import yaml  # noqa: E402

KINDS = {
    "RewardModel + GroupDRO": None,
    "DPO + TV ball (global scope)": {
        "class_path": "lightning_robust.modules.DPO",
        "init_args": {
            "model_name_or_path": "tiny",
            "learning_rate": 3.0e-3,
            "warmup_ratio": 0.2,
            "lr_schedule": "cosine",
            "beta": 0.1,
            "tiny_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1},
            "weighting": {
                "class_path": "lightning_robust.weighting.TVBall",
                "init_args": {"rho": 0.3, "scope": "global"},
            },
        },
    },
}


def run(root: Path, processes: int, model: dict | None, num_eval: int) -> tuple[dict, list[dict]]:
    config = h.config(root, processes)
    config["trainer"]["limit_val_batches"] = None
    config["data"]["init_args"]["synthetic"]["num_eval"] = num_eval
    config["data"]["init_args"]["val_fraction"] = 0.0
    if model is not None:
        config["model"] = model
        config["data"]["init_args"]["append_eos"] = True
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(h.TESTS), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(h.RUN_SCRIPT), "fit", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=root,
        start_new_session=True,
    )
    code, out = h.wait(proc, timeout=400)
    assert code == 0, out[-3000:]
    return h.final_state(root), h.metrics(root)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="ddp_equivalence_"))
    print("# python benchmarks/ddp_equivalence.py  (2 epochs x 5 steps, global batch 8, CPU gloo)")
    for kind, model in KINDS.items():
        for num_eval in (8, 9):
            one = run(base / f"{len(kind)}_{num_eval}_p1", 1, model, num_eval)
            two = run(base / f"{len(kind)}_{num_eval}_p2", 2, model, num_eval)
            print(f"\n## {kind}, validation sets of {num_eval} pairs")
            print(
                f"max |parameter difference| (1 vs 2 processes): {h.max_param_diff(one[0], two[0]):.3g}"
            )
            last_one, last_two = (
                next(
                    r
                    for r in reversed(rows)
                    if any(k.startswith("val/") and v for k, v in r.items())
                )
                for rows in (one[1], two[1])
            )
            keys = sorted(
                k for k in last_one if k.startswith("val/") and last_one[k] and "group" not in k
            )
            print("| metric (end of epoch 2) | 1 process | 2 processes | difference |")
            print("|---|---|---|---|")
            for key in keys:
                a, b = float(last_one[key]), float(last_two[key])
                print(f"| {key} | {a:.6f} | {b:.6f} | {abs(a - b):.2g} |")


if __name__ == "__main__":
    main()
