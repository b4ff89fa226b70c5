"""The reward-vs-KL frontier of an online RL run (S003's figures; ALGORITHMS.md §5.4).

:class:`RewardKLFrontier` records, after every training batch and every validation pass, the
sequence-level KL to the initial policy and the proxy and gold rewards logged by the module
(``train/kl``, ``train/reward/proxy``, ``train/reward/gold`` and the ``val/`` counterparts), and
when ``fit`` ends writes beside the logs (``trainer.log_dir``, else ``default_root_dir``):

- ``<name>.csv``: one row per point: ``stage, step, kl, proxy, gold`` (gold empty when absent);
- ``<name>.png``: proxy and gold reward against KL (one panel per stage; points, and a running
  mean over the points sorted by KL): with an exploitable proxy, the proxy curve keeps rising
  while the gold one bends down (reward over-optimisation).
"""

from __future__ import annotations

import csv
import logging
import math
import os

from lightning.pytorch import Callback

log = logging.getLogger(__name__)

STAGES = ("train", "val")


class RewardKLFrontier(Callback):
    """Collect (KL, proxy, gold) points and write the frontier PNG and CSV at the end of fit.

    Args:
        name: file stem of the outputs (``reward_kl_frontier``).
        kl_key, proxy_key, gold_key: metric names without the stage prefix.
        output_dir: where to write; default ``trainer.log_dir`` (or ``default_root_dir``).
    """

    def __init__(
        self,
        name: str = "reward_kl_frontier",
        kl_key: str = "kl",
        proxy_key: str = "reward/proxy",
        gold_key: str = "reward/gold",
        output_dir: str | None = None,
    ):
        self.name = name
        self.keys = {"kl": kl_key, "proxy": proxy_key, "gold": gold_key}
        self.output_dir = output_dir
        self.points: list[dict] = []
        self.paths: dict[str, str] = {}

    def _record(self, trainer, stage: str) -> None:
        metrics = trainer.callback_metrics
        values = {}
        for field, key in self.keys.items():
            value = metrics.get(f"{stage}/{key}")
            values[field] = float(value) if value is not None else math.nan
        if math.isnan(values["kl"]) or math.isnan(values["proxy"]):
            return
        self.points.append({"stage": stage, "step": int(trainer.global_step), **values})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._record(trainer, "train")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val")

    def state_dict(self) -> dict:
        return {"points": list(self.points)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.points = list(state_dict.get("points", []))

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.points:
            folder = self.output_dir or trainer.log_dir or trainer.default_root_dir
            self.paths = write_frontier(self.points, folder, self.name)


def running_mean(values: list[float], window: int) -> list[float]:
    """Centred running mean (window ``window``, shrinking at the ends) of ``values``."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half) : i + half + 1]
        out.append(sum(part) / len(part))
    return out


def write_frontier(
    points: list[dict], folder: str, name: str = "reward_kl_frontier"
) -> dict[str, str]:
    """Write ``<folder>/<name>.csv`` and ``<folder>/<name>.png`` from the points (dicts with
    ``stage, step, kl, proxy, gold``); returns their paths. Without matplotlib (a ``dev``
    dependency) only the CSV is written and a warning is logged."""
    os.makedirs(folder, exist_ok=True)
    csv_path = os.path.join(folder, f"{name}.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", "step", "kl", "proxy", "gold"])
        for p in points:
            gold = "" if math.isnan(p["gold"]) else repr(p["gold"])
            writer.writerow([p["stage"], p["step"], repr(p["kl"]), repr(p["proxy"]), gold])

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: wrote %s, skipped the frontier PNG", csv_path)
        return {"csv": csv_path}

    stages = [s for s in STAGES if any(p["stage"] == s for p in points)]
    figure = Figure(figsize=(5.0 * len(stages), 4.0))
    FigureCanvasAgg(figure)
    for k, stage in enumerate(stages):
        axis = figure.add_subplot(1, len(stages), k + 1)
        rows = sorted((p for p in points if p["stage"] == stage), key=lambda p: p["kl"])
        for field, marker, label in (("proxy", "o", "proxy reward"), ("gold", "s", "gold reward")):
            scored = [p for p in rows if not math.isnan(p[field])]
            if not scored:
                continue
            kl, reward = [p["kl"] for p in scored], [p[field] for p in scored]
            dots = axis.scatter(kl, reward, marker=marker, s=12, alpha=0.45, label=label)
            axis.plot(
                kl,
                running_mean(reward, max(1, len(reward) // 5)),
                color=dots.get_facecolor()[0][:3],
            )
        axis.set_xlabel("KL(pi || pi_ref), sequence level")
        axis.set_ylabel("mean reward")
        axis.set_title(f"{stage}: reward vs KL")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    png_path = os.path.join(folder, f"{name}.png")
    figure.savefig(png_path, dpi=100)
    return {"csv": csv_path, "png": png_path}
