"""Security: remote code stays off unless configured, checkpoints and caches load with
``weights_only=True``, and no configuration value is evaluated as code (docs/bad_inputs.md,
"Security").

Static checks parse the source (``ast``) of everything that ships: ``lightning_robust/``,
``callbacks/``, ``evals/`` and ``cli.py``; behavioural checks run the loaders with the Hugging
Face entry points replaced by recorders, and feed a checkpoint holding a pickle payload to the
resume and loading paths.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import io
import pkgutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "lightning_robust", REPO / "callbacks", REPO / "evals", REPO / "cli.py"]
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def python_files(roots):
    for root in roots:
        yield from ([root] if root.is_file() else sorted(root.rglob("*.py")))


def calls(roots):
    """``(file, line, dotted name of the callee, call node)`` of every call in ``roots``."""
    return [c for path in python_files(roots) for c in file_calls(path)]


@functools.cache
def file_calls(path: Path) -> tuple:
    tree = ast.parse(path.read_text(), filename=str(path))
    return tuple(
        (path.relative_to(REPO), node.lineno, dotted(node.func), node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    )


def dotted(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    else:  # a call on an expression, e.g. copy.deepcopy(m).eval(): not a global name
        parts.append("<expr>")
    return ".".join(reversed(parts))


def keyword(node: ast.Call, name: str):
    """The keyword's AST value, ``None`` when absent."""
    return next((k.value for k in node.keywords if k.arg == name), None)


def is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


# ====================================================================== trust_remote_code
def test_no_shipped_code_turns_remote_code_on():
    on = [
        f"{f}:{line}"
        for f, line, _, node in calls(SHIPPED)
        if is_true(keyword(node, "trust_remote_code"))
    ]
    assert on == []


def test_every_trust_remote_code_parameter_defaults_to_false():
    import lightning_robust

    seen = []
    for info in pkgutil.walk_packages(lightning_robust.__path__, "lightning_robust."):
        spec = importlib.util.find_spec(info.name)
        if spec.origin is None or "trust_remote_code" not in Path(spec.origin).read_text():
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__ or not callable(obj):
                continue
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            if "trust_remote_code" in params:
                seen.append(f"{module.__name__}.{name}")
                # False, or required (a base class whose subclasses choose): never on by default
                default = params["trust_remote_code"].default
                assert default is False or default is inspect.Parameter.empty, (
                    f"{module.__name__}.{name}"
                )
    # the loaders and every module that loads a model take the option
    for expected in (
        "lightning_robust.models.loading.load_tokenizer",
        "lightning_robust.models.loading.load_sequence_classifier",
        "lightning_robust.models.causal_lm.load_causal_lm",
        "lightning_robust.modules.reward_model.RewardModel",
        "lightning_robust.modules.dpo.DPO",
    ):
        assert expected in seen


class Recorded(Exception):
    """Raised by the recorders after noting the call (nothing is downloaded or built)."""


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    import transformers

    seen: list[dict] = []

    def recorder(cls_name):
        def record(*args, **kwargs):
            seen.append({"class": cls_name, **kwargs})
            raise Recorded

        return record

    for cls_name in (
        "AutoTokenizer",
        "AutoModelForSequenceClassification",
        "AutoModelForCausalLM",
        "AutoConfig",
    ):
        monkeypatch.setattr(getattr(transformers, cls_name), "from_pretrained", recorder(cls_name))
    return seen


@pytest.mark.parametrize("turned_on", [False, True])
def test_loaders_pass_the_configured_trust_remote_code(from_pretrained_calls, turned_on):
    from lightning_robust.models import load_sequence_classifier, load_tokenizer, tiny_tokenizer
    from lightning_robust.models.causal_lm import load_causal_lm
    from lightning_robust.modules import DPO, RewardModel

    kw = {"trust_remote_code": True} if turned_on else {}
    tok = tiny_tokenizer()
    attempts = [
        lambda: load_tokenizer("org/some-model", **kw),
        lambda: load_sequence_classifier("org/some-model", tok, **kw),
        lambda: load_causal_lm("org/some-model", tok, **kw),
        lambda: RewardModel("org/some-model", **kw).configure_model(),
        lambda: DPO(model_name_or_path="org/some-model", **kw).configure_model(),
    ]
    for attempt in attempts:
        with pytest.raises(Recorded):
            attempt()
    assert len(from_pretrained_calls) == len(attempts)
    assert all(c.get("trust_remote_code") is turned_on for c in from_pretrained_calls), (
        from_pretrained_calls
    )


def test_hub_datasets_never_run_loading_scripts(monkeypatch):
    import datasets

    from lightning_robust.data.source import DataSource, load_rows

    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs)
        raise Recorded

    monkeypatch.setattr(datasets, "load_dataset", record)
    with pytest.raises(Recorded):
        load_rows(DataSource(path="Anthropic/hh-rlhf", data_dir="harmless-base"))
    assert seen and all(not kw.get("trust_remote_code") for kw in seen)
    # datasets >= 4 removed dataset scripts altogether: nothing to turn on
    assert int(datasets.__version__.split(".")[0]) >= 4


# ====================================================================== weights_only
def test_every_shipped_torch_load_is_weights_only():
    loads = [(f, line, node) for f, line, name, node in calls(SHIPPED) if name == "torch.load"]
    assert loads, "expected the reference caches to use torch.load"
    unsafe = [
        f"{f}:{line}" for f, line, node in loads if not is_true(keyword(node, "weights_only"))
    ]
    assert unsafe == []
    # Lightning checkpoint loading is never forced to full unpickling in shipped code
    forced = [
        f"{f}:{line}"
        for f, line, name, node in calls(SHIPPED)
        if name.endswith(("load_from_checkpoint", "pl_load", "_load"))
        and isinstance(keyword(node, "weights_only"), ast.Constant)
        and keyword(node, "weights_only").value is False
    ]
    assert forced == []


def test_benchmark_caches_are_weights_only():
    unsafe = [
        f"{f}:{line}"
        for f, line, name, node in calls([REPO / "benchmarks"])
        if name == "torch.load" and not is_true(keyword(node, "weights_only"))
    ]
    assert unsafe == []


PAYLOAD_RAN: list[bool] = []


def _payload():
    PAYLOAD_RAN.append(True)
    return "pwned"


class Payload:
    def __reduce__(self):
        return (_payload, ())


@pytest.fixture
def poisoned_checkpoint(tmp_path):
    """A checkpoint-shaped file whose unpickling would call ``_payload``."""
    path = tmp_path / "poisoned.ckpt"
    torch.save(
        {
            "state_dict": {},
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"x": Payload()},
        },
        path,
    )
    PAYLOAD_RAN.clear()
    return path


def test_resume_refuses_a_pickle_payload(poisoned_checkpoint, tmp_path):
    import pickle

    from lightning import Trainer

    from lightning_robust.data import PreferenceDataModule, SyntheticShiftConfig
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
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer.fit(
            RewardModel(tiny_config=TINY), datamodule=dm, ckpt_path=str(poisoned_checkpoint)
        )
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        RewardModel.load_from_checkpoint(str(poisoned_checkpoint))
    assert PAYLOAD_RAN == []


def test_reward_scorer_refuses_a_pickle_payload(poisoned_checkpoint):
    from lightning_robust.modules.reward_loading import load_reward_scorer

    with pytest.raises(ValueError, match="holds objects that weights_only=True refuses"):
        load_reward_scorer(str(poisoned_checkpoint))
    assert PAYLOAD_RAN == []


def test_reference_cache_refuses_a_pickle_payload(tmp_path):
    import pickle

    from lightning_robust.modules import reference

    item = {
        "chosen_input_ids": [1, 2],
        "rejected_input_ids": [1, 3],
        "chosen_prompt_len": 1,
        "rejected_prompt_len": 1,
    }
    dataset = [item] * 2
    path = reference.cache_path(tmp_path, "train", reference.data_fingerprint(dataset), "m")
    torch.save({"format": Payload()}, path)
    PAYLOAD_RAN.clear()
    with pytest.raises(pickle.UnpicklingError):
        reference.load_or_compute(tmp_path, "train", dataset, "m", lambda: torch.zeros(2, 2))
    assert PAYLOAD_RAN == []


def test_our_checkpoints_load_weights_only(tmp_path):
    """A real checkpoint (model + PreferenceDataModule hyperparameters, incl. the synthetic
    generator's settings and a DataSource) loads with weights_only=True, so resuming works."""
    from lightning import Trainer

    from lightning_robust.data import DataSource, PreferenceDataModule, SyntheticShiftConfig
    from lightning_robust.modules import RewardModel

    dm = PreferenceDataModule(
        synthetic=SyntheticShiftConfig(num_train=16, num_eval=8),
        batch_size=4,
        eval_sets={"again": DataSource(path="synthetic", split="minority")},
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        enable_checkpointing=False,
    )
    trainer.fit(RewardModel(tiny_config=TINY), datamodule=dm)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert saved["datamodule_hyper_parameters"]["synthetic"]["num_train"] == 16
    rebuilt = PreferenceDataModule(**saved["datamodule_hyper_parameters"])
    assert rebuilt.synthetic == dm.synthetic and rebuilt.eval_sources == dm.eval_sources


def test_module_hyperparameters_load_weights_only():
    """Modules keep dataclass options (``lora: LoraOptions``) in their hyperparameters; LoraOptions is
    allow-listed for weights_only loading (models/lora.py), so LoRA runs resume."""
    from lightning_robust.models.lora import LoraOptions
    from lightning_robust.modules import DPO, RewardModel

    for module in (RewardModel(lora=LoraOptions(r=4)), DPO(lora=LoraOptions(r=4))):
        buffer = io.BytesIO()
        torch.save({"hyper_parameters": dict(module.hparams)}, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)


# ====================================================================== config as code
DANGEROUS_CALLS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "importlib.import_module",
    "pickle.load",
    "pickle.loads",
    "marshal.loads",
    "dill.load",
    "dill.loads",
    "yaml.unsafe_load",
    "yaml.full_load",
    "runpy.run_path",
    "runpy.run_module",
    "os.system",
    "subprocess.run",
    "subprocess.Popen",
    "subprocess.call",
}


def test_no_configuration_value_is_evaluated_as_code():
    found = [f"{f}:{line} {name}" for f, line, name, _ in calls(SHIPPED) if name in DANGEROUS_CALLS]
    yaml_loads = [
        f"{f}:{line}"
        for f, line, name, node in calls(SHIPPED)
        if name == "yaml.load" and "SafeLoader" not in ast.dump(node)
    ]
    assert found == [] and yaml_loads == []


def test_class_path_only_resolves_to_subclasses_of_the_declared_type(capsys):
    """LightningCLI (jsonargparse) imports a ``class_path`` and accepts it only if it is a subclass
    of the parameter's declared type; a function such as os.system is rejected, never called."""
    from lightning_robust.cli import build_cli

    config = str(REPO / "configs" / "quickstart.yaml")
    for target in ("os.system", "builtins.eval"):
        with pytest.raises(SystemExit):
            build_cli(
                ["--config", config, f"--model.init_args.weighting.class_path={target}"], run=False
            )
        err = capsys.readouterr().err
        assert f"Import path {target} does not correspond to a subclass of RobustWeighting" in err
