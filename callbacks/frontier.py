"""The reward-vs-KL frontier of an online RL run (S003's figures; docs/ALGORITHMS.md §5.4).

:class:`RewardKLFrontier` records, after every training batch and every validation pass, the
sequence-level KL to the initial policy and the proxy and gold rewards logged by the module
(``train/kl``, ``train/reward/proxy``, ``train/reward/gold`` and the ``val/`` counterparts), and
when ``fit`` ends writes beside the logs (``trainer.log_dir``, else ``default_root_dir``):

- ``<name>.csv``: one row per point: ``stage, step, kl, proxy, gold`` (gold empty when absent);
- ``<name>.png``: proxy and gold reward against KL (one panel per stage), the points joined in
  step order (so a run that moved back in KL shows as a path that turns back), a few points
  labelled with their step, the start (``o``, hollow) and the end (``*``) marked. With an
  exploitable proxy, the proxy path keeps rising while the gold one bends down (reward
  over-optimisation). The PNG also goes to the trainer's loggers (TensorBoard, W&B).
"""

from __future__ import annotations

import csv
import logging
import math
import os

from lightning.pytorch import Callback

from lightning_robust.callbacks.tracking import log_image_file

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
            if "png" in self.paths:
                log_image_file(trainer, self.name, self.paths["png"])


def label_positions(count: int, labels: int = 6) -> list[int]:
    """Indices of at most ``labels`` points spread evenly over ``count`` (first and last included)."""
    if count <= labels:
        return list(range(count))
    return sorted({round(i * (count - 1) / (labels - 1)) for i in range(labels)})


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
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed: wrote %s, skipped the frontier PNG", csv_path)
        return {"csv": csv_path}

    figure = frontier_figure(points)
    figure.tight_layout()
    png_path = os.path.join(folder, f"{name}.png")
    figure.savefig(png_path, dpi=100)
    return {"csv": csv_path, "png": png_path}


def frontier_figure(points: list[dict]):
    """The matplotlib ``Figure`` of the frontier (module docstring): one panel per stage, each
    reward series joined in step order, start/end marked, a few step labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stages = [s for s in STAGES if any(p["stage"] == s for p in points)]
    figure = Figure(figsize=(5.0 * len(stages), 4.0))
    FigureCanvasAgg(figure)
    for k, stage in enumerate(stages):
        axis = figure.add_subplot(1, len(stages), k + 1)
        rows = sorted((p for p in points if p["stage"] == stage), key=lambda p: p["step"])
        for field, marker, label in (("proxy", "o", "proxy reward"), ("gold", "s", "gold reward")):
            scored = [p for p in rows if not math.isnan(p[field])]
            if not scored:
                continue
            kl, reward = [p["kl"] for p in scored], [p[field] for p in scored]
            (line,) = axis.plot(
                kl, reward, marker=marker, markersize=3, linewidth=1.0, alpha=0.8, label=label
            )
            color = line.get_color()
            axis.plot(
                kl[0], reward[0], marker="o", markersize=9, markerfacecolor="none", color=color
            )
            axis.plot(kl[-1], reward[-1], marker="*", markersize=12, color=color)
            for i in label_positions(len(scored)):
                axis.annotate(
                    str(scored[i]["step"]),
                    (kl[i], reward[i]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=7,
                    color=color,
                )
        axis.set_xlabel("KL(pi || pi_ref), sequence level")
        axis.set_ylabel("mean reward")
        axis.set_title(f"{stage}: reward vs KL (o start, * end, labels: step)")
        axis.grid(alpha=0.3)
        axis.legend()
    return figure
