"""Exp 3 (S004 distillation with learned reward models): the quick form in process, the annotated
columns against an independent recomputation, and validation-only selection in its report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.robustness import exp3_distillation as exp3


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp3")
    out = root / "exp3.json"
    payload = exp3.main(["--quick", "--out", str(out), "--work-dir", str(root / "work")])
    return payload, out, root / "work"


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _folder(work, seed):
    (folder,) = work.glob(f"bias0.9-seed{seed}-*")
    return folder


def test_quick_form_records_and_claims(quick):
    payload, out, _ = quick
    assert payload["complete"] and json.loads(out.read_text())["records"] == payload["records"]
    seeds = list(exp3.QUICK_SEEDS)
    kinds = {}
    for r in payload["records"]:
        kinds.setdefault(r.get("kind", "policy"), []).append(r)
    assert sorted(r["seed"] for r in kinds["data"]) == seeds
    assert sorted((r["seed"], r["method"]) for r in kinds["reward_model"]) == sorted(
        (s, f"RM {n}") for s in seeds for n in exp3.RM_NAMES
    )
    assert sorted((r["seed"], r["method"]) for r in kinds["policy"]) == sorted(
        (s, m.name) for s in seeds for m in exp3.QUICK_METHODS
    )
    for r in kinds["policy"]:
        for key in ("val", "test", "shorter_better", "prefers_longer"):
            assert 0.0 <= r[key] <= 1.0
    # the ensemble's subsets hold the length biases they were resampled to
    for d in kinds["data"]:
        for target in exp3.ENSEMBLE_BIASES:
            n = d["rows"][f"subset{target:g}"]
            assert abs(d["chosen_longer"][f"subset{target:g}"] - target) <= 1.0 / n
    body, claims = exp3.render(payload)
    assert "Learned reward models" in body and "Partial run" not in body
    assert {c["comparison"] for c in claims} == {"d-DPO vs DPO", "e-DPO vs DPO"}
    chosen = {(r["seed"], r["method"]): r["test"] for r in kinds["policy"]}
    for c in claims:
        method = c["comparison"].split(" vs ")[0]
        diffs = [chosen[(s, method)] - chosen[(s, "DPO")] for s in seeds]
        assert c["n"] == 2 and math.isclose(c["mean"], sum(diffs) / 2, abs_tol=1e-12)
        assert c["verdict"] == (
            "reproduces" if c["lo"] > 0 else "reversed" if c["hi"] < 0 else "not shown"
        )


def test_all_methods_train_on_the_same_pairs_without_the_true_reward(quick):
    _, _, work = quick
    folder = _folder(work, 0)
    train = _rows(folder / "train.jsonl")
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in train)
    for name in ("distill", "ensemble"):
        annotated = _rows(folder / f"{name}.jsonl")
        assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in annotated] == train


def test_annotated_columns_are_the_learned_reward_models_scores(quick):
    """Recompute every annotated score from the saved checkpoints, one unpadded sequence at a
    time through the backbone (not the annotation's scorer, batching or cache)."""
    from lightning_robust.data.example import PreferenceExample
    from lightning_robust.data.tokenize import encode_examples
    from lightning_robust.modules import RewardModel

    _, _, work = quick
    folder = _folder(work, 1)
    for name, models in (("distill", ["all"]), ("ensemble", list(exp3.RM_NAMES[1:]))):
        rows = _rows(folder / f"{name}.jsonl")
        for k, rm in enumerate(models):
            module = RewardModel.load_from_checkpoint(
                folder / f"rm_{rm}.ckpt", map_location="cpu", weights_only=True
            ).eval()
            examples = [PreferenceExample(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
            encoded = encode_examples(examples, module.tokenizer, exp3.MAX_LENGTH, None, False)
            with torch.no_grad():
                for row, enc in zip(rows, encoded, strict=True):
                    for side, ids in (
                        ("chosen", enc.chosen_input_ids),
                        ("rejected", enc.rejected_input_ids),
                    ):
                        score = module.backbone(input_ids=torch.tensor([ids])).logits[0, 0].item()
                        assert len(row[f"{side}_scores"]) == len(models)
                        assert row[f"{side}_scores"][k] == pytest.approx(score, abs=1e-5)
        # the scores are not constant (a learned model, not a placeholder)
        assert len({round(r["chosen_scores"][0], 4) for r in rows}) > len(rows) // 2


def test_biased_subset_shares_and_errors():
    rows = [{"chosen": "a b c", "rejected": "a"}] * 90 + [{"chosen": "a", "rejected": "a b c"}] * 10
    for target, size in ((0.2, 12), (0.5, 20), (0.8, 50)):
        sub = exp3.biased_subset(rows, target, seed=0)
        assert len(sub) == size
        assert sum(map(exp3.chosen_longer, sub)) / len(sub) == pytest.approx(target, abs=1 / size)
    with pytest.raises(ValueError, match="target length bias"):
        exp3.biased_subset(rows, 1.0, seed=0)


def test_selection_ignores_test_metrics():
    """The report picks each seed's grid point and epoch by validation accuracy alone: the best
    test accuracy sitting at a worse validation point is never reported."""
    exp = exp3.experiment(False, [0, 1, 2])
    records = []
    for seed in exp.seeds:
        for m in exp.methods:
            for i, cfg in enumerate(m.grid_points()):
                for epoch in (1, 2):
                    best = i == 1 and epoch == 1  # the validation-best point
                    records.append(
                        {
                            "method": m.name,
                            "config": cfg,
                            "seed": seed,
                            "length_bias": 0.9,
                            "epoch": epoch,
                            "val": 0.8 if best else 0.7,
                            "test": (0.6 + 0.01 * seed) if best else 0.99,
                            "shorter_better": 0.5,
                            "prefers_longer": 0.5,
                        }
                    )
    payload = {
        "experiment": exp.name,
        "command": "python -m x",
        "protocol": exp.declaration(),
        "complete": True,
        "records": records,
    }
    body, claims = exp3.render(payload)
    assert "0.99" not in body and "0.610 ± 0.010" in body
    assert all(c["mean"] == pytest.approx(0.0) for c in claims)


def test_every_declared_family_maps_to_module_options_and_a_training_file():
    """p-DPO and dp-DPO share the pessimism term and differ only in the loss on the labels: p-DPO
    trains on the preference file (no reward model), dp-DPO on the distillation targets."""
    for method in exp3.METHODS:
        point = method.grid_points()[0]
        options = exp3.dpo_options(method.family, point, 0.1)
        assert exp3.TRAIN_FILE[method.family] in ("train", "distill", "ensemble")
        assert options["loss_type"] in ("dpo", "ipo", "distill")
    p_dpo = exp3.dpo_options("dpo_kl", {"gamma": 0.2}, 0.1)
    dp_dpo = exp3.dpo_options("distill_kl", {"gamma": 0.2}, 0.1)
    assert p_dpo == {**dp_dpo, "loss_type": "dpo"} and p_dpo["kl_gamma_start"] == 0.2
    assert (exp3.TRAIN_FILE["dpo_kl"], exp3.TRAIN_FILE["distill_kl"]) == ("train", "distill")
    with pytest.raises(ValueError, match="unknown method family"):
        exp3.dpo_options("pdpo", {}, 0.1)
