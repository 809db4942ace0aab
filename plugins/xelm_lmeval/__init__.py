"""lm-evaluation-harness tasks on xelm ensembles and bundles: the ``lm-eval`` evaluator.

``xelm ensemble eval experts/* --evaluator lm-eval --task xcopa_tr --eval-arg language=tr``
runs lm-eval tasks on every system, each wrapped as an lm-eval model
(:class:`xelm_lmeval.bridge.XelmLM`). The request maps onto lm-eval as follows: ``task`` is a
comma-separated list of lm-eval task, group or tag names (or task YAML files); ``limit`` is
lm-eval's per-task example limit; ``shots`` its ``num_fewshot`` (not given: each task's own);
``seed`` every seed it takes (Python's, numpy's, torch's and few-shot sampling's), except that
``--seed 0``, xelm's default (which xelm cannot tell from a seed not given), keeps lm-eval's own
defaults (``simple_evaluate``'s: 0 for Python's random, 1234 for numpy, torch and few-shot
sampling), so default few-shot prompts are a stock lm-eval run's; results record the seeds used
(``lm_eval_seeds``). Options (``--eval-arg KEY=VALUE``): ``include_path`` (a
directory of custom task YAML files; ``--data DIR`` is read the same way), ``language`` (what
a language router is told; ``--langs`` with one language does the same) and
``bootstrap_iters`` (lm-eval's stderr bootstrap). The router is told that one language for every
request: tasks whose datasets are in several languages (``--task xnli``: its 15 subtasks, their
dataset configs ``ar``, ``bg``, ...) are refused with a language, so run each language's subtask
on its own with its ``--langs`` (``--task xnli_de --langs de``).

Only tasks that score given text run (``multiple_choice``, ``loglikelihood``,
``loglikelihood_rolling``): xelm models do not generate. Metrics that need greedy decoding
(``acc`` of loglikelihood tasks, ``exact_match`` of multiple-choice tasks) are reported as null.

lm-eval (``pip install 'xelm[lm-eval]'``) is imported only when the evaluator is built, so this
plugin loads without it. It imports nothing from xelm but ``xelm_cli.api``.
"""

import difflib
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from xelm_cli.api import (
    EvalRequest,
    Evaluator,
    LanguageModel,
    Register,
    UsageError,
    build_options,
    exception_line,
    hookimpl,
    normalize_language,
    option,
)

__all__ = ["LmEvalEvaluator", "require_lm_eval"]

INSTALL_HINT = "the lm-eval evaluator needs lm-evaluation-harness: pip install 'xelm[lm-eval]'"
MIN_VERSION = "0.4.12"  # TaskManager.load, and simple_evaluate built on it
DEFAULT_BOOTSTRAP_ITERS = 100_000
SCORING_OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")
GREEDY_METRICS = {"loglikelihood": "acc", "multiple_choice": "exact_match"}
# simple_evaluate's seeds, and its defaults where its signature does not give them (0.4.x's)
LM_EVAL_SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}


def require_lm_eval() -> Any:
    """The ``lm_eval`` package, or a one-line :class:`UsageError` saying how to install it."""
    try:
        import lm_eval.evaluator
        import lm_eval.tasks
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    if not hasattr(lm_eval.tasks.TaskManager, "load"):
        found = getattr(lm_eval, "__version__", "an older version")
        raise UsageError(
            f"the lm-eval evaluator needs lm-evaluation-harness {MIN_VERSION} or newer (found "
            f"{found}): pip install -U 'xelm[lm-eval]'"
        )
    return lm_eval


class LmEvalEvaluator(Evaluator):
    """lm-evaluation-harness tasks (multiple choice, log-likelihood) on ensembles and bundles.

    Scored with xelm's :class:`LanguageModel` API (see the module docstring).

    ``evaluate`` returns ``{"overall": metrics of the first task, "languages": {language or
    "all": the same}, "tasks": {task: metrics}, "primary_metric", "higher_is_better",
    "n_shot", "lm_eval_version", "lm_eval_seeds"}``; metric names are lm-eval's (``acc``,
    ``acc_norm``, ``acc_stderr``, ...; a filter other than ``none`` is kept as
    ``metric,filter``) plus ``examples``, the number of examples scored; ``lm_eval_seeds``:
    the seeds given to lm-eval's ``simple_evaluate``. ``primary`` (and ``higher_is_better``),
    set for the request: the first task's first metric xelm computes (``acc`` for most
    multiple-choice tasks, ``perplexity`` for LAMBADA-like, ``word_perplexity`` for
    wikitext-like ones); ``primary_metric`` names the first metric of the first result row.
    """

    name: ClassVar[str] = "lm-eval"
    primary = "acc"
    higher_is_better = True
    uses_shots: ClassVar[bool | None] = True  # num_fewshot
    uses_seed: ClassVar[bool | None] = True
    uses_runs: ClassVar[bool | None] = False  # each task runs once
    uses_protocol: ClassVar[bool | None] = False  # lm-eval's own scoring

    @dataclass(frozen=True, kw_only=True)
    class Options:
        include_path: Path | None = option(
            None, help="A directory of custom lm-eval task YAML files (--data DIR is read too)."
        )
        language: str | None = option(
            None,
            help="The language a language router is told for every request (--langs with one "
            "does the same); refused for tasks in several languages (run each on its own).",
        )
        bootstrap_iters: int = option(
            DEFAULT_BOOTSTRAP_ITERS,
            help="lm-eval's bootstrap iterations for standard errors (0: none).",
            minimum=0,
        )

    def __init__(self, request: EvalRequest) -> None:
        super().__init__(request)
        self.options = build_options(
            type(self), request.options, label=f"evaluator {self.name!r}", via="--eval-arg"
        )
        self._lm_eval = require_lm_eval()
        names = [part.strip() for part in (request.task or "").split(",") if part.strip()]
        if not names:
            raise UsageError(
                "the lm-eval evaluator needs --task: lm-eval task names, comma-separated "
                "(e.g. --task xcopa_tr,arc_easy)"
            )
        if request.runs != 1:
            raise UsageError("the lm-eval evaluator runs each task once; leave --runs at 1")
        self.task_names = list(dict.fromkeys(names))
        self.language = _language(self.options.language, request.languages)
        self.include_path = _include_paths(self.options.include_path, request.data)
        self.bootstrap_iters = self.options.bootstrap_iters
        self._manager = self._task_manager()
        self._tasks, self._output_types, self._first = self._load_tasks()
        self._check_one_language()
        self.primary, self.higher_is_better = self._headline()
        self.seeds = self._seeds()

    @property
    def languages(self) -> list[str]:
        return [self.language] if self.language else []

    # -- tasks

    def _task_manager(self) -> Any:
        """A TaskManager that knows every requested name: the custom tasks alone when they
        suffice (indexing lm-eval's own thousands of tasks takes seconds), else all."""
        manager_class = self._lm_eval.tasks.TaskManager
        include = self.include_path or None

        def unknown(manager: Any) -> list[str]:
            known = set(manager.all_tasks)
            return [n for n in self.task_names if n not in known and not _is_yaml_file(n)]

        if include is not None or all(_is_yaml_file(n) for n in self.task_names):
            manager = manager_class(include_path=include, include_defaults=False)
            if not unknown(manager):
                return manager
        manager = manager_class(include_path=include)
        missing = unknown(manager)
        if missing:
            close = difflib.get_close_matches(missing[0], manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "`lm-eval ls tasks` lists them"
            raise UsageError(f"lm-eval has no task, group or tag {missing[0]!r}; {hint}")
        return manager

    def _load_tasks(self) -> tuple[list[Any], dict[str, str], str]:
        """Build every task (which loads its data) before any model runs."""
        objects: list[Any] = []
        output_types: dict[str, str] = {}
        first = ""
        self._first_task: tuple[str, Any] = ("", None)
        self._task_objects: dict[str, Any] = {}
        for name in self.task_names:
            try:
                loaded = self._manager.load([name])
            except Exception as exc:  # lm-eval and datasets raise many kinds; report one line
                raise UsageError(
                    f"lm-eval could not load task {name!r}: {exception_line(exc, with_type=True)}"
                ) from None
            if name in loaded["groups"]:
                objects.append(loaded["groups"][name])
                first = first or name
            else:
                objects += loaded["tasks"].values()
                first = first or next(iter(loaded["tasks"]), "")
            for task_name, task in loaded["tasks"].items():
                if self._first_task[1] is None:
                    self._first_task = (task_name, task)
                output_type = str(task.get_config("output_type"))
                if output_type not in SCORING_OUTPUT_TYPES:
                    raise UsageError(
                        f"lm-eval task {task_name!r} has output_type {output_type}; xelm models "
                        f"score text but do not generate it, so only "
                        f"{', '.join(SCORING_OUTPUT_TYPES)} tasks can run"
                    )
                output_types[task_name] = output_type
                self._task_objects[task_name] = task
        return objects, output_types, first

    def _check_one_language(self) -> None:
        """Refuse to tell the router one language for tasks in several: lm-eval's multilingual
        suites (``xnli``, ``xcopa``, ``belebele``, ...) are one dataset's language configs, and
        a task config names no language of its own, so the languages are those of the tasks'
        dataset configs (``dataset_name``) that are language codes."""
        if self.language is None:
            return
        found: dict[str, list[str]] = {}
        for task_name, task in self._task_objects.items():
            language = _dataset_language(task)
            if language is not None:
                found.setdefault(language, []).append(task_name)
        # only when the language told is one of them: names of other suites' subsets that
        # happen to be codes (basqueglue's ``bec``, ``wic``) are no languages of a suite
        if len(found) < 2 or self.language not in found:
            return
        example_language = self.language
        raise UsageError(
            f"--task {','.join(self.task_names)} holds tasks in {len(found)} languages "
            f"({', '.join(found)}, as their datasets' configs name them), but the router would "
            f"be told {self.language} for all of them: run each language's task on its own "
            f"with its --langs (e.g. --task {found[example_language][0]} --langs "
            f"{example_language})"
        )

    def _seeds(self) -> dict[str, int]:
        """simple_evaluate's seeds: ``request.seed`` for all, or lm-eval's own defaults when it
        is 0, xelm's default (so a default run's few-shot prompts are a stock lm-eval run's)."""
        if self.request.seed:
            return dict.fromkeys(LM_EVAL_SEEDS, self.request.seed)
        try:
            signature = inspect.signature(self._lm_eval.evaluator.simple_evaluate)
        except (TypeError, ValueError):
            return dict(LM_EVAL_SEEDS)
        seeds = dict(LM_EVAL_SEEDS)
        for name in seeds:
            default = getattr(signature.parameters.get(name), "default", None)
            if isinstance(default, int) and not isinstance(default, bool):
                seeds[name] = default
        return seeds

    def _headline(self) -> tuple[str, bool]:
        """The first task's first metric that xelm computes, and its direction: ``acc`` for
        most multiple-choice tasks, ``perplexity`` for LAMBADA-like ones, ``word_perplexity``
        for wikitext-like ones (a group's first task's)."""
        name, task = self._first_task
        greedy = GREEDY_METRICS.get(self._output_types[name])
        for metric, higher in task.higher_is_better().items():
            if metric != greedy:
                return metric, bool(higher)
        return self.primary, self.higher_is_better

    # -- evaluation

    def evaluate(self, model: LanguageModel) -> dict[str, Any]:
        from .bridge import XelmLM

        results = self._lm_eval.evaluator.simple_evaluate(
            model=XelmLM(model, language=self.language),
            tasks=list(self._tasks),
            task_manager=self._manager,
            num_fewshot=self.request.shots,
            limit=self.request.limit,
            bootstrap_iters=self.bootstrap_iters,
            log_samples=False,
            **self.seeds,
        )
        if results is None:  # only lm-eval's rank 0 gets results; xelm runs one process
            raise UsageError("lm-eval returned no results (not the main process)")
        tasks: dict[str, dict[str, Any]] = {}
        nulled: list[str] = []
        for task_name, row in results["results"].items():
            greedy = GREEDY_METRICS.get(self._output_types.get(task_name, ""))
            metrics = _metrics(row, greedy)
            if greedy is not None and greedy in metrics:
                nulled.append(f"{task_name}:{greedy}")
            samples = results.get("n-samples", {}).get(task_name, {})
            if "effective" in samples:
                metrics["examples"] = int(samples["effective"])
            tasks[task_name] = metrics
        first = self._first if self._first in tasks else next(iter(tasks))
        overall = dict(tasks[first])
        record: dict[str, Any] = {
            "overall": overall,
            "languages": {self.language or "all": dict(overall)},
            "tasks": tasks,
            "primary_metric": next(
                (m for m in overall if not m.endswith("_stderr") and m != "examples"), None
            ),
            "higher_is_better": dict(results.get("higher_is_better", {}).get(first, {})),
            "n_shot": {k: int(v) for k, v in results.get("n-shot", {}).items()},
            "lm_eval_version": str(getattr(self._lm_eval, "__version__", "unknown")),
            "lm_eval_seeds": dict(self.seeds),
        }
        if nulled:
            record["notes"] = [
                f"{', '.join(nulled)}: null, as it needs greedy decoding, which xelm's "
                "LanguageModel API cannot tell (it gives only the scored tokens' log-probabilities)"
            ]
        return record


def _language(option: Any, languages: Sequence[str] | None) -> str | None:
    from_option = normalize_language(str(option)) if option is not None else None
    if languages and len(languages) > 1:
        raise UsageError(
            "an lm-eval run tells the router one language: give one with --langs or "
            "--eval-arg language=CODE"
        )
    from_langs = normalize_language(languages[0]) if languages else None
    if from_option and from_langs and from_option != from_langs:
        raise UsageError(
            f"--langs {from_langs} and --eval-arg language={from_option} disagree; give one"
        )
    return from_option or from_langs


def _dataset_language(task: Any) -> str | None:
    """The language code a task's dataset config (``dataset_name``) names, or None."""
    try:
        name = task.get_config("dataset_name")
    except Exception:  # a task object without lm-eval's config
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return normalize_language(name)
    except UsageError:  # not a language: a subset or subject name
        return None


def _include_paths(option: Any, data: str | None) -> list[str]:
    paths = list(dict.fromkeys(str(p) for p in (option, data) if p))
    for path in paths:
        if not Path(path).is_dir():
            raise UsageError(f"{path} is not a directory of lm-eval task YAML files")
    return paths


def _is_yaml_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


def _number(value: Any) -> float | None:
    """A metric value as a float; lm-eval's "N/A" (no stderr) and NaN as None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return None
    number = float(value)
    return number if math.isfinite(number) else None


def _metrics(row: dict[str, Any], greedy: str | None) -> dict[str, Any]:
    """lm-eval's ``{"acc,none": v, "acc_stderr,none": s, "alias": ...}`` as ``{"acc": v,
    "acc_stderr": s}``; the greedy-decoding metric (and its stderr) as None."""
    metrics: dict[str, Any] = {}
    for key, value in row.items():
        metric, comma, filter_name = key.partition(",")
        if not comma:  # alias, name, sample_len
            continue
        base = metric.removesuffix("_stderr")
        label = metric if filter_name == "none" else f"{metric},{filter_name}"
        metrics[label] = None if base == greedy else _number(value)
    return metrics


@hookimpl
def register_evaluators(register: Register) -> None:
    register("lm-eval", LmEvalEvaluator)
