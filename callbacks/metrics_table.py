"""Console tables of the run: validation and benchmark figures at each validation and at fit end,
and a progress bar that shows the metrics that matter for each module.

- :class:`MetricsTable` prints, after every validation (``every_validation``) and when ``fit``
  ends, one compact table of the latest ``val/`` and ``eval/`` figures; at fit end beside the
  first validation's values, so the table tells what training changed.
- :class:`RobustProgressBar` (a :class:`~lightning.pytorch.callbacks.TQDMProgressBar`) adds to
  the bar, besides the loss, the figures named in :data:`PROGRESS_KEYS` for the module's class
  (reward accuracy; DPO accuracies and margins; proxy/gold reward and KL for GRPO/PPO).
"""

from __future__ import annotations

import math

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import TQDMProgressBar

# Per module class (first match along the MRO): training metrics shown on the progress bar.
PROGRESS_KEYS: dict[str, tuple[str, ...]] = {
    "RewardModel": ("train/accuracy", "train/margin", "train/robust/ess"),
    "DPO": ("train/rewards/accuracies", "train/rewards/margins", "train/robust/ess"),
    "OnlineRLModule": ("train/reward/proxy", "train/reward/gold", "train/kl"),
}

# Per module class: bar entries to hide (GRPO's surrogate loss is ~0 by construction: noise).
HIDDEN_KEYS: dict[str, tuple[str, ...]] = {"OnlineRLModule": ("train/loss",)}

DEFAULT_SUFFIXES = (
    "accuracy",
    "accuracies",
    "loss",
    "margin",
    "margins",
    "overall",
    "average",
    "reward/proxy",
    "reward/gold",
    "kl",
)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain-text table: a header, a rule and the ``rows`` (strings), columns left-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def format_metrics_table(
    metrics: dict[str, float], keys: list[str] | None = None, title: str = ""
) -> str:
    """A two-column text table ``name | value`` of ``metrics`` (selected ``keys`` in order)."""
    rows = [(k, metrics[k]) for k in (keys or sorted(metrics)) if k in metrics]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [title] if title else []
    lines += [f"{k:<{width}}  {float(v):.4f}" for k, v in rows]
    return "\n".join(lines)


def console_print(trainer, text: str) -> None:
    """Print ``text`` above the progress bar (``tqdm.write`` through Lightning's bar when one is
    active, so the bar is not broken), else plainly."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is not None and callable(getattr(bar, "print", None)):
        bar.print(text)
    else:
        print(text, flush=True)


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


class MetricsTable(Callback):
    """Print the latest ``val/`` and ``eval/`` figures as a table (each validation, fit end).

    Args:
        prefixes: metric-name prefixes to show (default ``val/`` and ``eval/``).
        suffixes: metric-name endings to show (default: accuracies, losses, margins, benchmark
            overall/average, proxy/gold reward and KL; ``eval/`` figures are all shown).
        include_groups: also show per-group metrics (``.../group/<name>/...``).
        every_validation: also print after each validation during ``fit`` (not the sanity check).
    """

    def __init__(
        self,
        prefixes: list[str] | None = None,
        suffixes: list[str] | None = None,
        include_groups: bool = False,
        every_validation: bool = True,
    ):
        self.prefixes = tuple(prefixes or ["val/", "eval/"])
        self.suffixes = tuple(suffixes or DEFAULT_SUFFIXES)
        self.include_groups = include_groups
        self.every_validation = every_validation
        self.first: dict[str, float] = {}
        self.last_text = ""

    def select(self, metrics) -> dict[str, float]:
        """The shown subset of ``metrics`` (name -> float)."""
        out = {}
        for k, v in metrics.items():
            if not k.startswith(self.prefixes) or (not self.include_groups and "/group/" in k):
                continue
            if k.startswith("eval/") or k.endswith(self.suffixes):
                out[k] = float(v)
        return out

    def table(
        self, metrics: dict[str, float], title: str, first: dict[str, float] | None = None
    ) -> str:
        """The text table of ``metrics`` (with a ``first`` column when given)."""
        keys = sorted(metrics, key=lambda k: (not k.startswith("val/"), k))
        if first:
            rows = [[k, _number(first.get(k)), _number(metrics[k])] for k in keys]
            return title + "\n" + format_table(["metric", "first val", "last"], rows)
        return (
            title
            + "\n"
            + format_table(["metric", "value"], [[k, _number(metrics[k])] for k in keys])
        )

    def _print(self, trainer, text: str) -> None:
        self.last_text = text
        console_print(trainer, text)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = self.select(trainer.callback_metrics)
        if not metrics:
            return
        for k, v in metrics.items():
            self.first.setdefault(k, v)
        if self.every_validation and trainer.state.fn == "fit":
            self._print(
                trainer,
                self.table(
                    metrics,
                    f"== validation at step {trainer.global_step} (epoch {trainer.current_epoch}) ==",
                ),
            )

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # teardown runs after every callback's on_fit_end, so end-of-fit benchmark figures are in
        if stage != "fit" or not trainer.is_global_zero:
            return
        metrics = self.select(trainer.callback_metrics)
        if metrics:
            title = (
                f"== end of fit (step {trainer.global_step}): validation and benchmark figures =="
            )
            self._print(trainer, self.table(metrics, title, self.first or None))

    def state_dict(self) -> dict:
        return {"first": dict(self.first)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.first = dict(state_dict.get("first", {}))


def progress_keys(pl_module, table: dict | None = None) -> tuple[str, ...]:
    """The entry of ``table`` (default :data:`PROGRESS_KEYS`) for the first class of
    ``pl_module``'s MRO listed there."""
    table = PROGRESS_KEYS if table is None else table
    for cls in type(pl_module).__mro__:
        if cls.__name__ in table:
            return table[cls.__name__]
    return ()


class RobustProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar plus the module's key training figures (short names, 3 decimals).

    Args:
        keys: metric names to add (default: :data:`PROGRESS_KEYS` by module class).
        refresh_rate: as :class:`~lightning.pytorch.callbacks.TQDMProgressBar`.
    """

    def __init__(self, keys: list[str] | None = None, refresh_rate: int = 1, leave: bool = False):
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.keys = tuple(keys) if keys is not None else None

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        keys = self.keys if self.keys is not None else progress_keys(pl_module)
        for key in progress_keys(pl_module, HIDDEN_KEYS):
            items.pop(key, None)
        for key in keys:
            value = trainer.callback_metrics.get(key)
            if value is not None and key not in items:
                short = key.removeprefix("train/").replace("rewards/", "")
                items[short] = f"{float(value):.3g}"
        return items
