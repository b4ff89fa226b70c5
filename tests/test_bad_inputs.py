"""The bad-input catalogue (docs/bad_inputs.md): every bad-input class, triggered, with the
message a user sees. Each test is one row of the catalogue (same order, same names).

A test marked ``xfail(strict=True)`` documents a class whose fix belongs in a file owned by
another part of the code base; its reason names the change (the xfail turns into a failure as
soon as the fix lands, so the mark is then removed).
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from lightning_robust.data import PreferenceDataModule, SyntheticShiftConfig


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def write_jsonl(path, rows=None, raw=None):
    path.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def good_rows(n):
    return [
        {"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
        for i in range(n)
    ]


def setup_dm(tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("val_fraction", 0.0)
    dm = PreferenceDataModule(**kw)
    dm.setup("fit")
    return dm


def bad_file(tmp_path, bad_row, name="data.jsonl", at=2):
    rows = good_rows(4)
    rows.insert(at, bad_row)
    return write_jsonl(tmp_path / name, rows)


def row_error(file, row, field, reason):
    """The regex of the bad-row error (lightning_robust.data.reading.bad_row_error)."""
    return (
        rf"bad row in .*{file}, row {row} \(0-based\): field '{field}': .* \[{reason}\]\. "
        r"Fix the data, or set on_bad_row='skip' to skip and count such rows\."
    )


TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


# ====================================================================== data rows
def test_missing_field(tmp_path):
    path = bad_file(tmp_path, {"prompt": "q", "chosen": "a"})
    with pytest.raises(ValueError, match=row_error("data.jsonl", 2, "rejected", "missing")):
        setup_dm(tmp_path, train=path)


def test_empty_field(tmp_path):
    path = bad_file(tmp_path, {"prompt": "q", "chosen": "   ", "rejected": "b"})
    with pytest.raises(ValueError, match=row_error("data.jsonl", 2, "chosen", "empty")):
        setup_dm(tmp_path, train=path)


def test_wrong_type(tmp_path):
    path = bad_file(tmp_path, {"prompt": "q", "chosen": 5, "rejected": "b"})
    with pytest.raises(ValueError, match=row_error("data.jsonl", 2, "chosen", "wrong_type")) as err:
        setup_dm(tmp_path, train=path)
    assert "expected a string, got int" in str(err.value)


def test_chosen_equals_rejected(tmp_path):
    path = bad_file(tmp_path, {"prompt": "q", "chosen": "same", "rejected": " same "})
    with pytest.raises(ValueError, match=row_error("data.jsonl", 2, "chosen", "identical")):
        setup_dm(tmp_path, train=path)


def test_over_long_row(tmp_path):
    path = bad_file(tmp_path, {"prompt": "q", "chosen": " ".join(["word"] * 60), "rejected": "b"})
    with pytest.raises(ValueError, match=row_error("data.jsonl", 2, "chosen", "too_long")) as err:
        setup_dm(tmp_path, train=path, max_length=32)
    assert "> max_length=32" in str(err.value)


def test_hh_prompt_mismatch(tmp_path):
    hh = "\n\nHuman: hello\n\nAssistant:"
    rows = [
        {"chosen": hh + " hi", "rejected": hh + " go away"},
        {"chosen": hh + " hi", "rejected": "\n\nHuman: bye\n\nAssistant: no"},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.raises(ValueError, match=row_error("hh.jsonl", 1, "rejected", "prompt_mismatch")):
        setup_dm(tmp_path, train=path)


def test_bad_label(tmp_path):
    rows = [{"input": f"q{i}", "output_1": "a", "output_2": "b", "label": 1} for i in range(3)]
    rows.append({"input": "q", "output_1": "a", "output_2": "b", "label": 3})
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError, match=row_error("pairs.jsonl", 3, "label", "bad_label")):
        setup_dm(tmp_path, train=path)


def test_non_finite_margin(tmp_path):
    path = bad_file(tmp_path, {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "NaN"})
    with pytest.raises(ValueError, match=row_error("data.jsonl", 2, "margin", "wrong_type")):
        setup_dm(tmp_path, train=path)


def test_bad_rows_skipped_and_counted(tmp_path, caplog):
    path = bad_file(tmp_path, {"prompt": "q", "chosen": "same", "rejected": "same"})
    with caplog.at_level(logging.WARNING, logger="lightning_robust.data.datamodule"):
        dm = setup_dm(tmp_path, train=path, on_bad_row="skip")
    assert dm.skipped_rows == {"train": {"identical": 1}} and len(dm.datasets["train"]) == 4
    assert "train: identical=1" in caplog.text


# ====================================================================== data sources
def test_unknown_schema_detected(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        ValueError,
        match=r"odd\.jsonl: cannot detect the data schema: columns found \['answer', 'question'\]; schemas accepted: preference \(prompt, chosen, rejected\)",
    ):
        setup_dm(tmp_path, train=path)


def test_unknown_schema_name(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_rows(3))
    with pytest.raises(ValueError, match=r"d\.jsonl: unknown schema 'nope'"):
        setup_dm(tmp_path, train={"path": path, "schema": "nope"})


def test_unknown_source_field(tmp_path):
    with pytest.raises(
        ValueError, match=r"eval_sets\['x'\]: .*unexpected keyword argument 'schem'.*'schema'"
    ):
        PreferenceDataModule(eval_sets={"x": {"path": "a.jsonl", "schem": "hhh"}})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file not found: .*nope\.jsonl"):
        setup_dm(tmp_path, train=str(tmp_path / "nope.jsonl"))


def test_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", raw="")
    with pytest.raises(
        ValueError, match=r"empty\.jsonl: the data source has no rows \(empty dataset\)"
    ):
        setup_dm(tmp_path, train=path)


def test_corrupt_file(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", raw='{"prompt": "q", "chosen": "a"\n')
    with pytest.raises(
        ValueError,
        match=r"broken\.jsonl, line 1: not valid JSON \(Expecting ',' delimiter at column "
        r"30\); expected valid JSON lines, JSON or Parquet",
    ):
        setup_dm(tmp_path, train=path)


def test_no_usable_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "ties.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "x"}] * 3
    )
    with pytest.raises(
        ValueError,
        match=r"train \(.*ties\.jsonl\): no usable rows: all 3 row\(s\) dropped \(identical=3\)$",
    ):
        setup_dm(tmp_path, train=path, on_bad_row="skip")


# ====================================================================== data options
@pytest.mark.parametrize(
    "option,value,match",
    [
        ("batch_size", 0, "batch_size must be a positive integer, got 0"),
        ("max_length", -5, "max_length must be a positive integer, got -5"),
        ("max_rows", 0, "max_rows must be a positive integer, got 0"),
        ("megabatch_factor", 0, "megabatch_factor must be a positive integer, got 0"),
        ("pad_to_multiple_of", 0, "pad_to_multiple_of must be positive, got 0"),
        ("val_fraction", 1.0, r"val_fraction must be in \[0, 1\), got 1.0"),
        ("on_bad_row", "ignore", "on_bad_row must be 'error' or 'skip', got 'ignore'"),
    ],
)
def test_invalid_data_option(option, value, match):
    with pytest.raises(ValueError, match=match):
        PreferenceDataModule(**{option: value})


# ====================================================================== robust options
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda W: W.TVBall(rho=-0.1), r"rho must be >= 0, got rho=-0.1"),
        (lambda W: W.ChiSquareBall(rho=-1.0), r"rho must be >= 0, got rho=-1.0"),
        (lambda W: W.KLBall(rho=float("nan")), r"rho must be >= 0, got rho=nan"),
        (lambda W: W.KLPenalty(tau=0.0), r"tau must be > 0 \(inf allowed\), got tau=0.0"),
        (lambda W: W.KLPenalty(tau=-1.0), r"tau must be > 0 \(inf allowed\), got tau=-1.0"),
        (lambda W: W.CVaR(alpha=0.0), r"alpha must be in \(0, 1\], got alpha=0.0"),
        (lambda W: W.CVaR(alpha=1.5), r"alpha must be in \(0, 1\], got alpha=1.5"),
        (
            lambda W: W.GroupDRO(num_groups=0),
            r"num_groups must be a positive integer, got num_groups=0",
        ),
        (lambda W: W.GroupDRO(num_groups=2, eta=-1.0), r"eta must be >= 0, got eta=-1.0"),
        (
            lambda W: W.TVBall(rho=0.1, nan_policy="drop"),
            r"unknown nan_policy='drop'; expected one of \['error', 'mask'\]",
        ),
        (lambda W: W.TVBall(rho=0.1, scope="world"), r"unknown scope='world'"),
        (lambda W: W.KLPenalty(tau="hot"), r"tau must be a number, got tau='hot'"),
        (lambda W: W.CVaR(alpha=None), r"alpha must be a number, got alpha=None"),
    ],
)
def test_invalid_radius_or_temperature(make, match):
    import lightning_robust.weighting as W

    with pytest.raises(ValueError, match=match):
        make(W)


def test_tv_radius_above_one():
    from lightning_robust.weighting import TVBall

    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\] for the TV ball"):
        TVBall(rho=40.0)  # a percentage typed for 0.4


def test_radius_not_a_number():
    from lightning_robust.weighting import TVBall

    with pytest.raises(ValueError, match=r"rho must be a number, got rho='abc'"):
        TVBall(rho="abc")


def test_non_finite_losses():
    from lightning_robust.weighting import TVBall

    with pytest.raises(
        ValueError,
        match=r"non-finite losses at positions \[1\]; set nan_policy='mask' to drop them",
    ):
        TVBall(rho=0.2)(torch.tensor([0.1, float("nan"), 0.3]))


def test_empty_batch():
    from lightning_robust.weighting import ERM

    with pytest.raises(ValueError, match="losses is empty: cannot weight an empty batch"):
        ERM()(torch.zeros(0))


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_dpo_beta_not_positive(beta):
    from lightning_robust.modules import DPO

    with pytest.raises(ValueError, match=r"beta must be > 0"):
        DPO(beta=beta)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"lr_schedule": "step"}, "unknown lr_schedule='step'"),
    ],
)
def test_invalid_optimiser_option(kw, match):
    from lightning_robust.modules import RewardModel

    with pytest.raises(ValueError, match=match):
        RewardModel(**kw)


def test_drro_needs_two_generations():
    try:
        from lightning_robust.modules import GRPO
    except ImportError as err:  # the GRPO module is written by another part of the project
        pytest.xfail(f"lightning_robust.modules.GRPO is not importable yet: {err}")
    with pytest.raises(
        ValueError, match=r"shaping='drro_soft' needs num_generations >= 2 .*got num_generations=1"
    ):
        GRPO(num_generations=1, shaping="drro_soft")


# ====================================================================== model / tokenizer
def _fit(module, dm, tmp_path, **trainer_kw):
    from lightning import Trainer

    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        **trainer_kw,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def test_token_ids_outside_the_model_vocab(tmp_path):
    """Data tokenised with MiniLM's tokenizer (30,522 ids) for a tiny Llama (vocab of the tiny
    tokenizer): without the check, an IndexError deep inside the embedding lookup."""
    from lightning_robust.modules import RewardModel

    dm = PreferenceDataModule(
        tokenizer="minilm", synthetic=SyntheticShiftConfig(num_train=16, num_eval=8), batch_size=4
    )
    with pytest.raises(
        ValueError,
        match=r"token id \d+ in the data is outside the model's vocabulary \(input embeddings: \d+ rows\): the data module's tokenizer='minilm' does not match the model",
    ):
        _fit(RewardModel(tiny_config=TINY), dm, tmp_path)


def test_tokenizer_vocab_differs_from_the_model(tmp_path):
    """Ids within range but from another tokenizer: silently wrong tokens without the check."""
    from lightning_robust.modules import RewardModel

    dm = setup_dm(
        tmp_path, tokenizer="tiny", synthetic=SyntheticShiftConfig(num_train=16, num_eval=8)
    )
    module = RewardModel("minilm")
    module.configure_model()
    with pytest.raises(
        ValueError,
        match=r"vocabulary mismatch: the model's tokenizer has 30522 tokens, the data module's \d+ with different ids",
    ):
        dm.check_model_vocab(module)


def _tiny_checkpoint(tmp_path):
    """A real checkpoint of the tiny reward model after one step."""
    from lightning_robust.modules import RewardModel

    dm = PreferenceDataModule(
        synthetic=SyntheticShiftConfig(num_train=16, num_eval=8), batch_size=4
    )
    trainer = _fit(RewardModel(tiny_config=TINY), dm, tmp_path)
    path = tmp_path / "good.ckpt"
    trainer.save_checkpoint(path)
    return path, dm


def test_truncated_checkpoint_on_resume(tmp_path):
    from lightning_robust.modules import RewardModel

    good, dm = _tiny_checkpoint(tmp_path)
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    from lightning import Trainer

    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match=r"checkpoint .*truncated\.ckpt is unreadable"):
        trainer.fit(RewardModel(tiny_config=TINY), datamodule=dm, ckpt_path=str(bad))


def test_missing_checkpoint_on_resume(tmp_path):
    from lightning import Trainer

    from lightning_robust.modules import RewardModel

    dm = PreferenceDataModule(
        synthetic=SyntheticShiftConfig(num_train=16, num_eval=8), batch_size=4
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    with pytest.raises(FileNotFoundError, match=r"Checkpoint file not found: .*nope\.ckpt"):
        trainer.fit(
            RewardModel(tiny_config=TINY), datamodule=dm, ckpt_path=str(tmp_path / "nope.ckpt")
        )


def test_corrupt_reward_checkpoint(tmp_path):
    from lightning_robust.modules.reward_loading import load_reward_scorer

    bad = tmp_path / "rm.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"reward checkpoint .*rm\.ckpt' is unreadable"):
        load_reward_scorer(str(bad))


def test_corrupt_reference_cache(tmp_path, caplog):
    from lightning_robust.modules import reference

    item = {
        "chosen_input_ids": [1, 2],
        "rejected_input_ids": [1, 3],
        "chosen_prompt_len": 1,
        "rejected_prompt_len": 1,
    }
    dataset = [item] * 3
    path = reference.cache_path(tmp_path, "train", reference.data_fingerprint(dataset), "m")
    with open(path, "wb") as f:
        f.write(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="lightning_robust.modules.reference"):
        table, computed = reference.load_or_compute(
            tmp_path, "train", dataset, "m", lambda: torch.ones(3, 2)
        )
    assert computed and table.shape == (3, 2)
    assert any(
        "is unreadable" in r.getMessage() and "recomputing" in r.getMessage()
        for r in caplog.records
    )
    # the garbage was overwritten by a readable cache: the next call reads it back
    again, computed = reference.load_or_compute(
        tmp_path, "train", dataset, "m", lambda: torch.zeros(3, 2)
    )
    assert not computed and torch.equal(again, torch.ones(3, 2))


def test_non_finite_values_leave_the_epoch_metrics_finite():
    """A step skipped under nonfinite='skip' still updates the metrics: its non-finite entries
    are left out (no host sync), so the means are those of the finite entries alone."""
    from lightning_robust.modules.metrics import PairwiseMetrics

    metrics = PairwiseMetrics()
    losses = [
        torch.tensor([0.5, 1.5]),
        torch.tensor([float("nan"), 2.0]),
        torch.tensor([float("inf"), 3.0]),
    ]
    for step in losses:
        metrics.update(step, torch.ones(2), torch.zeros(2), torch.zeros(2))
    finite = torch.cat(losses)[torch.isfinite(torch.cat(losses))]
    assert metrics.compute("train/")["train/loss"].item() == pytest.approx(finite.mean().item())


# ====================================================================== configuration
def _cli_error(args, capsys) -> str:
    from lightning_robust.cli import build_cli

    with pytest.raises(SystemExit) as exit_info:
        build_cli(args, run=False)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


QUICKSTART = [
    "--config",
    str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"),
]


def test_unknown_config_key_of_a_class(capsys):
    err = _cli_error([*QUICKSTART, "--data.init_args.batchsize=8"], capsys)
    assert "Problem with given class_path 'lightning_robust.data.PreferenceDataModule'" in err
    assert "Option 'batchsize' is not accepted" in err


def test_unknown_trainer_key(capsys):
    err = _cli_error([*QUICKSTART, "--trainer.max_epoks=1"], capsys)
    assert "error: unrecognized arguments: --trainer.max_epoks=1" in err


def test_unknown_key_in_python():
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        PreferenceDataModule(batchsize=8)


# ====================================================================== CLI level (one line, exit 2)
# Every row of docs/bad_inputs.md through ``lightning_robust.cli.main`` in this process: the
# output ends with ONE line ``error: <cause>``, exit status 2, no traceback, no Namespace dump.
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI_TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}


def _base_config(root: Path) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(root),
        },
        "model": {
            "class_path": "lightning_robust.modules.RewardModel",
            "init_args": {"model_name_or_path": "tiny", "tiny_config": CLI_TINY},
        },
        "data": {
            "class_path": "lightning_robust.data.PreferenceDataModule",
            "init_args": {
                "train": "synthetic",
                "batch_size": 4,
                "max_length": 48,
                "cache_dir": str(root / "cache"),
                "synthetic": {"num_train": 16, "num_eval": 4, "seed": 1},
            },
        },
    }


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """The base config and a real checkpoint of it (one step), shared by the CLI cases."""
    from lightning_robust.cli import main

    root = tmp_path_factory.mktemp("cli_bad_inputs")
    config = root / "base.yaml"
    config.write_text(yaml.safe_dump(_base_config(root)))
    main(["fit", "--config", str(config)])
    (ckpt,) = (root / "checkpoints").glob("*.ckpt")
    torch.use_deterministic_algorithms(False)
    return {"config": str(config), "ckpt": ckpt, "root": root}


def cli_error_line(args, capsys, subcommand="fit", config=None, env=None) -> str:
    """Run the CLI; assert exit 2 with one ``error:`` line last and no traceback; return it."""
    from lightning_robust.cli import main

    with pytest.raises(SystemExit) as info:
        main([subcommand, "--config", config or env["config"], *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err[-2000:]
    assert "Traceback" not in err and "Namespace(" not in err
    assert "weights_only=False" not in err
    return last


def _rows_file(tmp_path, bad_row, name="data.jsonl"):
    return "--data.init_args.train=" + bad_file(tmp_path, bad_row, name=name)


TOO_LONG = {"prompt": "q", "chosen": " ".join(["word"] * 80), "rejected": "b"}

# id -> (args builder(tmp_path, env), regex of the error line)
CLI_CASES = {
    "missing field": (
        lambda t, e: [_rows_file(t, {"prompt": "q", "chosen": "a"})],
        r"data\.jsonl, row 2 \(0-based\): field 'rejected': is missing \[missing\]",
    ),
    "empty field": (
        lambda t, e: [_rows_file(t, {"prompt": "q", "chosen": " ", "rejected": "b"})],
        r"row 2 \(0-based\): field 'chosen': is empty \[empty\]",
    ),
    "wrong type": (
        lambda t, e: [_rows_file(t, {"prompt": "q", "chosen": 5, "rejected": "b"})],
        r"field 'chosen': expected a string, got int \[wrong_type\]",
    ),
    "identical": (
        lambda t, e: [_rows_file(t, {"prompt": "q", "chosen": "s", "rejected": " s "})],
        r"\[identical\]",
    ),
    "too long": (
        lambda t, e: [_rows_file(t, TOO_LONG), "--data.init_args.max_length=32"],
        r"> max_length=32 \[too_long\]",
    ),
    "bad label": (
        lambda t, e: [
            "--data.init_args.train="
            + write_jsonl(
                t / "pairs.jsonl",
                [
                    {
                        "input": f"q{i}",
                        "output_1": "a",
                        "output_2": "b",
                        "label": 3 if i == 3 else 1,
                    }
                    for i in range(4)
                ],
            )
        ],
        r"pairs\.jsonl, row 3 \(0-based\): field 'label': expected 1 or 2, got 3",
    ),
    "non-finite margin": (
        lambda t, e: [
            _rows_file(t, {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "NaN"})
        ],
        r"field 'margin': expected a finite number",
    ),
    "malformed JSON line": (
        lambda t, e: [
            "--data.init_args.train="
            + write_jsonl(
                t / "m.jsonl",
                raw='{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a" "chosen": "b"}\n',
            )
        ],
        r"m\.jsonl, line 2: not valid JSON \(Expecting ',' delimiter at column 16\)",
    ),
    "non-JSON .jsonl": (
        lambda t, e: [
            "--data.init_args.train=" + write_jsonl(t / "n.jsonl", raw="this is not json\n")
        ],
        r"n\.jsonl, line 1: not valid JSON",
    ),
    "unsupported existing file": (
        lambda t, e: ["--data.init_args.train=" + write_jsonl(t / "d.txt", raw="x\n")],
        r"d\.txt is not a supported data file \(expected \.json, \.jsonl or \.parquet",
    ),
    "unsupported file in a config": (
        lambda t, e: [
            "--config",
            _yaml(t, {"data": {"init_args": {"train": write_jsonl(t / "d.csv", raw="a,b\n")}}}),
        ],
        r"d\.csv is not a supported data file",
    ),
    "missing data file": (
        lambda t, e: [f"--data.init_args.train={t / 'nope.jsonl'}"],
        r"data file not found: .*nope\.jsonl",
    ),
    "empty data file": (
        lambda t, e: ["--data.init_args.train=" + write_jsonl(t / "empty.jsonl", raw="")],
        r"empty\.jsonl: the data source has no rows \(empty dataset\)",
    ),
    "unknown schema": (
        lambda t, e: [
            "--data.init_args.train="
            + write_jsonl(t / "odd.jsonl", [{"question": "q", "answer": "a"}])
        ],
        r"odd\.jsonl: cannot detect the data schema: columns found \['answer', 'question'\]",
    ),
    "unknown schema name": (
        lambda t, e: [
            "--config",
            _yaml(
                t,
                {
                    "data": {
                        "init_args": {
                            "train": {
                                "path": write_jsonl(t / "d.jsonl", good_rows(4)),
                                "schema": "nope",
                            }
                        }
                    }
                },
            ),
        ],
        r"unknown schema 'nope'",
    ),
    "no usable rows, with counts": (
        lambda t, e: [
            "--data.init_args.train=" + write_jsonl(t / "long.jsonl", [TOO_LONG] * 3),
            "--data.init_args.on_bad_row=skip",
            "--data.init_args.max_length=32",
        ],
        r"train \(.*long\.jsonl\): no usable rows: all 3 row\(s\) dropped \(too_long=3\)$",
    ),
    "all rows identical under skip": (
        lambda t, e: [
            "--data.init_args.train="
            + write_jsonl(t / "same.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}] * 2),
            "--data.init_args.on_bad_row=skip",
        ],
        r"same\.jsonl\): no usable rows: all 2 row\(s\) dropped \(identical=2\)$",
    ),
    "unknown source field in eval_sets": (
        lambda t, e: [
            "--config",
            _yaml(
                t,
                {"data": {"init_args": {"eval_sets": {"x": {"path": "a.jsonl", "schem": "hhh"}}}}},
            ),
        ],
        r"Parser key \"eval_sets\": .*class_path 'lightning_robust\.data\.DataSource': Option 'schem' is not accepted",
    ),
    "weighting class_path not a weighting": (
        lambda t, e: ["--model.init_args.weighting=os.system"],
        r"Parser key \"weighting\": .*os\.system.* does not correspond to a subclass of RobustWeighting$",
    ),
    "missing config file": (lambda t, e: ["--config", str(t / "nope.yaml")], r"nope\.yaml"),
    "batch_size 0": (
        lambda t, e: ["--data.init_args.batch_size=0"],
        r"^error: batch_size must be a positive integer, got 0$",
    ),
    "max_length 0": (
        lambda t, e: ["--data.init_args.max_length=0"],
        r"^error: max_length must be a positive integer, got 0$",
    ),
    "val_fraction 1": (
        lambda t, e: ["--data.init_args.val_fraction=1.0"],
        r"val_fraction must be in \[0, 1\), got 1\.0",
    ),
    "on_bad_row": (
        lambda t, e: ["--data.init_args.on_bad_row=ignore"],
        r"Expected a typing\.Literal\['error', 'skip'\]\. Got value: ignore",
    ),
    "negative radius": (
        lambda t, e: [
            "--model.init_args.weighting=lightning_robust.weighting.TVBall",
            "--model.init_args.weighting.rho=-0.1",
        ],
        r"rho must be >= 0, got rho=-0\.1",
    ),
    "TV radius above 1": (
        lambda t, e: [
            "--model.init_args.weighting=lightning_robust.weighting.TVBall",
            "--model.init_args.weighting.rho=40",
        ],
        r"rho must be in \[0, 1\] for the TV ball",
    ),
    "GroupDRO groups 0": (
        lambda t, e: [
            "--model.init_args.weighting=lightning_robust.weighting.GroupDRO",
            "--model.init_args.weighting.num_groups=0",
        ],
        r"num_groups must be a positive integer",
    ),
    "negative learning rate": (
        lambda t, e: ["--model.init_args.learning_rate=-1.0"],
        r"^error: learning_rate must be > 0, got learning_rate=-1\.0$",
    ),
    "unknown lr schedule": (
        lambda t, e: ["--model.init_args.lr_schedule=step"],
        r"Parser key \"model\": Problem with given class_path 'lightning_robust\.modules\.RewardModel': "
        r"Parser key \"lr_schedule\": Expected a typing\.Literal\['cosine', 'linear', 'constant'\]\. Got value: step$",
    ),
    "missing model directory": (
        lambda t, e: [f"--model.init_args.model_name_or_path={t / 'no_model'}"],
        r"^error: model directory not found: .*no_model \(a local path",
    ),
    "relative missing model directory": (
        lambda t, e: ["--model.init_args.model_name_or_path=./models/nope"],
        r"model directory not found: \./models/nope",
    ),
    "max_epochs 0": (
        lambda t, e: ["--trainer.max_epochs=0", "--trainer.max_steps=-1"],
        r"^error: trainer\.max_epochs=0: fit would train nothing",
    ),
    "max_steps 0": (
        lambda t, e: ["--trainer.max_steps=0"],
        r"trainer\.max_steps=0: fit would train nothing",
    ),
    "limit_train_batches 0": (
        lambda t, e: ["--trainer.limit_train_batches=0"],
        r"trainer\.limit_train_batches=0: fit would train nothing",
    ),
    "missing checkpoint": (
        lambda t, e: [f"--ckpt_path={t / 'nope.ckpt'}"],
        r"Checkpoint file not found: .*nope\.ckpt",
    ),
    "truncated checkpoint": (
        lambda t, e: [f"--ckpt_path={_truncated(t, e)}"],
        r"^error: checkpoint .*truncated\.ckpt is unreadable \(truncated or corrupt",
    ),
    "garbage checkpoint": (
        lambda t, e: [f"--ckpt_path={_garbage(t)}"],
        r"checkpoint .*garbage\.ckpt is unreadable",
    ),
    "checkpoint already at max_steps": (
        lambda t, e: [f"--ckpt_path={e['ckpt']}"],
        r"is at step 1, and trainer\.max_steps=1: fit would train nothing",
    ),
    "checkpoint of another backbone": (
        lambda t, e: [
            f"--ckpt_path={e['ckpt']}",
            "--trainer.max_steps=2",
            "--model.init_args.model_name_or_path=minilm",
        ],
        r"does not match the configured model \(model_name_or_path 'tiny' in the "
        r"checkpoint, 'minilm' configured\).*--trust_checkpoint_config=true",
    ),
    "model options beside a trusted checkpoint": (
        lambda t, e: [
            f"--ckpt_path={e['ckpt']}",
            "--trainer.max_steps=2",
            "--trust_checkpoint_config=true",
            "--model.init_args.learning_rate=0.1",
        ],
        r"the model options given beside it \(--model\.init_args\.learning_rate\) would be ignored",
    ),
}


def _yaml(tmp_path, extra: dict) -> str:
    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump(extra))
    return str(path)


def _truncated(tmp_path, env) -> str:
    good = env["ckpt"]
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return str(bad)


def _garbage(tmp_path) -> str:
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    return str(bad)


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_reports_the_cause_in_one_line(case, cli_env, tmp_path, capsys):
    build, pattern = CLI_CASES[case]
    line = cli_error_line(build(tmp_path, cli_env), capsys, env=cli_env)
    assert re.search(pattern, line), line


def test_cli_checkpoint_of_another_module_class(cli_env, capsys):
    config = str(ROOT / "configs" / "dpo" / "tiny_dpo.yaml")
    line = cli_error_line(
        [f"--ckpt_path={cli_env['ckpt']}"], capsys, subcommand="validate", config=config
    )
    assert re.search(
        r"module class lightning_robust\.modules\.RewardModel in the checkpoint, "
        r"lightning_robust\.modules\.DPO configured",
        line,
    ), line


def test_cli_checkpoint_settings_that_differ_are_applied_and_listed(cli_env, caplog):
    from lightning_robust.cli import main

    with caplog.at_level(logging.WARNING, logger="lightning_robust.cli_errors"):
        main(
            [
                "validate",
                "--config",
                cli_env["config"],
                f"--ckpt_path={cli_env['ckpt']}",
                "--model.init_args.learning_rate=0.5",
            ]
        )
    assert "learning_rate=0.5 (checkpoint: 1e-05)" in caplog.text


def test_cli_debug_env_keeps_the_traceback(cli_env, monkeypatch):
    from lightning_robust.cli import main

    monkeypatch.setenv("LIGHTNING_ROBUST_DEBUG", "1")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        main(["fit", "--config", cli_env["config"], "--data.init_args.batch_size=0"])


def test_cli_a_bug_keeps_its_traceback(cli_env, monkeypatch):
    from lightning_robust.cli import main
    from lightning_robust.data import PreferenceDataModule as DM

    def broken(self, stage=None):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(DM, "setup", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["fit", "--config", cli_env["config"]])


assert signal  # imported for the fault cases below
