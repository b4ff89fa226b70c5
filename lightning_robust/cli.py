"""``lightning-robust fit|validate|test --config configs/...``: LightningCLI in subclass mode.

Any LightningModule / LightningDataModule can be named by ``class_path`` in the config. The
model's ``model_name_or_path`` is linked to the data module's ``tokenizer`` so both always use
the same vocabulary.
"""

from __future__ import annotations

import os
import sys
import warnings

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_robust import cli_errors


class RobustCLI(LightningCLI):
    """LightningCLI with the project's argument links."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer")
        cli_errors.add_checkpoint_arguments(parser)

    # checkpoint checks and runs that would do nothing: lightning_robust/cli_errors.py
    def parse_arguments(self, parser, args) -> None:
        self._given_args = args if args is not None else sys.argv[1:]
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        cli_errors.check_before_run(self, self._given_args, super()._parse_ckpt_path)

    def init_parser(self, **kwargs):
        if self.parser_class is LightningArgumentParser:
            self.parser_class = cli_errors.one_line_parser_class()
        return super().init_parser(**kwargs)


def quiet_known_warnings() -> None:
    """Silence library warnings that carry no information for users of this CLI."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_cli(args=None, run: bool = True) -> RobustCLI:
    """Build (and by default run) the CLI; ``args`` is a list as on the command line, or a dict."""
    quiet_known_warnings()
    return RobustCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(args=None) -> None:
    """Console-script entry point (``lightning-robust``); a user error ends with one line
    ``error: ...`` and exit status 2 (``LIGHTNING_ROBUST_DEBUG=1``: the traceback)."""
    cli_errors.run_reporting_user_errors(lambda: build_cli(args))


if __name__ == "__main__":
    main()
