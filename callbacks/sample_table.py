"""See what robust training does: every N steps, a table of the batch's examples with the loss the
weighting saw and the factor ``n q_i`` each one received (1 = the ERM weight; docs/ALGORITHMS.md §0,
"Mean-reduced form").

:class:`SampleTable` reads the weights from the module's ``weighting`` through a forward hook
(:class:`~lightning_robust.weighting.RobustWeighting` is an ``nn.Module`` whose output carries
``weights`` and the per-example losses it was given), so no module code changes and a step
costs nothing extra between tables. Shown rows: the examples the worst case up-weights most and
least. Pair data (reward model, DPO family) show prompt, chosen and rejected (a reward model
also the two rewards of that step's forward, from one extra no-grad forward); prompt data
(GRPO, PPO) show the prompt and, for GRPO, the prompt's mean proxy reward (minus the loss the
weighting saw).

Outputs: the console; the loggers' table API (W&B ``log_table``, TensorBoard text) and a
histogram of ``n q`` (``robust/nq``); ``<log_dir>/samples.md`` (every table) and, at the end of
fit, ``<log_dir>/robust_weights.png`` (histogram of every ``n q`` shown), also sent to the loggers.
"""

from __future__ import annotations

import math
import os

import torch
from lightning.pytorch import Callback

from lightning_robust.callbacks.metrics_table import console_print, format_table
from lightning_robust.callbacks.tracking import (
    log_histogram,
    log_image_file,
    log_table,
    markdown_table,
)

# module class -> (column name of the value shown, sign applied to the weighting's input loss)
VALUE_COLUMNS = {"GRPO": ("mean proxy reward", -1.0), "PPO": ("return v", -1.0)}


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def pick_rows(nq: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``ceil(count/2)`` largest and ``floor(count/2)`` smallest ``nq`` (largest
    first, each index once)."""
    order = torch.argsort(nq, descending=True, stable=True).tolist()
    if count >= len(order):
        return order
    top = order[: math.ceil(count / 2)]
    bottom = [i for i in order[len(order) - count // 2 :] if i not in top]
    return top + bottom


class SampleTable(Callback):
    """Every ``every_n_steps`` training batches, a table of examples and their robust weight.

    Args:
        every_n_steps: batches between tables (the first batch has one).
        num_rows: rows per table (half most, half least up-weighted).
        max_chars: characters kept of each text cell.
        output_dir: where ``samples.md`` and the histogram go (default: the log directory).
        to_console: print the tables.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        num_rows: int = 6,
        max_chars: int = 48,
        output_dir: str | None = None,
        to_console: bool = True,
    ):
        if every_n_steps < 1 or num_rows < 1:
            raise ValueError(
                f"every_n_steps and num_rows must be >= 1, got {every_n_steps}, {num_rows}"
            )
        self.every_n_steps = every_n_steps
        self.num_rows = num_rows
        self.max_chars = max_chars
        self.output_dir = output_dir
        self.to_console = to_console
        self.shown_nq: list[float] = []
        self.last_text = ""
        self._captured = None
        self._due = False
        self._batches = 0
        self._handle = None
        self._rewards = None

    # ------------------------------------------------------------------ capture
    def _hook(self, module, inputs, output) -> None:
        if self._due and inputs and hasattr(output, "weights"):
            self._captured = (inputs[0].detach(), output)

    def on_fit_start(self, trainer, pl_module) -> None:
        weighting = getattr(pl_module, "weighting", None)
        if isinstance(weighting, torch.nn.Module) and self._handle is None:
            self._handle = weighting.register_forward_hook(self._hook)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if trainer.is_global_zero and self.shown_nq:
            self._write_histogram(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._due = self._batches % self.every_n_steps == 0
        self._batches += 1
        self._rewards = None
        if (
            self._due
            and trainer.is_global_zero
            and callable(getattr(pl_module, "pair_rewards", None))
        ):
            # a reward model: the rewards of this step's forward (same weights, before the update),
            # one extra no-grad forward every ``every_n_steps`` batches
            with torch.no_grad():
                chosen, rejected = pl_module.pair_rewards(batch)
            self._rewards = (chosen.detach().float().cpu(), rejected.detach().float().cpu())

    # ------------------------------------------------------------------ table
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        captured, self._captured, due = self._captured, None, self._due
        self._due = False
        if not due or captured is None or not trainer.is_global_zero:
            return
        losses, out = captured
        q_all = out.global_weights if out.global_weights is not None else out.weights
        nq = (out.weights.detach().double() * q_all.numel()).cpu()
        columns, rows = self.rows(pl_module, trainer, batch, losses.double().cpu(), nq)
        if not rows:
            return
        step = trainer.global_step
        title = (
            f"== samples at step {step}: the examples the worst case up-weights most and least "
            f"(n*q; 1 = ERM weight; batch of {nq.numel()}) =="
        )
        text = title + "\n" + format_table(columns, [[str(c) for c in r] for r in rows])
        self.last_text = text
        self.shown_nq += nq.tolist()
        if self.to_console:
            console_print(trainer, text)
        log_table(trainer, "samples", columns, rows, step=step)
        log_histogram(trainer, "robust/nq", nq, step=step)
        folder = self._folder(trainer)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "samples.md"), "a", encoding="utf-8") as f:
            f.write(f"## step {step}\n\n{markdown_table(columns, rows)}\n\n")

    def rows(self, pl_module, trainer, batch: dict, losses: torch.Tensor, nq: torch.Tensor):
        """``(columns, rows)`` of the selected examples (values rounded for display)."""
        n = nq.numel()
        name, sign = next(
            (
                VALUE_COLUMNS[c.__name__]
                for c in type(pl_module).__mro__
                if c.__name__ in VALUE_COLUMNS
            ),
            ("loss", 1.0),
        )
        texts = self._texts(pl_module, trainer, batch, n)
        rewards = (
            self._rewards if self._rewards is not None and self._rewards[0].numel() == n else None
        )
        columns = [
            "#",
            *(texts[0] if texts else []),
            *(["r chosen", "r rejected"] if rewards else []),
            name,
            "n*q",
        ]
        rows = []
        for i in pick_rows(nq, self.num_rows):
            cells = [_clip(t, self.max_chars) for t in texts[1][i]] if texts else []
            if rewards:
                cells += [round(float(rewards[0][i]), 4), round(float(rewards[1][i]), 4)]
            value = sign * float(losses[i]) if losses.numel() == n else math.nan
            rows.append([i, *cells, round(value, 4), round(float(nq[i]), 3)])
        return columns, rows

    def _texts(self, pl_module, trainer, batch: dict, n: int):
        """``(column names, per-example text cells)`` of the batch, or ``None``."""
        if "chosen_input_ids" in batch:
            tokenizer = getattr(pl_module, "tokenizer", None) or getattr(
                trainer.datamodule, "tokenizer", None
            )
            if tokenizer is None or batch["chosen_input_ids"].shape[0] != n:
                return None
            cells = []
            for i in range(n):
                row = []
                for side in ("chosen", "rejected"):
                    ids = batch[f"{side}_input_ids"][i]
                    length = int(batch[f"{side}_attention_mask"][i].sum())
                    start = int(batch[f"{side}_prompt_len"][i])
                    if side == "chosen":
                        row.append(tokenizer.decode(ids[:start], skip_special_tokens=True))
                    row.append(tokenizer.decode(ids[start:length], skip_special_tokens=True))
                cells.append(row)
            return ["prompt", "chosen", "rejected"], cells
        prompts = batch.get("prompts") if isinstance(batch, dict) else None
        if prompts:
            per = max(1, n // len(prompts)) if n % len(prompts) == 0 else None
            if per is None:
                return None
            return ["prompt"], [[str(prompts[i // per])] for i in range(n)]
        return None

    # ------------------------------------------------------------------ files
    def _folder(self, trainer) -> str:
        return self.output_dir or trainer.log_dir or trainer.default_root_dir

    def _write_histogram(self, trainer) -> str | None:
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            return None
        figure = Figure(figsize=(5, 3.2))
        FigureCanvasAgg(figure)
        axis = figure.add_subplot(1, 1, 1)
        axis.hist(self.shown_nq, bins=30, color="#1f77b4")
        axis.axvline(1.0, color="#888888", linestyle="--", linewidth=0.8)
        axis.set_xlabel("n * q_i (1 = ERM weight)")
        axis.set_ylabel("examples")
        axis.set_title("robust weights of the sampled batches")
        figure.tight_layout()
        folder = self._folder(trainer)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "robust_weights.png")
        figure.savefig(path, dpi=100)
        log_image_file(trainer, "robust/weights_histogram", path)
        return path
