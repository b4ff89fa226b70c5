"""Quickstart: train a DR reward model (TV ball, rho=0.4) and the plain Bradley-Terry baseline
on the offline synthetic controlled-shift data through LightningCLI, for three seeds each, then
print one table of in-distribution and shifted accuracy (mean and spread over the seeds).

    python examples/quickstart.py                               # both methods, 3 seeds, the table
    python examples/quickstart.py --verbose                     # also each fit's console output
    python cli.py fit --config configs/quickstart.yaml          # the robust run alone

Every run's last checkpoint is validated again (as ``cli.py validate --ckpt_path`` does) to
show that the numbers reproduce from the checkpoint. By default only the summary table is
printed; each fit's console output (its metric tables) is kept in ``<run>/console.txt``, and
``--verbose`` prints it, with Lightning's messages, as the runs go.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_robust.cli import build_cli  # noqa: E402

CONFIG = str(ROOT / "configs" / "quickstart.yaml")
METHODS = {
    "DR reward model (TV, rho=0.4)": ("tv", []),
    "Bradley-Terry (ERM)": ("erm", ["--config", str(ROOT / "configs" / "weighting" / "erm.yaml")]),
}
COLUMNS = [
    ("in-distribution", "val/accuracy"),
    ("shifted (70% beta)", "val/shifted/accuracy"),
    ("minority (beta)", "val/minority/accuracy"),
]


def quiet_lightning() -> None:
    """Leave Lightning's start-up messages (accelerator, seeds) and the warnings of these
    known-benign runs out of the concise output (``--verbose`` keeps them)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # the validation below runs without the fit's logger, so its checkpoint folder differs
    warnings.filterwarnings("ignore", message=r"The dirpath has changed")
    warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer`")
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")


def run(tag: str, overlay: list[str], seed: int, root: Path, verbose: bool = False) -> dict:
    """Fit one config through the CLI, then validate its last checkpoint; the fit's console
    output goes to ``<run>/console.txt`` (and to the terminal with ``verbose``)."""
    out = root / f"{tag}_seed{seed}"
    args = [
        "--config",
        CONFIG,
        *overlay,
        f"--seed_everything={seed}",
        f"--data.init_args.synthetic.seed={seed}",
        f"--model.init_args.backbone.init_seed={seed}",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false",
    ]
    console = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stdout if verbose else console):
        fit = build_cli(["fit", *args])
    seconds = time.perf_counter() - start
    if not verbose:
        (out / "console.txt").write_text(console.getvalue(), encoding="utf-8")
    fitted = {k: float(v) for k, v in fit.trainer.callback_metrics.items()}
    cli = build_cli(
        [*args, "--trainer.logger=false"], run=False
    )  # as `cli.py validate` builds them
    cli.trainer.validate(
        cli.model,
        datamodule=cli.datamodule,
        ckpt_path=fit.trainer.checkpoint_callback.last_model_path,
        verbose=False,
    )
    again = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    return {"fit": fitted, "validate": again, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print each fit's console output (metric tables) and Lightning's messages",
    )
    args = parser.parse_args()
    seeds = args.seeds
    if not args.verbose:
        quiet_lightning()
    root = ROOT / "runs" / "quickstart"
    results = {
        name: [run(tag, overlay, seed, root, args.verbose) for seed in seeds]
        for name, (tag, overlay) in METHODS.items()
    }
    header = f"{'method':<31}" + "".join(f"{c:>21}" for c, _ in COLUMNS) + f"{'fit s/run':>11}"
    print(f"\nSynthetic controlled shift, tiny reward model, 1 epoch, seeds {seeds} (mean ± std):")
    print(header + "\n" + "-" * len(header))
    for name, runs in results.items():
        cells = ""
        for _, key in COLUMNS:
            values = [r["validate"][key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells += f"{statistics.mean(values):>14.3f} ± {spread:.3f}"
        seconds = statistics.mean(r["seconds"] for r in runs)
        print(f"{name:<31}{cells}{seconds:>10.1f}s")
    worst = max(
        abs(r["fit"][k] - r["validate"][k])
        for runs in results.values()
        for r in runs
        for _, k in COLUMNS
    )
    print(
        f"\nValidating each last checkpoint again reproduces the end-of-fit metrics "
        f"(max abs difference {worst:.1e})."
    )
    print(f"Logs, configs and checkpoints: {root.relative_to(ROOT)}/ (in the repository)")
    if not args.verbose:
        print("Each fit's metric tables: <run>/console.txt (or rerun with --verbose)")


if __name__ == "__main__":
    main()
