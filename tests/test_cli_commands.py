"""The CLI's short class names, help, extra commands (eval) and console callbacks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lightning_robust import cli
from lightning_robust.callbacks.metrics_table import MetricsTable, RobustProgressBar, format_table
from tests.conftest import SHARED_DATA, needs_shared_data


def _run_help(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_describes_the_tool_and_lists_the_extra_commands(capsys):
    out = _run_help(["--help"], capsys)
    assert "distributionally robust alignment" in out
    assert "eval " in out and "annotate " in out
    assert "docs/ALGORITHMS.md" in out


def test_model_help_by_short_name(capsys):
    out = _run_help(["fit", "--model.help", "DPO"], capsys)
    assert "--model.init_args.beta" in out or "--model.beta" in out
    assert "--model.loss_type" in out or "--model.init_args.loss_type" in out


def test_short_class_names_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    made = cli.build_cli(
        [
            "--model",
            "DPO",
            "--model.model_name_or_path",
            "tiny",
            "--model.weighting",
            "TVBall",
            "--model.weighting.rho",
            "0.2",
            "--data",
            "PreferenceDataModule",
            "--data.train",
            "synthetic",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
        ],
        run=False,
    )
    from lightning_robust.data.datamodule import PreferenceDataModule
    from lightning_robust.modules import DPO
    from lightning_robust.weighting import TVBall

    assert isinstance(made.model, DPO) and isinstance(made.datamodule, PreferenceDataModule)
    assert isinstance(made.model.weighting, TVBall) and made.model.weighting.rho == 0.2
    names = [type(c).__name__ for c in made.trainer.callbacks]
    assert "RobustProgressBar" in names and "MetricsTable" in names


def test_unavailable_command_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "nothing", ("lightning_robust.no_such_module:main", "x"))
    with pytest.raises(SystemExit, match="'nothing' is not available"):
        cli.main(["nothing", "--help"])
    assert "nothing" not in cli.command_epilog()


def test_eval_rejects_unknown_benchmarks_and_bad_sources():
    with pytest.raises(SystemExit, match="unknown"):
        cli.main(["eval", "--model", "tiny", "--benchmarks", "rewardbenc"])
    with pytest.raises(SystemExit, match="NAME=PATH"):
        cli.main(["eval", "--model", "tiny", "--source", "rewardbench"])


@needs_shared_data
def test_eval_command_on_a_tiny_model(tmp_path, capsys):
    from lightning_robust import evaluate
    from lightning_robust.evals import MTBenchHuman, RewardBench

    assert (
        cli.main(
            [
                "eval",
                "--model",
                "tiny",
                "--benchmarks",
                "mt_bench",
                "--data",
                str(SHARED_DATA),
                "--max-rows",
                "2",
                "--max-length",
                "96",
                "--output",
                str(tmp_path / "x"),
                "--no-plot",
            ]
        )
        is None
    )
    capsys.readouterr()
    results = evaluate.main(
        [
            "--model",
            "tiny",
            "--benchmarks",
            "rewardbench,mt_bench",
            "--data",
            str(SHARED_DATA),
            "--max-rows",
            "6",
            "--max-length",
            "96",
            "--output",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "benchmark" in out and "llmbar-natural" in out and "turn_1" in out
    written = json.loads((tmp_path / "benchmarks.json").read_text())
    assert written["kind"] == "reward" and set(written["benchmarks"]) == {"rewardbench", "mt_bench"}
    assert (tmp_path / "rewardbench.png").stat().st_size > 0 and (
        tmp_path / "mt_bench.png"
    ).exists()
    # the same numbers as the evaluators called directly on the same tiny reward model
    scorer = evaluate.reward_scorer_loader()("tiny", max_length=96)
    direct = RewardBench(
        source=str(SHARED_DATA / "rewardbench_llmbar/llmbar_rewardbench_format_shared.jsonl"),
        max_rows_per_subset=6,
    ).evaluate(scorer)
    assert results["rewardbench"]["metrics"] == pytest.approx(direct)
    direct_mt = MTBenchHuman(
        source=str(SHARED_DATA / "mt_bench_human_pairs/llmbar_mtbench_shared.jsonl"), max_rows=6
    ).evaluate(scorer)
    assert written["benchmarks"]["mt_bench"]["metrics"] == pytest.approx(direct_mt)


def _trainer(metrics, step=10, fn="fit"):
    return SimpleNamespace(
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        sanity_checking=False,
        is_global_zero=True,
        global_step=step,
        current_epoch=0,
        state=SimpleNamespace(fn=fn),
    )


def test_metrics_table_shows_first_and_last_validation(capsys):
    table = MetricsTable()
    table.on_validation_end(
        _trainer({"val/accuracy": 0.5, "val/shifted/accuracy": 0.25, "train/loss": 1.0}), None
    )
    table.on_validation_end(_trainer({"val/accuracy": 0.75, "val/shifted/accuracy": 0.5}), None)
    end = _trainer(
        {"val/accuracy": 0.75, "val/shifted/accuracy": 0.5, "eval/rewardbench/score": 0.6}
    )
    table.teardown(end, None, "fit")
    out = capsys.readouterr().out
    assert out.count("== validation at step") == 2 and "train/loss" not in out
    last = table.last_text.splitlines()
    assert "end of fit" in last[0]
    rows = {line.split()[0]: line.split()[1:] for line in last[3:]}
    assert rows["val/accuracy"] == ["0.5000", "0.7500"]
    assert rows["val/shifted/accuracy"] == ["0.2500", "0.5000"]
    assert rows["eval/rewardbench/score"] == ["0.6000"]  # no first value: benchmarks ran at the end


def test_progress_bar_adds_the_module_figures(monkeypatch):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lightning_robust.modules import DPO, GRPO

    # Lightning's own items (the prog_bar=True loss) stubbed: the bar adds the module's figures
    monkeypatch.setattr(TQDMProgressBar, "get_metrics", lambda self, t, m: {"train/loss": "0.5"})
    bar = RobustProgressBar()
    trainer = _trainer(
        {"train/rewards/accuracies": 0.625, "train/rewards/margins": 0.1, "train/kl": 2.0}
    )
    got = bar.get_metrics(trainer, object.__new__(DPO))
    assert got == {"train/loss": "0.5", "accuracies": "0.625", "margins": "0.1"}
    # GRPO: proxy/gold reward and KL; its surrogate loss (~0 by construction) is hidden
    assert bar.get_metrics(trainer, object.__new__(GRPO)) == {"kl": "2"}


def test_format_table_aligns_columns():
    text = format_table(["a", "bb"], [["xxx", "1"], ["y", "22"]])
    assert text.splitlines() == ["a    bb", "---  --", "xxx  1", "y    22"]


@pytest.fixture
def threads_restored(monkeypatch):
    for key in ("LIGHTNING_ROBUST_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_thread_policy(threads_restored):
    monkeypatch = threads_restored
    tiny_cpu = {"trainer.accelerator": "cpu", "model.init_args.model_name_or_path": "tiny"}
    torch.set_num_threads(2)
    assert cli.apply_thread_policy(tiny_cpu) == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    # a real model, or a GPU run: left to torch
    assert (
        cli.apply_thread_policy(
            {**tiny_cpu, "model.init_args.model_name_or_path": "google/gemma-2b-it"}
        )
        is None
    )
    assert cli.apply_thread_policy({**tiny_cpu, "trainer.accelerator": "gpu"}) is None
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
    assert cli.apply_thread_policy(tiny_cpu) is None
    monkeypatch.setenv("LIGHTNING_ROBUST_THREADS", "off")
    assert cli.apply_thread_policy(tiny_cpu) is None
    monkeypatch.setenv("LIGHTNING_ROBUST_THREADS", "2")
    assert cli.apply_thread_policy({}) == 2
    monkeypatch.setenv("LIGHTNING_ROBUST_THREADS", "many")
    with pytest.raises(SystemExit, match="LIGHTNING_ROBUST_THREADS='many'"):
        cli.apply_thread_policy({})
