"""SampleTable (examples with their n*q weight), tracking fan-out, HFExport (directory, model card,
push_to_hub with the upload stubbed) on one short quickstart fit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_robust.callbacks import HFExport, SampleTable
from lightning_robust.callbacks.export import model_card
from lightning_robust.callbacks.sample_table import pick_rows
from lightning_robust.callbacks.tracking import (
    log_histogram,
    log_image_file,
    log_table,
    markdown_table,
)
from lightning_robust.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    calls = []

    class StubApi:  # only the upload is stubbed: export and card are real
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(
                ("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()))
            )

    import huggingface_hub

    patch = pytest.MonkeyPatch()
    patch.setattr(huggingface_hub, "HfApi", StubApi)
    table = SampleTable(every_n_steps=2, num_rows=4, to_console=True)
    export = HFExport(push_to_hub="someone/tiny-robust-rm")
    cli = build_cli(
        [
            "--config",
            str(CONFIGS / "quickstart.yaml"),
            "--trainer.max_steps=3",
            "--data.init_args.synthetic.num_train=96",
            "--data.init_args.synthetic.num_eval=32",
            f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}",
            "--trainer.enable_progress_bar=false",
        ],
        run=False,
    )
    cli.trainer.callbacks += [table, export]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    patch.undo()
    return SimpleNamespace(
        out=out, table=table, export=export, calls=calls, module=cli.model, trainer=cli.trainer
    )


def test_sample_table_shows_the_tv_ball_weights(fitted):
    table = fitted.table
    # tables at batches 0 and 2 of 16 pairs each
    assert len(table.shown_nq) == 32
    first = sorted(table.shown_nq[:16], reverse=True)
    # TV ball rho=0.4, n=16 (docs/ALGORITHMS.md §1.3): the largest loss gets 1/n + rho (n*q = 7.4), mass
    # rho is taken from the smallest losses (6 at 0, one at 1 - 0.4 = 0.6), the rest keep 1/n
    expected = [7.4] + [1.0] * 8 + [0.6] + [0.0] * 6
    assert first == pytest.approx(expected, abs=1e-6)  # weights are float32
    lines = table.last_text.splitlines()
    assert "n*q" in lines[1] and "prompt" in lines[1] and "rejected" in lines[1]
    rows = [line.split() for line in lines[3:]]
    assert float(rows[0][-1]) == pytest.approx(7.4) and float(rows[-1][-1]) == pytest.approx(0.0)
    # the up-weighted example is the one with the largest loss among those shown
    assert float(rows[0][-2]) == max(float(r[-2]) for r in rows)
    # the reward columns are the step's: its Bradley-Terry loss is -log sigmoid(r_chosen - r_rejected)
    assert "r chosen" in lines[1]
    for r in rows:
        chosen, rejected, loss = float(r[-4]), float(r[-3]), float(r[-2])
        expected = -torch.nn.functional.logsigmoid(
            torch.tensor(chosen - rejected, dtype=torch.float64)
        )
        assert loss == pytest.approx(float(expected), abs=2e-4)  # cells are rounded to 4 decimals
    log_dir = Path(fitted.trainer.log_dir)
    assert (log_dir / "samples.md").read_text().count("## step") == 2
    assert (log_dir / "robust_weights.png").stat().st_size > 0


def test_export_writes_a_loadable_directory_and_card(fitted):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(fitted.export.path)
    card = (path / "README.md").read_text()
    assert "TVBall (rho=0.4, scope=global)" in card.replace("`", "")
    assert "train: `synthetic`" in card and "someone/tiny-robust-rm" in card
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tokenizer("alpha travel detail simple")["input_ids"]])
    backbone = fitted.module.backbone.eval()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, backbone(ids).logits, atol=1e-6)
    assert fitted.calls[0] == ("create_repo", "someone/tiny-robust-rm", True)
    assert fitted.calls[1][0] == "upload_folder" and "README.md" in fitted.calls[1][2]
    assert "model.safetensors" in fitted.calls[1][2]


def test_adapter_only_card_loads_with_peft():
    facts = {
        "module": "DPO",
        "base_model": "google/gemma-2b-it",
        "method": {"beta": 0.1},
        "robust": {"strategy": "KLPenalty", "tau": 1.0, "scope": "local"},
        "data": {},
        "metrics": {"val/rewards/accuracies": 0.75},
        "steps": 10,
        "lora": True,
    }
    card = model_card(facts, adapter_only=True)
    assert "library_name: peft" in card and "base_model: google/gemma-2b-it" in card
    assert "AutoPeftModel" in card and "tau=1.0, scope=local" in card
    assert "| val/rewards/accuracies | 0.7500 |" in card


def test_pick_rows_takes_both_ends():
    nq = torch.tensor([1.0, 7.4, 0.0, 1.0, 0.6, 0.0])
    assert pick_rows(nq, 4) == [1, 0, 2, 5]
    assert sorted(pick_rows(nq, 10)) == list(range(6))


class _Experiment:
    def __init__(self):
        self.calls = []

    def add_text(self, key, text, global_step):
        self.calls.append(("text", key, text, global_step))

    def add_histogram(self, key, values, global_step):
        self.calls.append(("histogram", key, values.tolist(), global_step))

    def add_image(self, key, image, global_step, dataformats):
        self.calls.append(("image", key, image.shape, dataformats))


def test_tracking_dispatches_by_logger(tmp_path):
    tb = type("TensorBoardLogger", (), {"experiment": _Experiment()})()
    wb_calls = []
    wandb_like = type(
        "WandbLogger",
        (),
        {
            "log_table": lambda self, **kw: wb_calls.append(("table", kw)),
            "log_image": lambda self, **kw: wb_calls.append(("image", kw)),
        },
    )()
    csv = type("CSVLogger", (), {})()
    trainer = SimpleNamespace(loggers=[tb, wandb_like, csv], global_step=7)
    assert log_table(trainer, "samples", ["a", "b"], [[1, "x|y"]]) == ["tensorboard", "wandb"]
    assert tb.experiment.calls[0] == ("text", "samples", "| a | b |\n|---|---|\n| 1 | x\\|y |", 7)
    assert wb_calls[0] == (
        "table",
        {"key": "samples", "columns": ["a", "b"], "data": [[1, "x|y"]], "step": 7},
    )
    assert log_histogram(SimpleNamespace(loggers=[tb], global_step=2), "robust/nq", [1.0, 2.0]) == [
        "tensorboard"
    ]
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    figure.savefig(tmp_path / "f.png")
    assert log_image_file(trainer, "fig", str(tmp_path / "f.png")) == ["tensorboard", "wandb"]
    assert tb.experiment.calls[-1][1:] == ("fig", (100, 100, 3), "HWC")
    assert markdown_table(["x"], [[0.123456]]) == "| x |\n|---|\n| 0.1235 |"


def test_frontier_joins_points_in_step_order_and_marks_start_and_end(tmp_path):
    from lightning_robust.callbacks.frontier import frontier_figure, label_positions, write_frontier

    nan = float("nan")
    # the run goes out in KL and then back: KL order would hide the turn
    points = [
        {"stage": "train", "step": s, "kl": kl, "proxy": r, "gold": nan}
        for s, kl, r in [(3, 0.3, 0.3), (1, 0.1, 0.1), (2, 0.5, 0.2), (4, 0.2, 0.4)]
    ]
    axis = frontier_figure(points).axes[0]
    path, start, end = axis.lines[:3]
    assert list(path.get_xdata()) == [0.1, 0.5, 0.3, 0.2]  # steps 1, 2, 3, 4
    assert list(start.get_xdata()) == [0.1] and start.get_marker() == "o"
    assert list(end.get_xdata()) == [0.2] and end.get_marker() == "*"
    assert sorted(t.get_text() for t in axis.texts) == ["1", "2", "3", "4"]
    assert label_positions(11, 6) == [0, 2, 4, 6, 8, 10]
    paths = write_frontier(points, str(tmp_path))
    assert Path(paths["png"]).stat().st_size > 0


def test_eval_command_on_the_fit_checkpoint(fitted, tmp_path, capsys):
    import json

    from lightning_robust import evaluate
    from lightning_robust.evals import PairwiseAccuracy, RewardModelScorer

    ckpt = next(Path(fitted.out).rglob("last.ckpt"))
    rows = [
        {
            "prompt": f"alpha travel {k}",
            "chosen": "detail simple answer" * (k % 2 + 1),
            "rejected": "simple",
        }
        for k in range(12)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    results = evaluate.main(
        [
            "--model",
            str(ckpt),
            "--benchmarks",
            "pairwise",
            "--source",
            f"pairwise={data}",
            "--output",
            str(tmp_path / "out"),
            "--no-plot",
            "--max-length",
            "64",
        ]
    )
    assert "(reward scorer)" in capsys.readouterr().out
    module = fitted.module.eval()
    direct = PairwiseAccuracy(source=str(data), split="train").evaluate(
        RewardModelScorer(module.backbone, module.tokenizer, max_length=64)
    )
    assert results["in_distribution"]["metrics"] == pytest.approx(direct, abs=1e-5)
