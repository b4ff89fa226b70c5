"""S003's gold/proxy pipeline (lightning_robust.pipelines.gold_proxy): gold labels, the proxy
reward model, pilot calibration of delta~_0, and a GRPO/DRRO step that uses them."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_robust.pipelines.gold_proxy import (
    delta0_from_scores,
    gold_proxy_pipeline,
    group_normalise,
    main,
)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_delta0_statistic_against_a_direct_computation():
    proxy = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 5.0]])
    gold = torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 0.0, 5.0]])
    gaps = []
    for p, g in zip(proxy.tolist(), gold.tolist(), strict=True):

        def z(v):
            m = sum(v) / len(v)
            s = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5
            return [(x - m) / (s + 1e-6) for x in v]

        gaps.append([abs(a - b) for a, b in zip(z(p), z(g), strict=True)])
    expected = sum(sum(g) / len(g) for g in gaps) / len(gaps)
    assert delta0_from_scores(proxy, gold) == pytest.approx(expected, rel=1e-9)
    assert delta0_from_scores(proxy, gold, "max") == pytest.approx(
        sum(max(g) for g in gaps) / 2, rel=1e-9
    )
    assert delta0_from_scores(gold, gold) == 0.0  # a perfect proxy needs no budget
    # scale/shift of the proxy does not matter after group normalisation
    assert delta0_from_scores(3 * gold + 1, gold) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(
        group_normalise(torch.tensor([[1.0, 3.0]])),
        torch.tensor([[-1 / 2**0.5, 1 / 2**0.5]]),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="G >= 2"):
        delta0_from_scores(proxy[:, :1], gold[:, :1])
    with pytest.raises(ValueError, match="statistic"):
        delta0_from_scores(proxy, gold, "median")


def test_pipeline_labels_trains_calibrates_and_feeds_grpo(tmp_path):
    import lightning as L

    from lightning_robust.data import PromptDataModule, SyntheticPromptConfig
    from lightning_robust.modules import GRPO

    prompts = tmp_path / "pilot.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"tell me about the {w}"}) + "\n"
            for w in ["river", "garden", "music", "bread"]
        )
    )
    summary = gold_proxy_pipeline(
        "synthetic",
        "tiny",
        tmp_path / "work",
        max_rows=48,
        optimizer={"learning_rate": 1e-3},
        training={"max_steps": 3, "batch_size": 8, "max_length": 48, "accelerator": "cpu"},
        pilot_prompts=str(prompts),
        policy="tiny",
        pilot={"max_prompts": 4, "num_generations": 4, "max_new_tokens": 6},
    )
    labels = [json.loads(line) for line in open(tmp_path / "work" / "gold_labelled.jsonl")]
    assert len(labels) == summary["labels"]["rows"] == 48
    assert all(r["gold_chosen"] >= r["gold_rejected"] for r in labels)  # ordered by the gold model
    agree = sum(r["source_agrees"] and r["gold_chosen"] > r["gold_rejected"] for r in labels) / len(
        labels
    )
    assert summary["labels"]["source_agreement"] == pytest.approx(agree)
    assert (
        0.0 <= summary["proxy"]["heldout_gold_agreement"] <= 1.0
        and summary["proxy"]["heldout_pairs"] > 0
    )
    samples = [
        json.loads(line)
        for line in open(tmp_path / "work" / "pilot" / "pilot_pairs.jsonl.samples.jsonl")
    ]
    scores = torch.tensor([s["scores"] for s in samples])
    assert summary["pilot"]["delta0"] == pytest.approx(
        delta0_from_scores(scores[..., 0], scores[..., 1])
    )
    assert json.load(open(tmp_path / "work" / "summary.json"))["grpo_overrides"]["model.delta0"] > 0

    # the proxy and the calibrated budget drive one DRRO step; the gold model is logged
    overrides = summary["grpo_overrides"]
    module = GRPO(
        reward_model=overrides["model.reward_model"],
        gold_reward_model=overrides["model.gold_reward_model"],
        delta0=overrides["model.delta0"],
        shaping="drro_soft",
        budget="dynamic",
        bonus_form="weight",
        num_generations=4,
        max_new_tokens=6,
        optimizer={"learning_rate": 1e-3},
    )
    dm = PromptDataModule(
        batch_size=2,
        max_prompt_length=32,
        synthetic=SyntheticPromptConfig(num_train=2, num_val=0, seed=0),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    assert any("gold" in k for k in logged), sorted(logged)


def test_command_prints_the_grpo_flags(tmp_path, capsys):
    assert (
        main(
            [
                "--pairs",
                "synthetic",
                "--gold",
                "tiny",
                "--work-dir",
                str(tmp_path / "w"),
                "--max-rows",
                "16",
                "--proxy-max-steps",
                "1",
                "--proxy-batch-size",
                "8",
                "--proxy-max-length",
                "48",
                "--accelerator",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        f"--model.reward_model={tmp_path / 'w' / 'proxy'}" in out
        and "--model.gold_reward_model=tiny" in out
    )
    with pytest.raises(SystemExit):
        main(
            [
                "--pairs",
                "synthetic",
                "--gold",
                "tiny",
                "--work-dir",
                str(tmp_path / "v"),
                "--max-rows",
                "4",
                "--pilot-prompts",
                "synthetic",
                "--proxy-max-steps",
                "1",
                "--accelerator",
                "cpu",
            ]
        )
    assert "pilot_prompts needs `policy`" in capsys.readouterr().err


def test_train_proxy_follows_on_bad_row(tmp_path):
    """A gold-labelled row longer than the proxy's max_length is counted and skipped with
    on_bad_row='skip' (the pipeline passes its option on) and names the row otherwise."""
    from lightning_robust.data.synthetic import TINY_WORDS
    from lightning_robust.pipelines.gold_proxy import train_proxy

    words = list(TINY_WORDS)
    rows = [
        {
            "prompt": f"{words[i % len(words)]} {words[(i + 1) % len(words)]}",
            "chosen": words[(i + 2) % len(words)],
            "rejected": words[(i + 3) % len(words)],
        }
        for i in range(24)
    ]
    rows[5]["rejected"] = " ".join(words[:10] * 10)  # far beyond max_length
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(
        training=dict(
            max_steps=1, batch_size=4, max_length=24, val_fraction=0.25, accelerator="cpu"
        )
    )
    result = train_proxy(labelled, tmp_path / "proxy", on_bad_row="skip", **common)
    assert result["train_pairs"] + result["heldout_pairs"] == len(rows) - 1
    with pytest.raises(ValueError, match="too_long"):
        train_proxy(labelled, tmp_path / "proxy2", **common)


def test_command_flags_fill_the_option_groups(monkeypatch, capsys):
    """The command's flags (unchanged for users) reach the pipeline as the grouped options."""
    from lightning_robust.models.backbone import ModelOptions
    from lightning_robust.modules.optim import OptimizerOptions
    from lightning_robust.pipelines import gold_proxy

    seen = {}

    def fake_pipeline(source, gold, work_dir, **kwargs):
        seen.update(kwargs, source=source, gold=gold, work_dir=work_dir)
        return {"grpo_overrides": {"model.reward_model": "p"}}

    monkeypatch.setattr(gold_proxy, "gold_proxy_pipeline", fake_pipeline)
    argv = "--pairs P --gold G --work-dir W --proxy-base minilm --max-rows 7 --on-bad-row skip"
    argv += " --proxy-epochs 2 --proxy-max-steps 5 --proxy-batch-size 4 --proxy-max-length 64"
    argv += " --proxy-learning-rate 0.002 --accelerator cpu --seed 3 --pilot-prompts Q"
    argv += " --policy tiny --pilot-size 6 --num-generations 3 --max-new-tokens 9 --statistic rms"
    assert main(argv.split()) == 0
    assert seen["backbone"] == ModelOptions(name_or_path="minilm")
    assert seen["optimizer"] == OptimizerOptions(learning_rate=0.002)
    assert seen["training"] == gold_proxy.ProxyTrainingOptions(
        max_epochs=2, max_steps=5, batch_size=4, max_length=64, accelerator="cpu"
    )
    assert seen["pilot"] == gold_proxy.PilotOptions(
        num_generations=3, max_prompts=6, max_new_tokens=9, statistic="rms"
    )
    assert (seen["max_rows"], seen["on_bad_row"], seen["seed"]) == (7, "skip", 3)
    assert (seen["pilot_prompts"], seen["policy"], seen["work_dir"]) == ("Q", "tiny", "W")
    assert capsys.readouterr().out.strip() == "--model.reward_model=p"
    with pytest.raises(ValueError, match="statistic"):
        gold_proxy.PilotOptions(statistic="median")
