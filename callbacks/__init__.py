"""Lightning callbacks of lightning_robust (installed as ``lightning_robust.callbacks``)."""

from lightning_robust.callbacks.benchmark import BenchmarkCallback, plot_benchmark
from lightning_robust.callbacks.export import HFExport
from lightning_robust.callbacks.frontier import RewardKLFrontier
from lightning_robust.callbacks.metrics_table import MetricsTable, RobustProgressBar
from lightning_robust.callbacks.sample_table import SampleTable

__all__ = [
    "BenchmarkCallback",
    "HFExport",
    "MetricsTable",
    "RewardKLFrontier",
    "RobustProgressBar",
    "SampleTable",
    "plot_benchmark",
]
