"""Speed options of the DPO and reward-model step, as one grouped option (``speed:``).

Every choice here computes the same numbers as the plain path (to float rounding), so the
defaults are the fast ones except ``compile``, which costs compile time up front. Measurements:
``benchmarks/README.md``.

YAML (LightningCLI)::

    model:
      class_path: lightning_robust.modules.DPO
      init_args:
        speed: {share_prompt: true, wdpo_chunk_pairs: 4, compile: false}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SpeedOptions:
    """Exact speed choices (issue 14).

    Attributes:
        share_prompt: run each preference pair as one ``[prompt | chosen | rejected]`` row (the
            prompt once instead of twice; a 4-D mask hides the chosen answer from the rejected
            one and positions restart after the prompt), for the DPO policy and reference and
            the reward model. Applies where the attention takes a 4-D mask (eager, sdpa) and the
            pair's two prompts tokenise alike; two rows otherwise. Same log-probs / rewards as
            two rows to float rounding (``tests/test_logprobs.py``).
        wdpo_chunk_pairs: WDPO (``wdpo_rho > 0``, seed form, one process) runs its double
            backward in chunks of this many pairs, so only one chunk's second-order graph is
            alive; same gradient as the whole batch (``tests/test_regularizers.py``). ``None``
            runs the whole batch at once (more memory, fewer passes).
        compile: ``torch.compile`` the backbone's decoder stack in place
            (``nn.Module.compile``: parameter names and checkpoints unchanged), and the DPO
            frozen reference copy's. Off by default: the first steps pay the compilation
            (benchmarks/README.md, ``reward_compile``: some CPU-seconds for a 2-layer model with
            a cold inductor cache, more for deeper ones), each new sequence width may
            recompile until dynamic shapes kick in. Same loss to float tolerance
            (``tests/test_speed_options.py``).
        compile_kwargs: arguments of ``torch.compile`` (e.g. ``{mode: max-autotune}``,
            ``{backend: aot_eager}``, ``{dynamic: true}``); only with ``compile``.
    """

    share_prompt: bool = True
    wdpo_chunk_pairs: int | None = 2
    compile: bool = False
    compile_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.wdpo_chunk_pairs is not None and (
            isinstance(self.wdpo_chunk_pairs, bool)
            or not isinstance(self.wdpo_chunk_pairs, int)
            or self.wdpo_chunk_pairs < 1
        ):
            raise ValueError(
                f"speed.wdpo_chunk_pairs must be a positive integer or null, got "
                f"{self.wdpo_chunk_pairs!r}"
            )
        if self.compile_kwargs is None:
            object.__setattr__(self, "compile_kwargs", {})
        if not isinstance(self.compile_kwargs, dict):
            raise ValueError(
                f"speed.compile_kwargs must be a mapping, got {type(self.compile_kwargs).__name__}"
            )

    @classmethod
    def coerce(cls, value) -> SpeedOptions:
        """``None`` (the defaults), a ``SpeedOptions`` (kept) or the plain dict LightningCLI
        hands over (missing fields take the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(
                    f"unknown speed option(s) {unknown}; expected {sorted(cls.__dataclass_fields__)}"
                )
            return cls(**value)
        return value


# checkpoints keep this in their hyperparameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([SpeedOptions])


def decoder_stack(model) -> torch.nn.Module | None:
    """The decoder (or encoder) stack of a Hugging Face model, possibly peft-wrapped: the
    submodule named by ``base_model_prefix`` of the underlying ``*For*`` model (``model`` for
    Llama), or ``None`` when there is none."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    prefix = getattr(base, "base_model_prefix", "model")
    stack = getattr(base, prefix, None)
    return stack if isinstance(stack, torch.nn.Module) and stack is not base else None


def compile_in_place(model, compile_kwargs: dict | None = None) -> bool:
    """``torch.compile`` ``model``'s decoder stack in place (``nn.Module.compile``); whether one
    was found. The head and the log-prob code stay eager (their shapes change per batch)."""
    stack = decoder_stack(model)
    if stack is None:
        return False
    stack.compile(**(compile_kwargs or {}))
    return True


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_glibc_malloc` sets: freed
#: blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) stay in the heap instead of an
#: mmap/munmap pair per allocation, and the heap top is returned to the system only beyond
#: 256 MiB, so a training step's temporaries reuse memory that is already paged in
MALLOPT_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 32 << 20), "M_TRIM_THRESHOLD": (-1, 256 << 20)}
#: the environment variables that set the same at process start (they win over this tuning)
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
#: set to ``0`` to keep glibc's defaults in the CLI
MALLOC_TUNING_ENV = "LIGHTNING_ROBUST_MALLOC_TUNING"


def tune_glibc_malloc(environ=None) -> bool:
    """Apply :data:`MALLOPT_SETTINGS` through glibc's ``mallopt`` (Linux/glibc only); whether it
    did. Skipped when ``LIGHTNING_ROBUST_MALLOC_TUNING=0`` or when the user set one of
    :data:`MALLOC_ENV`. Measured on the DPO anchor of ``benchmarks/dpo_vs_trl.py --allocator``:
    minor page faults per step and steps per CPU-second in ``benchmarks/README.md``. The cost:
    up to 256 MiB of freed heap stays mapped to the process."""
    import ctypes
    import os
    import sys

    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or environ.get(MALLOC_TUNING_ENV, "1") == "0":
        return False
    if any(name in environ for name in MALLOC_ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return all(mallopt(code, value) == 1 for code, value in MALLOPT_SETTINGS.values())
