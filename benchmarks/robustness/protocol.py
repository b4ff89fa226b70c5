"""The experiment protocol of issue 12: declared grids, validation-only selection, raw JSON.

Every experiment declares an :class:`Experiment` (methods with their hyper-parameter grids,
seeds, regimes, settings, the validation metric that selects and the claim it tests) *before*
it runs; :func:`run_experiment` writes the declaration and every per-seed raw record to
``docs/results/<name>.json``. Nothing here reads a test metric to choose anything:
:func:`select` picks, per (regime, method, seed), the record with the best validation metric
(ties: earlier grid point, then earlier epoch) and only then returns its test metrics.
``docs/results.md`` is generated from the JSON files by :mod:`benchmarks.robustness.report`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.robustness.common import RESULTS_DIR, command_line, fmt_mean_std


@dataclass(frozen=True)
class Method:
    """A method: display name, family (what the experiment builds) and its grid
    (``{hyper-parameter: [values]}``; the grid is the product of the lists)."""

    name: str
    family: str
    grid: dict = field(default_factory=dict)
    baseline: bool = False

    def grid_points(self) -> list[dict]:
        keys = sorted(self.grid)
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(self.grid[k] for k in keys))
        ]


@dataclass(frozen=True)
class Experiment:
    """The declaration of one experiment (written to its JSON before results are added)."""

    name: str
    title: str
    module: str
    methods: Sequence[Method]
    seeds: Sequence[int]
    regimes: Sequence[dict]
    settings: dict
    select_metric: str
    test_metrics: Sequence[str]
    claim_metric: str
    claim_direction: int
    claim: str

    def __post_init__(self):
        if sum(m.baseline for m in self.methods) != 1:
            raise ValueError(f"{self.name}: exactly one method must be the baseline")
        if self.select_metric in (self.claim_metric,):
            raise ValueError(
                f"{self.name}: the selection metric must not be the claim's test metric"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"{self.name}: duplicate seeds {list(self.seeds)}")

    def declaration(self) -> dict:
        out = asdict(self)
        out["methods"] = [asdict(m) for m in self.methods]
        out["seeds"], out["regimes"] = list(self.seeds), [dict(r) for r in self.regimes]
        return out


def regime_key(record: dict, regime_fields: Sequence[str]) -> tuple:
    return tuple(record[f] for f in regime_fields)


def select(
    records: Sequence[dict],
    methods: Sequence[dict],
    regime_fields: Sequence[str],
    select_metric: str,
) -> dict[tuple, dict]:
    """``{(regime..., method, seed): record}``: per regime, method and seed the record with the
    highest ``select_metric`` (validation). Records are visited in grid order then epoch order,
    and only a strictly better value replaces the current choice (ties keep the earlier)."""
    order = {m["name"]: i for i, m in enumerate(methods)}
    grid_index = {
        m["name"]: [json.dumps(p, sort_keys=True) for p in Method(**m).grid_points()]
        for m in methods
    }
    ranked = sorted(
        (r for r in records if r["method"] in order),
        key=lambda r: (
            order[r["method"]],
            grid_index[r["method"]].index(json.dumps(r["config"], sort_keys=True)),
            r.get("epoch", 0),
        ),
    )
    chosen: dict[tuple, dict] = {}
    for r in ranked:
        key = (*regime_key(r, regime_fields), r["method"], r["seed"])
        if key not in chosen or r[select_metric] > chosen[key][select_metric]:
            chosen[key] = r
    return chosen


def results_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    head = {k: v for k, v in payload.items() if k != "records"}
    text = json.dumps(head, indent=1, ensure_ascii=False)
    if "records" in payload:  # one record per line: readable diffs, small files
        rows = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in payload["records"])
        text = text[:-2] + ',\n "records": [\n' + rows + "\n ]\n}"
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def experiment_parser(title: str, quick_help: str) -> argparse.ArgumentParser:
    """The command line every experiment shares: ``--quick`` (its CI smoke form, described by
    ``quick_help``), ``--seeds`` and ``--out``; an experiment adds its own flags after these."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0..9 (quick: 0 1)"
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default docs/results/<name>.json; quick: none)"
    )
    return parser


def run_experiment(
    exp: Experiment,
    body: Callable[[Callable[[list], None]], list],
    args,
    argv,
    started: float,
    extra: dict | None = None,
) -> dict:
    """Run ``body(progress)`` (which returns the raw records and calls ``progress(records)``
    after each finished part) and write the payload: the declaration, the command, the records
    and ``complete``. The full form writes ``docs/results/<name>.json`` (after every part, so a
    partial run leaves its finished regimes); ``--quick`` writes only where ``--out`` says."""
    out_path = Path(args.out) if args.out else (None if args.quick else results_path(exp.name))
    payload = {
        "experiment": exp.name,
        "command": command_line(exp.module, argv),
        "quick": bool(args.quick),
        "protocol": exp.declaration(),
        **(extra or {}),
        "complete": False,
        "records": [],
    }

    def progress(records: list) -> None:
        payload["records"] = records
        payload["seconds"] = round(time.perf_counter() - started, 1)
        if out_path is not None:
            write_json(out_path, payload)

    records = body(progress)
    payload["complete"] = True
    progress(records)
    return payload


def selection_summary(picks: Sequence[dict]) -> str:
    """How often each grid point and each epoch was selected: ``"rho=0.2 ×7, rho=0.4 ×3 · ep 3 ×10"``."""
    from collections import Counter

    def label(config: dict) -> str:
        return (
            ", ".join(
                f"{'lr' if k == 'learning_rate' else k}={v:g}" for k, v in sorted(config.items())
            )
            or "—"
        )

    configs = Counter(label(p["config"]) for p in picks)
    text = ", ".join(f"{c} ×{n}" for c, n in configs.most_common())
    epochs = Counter(p["epoch"] for p in picks if "epoch" in p)
    if epochs:
        text += " · " + ", ".join(f"ep {e} ×{n}" for e, n in sorted(epochs.items()))
    return text


def selected_point_row(labels: Sequence, picks: Sequence[dict], metrics: Sequence[str]) -> list:
    """One table row of a method's validation-selected points over seeds: ``labels``, then
    ``mean ± sd`` of each metric, which grid points / epochs were selected, and the seed count."""
    return [
        *labels,
        *(fmt_mean_std([p[x] for p in picks]) for x in metrics),
        selection_summary(picks),
        len(picks),
    ]


def describe_grids(methods) -> str:
    """``"name: key ∈ {v1, v2}, ...; ..."``: the declared grids of ``methods`` (JSON dicts) as prose."""
    return "; ".join(
        f"{m['name']}: "
        + ", ".join(
            f"{k} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in m["grid"].items()
        )
        for m in methods
    )
