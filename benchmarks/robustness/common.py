"""Shared helpers of the robustness experiments: seeds, worker processes, tables, plots, results.

Kept small and stable (other experiment scripts import it)::

    seed_all(0)                                    # python, numpy, torch
    results = run_jobs(fn, jobs, workers=2)        # fn(job) in 1-thread processes, job order kept
    rows = summarize(records, ["method"], ["acc"]) # mean ± std over seeds per group
    print(text_table(header, body))                # fixed-width table for the terminal
    md = markdown_table(header, body)              # the same as markdown
    write_section(RESULTS_MD, 1, "Reward models", md)  # replace section "## 1." of results.md

``mean ± std`` everywhere is the mean and the sample standard deviation (ddof = 1) over seeds.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import random
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS_MD = ROOT / "docs" / "results.md"
# the issue-7 scripts (old protocol, not regenerated) write here; results.md is generated (report.py)
OLD_RESULTS_MD = ROOT / "docs" / "results_old_protocol.md"
RESULTS_DIR = ROOT / "docs" / "results"
RUNS_DIR = ROOT / "runs" / "robustness"
SHARED_DATA = ROOT.parent / "shared" / "data"


def seed_all(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (CPU) with ``seed``."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quiet_lightning() -> None:
    """Silence Lightning's info messages and library warnings (experiment output stays readable)."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def quiet_trainer(max_epochs: int, default_root_dir, **overrides):
    """The experiments' Lightning trainer: one CPU process, deterministic, no logger, checkpoints,
    progress bar, model summary or sanity validation; ``overrides`` add or replace options
    (``callbacks``, ``limit_val_batches``, ``val_check_interval``, ...)."""
    import lightning as L

    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(default_root_dir),
    )
    options.update(overrides)
    return L.Trainer(**options)


def fit_synthetic_reward_model(
    make_weighting: Callable[[], object],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    runs_dir,
    metrics: dict[str, str],
    **synthetic,
) -> list[dict]:
    """Train the project's ``RewardModel`` (tiny backbone, init seed ``seed``, constant lr after a
    3 % warm-up) on the synthetic controlled-shift data (``SyntheticShiftConfig(**synthetic)``,
    max length 64) with the weighting ``make_weighting()`` for ``epochs`` epochs; one record per
    validated epoch: ``{"epoch": e, name: callback_metrics[key] for name, key in metrics}``."""
    from lightning.pytorch.callbacks import Callback

    from lightning_robust.data import PreferenceDataModule, SyntheticShiftConfig
    from lightning_robust.modules import RewardModel

    records: list[dict] = []

    class EpochAccuracy(Callback):
        def on_validation_end(self, trainer, pl_module):
            logged = trainer.callback_metrics
            records.append(
                {
                    "epoch": trainer.current_epoch + 1,
                    **{name: float(logged[key]) for name, key in metrics.items()},
                }
            )

    quiet_lightning()
    seed_all(seed)
    data = PreferenceDataModule(
        train="synthetic",
        batch_size=batch_size,
        max_length=64,
        seed=seed,
        synthetic=SyntheticShiftConfig(seed=seed, **synthetic),
    )
    model = RewardModel(
        weighting=make_weighting(),
        backbone={"name_or_path": "tiny", "init_seed": seed},
        optimizer={"learning_rate": learning_rate, "warmup_ratio": 0.03, "lr_schedule": "constant"},
    )
    trainer = quiet_trainer(epochs, runs_dir, callbacks=[EpochAccuracy()])
    trainer.fit(model, datamodule=data)
    return records


class FeatureCache:
    """Feature tensors by key (``store``), kept in one torch file read with ``weights_only=True``;
    a subclass computes the missing ones, sets ``dirty`` and calls :meth:`save` when done."""

    def __init__(self, cache_file):
        import torch

        self.cache_file = Path(cache_file)
        self.store: dict = {}
        self.dirty = False
        if self.cache_file.exists():
            saved = torch.load(self.cache_file, weights_only=True)
            self.store = dict(zip(saved["keys"], saved["features"], strict=True))

    def save(self) -> None:
        """Write the store when it changed since it was read or last saved."""
        import torch

        if self.dirty:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            keys = list(self.store)
            torch.save(
                {"keys": keys, "features": torch.stack([self.store[k] for k in keys])},
                self.cache_file,
            )
            self.dirty = False


def frozen_encoder(model_name: str):
    """``(tokenizer, encoder)``: the base model of a sequence classifier, in eval mode."""
    from lightning_robust.models import load_sequence_classifier, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    return tokenizer, load_sequence_classifier(model_name, tokenizer).base_model.eval()


def _call_single_threaded(payload):
    fn, job = payload
    with torch_threads(1):
        return fn(job)


def run_jobs(fn: Callable, jobs: Sequence, workers: int = 1, progress: bool = True) -> list:
    """``[fn(job) for job in jobs]``, each call with one torch thread (so results do not depend
    on ``workers``), in ``workers`` spawned processes when ``workers > 1``. ``fn`` must be a
    module-level function and the jobs picklable. ``progress`` prints one line per finished job
    to stderr."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    payloads = [(fn, job) for job in jobs]
    start = time.perf_counter()

    def report(k: int) -> None:
        if progress:
            print(
                f"  [{k}/{len(jobs)}] {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    results = []
    if workers == 1 or len(jobs) <= 1:
        for payload in payloads:
            results.append(_call_single_threaded(payload))
            report(len(results))
        return results
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs))) as pool:
        for result in pool.imap(_call_single_threaded, payloads, chunksize=1):
            results.append(result)
            report(len(results))
    return results


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def fmt_mean_std(values: Iterable[float], digits: int = 3) -> str:
    """``"0.812 ± 0.013"``."""
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def summarize(records: Sequence[dict], keys: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group ``records`` by the values of ``keys`` (first-seen order) and give, per group, the
    key values, ``n`` (records) and for every metric ``m``: ``m`` (the list of values),
    ``m_mean`` and ``m_std``."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(keys, key, strict=True))
        row["n"] = len(members)
        for m in metrics:
            values = [float(r[m]) for r in members]
            row[m] = values
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(values)
        out.append(row)
    return out


def text_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A fixed-width table (columns padded to their widest cell)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns this experiment: ``python -m <module> <args>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *(shlex.quote(a) for a in args)])


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as a small PNG (dpi 90) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def pyplot():
    """``matplotlib.pyplot`` with the file-only Agg backend, or ``None`` when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_SECTION = re.compile(r"^## (\d+)\.", re.MULTILINE)


def write_section(path: Path, number: int, title: str, body: str) -> Path:
    """Put ``## <number>. <title>`` + ``body`` into the markdown file ``path``: replace the
    section with that number (up to the next ``## <k>.`` heading) or insert it in number order.
    Text before the first numbered section is kept."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = f"## {number}. {title}\n\n{body.strip()}\n\n"
    heads = [(int(m.group(1)), m.start()) for m in _SECTION.finditer(text)]
    bounds = [
        (n, start, heads[i + 1][1] if i + 1 < len(heads) else len(text))
        for i, (n, start) in enumerate(heads)
    ]
    for n, start, end in bounds:
        if n == number:
            text = text[:start] + section + text[end:]
            break
    else:
        later = [start for n, start, _ in bounds if n > number]
        if later:
            text = text[: later[0]] + section + text[later[0] :]
        else:
            text = (text.rstrip() + "\n\n" if text.strip() else "") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def write_block(path: Path, number: int, title: str, block: str, body: str) -> Path:
    """Put ``body`` between ``<!-- block:begin -->`` / ``<!-- block:end -->`` markers inside the
    section ``## <number>. <title>`` of ``path``: the block is replaced when present, appended to
    the section otherwise, and the section is created (via :func:`write_section`) when missing.
    Text outside the block (hand-written readings, other scripts' blocks) is kept."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    payload = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        start, stop = text.index(begin), text.index(end) + len(end)
        path.write_text(text[:start] + payload + text[stop:], encoding="utf-8")
        return path
    heads = [(int(m.group(1)), m.start()) for m in _SECTION.finditer(text)]
    here = [i for i, (n, _) in enumerate(heads) if n == number]
    if not here:
        return write_section(path, number, title, payload)
    i = here[0]
    stop = heads[i + 1][1] if i + 1 < len(heads) else len(text)
    text = text[:stop].rstrip() + "\n\n" + payload + "\n\n" + text[stop:]
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path
