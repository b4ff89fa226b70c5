"""The paper recipes match the table of paper values in docs/recipes.md (one place), so a recipe
that drifts from its paper fails; every listed value carries a source comment in its YAML."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "recipes.md"


def recipe_rows() -> list[tuple[str, str, str, str]]:
    """``(recipe, key, value, source)`` rows between the recipe-table markers."""
    text = TABLE.read_text()
    body = text.split("<!-- recipe-table:start -->", 1)[1].split("<!-- recipe-table:end -->", 1)[0]
    rows = []
    for line in body.strip().splitlines()[2:]:  # skip the header and the rule
        cells = [
            c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))
        ]
        assert len(cells) == 4, f"docs/recipes.md: malformed row {line!r}"
        rows.append(tuple(cells))
    return rows


def lookup(config, key: str):
    """The value at the dotted ``key`` (``init_args`` implied; ``name[Class]`` picks a list item)."""
    node = config
    for part in key.split("."):
        match = re.fullmatch(r"(\w+)\[(\w+)\]", part)
        name = match.group(1) if match else part
        if isinstance(node, dict) and name not in node and "init_args" in node:
            node = node["init_args"]
        if not isinstance(node, dict) or name not in node:
            raise KeyError(f"{key}: no {name!r}")
        node = node[name]
        if match:
            items = [i for i in node if str(i.get("class_path", "")).endswith("." + match.group(2))]
            if len(items) != 1:
                raise KeyError(f"{key}: {len(items)} entries of class {match.group(2)}")
            node = items[0]
    return node


def same(actual, expected) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual == expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(actual, expected, rel_tol=1e-12)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(
            same(a, e) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(expected, dict) and isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in expected
        )
    return actual == expected


ROWS = recipe_rows()


def test_the_table_covers_every_paper_recipe():
    recipes = {r[0] for r in ROWS}
    expected = {
        "reward/btl",
        "reward/dr_tv",
        "reward/dr_chi2",
        "dpo/dpo",
        "dpo/dr_dpo_tv",
        "dpo/kldpo",
        "dpo/wdpo",
        "ppo/dr_ppo",
        "grpo/drro_grpo",
        "eval/seed000_policy",
        "eval/seed002_leaderboard",
    }
    assert expected <= recipes
    assert all(source for *_, source in ROWS), "every row names its source"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r[0]}:{r[1]}")
def test_recipe_value_matches_the_paper_table(row):
    recipe, key, value, _source = row
    path = ROOT / "configs" / f"{recipe}.yaml"
    text = path.read_text()
    actual = lookup(yaml.safe_load(text), key)
    expected = yaml.safe_load(value)
    assert same(actual, expected), (
        f"configs/{recipe}.yaml {key} = {actual!r}; docs/recipes.md says {expected!r}"
    )
    # the YAML line that sets the value (or the comment line just above it) names its source
    leaf = key.split(".")[-1].split("[")[0]
    lines = text.splitlines()
    hits = [i for i, ln in enumerate(lines) if re.search(rf"(^|[\s{{,-]){leaf}:", ln.split("#")[0])]
    commented = [
        i for i in hits if "#" in lines[i] or (i and lines[i - 1].lstrip().startswith("#"))
    ]
    assert commented, f"configs/{recipe}.yaml: no source comment on the {leaf!r} line"


def test_lookup_reads_nested_and_selected_entries():
    config = {
        "model": {"class_path": "a.B", "init_args": {"weighting": {"init_args": {"rho": 0.2}}}},
        "trainer": {
            "callbacks": [{"class_path": "x.Foo", "init_args": {"k": 1}}, {"class_path": "x.Bar"}]
        },
    }
    assert lookup(config, "model.weighting.rho") == 0.2
    assert lookup(config, "trainer.callbacks[Foo].k") == 1
    with pytest.raises(KeyError):
        lookup(config, "model.beta")
    assert same([0.9, 0.95], [0.9, 0.95]) and not same(0.3, 0.2) and not same("1", 1)


def test_adam_betas_reach_the_optimizer(tmp_path, monkeypatch):
    """The KLDPO recipe's Adam betas arrive in the module's optimizer options and its AdamW (the
    recipe builds on CPU); betas outside [0, 1) are refused by torch with the option named."""
    import torch

    from lightning_robust.cli import build_cli
    from lightning_robust.modules.optim import OptimizerOptions, build_optimizer

    monkeypatch.chdir(tmp_path)
    cpu = [
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.num_nodes=1",
    ]
    cli = build_cli(["--config", str(ROOT / "configs" / "dpo" / "kldpo.yaml"), *cpu], run=False)
    options = cli.model.optimizer_options
    assert options.name == "AdamW" and tuple(options.kwargs["betas"]) == (0.9, 0.95)
    assert cli.trainer.gradient_clip_val == 1.0
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], options, total_steps=10)[
        "optimizer"
    ]
    assert tuple(opt.param_groups[0]["betas"]) == (0.9, 0.95)
    with pytest.raises(ValueError, match="beta"):
        bad = OptimizerOptions(learning_rate=1e-3, kwargs={"betas": (0.9, 1.5)})
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], bad, total_steps=10)
