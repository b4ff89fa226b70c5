"""Open LLM Leaderboard v2 through lm-evaluation-harness (optional extra ``eval``: ``lm-eval[hf]``).

:class:`OpenLLMLeaderboard` runs ``lm_eval.simple_evaluate`` on an in-memory ``HFLM`` that wraps
the current policy and tokenizer (no export, no reload), with the leaderboard's options:
``apply_chat_template`` and ``fewshot_as_multiturn`` (the seed 002 evaluation and the
leaderboard's published command line use both), ``limit`` for quick runs. Tasks default to the
``leaderboard`` group (IFEval, BBH, MATH-hard, GPQA, MuSR, MMLU-Pro); their data is on the hub.

Offline, :func:`write_local_bbh_tasks` writes task YAMLs that ``include`` lm-eval's own
``leaderboard_bbh_*`` task files and only replace the data source with a local jsonl
(``dataset_path: json`` + ``dataset_kwargs.data_files``; docs/ENVIRONMENT.md), so the prompt,
choices, few-shot examples and metric are exactly the leaderboard's.

Metrics: ``<task>/<metric>`` (lm-eval's ``"acc_norm,none"`` becomes ``acc_norm``; another filter
than ``none`` is kept as ``<metric>_<filter>``); standard errors are left out. The leaderboard's
published normalised scores (rescaling by the random baseline) are NOT computed here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from lightning_robust.evals.common import Evaluator


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Open LLM Leaderboard evaluation needs lm-eval: pip install 'lightning_robust[eval]'"
        ) from err


def flatten_results(results: dict) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` from lm-eval's ``results["results"]`` (numbers only)."""
    out = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            if (
                key in ("alias", "sample_len")
                or "_stderr" in key
                or not isinstance(value, int | float)
            ):
                continue
            metric, _, flt = key.partition(",")
            name = metric if flt in ("", "none") else f"{metric}_{flt}"
            out[f"{task}/{name}"] = float(value)
    return out


def write_local_bbh_tasks(
    out_dir: str | os.PathLike,
    data_file: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    prefix: str = "local_",
) -> list[str]:
    """Task YAMLs over a local BBH jsonl (columns ``task``, ``input``, ``target``).

    For each BBH task in the file (or in ``tasks``), writes ``<out_dir>/<prefix>bbh_<task>.yaml``
    that includes lm-eval's ``leaderboard/bbh_mc/<task>.yaml`` and reads
    ``<out_dir>/<prefix>bbh_<task>.jsonl`` instead of the hub. Returns the task names; pass
    ``out_dir`` as ``include_path``.
    """
    _require_lm_eval()
    import lm_eval.tasks

    builtin = os.path.join(os.path.dirname(lm_eval.tasks.__file__), "leaderboard", "bbh_mc")
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    with open(data_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.setdefault(row["task"], []).append(
                    {"input": row["input"], "target": row["target"]}
                )
    names = []
    for task in tasks or sorted(rows):
        source = os.path.join(builtin, f"{task}.yaml")
        if not os.path.exists(source):
            raise ValueError(f"lm-eval has no leaderboard BBH task {task!r} ({source})")
        if task not in rows:
            raise ValueError(f"{data_file} has no rows of task {task!r}")
        name = f"{prefix}bbh_{task}"
        data = os.path.join(out_dir, f"{name}.jsonl")
        with open(data, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[task])
        with open(os.path.join(out_dir, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(
                f"include: {json.dumps(source)}\n"
                f"task: {name}\n"
                "dataset_path: json\n"
                "dataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(data)}\n"
                "test_split: test\n"
            )
        names.append(name)
    return names


class OpenLLMLeaderboard(Evaluator):
    """lm-eval tasks on the scorer's causal LM (``scorer.model``, ``scorer.tokenizer``).

    Args:
        tasks: lm-eval task or group names (``["leaderboard"]``, or ``leaderboard_bbh`` ...).
        limit: at most this many documents per task (quick runs); ``None``: all.
        num_fewshot: override the tasks' few-shot count (``None``: the leaderboard's).
        apply_chat_template: render prompts with the tokenizer's chat template (leaderboard: on).
        fewshot_as_multiturn: few-shot examples as chat turns (leaderboard: on; needs the
            chat template).
        include_path: extra directory of task YAMLs (``TaskManager(include_path=...)``).
        batch_size: lm-eval batch size; ``max_length``: HFLM context length.
        max_gen_toks: cap on generated tokens of generative tasks (lm-eval
            ``gen_kwargs="max_gen_toks=N"``; ``None``: the tasks' own).
        random_seed: python / numpy / torch / few-shot seeds of lm-eval.
        name: the ``<benchmark>`` of the metric names.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        limit: int | float | None = None,
        num_fewshot: int | None = None,
        apply_chat_template: bool = True,
        fewshot_as_multiturn: bool = True,
        include_path: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        random_seed: int = 0,
        name: str = "leaderboard",
        max_gen_toks: int | None = None,
    ):
        super().__init__()
        self.tasks = list(tasks or ["leaderboard"])
        self.limit = limit
        self.num_fewshot = num_fewshot
        self.apply_chat_template = apply_chat_template
        self.fewshot_as_multiturn = fewshot_as_multiturn and apply_chat_template
        self.include_path = include_path
        self.batch_size = batch_size
        self.max_length = max_length
        self.random_seed = random_seed
        if max_gen_toks is not None and (isinstance(max_gen_toks, bool) or int(max_gen_toks) < 1):
            raise ValueError(f"max_gen_toks must be a positive integer, got {max_gen_toks!r}")
        self.max_gen_toks = max_gen_toks
        self.name = name
        self._task_manager = None

    def rows(self):  # lm-eval reads its own data
        return None

    def evaluate(self, scorer) -> dict[str, float]:
        _require_lm_eval()
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        model = getattr(scorer, "model", None)
        tokenizer = getattr(scorer, "tokenizer", None)
        if (
            model is None
            or tokenizer is None
            or type(model).__name__.endswith("ForSequenceClassification")
        ):
            raise TypeError(
                "the leaderboard needs a causal LM scorer (LikelihoodScorer or DPOImplicitRewardScorer)"
            )
        if self._task_manager is None:
            self._task_manager = TaskManager(include_path=self.include_path)
        device = str(next(model.parameters()).device)
        was_training = model.training  # HFLM switches the model to eval mode
        try:
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=self.batch_size,
                max_length=self.max_length,
                device=device,
            )
            results = simple_evaluate(
                model=lm,
                tasks=self.tasks,
                num_fewshot=self.num_fewshot,
                limit=self.limit,
                apply_chat_template=self.apply_chat_template,
                fewshot_as_multiturn=self.fewshot_as_multiturn,
                task_manager=self._task_manager,
                log_samples=False,
                random_seed=self.random_seed,
                numpy_random_seed=self.random_seed,
                torch_random_seed=self.random_seed,
                fewshot_random_seed=self.random_seed,
                gen_kwargs=None
                if self.max_gen_toks is None
                else f"max_gen_toks={int(self.max_gen_toks)}",
            )
        finally:
            model.train(was_training)
        self.details = {
            "n_samples": (results or {}).get("n-samples", {}),
            "config": {"limit": self.limit},
        }
        return flatten_results(results or {})
