"""Robustness experiments: each seed paper's claim tested on CPU under a declared protocol.

Issue 12's protocol (:mod:`benchmarks.robustness.protocol`): methods, grids and seeds declared
before a run, every selection on in-distribution validation data, per-seed raw records in
``docs/results/<experiment>.json``; ``docs/results.md`` is generated from them
(``python -m benchmarks.robustness``; ``--check`` in CI) with paired statistics from
:mod:`benchmarks.robustness.stats`. Experiments under the protocol: ``exp1_synthetic``.
The issue-7 scripts (``reward_models``, ``preference_shift``, ``distillation``,
``overoptimization``, ``simplex``) still run but write to ``docs/results_old_protocol.md``.
"""
