"""On-policy pair building (lightning_robust.pipelines.build_pairs): a tiny random-init policy,
a project-trained tiny reward model (a RewardModel checkpoint), a multi-objective head."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lightning_robust.pipelines.build_pairs import build_pairs, main, select_pairs

PROMPTS = [
    {"prompt": f"please explain the {w} to me"}
    for w in ["weather", "music", "garden", "river", "market", "school"]
]


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    """A tiny reward model trained for two steps by the project (RewardModel + Trainer)."""
    from lightning import Trainer

    from lightning_robust.data import PreferenceDataModule
    from lightning_robust.data.synthetic import SyntheticShiftConfig
    from lightning_robust.modules import RewardModel

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("rm")
    module = RewardModel(optimizer={"learning_rate": 1e-3})
    dm = PreferenceDataModule(
        batch_size=8,
        max_length=48,
        synthetic=SyntheticShiftConfig(num_train=16, num_eval=8, seed=0),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp,
    )
    trainer.fit(module, datamodule=dm)
    path = tmp / "rm.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture()
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return str(path)


def _multi_objective_dir(tmp_path):
    from transformers import LlamaForSequenceClassification

    from lightning_robust.models.tiny import tiny_llama_config, tiny_tokenizer

    tok = tiny_tokenizer()
    config = tiny_llama_config(len(tok), tok.pad_token_id)
    config.num_labels = 2
    config.id2label = {0: "helpfulness", 1: "safety"}
    config.label2id = {"helpfulness": 0, "safety": 1}
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(config)
    out = tmp_path / "multi"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), model, tok


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_builds_max_min_pairs_scored_by_each_reward_model(tmp_path, prompt_file, trained_rm):
    from lightning_robust.modules.reward_loading import load_reward_scorer

    multi_dir, multi_model, tok = _multi_objective_dir(tmp_path)
    out = tmp_path / "pairs.jsonl"
    objectives = {"helpfulness": 0.75, "safety": 0.25}
    build_pairs(
        prompt_file,
        "tiny",
        [trained_rm, {"path": multi_dir, "objectives": objectives}],
        out,
        num_samples=4,
        max_new_tokens=8,
        batch_size=4,
        reward_weights=[1.0, 0.5],
        seed=0,
    )
    rows = _rows(out)
    samples = [json.loads(line) for line in open(str(out) + ".samples.jsonl")]
    assert len(samples) == len(PROMPTS) and all(len(s["completions"]) == 4 for s in samples)
    assert 1 <= len(rows) <= len(PROMPTS)
    # independent recomputation: the trained reward model and the weighted multi-objective head
    rm = load_reward_scorer(trained_rm)
    for row in rows:
        r_c = rm.score([row["prompt"]], [row["chosen"]]).item()
        r_r = rm.score([row["prompt"]], [row["rejected"]]).item()
        assert row["chosen_scores"][0] == pytest.approx(r_c, abs=1e-4)
        assert row["rejected_scores"][0] == pytest.approx(r_r, abs=1e-4)
        assert row["chosen_score"] == pytest.approx(
            row["chosen_scores"][0] + 0.5 * row["chosen_scores"][1]
        )
        assert row["chosen_score"] > row["rejected_score"]
        sample = next(s for s in samples if s["source_row"] == row["source_row"])
        combined = [s[0] + 0.5 * s[1] for s in sample["scores"]]
        nonempty = [c for c, t in zip(combined, sample["completions"], strict=True) if t.strip()]
        assert row["chosen_score"] == pytest.approx(max(nonempty)) and row[
            "rejected_score"
        ] == pytest.approx(min(nonempty))
    # the multi-objective score is the weighted sum of the named outputs
    row = rows[0]
    enc = tok(row["prompt"] + row["chosen"], return_tensors="pt")
    with torch.no_grad():
        logits = multi_model.eval()(**enc).logits[0]
    expected = 0.75 * logits[0] + 0.25 * logits[1]
    assert row["chosen_scores"][1] == pytest.approx(
        expected.item(), abs=0.05
    )  # rendering may differ slightly

    # the output is preference data the data module reads
    from lightning_robust.data import PreferenceDataModule

    dm = PreferenceDataModule(train=str(out), val=str(out), max_length=64, batch_size=2)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == len(rows)


def test_cache_hit_and_resume_give_the_same_rows(tmp_path, prompt_file, trained_rm):
    out = tmp_path / "pairs.jsonl"
    kwargs = dict(num_samples=3, max_new_tokens=6, batch_size=2, seed=3)
    build_pairs(prompt_file, "tiny", [trained_rm], out, **kwargs)
    first = out.read_text()
    meta = json.loads(open(str(out) + ".meta.json").read())
    assert meta["done"] and meta["prompts"] == len(PROMPTS)
    mtime = out.stat().st_mtime_ns
    build_pairs(prompt_file, "tiny", [trained_rm], out, **kwargs)  # cache hit: nothing rewritten
    assert out.stat().st_mtime_ns == mtime
    # an interrupted run: only the first batch (2 prompts) was written, plus a torn line
    samples = open(str(out) + ".samples.jsonl").read().splitlines()
    with open(str(out) + ".samples.jsonl", "w") as f:
        f.write("\n".join(samples[:2]) + "\n" + samples[2][:10])
    meta["done"] = False
    open(str(out) + ".meta.json", "w").write(json.dumps(meta))
    out.unlink()
    build_pairs(prompt_file, "tiny", [trained_rm], out, **kwargs)
    assert out.read_text() == first  # resumed batches were sampled with the same seeds
    # a changed setting is a new fingerprint: everything is redone
    build_pairs(prompt_file, "tiny", [trained_rm], out, **{**kwargs, "seed": 4})
    assert json.loads(open(str(out) + ".meta.json").read())["seed"] == 4


def test_all_pairs_and_pair_selection():
    pairs, skipped = select_pairs([0.1, 0.5, 0.3, 0.5], ["a", "b", "c", "b2"], "max_min")
    assert pairs == [(1, 0)] and not skipped  # first maximiser, the minimiser
    pairs, _ = select_pairs([0.1, 0.5, 0.3], ["a", "b", "c"], "all")
    assert sorted(pairs) == [(1, 0), (1, 2), (2, 0)]
    pairs, skipped = select_pairs([1.0, 1.0, 2.0], ["", " ", "x"], "max_min")
    assert (
        pairs == []
        and skipped["empty_completion"] == 2
        and skipped["fewer_than_2_completions"] == 1
    )
    pairs, skipped = select_pairs([0.2, 0.2], ["x", "y"], "max_min")
    assert pairs == [] and skipped["all_scores_equal"] == 1


def test_bad_inputs_name_the_option(tmp_path, prompt_file, trained_rm):
    from transformers import LlamaForSequenceClassification

    from lightning_robust.models.tiny import tiny_llama_config
    from lightning_robust.modules.reward_loading import load_reward_scorer

    out = tmp_path / "p.jsonl"
    for k in (1, 0, 2.5):
        with pytest.raises(ValueError, match=r"num_samples \(K\) must be an integer >= 2"):
            build_pairs(prompt_file, "tiny", [trained_rm], out, num_samples=k)
    with pytest.raises(ValueError, match="reward_weights has 2 entries"):
        build_pairs(prompt_file, "tiny", [trained_rm], out, reward_weights=[1, 2])
    # a bare module gets the policy's tokens: its vocabulary must cover them
    small = LlamaForSequenceClassification(tiny_llama_config(50, 0))
    with pytest.raises(
        ValueError, match=r"reward_models\[0\]: its vocabulary \(50 tokens\) differs"
    ):
        build_pairs(prompt_file, "tiny", [small], out)
    # require_same_tokenizer: a reward model with another vocabulary is refused by name
    other = load_reward_scorer("tiny")
    other.tokenizer = copy.deepcopy(other.tokenizer)
    other.tokenizer.add_tokens(["zzzextra"])
    with pytest.raises(
        ValueError, match=r"reward_models\[1\]: its tokenizer .* differs from the policy's"
    ):
        build_pairs(prompt_file, "tiny", [trained_rm, other], out, require_same_tokenizer=True)
    multi_dir, *_ = _multi_objective_dir(tmp_path)
    with pytest.raises(ValueError, match=r"objectives \['honesty'\] are not outputs"):
        build_pairs(prompt_file, "tiny", [{"path": multi_dir, "objectives": {"honesty": 1.0}}], out)


def test_command_line(tmp_path, prompt_file, trained_rm, capsys):
    out = tmp_path / "cli.parquet"
    assert (
        main(
            [
                "--prompts",
                prompt_file,
                "--policy",
                "tiny",
                "--reward-model",
                trained_rm,
                "--output",
                str(out),
                "-k",
                "2",
                "--max-new-tokens",
                "4",
                "--pairing",
                "all",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows >= 1
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--prompts",
                prompt_file,
                "--policy",
                "tiny",
                "--reward-model",
                trained_rm,
                "--output",
                str(out),
                "-k",
                "1",
            ]
        )
    assert exc.value.code == 2 and "num_samples (K)" in capsys.readouterr().err


def test_cache_fingerprint_is_stable(tmp_path, prompt_file):
    """The fingerprint of a fixed set of inputs is pinned: a refactor that changed it would turn
    every cache users already wrote into a miss (value printed by the code before build_pairs was
    split into steps)."""
    out = tmp_path / "pin.jsonl"
    build_pairs(
        prompt_file, "tiny", ["tiny"], out, num_samples=2, max_new_tokens=3, batch_size=3, seed=5
    )
    meta = json.loads(open(str(out) + ".meta.json").read())
    assert meta["fingerprint"] == "ba197018afe9442171c1895ba56f543c"
    assert (meta["done"], meta["prompts"]) == (True, len(PROMPTS))
