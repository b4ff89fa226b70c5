"""``lightning-robust fit|validate|test|eval|annotate ...``: LightningCLI plus the project's commands.

Any LightningModule / LightningDataModule can be named by ``class_path`` in the config; the
project's own classes also by their short names (``--model DPO``, ``--model.help DPO``,
``--data PreferenceDataModule``, ``--model.weighting TVBall``), since the CLI imports them before
parsing. The model's ``backbone.name_or_path`` is linked to the data module's ``tokenizer`` so both
always use the same vocabulary.

Commands beside Lightning's ``fit`` / ``validate`` / ``test`` / ``predict`` are listed in
:data:`COMMANDS` (``name -> (module:function, help)``); each function takes the remaining
arguments (``main(argv)``) and is imported only when its command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import textwrap
import warnings

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_robust import cli_errors
from lightning_robust.modules.speed import tune_glibc_malloc

log = logging.getLogger(__name__)

DESCRIPTION = (
    "lightning-robust: distributionally robust alignment of language models on PyTorch Lightning "
    "(robust reward models, the DPO family -- DR-DPO, KLDPO, WDPO, d/p/e-DPO --, DR-PPO and "
    "DRRO-GRPO). Train with `fit --config configs/<recipe>.yaml`; name the project's classes by "
    "short name (`--model DPO`, `--model.help DPO`, `--data PreferenceDataModule`). The math of "
    "every objective is in docs/ALGORITHMS.md."
)

# Commands beside fit/validate/test/predict: name -> ("module:function", one-line help).
# A command whose module is not importable in this installation is left out of --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": (
        "lightning_robust.evaluate:main",
        "benchmark a hub id, Hugging Face directory or .ckpt (RewardBench, HHH, MT-Bench, pairs)",
    ),
    "annotate": (
        "lightning_robust.annotate:main",
        "score preference pairs with reward models (inputs of d-/dp-/e-DPO)",
    ),
    "build-pairs": (
        "lightning_robust.pipelines.build_pairs:main",
        "on-policy preference pairs: sample completions, score them, pair them",
    ),
    "gold-proxy": (
        "lightning_robust.pipelines.gold_proxy:main",
        "gold-labelled pairs, a proxy reward model and DRRO's pilot budget (S003 setup)",
    ),
}


def register_classes() -> None:
    """Import the project's LightningModule / DataModule / weighting / callback classes, so that
    jsonargparse resolves their short names (``--model DPO``) and ``--help`` lists them. Static
    imports: no module name ever comes from a configuration value."""
    import lightning_robust.callbacks  # noqa: F401
    import lightning_robust.data.datamodule  # noqa: F401
    import lightning_robust.data.prompt_datamodule  # noqa: F401
    import lightning_robust.evals  # noqa: F401
    import lightning_robust.modules  # noqa: F401
    import lightning_robust.weighting  # noqa: F401


def backbone_name(backbone) -> str:
    """The model's ``backbone.name_or_path`` (the data module's tokenizer): the group is a
    namespace (possibly ``{class_path, init_args}``), a dict or ``None`` (default ``"tiny"``)."""
    if backbone is None:
        return "tiny"
    backbone = getattr(backbone, "init_args", None) or backbone  # {class_path, init_args} form
    getter = getattr(backbone, "get", None)
    name = getter("name_or_path") if callable(getter) else getattr(backbone, "name_or_path", None)
    return name or "tiny"


class RobustCLI(LightningCLI):
    """LightningCLI with the project's argument links."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "model.init_args.backbone", "data.init_args.tokenizer", compute_fn=backbone_name
        )
        cli_errors.add_checkpoint_arguments(parser)

    # checkpoint checks and runs that would do nothing: lightning_robust/cli_errors.py
    def parse_arguments(self, parser, args) -> None:
        self._given_args = args if args is not None else sys.argv[1:]
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        cli_errors.check_before_run(self, self._given_args, super()._parse_ckpt_path)

    # --ckpt_path last|best: found and checked once the trainer exists
    def before_fit(self) -> None:
        cli_errors.resolve_named_checkpoint(self, "fit")

    def before_validate(self) -> None:
        cli_errors.resolve_named_checkpoint(self, "validate")

    def before_test(self) -> None:
        cli_errors.resolve_named_checkpoint(self, "test")

    def before_predict(self) -> None:
        cli_errors.resolve_named_checkpoint(self, "predict")

    def init_parser(self, **kwargs):
        if self.parser_class is LightningArgumentParser:
            self.parser_class = cli_errors.one_line_parser_class()
        return super().init_parser(**kwargs)

    def before_instantiate_classes(self) -> None:
        config = (
            self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        )
        apply_thread_policy(config)

    def _instantiate_trainer(self, config, callbacks):
        add_console_callbacks(config)
        return super()._instantiate_trainer(config, callbacks)


SMALL_MODELS = ("tiny",)


def apply_thread_policy(config) -> int | None:
    """Torch threads for this run (returns the count set, or ``None`` when left alone).

    ``LIGHTNING_ROBUST_THREADS=<n>`` sets ``n``; ``=off`` leaves torch alone. Otherwise, when
    neither ``OMP_NUM_THREADS`` nor ``MKL_NUM_THREADS`` is set, a CPU run of a small model
    (:data:`SMALL_MODELS`) uses one thread: its matrices are too small to gain from a second
    one, and torch's default of one thread per core collapses when another process competes
    for the cores (``benchmarks/threads.py``; README "Threads on a shared machine").
    """
    import torch

    chosen = os.environ.get("LIGHTNING_ROBUST_THREADS")
    if chosen is not None:
        if chosen.strip().lower() == "off":
            return None
        try:
            count = int(chosen)
        except ValueError:
            raise SystemExit(
                f"LIGHTNING_ROBUST_THREADS={chosen!r}: expected a positive integer or 'off'"
            ) from None
        if count < 1:
            raise SystemExit(
                f"LIGHTNING_ROBUST_THREADS={chosen!r}: expected a positive integer or 'off'"
            )
    elif "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ:
        return None
    else:

        def get(key):
            try:
                return config.get(key)
            except (AttributeError, KeyError, TypeError):
                return None

        accelerator = str(get("trainer.accelerator") or "auto")
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        model = get("model.init_args.backbone.name_or_path") or backbone_name(
            get("model.init_args.backbone")
        )
        if not (on_cpu and model in SMALL_MODELS):
            return None
        count = 1
    torch.set_num_threads(count)
    log.info("torch threads: %d (set LIGHTNING_ROBUST_THREADS or OMP_NUM_THREADS to choose)", count)
    return count


def add_console_callbacks(trainer_config: dict) -> None:
    """Add the console callbacks a run lacks: :class:`RobustProgressBar` (unless the progress bar
    is off or another is configured) and :class:`MetricsTable` (unless one is configured)."""
    from lightning.pytorch.callbacks import ProgressBar

    from lightning_robust.callbacks import MetricsTable, RobustProgressBar

    callbacks = trainer_config.get("callbacks")
    callbacks = (
        [] if callbacks is None else callbacks if isinstance(callbacks, list) else [callbacks]
    )
    if trainer_config.get("enable_progress_bar") is not False and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        callbacks.append(RobustProgressBar())
    if not any(isinstance(c, MetricsTable) for c in callbacks):
        callbacks.append(MetricsTable())
    trainer_config["callbacks"] = callbacks


# logger name -> message fragments dropped from it (advertisements and detection chatter)
QUIET_LOG_MESSAGES = {
    "lightning.pytorch.utilities.rank_zero": ("Tip:",),
    "lightning.fabric.utilities.rank_zero": ("Tip:",),
    "DeepSpeed": ("Setting accelerator to CPU",),  # deepspeed's accelerator probe on CPU machines
}


def quiet_known_warnings() -> None:
    """Silence library messages that carry no information for users of this CLI."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # frozen reference models and metric modules are in eval mode on purpose
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*modules? in eval mode.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LIGHTNING_DISABLE_TIPS", "1")
    for name, fragments in QUIET_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MessageFilter) for f in logger.filters):
            logger.addFilter(_MessageFilter(fragments))


class _MessageFilter(logging.Filter):
    """Drop log records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        return not any(f in message for f in self.fragments)


def command_epilog() -> str:
    """The ``--help`` lines of the available extra commands."""
    lines = ["other commands (each has its own --help):"]
    for name, (_target, text) in COMMANDS.items():
        if command_available(name):
            lines.append(f"  {name:<12} {text}")
    lines.append(
        "examples: fit --config configs/quickstart.yaml | fit --model.help DPO | eval --help"
    )
    return "\n".join(lines)


def command_available(name: str) -> bool:
    """Whether the module of command ``name`` can be imported here."""
    module = COMMANDS[name][0].partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _command_main(target: str):
    """The ``main`` function of a command's module, imported statically (never by a name that
    could come from a configuration value)."""
    if target == "lightning_robust.evaluate:main":
        from lightning_robust.evaluate import main as command
    elif target == "lightning_robust.annotate:main":
        from lightning_robust.annotate import main as command
    elif target == "lightning_robust.pipelines.build_pairs:main":
        from lightning_robust.pipelines.build_pairs import main as command
    elif target == "lightning_robust.pipelines.gold_proxy:main":
        from lightning_robust.pipelines.gold_proxy import main as command
    else:
        raise SystemExit(f"lightning-robust: no command is registered for {target!r}")
    return command


def run_command(name: str, argv: list[str]):
    """Run the extra command ``name`` with the arguments after it."""
    if not command_available(name):
        raise SystemExit(
            f"lightning-robust: the command {name!r} is not available in this installation"
        )
    return _command_main(COMMANDS[name][0])(argv)


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help formatter keeping the description's and epilog's line breaks."""


def build_cli(args=None, run: bool = True) -> RobustCLI:
    """Build (and by default run) the CLI; ``args`` is a list as on the command line, or a dict.
    glibc's malloc is tuned first (:func:`~lightning_robust.modules.speed.tune_glibc_malloc`;
    ``LIGHTNING_ROBUST_MALLOC_TUNING=0`` keeps its defaults)."""
    tune_glibc_malloc()
    quiet_known_warnings()
    register_classes()
    return RobustCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={
            "description": textwrap.fill(DESCRIPTION, 88),
            "epilog": command_epilog(),
            "formatter_class": _HelpFormatter,
        },
        args=args,
        run=run,
    )


def main(args=None) -> int | None:
    """Console-script entry point (``lightning-robust``): an extra command's integer exit status,
    else ``None`` (success). A user error ends with one line ``error: ...`` and exit status 2
    (``LIGHTNING_ROBUST_DEBUG=1``: the traceback)."""
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list | tuple) and argv and argv[0] in COMMANDS:
        status = cli_errors.run_reporting_user_errors(lambda: run_command(argv[0], list(argv[1:])))
        return status if isinstance(status, int) and not isinstance(status, bool) else None
    cli_errors.run_reporting_user_errors(lambda: build_cli(args))
    return None


if __name__ == "__main__":
    sys.exit(main())
