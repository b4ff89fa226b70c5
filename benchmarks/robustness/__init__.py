"""Robustness experiments of issue 7: each seed paper's claim tested on CPU, with seeds and spread.

One command per experiment (``python -m benchmarks.robustness.<name> [--quick]``); each prints
a results table, saves plots under ``docs/results/`` and writes its section of
``docs/results.md``. Shared helpers (seeding, tables, plots, results writing) are in
:mod:`benchmarks.robustness.common`.
"""
