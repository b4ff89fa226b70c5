"""What the CLI checks before it runs, and how it reports a user's mistake (one line, exit 2).

* :func:`run_reporting_user_errors`: runs the CLI; a configuration, data or file problem (a
  ``ValueError``, an ``OSError`` such as a missing file or a full disk, Lightning's
  ``MisconfigurationException``, a refused unsafe pickle) ends with one line
  ``error: <cause>`` on stderr and exit status 2, instead of a traceback that ends in a dump of
  the parsed ``Namespace``. Any other exception is a bug and keeps its traceback; so does every
  exception when ``LIGHTNING_ROBUST_DEBUG=1`` is set.
* :func:`check_checkpoint_against_config` replaces LightningCLI's ``_parse_ckpt_path``, which
  silently swaps the configured model for the checkpoint's (class and every hyperparameter,
  command-line overrides included). Here the configuration stays in charge: a checkpoint whose
  module class or backbone (``backbone.name_or_path``) differs from the configured one is an error
  naming both, and ``--trust_checkpoint_config=true`` takes the checkpoint's model instead
  (then ``--model.*`` options given beside it are refused rather than dropped). Other settings
  that differ are applied from the configuration, and listed in one warning line.
* :func:`resolve_named_checkpoint`: ``--ckpt_path last`` / ``best`` become the file they name for
  the configured run (once the trainer exists) and are checked like a file; a missing one is an
  error naming the option (``fit --ckpt_path last`` before any checkpoint starts afresh).
* :func:`check_run_does_something`: ``fit`` with ``max_epochs: 0``, ``max_steps: 0``,
  ``limit_train_batches: 0``, or a checkpoint that already reached the configured end, is an
  error saying that nothing would be trained (Lightning exits 0 having done nothing).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_robust.models.backbone import translate_legacy_hparams
from lightning_robust.modules.checkpoint_io import check_torch_archive

log = logging.getLogger(__name__)

DEBUG_ENV = "LIGHTNING_ROBUST_DEBUG"
TRUST_OPTION = "trust_checkpoint_config"
#: ``--ckpt_path`` values that name a checkpoint of the configured run (Lightning's)
NAMED_CHECKPOINTS = ("last", "best")

__all__ = [
    "DEBUG_ENV",
    "add_checkpoint_arguments",
    "check_before_run",
    "check_checkpoint_against_config",
    "check_run_does_something",
    "one_line",
    "resolve_named_checkpoint",
    "run_reporting_user_errors",
    "user_error",
]


# ---------------------------------------------------------------------------- reporting
def _user_error_types() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lightning_robust.modules.base import NonFiniteError

    return (ValueError, OSError, MisconfigurationException, pickle.UnpicklingError, NonFiniteError)


def user_error(err: BaseException) -> BaseException | None:
    """The exception in ``err``'s cause chain to report when it is a user's configuration / data /
    file problem (the outermost one, past jsonargparse's wrapper of the ``ValueError`` a class
    raised), else ``None``."""
    seen = set()
    chain = []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__
    types = _user_error_types()
    for candidate in chain:  # outermost first: our messages wrap the library's
        if isinstance(candidate, types) and not _is_parser_wrapper(candidate):
            return candidate
    return None


def _lost_peer(err: BaseException) -> str | None:
    """gloo's / NCCL's message when a collective failed because another rank died, else None."""
    text = str(err)
    for marker in (
        "Connection closed by peer",
        "Connection reset by peer",
        "NCCL communicator was aborted",
    ):
        if marker in text:
            return text.split("This is typically", 1)[0].strip().splitlines()[-1][-200:]
    return None


def _is_parser_wrapper(err: BaseException) -> bool:
    """jsonargparse's "Does not validate against any of the Union subtypes ... Given value:
    Namespace(...)" around the error a class raised (the cause holds the message)."""
    text = str(err)
    return err.__cause__ is not None and ("Given value:" in text or "Does not validate" in text)


_ADVICE = re.compile(
    r"(re-?running `?torch\.load`? with `?weights_only` set to `?False`?|weights_only=False)[^.]*\.?",
    re.IGNORECASE,
)


def one_line(err: BaseException) -> str:
    """``err`` as one line: its message with the lines joined, jsonargparse's ``Given value:``
    dump cut, and advice to load with ``weights_only=False`` removed (unsafe: runs pickled code)."""
    text = str(err).strip()
    if isinstance(err, pickle.UnpicklingError):
        first = next((line for line in text.splitlines() if "Unsupported global" in line), "")
        text = (
            "refused to load a file holding Python objects that a safe load "
            f"(weights_only=True) does not allow{': ' + first.strip() if first else ''}"
        )
    text = text.split("Given value:", 1)[0]
    text = _ADVICE.sub("", text)
    if "Does not validate against any of the Union subtypes" in text and "Errors:" in text:
        head = text.split("Does not validate", 1)[0].strip()
        items: list[str] = []
        for line in text.split("Errors:", 1)[1].splitlines():
            line = line.strip()
            if line.startswith("- "):
                items.append(line[2:])
            elif line and items and not line.startswith("Given value type:"):
                items[-1] += " " + line
        errors = [item for item in items if "Expected a <class 'NoneType'>" not in item]
        text = " ".join([head, "; ".join(errors)]) if errors else text
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    name = type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and name not in text:
        text = f"{name}: {text}"
    return text or name


def run_reporting_user_errors(run: Callable[[], Any]) -> Any:
    """``run()``; a user error ends with ``error: <one line>`` on stderr and exit status 2 (see
    the module docstring). ``LIGHTNING_ROBUST_DEBUG=1`` re-raises it with its traceback."""
    try:
        return run()
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as err:
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        peer = _lost_peer(err)
        if peer is not None and not debug:
            print(
                f"error: another process of this distributed run died ({peer}); its own output "
                "above names the cause",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1) from None
        cause = user_error(err)
        if cause is None or debug:
            raise
        print(f"error: {one_line(cause)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def one_line_parser_class():
    """A ``LightningArgumentParser`` whose errors end with one line ``error: <cause>`` (the
    message's lines joined, jsonargparse's ``Given value: Namespace(...)`` dump cut)."""
    from lightning.pytorch.cli import LightningArgumentParser

    class OneLineErrorParser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            return super().error(one_line(ValueError(message)), ex)

    return OneLineErrorParser


# ---------------------------------------------------------------------------- checkpoints
def add_checkpoint_arguments(parser) -> None:
    """``--trust_checkpoint_config`` on every subcommand parser."""
    parser.add_argument(
        f"--{TRUST_OPTION}",
        type=bool,
        default=False,
        help="with --ckpt_path: build the model the checkpoint was trained as (its module class "
        "and settings) instead of the configured one; without it a checkpoint whose class or "
        "backbone.name_or_path differs from the configuration is an error",
    )


def _get(namespace, key: str, default=None):
    if namespace is None:
        return default
    getter = getattr(namespace, "get", None)
    return getter(key, default) if callable(getter) else getattr(namespace, key, default)


def load_checkpoint_metadata(path: str) -> dict:
    """The checkpoint dict at ``path``, tensors memory-mapped (``weights_only=True``); a
    ``ValueError`` naming the file when it is truncated, corrupt, or holds unsafe objects."""
    check_torch_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path}: {one_line(err)}") from None
    except (RuntimeError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} is unreadable (truncated or corrupt: {first})"
        ) from None


def _explicit_model_options(args: Sequence[str] | None) -> list[str]:
    if not args or not isinstance(args, (list, tuple)):
        return []
    return [a.split("=", 1)[0] for a in args if isinstance(a, str) and a.startswith("--model")]


def _class_name(path: str | None) -> str | None:
    return None if not path else str(path).rsplit(".", 1)[-1]


def check_checkpoint_against_config(
    cli, args: Sequence[str] | None, trusted_parse: Callable[[], None]
) -> dict | None:
    """Compare the checkpoint given by ``--ckpt_path`` (a file) with the configured model; see
    the module docstring. ``trusted_parse`` is LightningCLI's own ``_parse_ckpt_path`` (the
    checkpoint's model replaces the configured one), run only with ``--trust_checkpoint_config``."""
    subcommand = _get(cli.config, "subcommand")
    if not subcommand:
        return None
    config = cli.config[subcommand]
    ckpt_path = _get(config, "ckpt_path")
    if ckpt_path in NAMED_CHECKPOINTS:
        if _get(config, TRUST_OPTION, False):
            raise ValueError(
                f"--{TRUST_OPTION} needs --ckpt_path as a file: --ckpt_path {ckpt_path} is found "
                "only once the configured model is built"
            )
        return None  # found and checked once the trainer exists (resolve_named_checkpoint)
    if not ckpt_path or not _is_local_path(str(ckpt_path)):
        return None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(
            f"--ckpt_path: Checkpoint file not found: {ckpt_path} (give an existing .ckpt file, or "
            "`last` / `best` for the checkpoints of the configured run)"
        )
    checkpoint = load_checkpoint_metadata(str(ckpt_path))
    return _check_against_config(
        config, ckpt_path, checkpoint, args, cli, subcommand, trusted_parse
    )


def _is_local_path(ckpt_path: str) -> bool:
    """Whether ``--ckpt_path`` names a local file (not ``hpc``, a URL or a model registry)."""
    return ckpt_path != "hpc" and "://" not in ckpt_path and not ckpt_path.startswith("registry")


def _check_against_config(
    config, ckpt_path, checkpoint: dict, args, cli=None, subcommand=None, trusted_parse=None
) -> dict:
    """The checks of :func:`check_checkpoint_against_config` on a loaded ``checkpoint``
    (``cli``, ``subcommand`` and ``trusted_parse`` are needed with ``--trust_checkpoint_config``
    only)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    stored = hparams
    hparams = translate_legacy_hparams(hparams)  # flat options of older checkpoints
    trust = bool(_get(config, TRUST_OPTION, False))
    if trust:
        given = _explicit_model_options(args)
        if given:
            raise ValueError(
                f"--{TRUST_OPTION} builds the model from {ckpt_path}, so the model options given "
                f"beside it ({', '.join(given)}) would be ignored: drop them, or drop "
                f"--{TRUST_OPTION} to use the configured model"
            )
        if hparams and hparams != stored:  # flat options: parse the translated groups
            _parse_checkpoint_model(cli, subcommand, hparams)
        elif hparams:
            trusted_parse()
        return checkpoint
    model = _get(config, "model")
    init_args = _get(model, "init_args") or {}
    configured = {
        "class": _get(model, "class_path"),
        "backbone": _get(_group(_get(init_args, "backbone")), "name_or_path"),
    }
    stored = {
        "class": hparams.get("_class_path"),
        "backbone": _get(_group(hparams.get("backbone")), "name_or_path"),
    }
    problems = []
    if (
        stored["class"]
        and configured["class"]
        and _class_name(stored["class"]) != _class_name(configured["class"])
    ):
        problems.append(
            f"module class {stored['class']} in the checkpoint, {configured['class']} configured"
        )
    if (
        stored["backbone"] is not None
        and configured["backbone"] is not None
        and stored["backbone"] != configured["backbone"]
    ):
        problems.append(
            f"backbone.name_or_path {stored['backbone']!r} in the checkpoint, "
            f"{configured['backbone']!r} configured"
        )
    if problems:
        raise ValueError(
            f"checkpoint {ckpt_path} does not match the configured model ({'; '.join(problems)}): "
            f"configure the model the checkpoint was trained as, or pass --{TRUST_OPTION}=true "
            "to build the checkpoint's model instead"
        )
    differing = _differing_settings(init_args, hparams)
    if differing:
        log.warning(
            "using the configured model settings, not those stored in %s: %s",
            ckpt_path,
            "; ".join(differing),
        )
    return checkpoint


def check_before_run(cli, args: Sequence[str] | None, trusted_parse: Callable[[], None]) -> None:
    """Everything the CLI checks once the configuration is parsed (the replacement of
    LightningCLI's ``_parse_ckpt_path``): the checkpoint against the configuration, and that a
    ``fit`` would train something."""
    check_data_sources_were_not_replaced(cli, args)
    checkpoint = check_checkpoint_against_config(cli, args, trusted_parse)
    subcommand = _get(cli.config, "subcommand")
    if subcommand == "fit":
        config = cli.config[subcommand]
        check_run_does_something(_get(config, "trainer"), checkpoint, _get(config, "ckpt_path"))


# ---------------------------------------------------------------------------- --ckpt_path last|best
def resolve_named_checkpoint(cli, subcommand: str) -> str | None:
    """``--ckpt_path last|best`` as the file it names, found once the trainer exists (its
    checkpoint callbacks and logger fix the folder), then checked as a file is (module
    docstring) and handed to Lightning in its place.

    ``last``: the newest ``last*.ckpt`` in the folder of the run's checkpoint callbacks (as
    Lightning looks it up). None yet: ``fit`` starts from the beginning (Lightning's "set and
    forget" resume) with a logged line; ``validate`` / ``test`` / ``predict`` are an error
    naming the option and the folder (Lightning would evaluate the untrained model).
    ``best``: the ``best_model_path`` of the first checkpoint callback that monitors a metric,
    as recorded in the run's last checkpoint (a new process does not know it otherwise); an
    error naming the option when no callback monitors a metric or no best checkpoint exists.
    Returns the file, or ``None`` (another ``--ckpt_path`` or a fresh ``fit``)."""
    config = cli.config[subcommand]
    ckpt_path = _get(config, "ckpt_path")
    if ckpt_path not in NAMED_CHECKPOINTS:
        return None
    if ckpt_path == "last":
        path = _find_last_checkpoint(cli.trainer, fresh_start_ok=subcommand == "fit")
    else:
        path = _find_best_checkpoint(cli.trainer)
    if path is not None:
        log.info("--ckpt_path %s: %s", ckpt_path, path)
        checkpoint = load_checkpoint_metadata(path)
        _check_against_config(config, path, checkpoint, None)
        if subcommand == "fit":
            check_run_does_something(_get(config, "trainer"), checkpoint, path)
    config["ckpt_path"] = path
    cli.config_init[subcommand]["ckpt_path"] = path
    return path


def _checkpoint_callbacks(trainer) -> list:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]


def _checkpoint_folder(callback, trainer) -> str:
    """Where ``callback`` writes, by Lightning's rule: its ``dirpath``; else the first logger's
    ``save_dir/name/version/checkpoints``; else ``default_root_dir/checkpoints``."""
    if callback.dirpath is not None:
        return os.fspath(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return os.path.join(save_dir, str(logger.name), version, "checkpoints")
    return os.path.join(trainer.default_root_dir, "checkpoints")


def _find_last_checkpoint(trainer, fresh_start_ok: bool) -> str | None:
    callbacks = _checkpoint_callbacks(trainer)
    folders = list(dict.fromkeys(_checkpoint_folder(cb, trainer) for cb in callbacks))
    found = []
    for cb, folder in ((cb, _checkpoint_folder(cb, trainer)) for cb in callbacks):
        pattern = re.compile(
            rf"^{re.escape(cb.CHECKPOINT_NAME_LAST)}(-v?\d+)?{re.escape(cb.FILE_EXTENSION)}$"
        )
        if os.path.isdir(folder):
            found += [os.path.join(folder, f) for f in os.listdir(folder) if pattern.match(f)]
    if found:
        return max(found, key=os.path.getmtime)
    where = ", ".join(folders) if folders else "(no checkpoint callback is configured)"
    if fresh_start_ok:
        log.info("--ckpt_path last: no checkpoint in %s yet; fit starts from the beginning", where)
        return None
    raise FileNotFoundError(
        f"--ckpt_path last: no last checkpoint in {where} (the checkpoint folder of the configured "
        "run: trainer.default_root_dir and the logger's save_dir/name/version); run fit first, or "
        "give --ckpt_path FILE"
    )


def _find_best_checkpoint(trainer) -> str:
    monitored = [cb for cb in _checkpoint_callbacks(trainer) if cb.monitor]
    if not monitored:
        raise ValueError(
            "--ckpt_path best: no checkpoint callback of this configuration monitors a metric "
            "(RunCheckpoint keeps the last checkpoint: use --ckpt_path last, or add a "
            "ModelCheckpoint with monitor=...)"
        )
    callback = monitored[0]
    folder = _checkpoint_folder(callback, trainer)
    best = callback.best_model_path  # known in the process that ran fit only
    if not best:
        last = _find_last_checkpoint(trainer, fresh_start_ok=True)
        if last is None:
            raise FileNotFoundError(
                f"--ckpt_path best: no checkpoint of the configured run in {folder}; run fit "
                "first, or give --ckpt_path FILE"
            )
        states = load_checkpoint_metadata(last).get("callbacks") or {}
        best = (states.get(callback.state_key) or {}).get("best_model_path") or ""
        if not best:
            raise FileNotFoundError(
                f"--ckpt_path best: {last} records no best checkpoint for "
                f"ModelCheckpoint(monitor={callback.monitor!r}) (no validation yet?); use "
                "--ckpt_path last or give --ckpt_path FILE"
            )
    for candidate in (best, os.path.join(folder, os.path.basename(best))):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"--ckpt_path best: the best checkpoint {best} (monitor={callback.monitor!r}) no longer "
        "exists; give --ckpt_path FILE"
    )


_MISSING = object()


def _differing_settings(init_args, hparams: dict) -> list[str]:
    """``key=configured (checkpoint: stored)`` for each configured setting that differs from the
    checkpoint's; a group (``backbone``, ``optimizer``) is compared field by field."""
    differing = []
    for key, value in sorted(hparams.items()):
        if key.startswith("_"):
            continue
        mine = _get(init_args, key, _MISSING)
        if mine is _MISSING:
            continue
        mine, value = _group(mine), _group(value)
        if isinstance(mine, dict) and isinstance(value, dict):
            for field_name in sorted(set(mine) & set(value)):
                a, b = _plain(mine[field_name]), _plain(value[field_name])
                if a != b:
                    differing.append(f"{key}.{field_name}={a!r} (checkpoint: {b!r})")
        elif mine != value:
            differing.append(f"{key}={mine!r} (checkpoint: {value!r})")
    return differing


def _parse_checkpoint_model(cli, subcommand: str, hparams: dict) -> None:
    """LightningCLI's ``_parse_ckpt_path`` for hparams translated from the flat options: the
    checkpoint's model (class and settings) replaces the configured one."""
    hparams = dict(hparams)
    if "_class_path" in hparams:
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    cli.config = cli.parser.parse_object({subcommand: {"model": hparams}}, cli.config)


def _group(value):
    """``_plain(value)``, a ``{class_path, init_args}`` group (a dataclass option as parsed)
    reduced to its ``init_args``."""
    value = _plain(value)
    if isinstance(value, dict) and set(value) >= {"class_path", "init_args"}:
        value = _plain(value["init_args"])
    return value


def _plain(value):
    """Namespaces / dataclasses as dicts, for comparing a configured value with a stored one."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    return value


# ---------------------------------------------------------------------------- runs that do nothing
def check_run_does_something(
    trainer_config, checkpoint: dict | None = None, ckpt_path: str | None = None
) -> None:
    """``ValueError`` when ``fit`` with these trainer settings would train nothing (see the
    module docstring)."""
    max_epochs = _get(trainer_config, "max_epochs")
    max_steps = _get(trainer_config, "max_steps", -1)
    limit = _get(trainer_config, "limit_train_batches")
    if max_epochs == 0:
        raise ValueError(
            "trainer.max_epochs=0: fit would train nothing; set max_epochs >= 1 (or -1 with max_steps)"
        )
    if max_steps == 0:
        raise ValueError(
            "trainer.max_steps=0: fit would train nothing; set max_steps >= 1 (or -1 for no step limit)"
        )
    if limit is not None and limit == 0:
        raise ValueError(
            "trainer.limit_train_batches=0: fit would train nothing; remove it or set it > 0"
        )
    if not checkpoint:
        return
    step = int(checkpoint.get("global_step", 0) or 0)
    if max_steps is not None and max_steps > 0 and step >= max_steps:
        raise ValueError(
            f"checkpoint {ckpt_path} is at step {step}, and trainer.max_steps={max_steps}: fit would "
            "train nothing; raise max_steps to continue training"
        )
    try:
        current = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        # Lightning counts an epoch as done once `processed` (a checkpoint written at the epoch's
        # end, e.g. RunCheckpoint's last.ckpt, has processed = completed + 1)
        done = max(int(current["completed"]), int(current.get("processed", 0)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return
    if (
        max_epochs is not None
        and max_epochs > 0
        and (max_steps is None or max_steps < 0)
        and done >= max_epochs
    ):
        raise ValueError(
            f"checkpoint {ckpt_path} has completed {done} epoch(s), and trainer.max_epochs={max_epochs}: "
            "fit would train nothing; raise max_epochs to continue training"
        )


# ---------------------------------------------------------------------------- data sources
SOURCE_OPTIONS = ("train", "val")


def _raw_source_values(args: Sequence[str] | None) -> dict[str, str]:
    """The ``data.init_args.train`` / ``val`` strings as written on the command line or in the
    ``--config`` files (later ones win), before jsonargparse interprets them."""
    import yaml

    raw: dict[str, str] = {}
    if not args or not isinstance(args, (list, tuple)):
        return raw
    items = [str(a) for a in args]
    for i, item in enumerate(items):
        key, value = (item.split("=", 1) + [None])[:2] if "=" in item else (item, None)
        if value is None and i + 1 < len(items):
            value = items[i + 1]
        if key == "--config" and value and Path(value).is_file():
            try:
                loaded = yaml.safe_load(Path(value).read_text())
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                continue
            data = loaded.get("data") if isinstance(loaded, dict) else None
            init = data.get("init_args") if isinstance(data, dict) else None
            for name in SOURCE_OPTIONS:
                if isinstance(init, dict) and isinstance(init.get(name), str):
                    raw[name] = init[name]
        for name in SOURCE_OPTIONS:
            if key == f"--data.init_args.{name}" and value is not None:
                raw[name] = value
    return raw


def check_data_sources_were_not_replaced(cli, args: Sequence[str] | None) -> None:
    """jsonargparse reads a data source given as the path of an existing file as a sub-config and
    substitutes the file's *content* when it parses as a YAML scalar, which then went on as a
    hub id ("Couldn't reach 'this is not json' on the Hub"). Report the file instead."""
    subcommand = _get(cli.config, "subcommand")
    if not subcommand:
        return
    init_args = _get(_get(cli.config[subcommand], "data"), "init_args")
    for name, raw in _raw_source_values(args).items():
        parsed = _get(init_args, name)
        if not Path(raw).is_file() or parsed == raw or not isinstance(parsed, str):
            continue
        kind = Path(raw).suffix.lower()
        if kind in (".json", ".jsonl"):
            from lightning_robust.data.reading import first_bad_json_line

            reason = first_bad_json_line(raw) or "not JSON lines"
            raise ValueError(
                f"data.init_args.{name}: {reason}; expected valid JSON lines, JSON or Parquet"
            )
        raise ValueError(
            f"data.init_args.{name}: {raw} is not a supported data file (expected .json, .jsonl or "
            ".parquet, a dataset directory or a hub id)"
        )
