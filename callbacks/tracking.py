"""Send figures, tables and histograms to the trainer's loggers as well as to disk.

Lightning's loggers share ``log_metrics`` but not figures or tables, so each helper dispatches on
the logger: TensorBoard (``SummaryWriter.add_image`` / ``add_text`` / ``add_histogram``), Weights
& Biases (``log_image`` / ``log_table`` / ``wandb.Histogram``), and anything else (CSV: the files
the callbacks write beside the logs are the record). A logger that fails to take an item logs a
warning once; training never stops for it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_warned: set[str] = set()


def _kind(logger) -> str:
    name = type(logger).__name__
    if name == "TensorBoardLogger":
        return "tensorboard"
    if name == "WandbLogger":
        return "wandb"
    return "other"


def _loggers(trainer) -> list:
    return list(getattr(trainer, "loggers", None) or [])


def _warn_once(kind: str, what: str, err: Exception) -> None:
    key = f"{kind}:{what}"
    if key not in _warned:
        _warned.add(key)
        log.warning("could not send the %s to the %s logger: %s", what, kind, err)


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A Markdown table (TensorBoard renders ``add_text`` as Markdown); ``|`` and newlines escaped."""

    def cell(value) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def log_image_file(trainer, key: str, path: str, step: int | None = None) -> list[str]:
    """Send the PNG at ``path`` to every logger that takes images; returns the kinds that took it."""
    step = trainer.global_step if step is None else step
    sent = []
    for logger in _loggers(trainer):
        kind = _kind(logger)
        try:
            if kind == "tensorboard":
                from matplotlib.image import imread

                image = imread(path)[..., :3]
                logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
            elif kind == "wandb":
                logger.log_image(key=key, images=[path], step=step)
            else:
                continue
            sent.append(kind)
        except Exception as err:  # noqa: BLE001 - a tracking failure must not stop training
            _warn_once(kind, "image", err)
    return sent


def log_table(
    trainer, key: str, columns: list[str], rows: list[list], step: int | None = None
) -> list[str]:
    """Send a table to every logger with a table API (W&B ``log_table``, TensorBoard text)."""
    step = trainer.global_step if step is None else step
    sent = []
    for logger in _loggers(trainer):
        kind = _kind(logger)
        try:
            if kind == "tensorboard":
                logger.experiment.add_text(key, markdown_table(columns, rows), global_step=step)
            elif kind == "wandb":
                logger.log_table(key=key, columns=columns, data=rows, step=step)
            else:
                continue
            sent.append(kind)
        except Exception as err:  # noqa: BLE001
            _warn_once(kind, "table", err)
    return sent


def log_histogram(trainer, key: str, values, step: int | None = None) -> list[str]:
    """Send a histogram of ``values`` (a tensor or sequence) to TensorBoard / W&B."""
    import torch

    step = trainer.global_step if step is None else step
    values = torch.as_tensor(values, dtype=torch.float32).flatten().cpu()
    sent = []
    for logger in _loggers(trainer):
        kind = _kind(logger)
        try:
            if kind == "tensorboard":
                logger.experiment.add_histogram(key, values, global_step=step)
            elif kind == "wandb":
                import wandb

                logger.experiment.log(
                    {key: wandb.Histogram(values.numpy()), "trainer/global_step": step}
                )
            else:
                continue
            sent.append(kind)
        except Exception as err:  # noqa: BLE001
            _warn_once(kind, "histogram", err)
    return sent
