"""In-context learning: k-shot multiple-choice accuracy per language (method section 7).

For every language and run, each evaluated example gets ``shots`` demonstrations drawn from
the task's demonstration pool with ``numpy.random.default_rng([seed, run])`` (a fresh generator
per language, so a language's prompts do not depend on which other languages are evaluated).
All prompts of all languages and runs go to the model in one ``score_choices`` call (an
ensemble then loads each expert once); identical prompts (every run of a 0-shot evaluation)
are scored once.
"""

import copy
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from xelm_cli.api import (
    ChoiceRequest,
    EvalRequest,
    Evaluator,
    LanguageModel,
    PluginError,
    UsageError,
    build_options,
    normalize_language,
)

from .tasks import (
    PROTOCOLS,
    TaskData,
    build_context,
    check_protocol,
    check_shots,
    open_task,
    predict,
    sample_demonstrations,
    task_names,
)


class IclEvaluator(Evaluator):
    """Multiple-choice accuracy with k-shot prompts (xnli, xstorycloze, sib200, xcopa, ...).

    Tasks and protocols: the ``tasks`` package. Without ``languages``: every language of the task's
    files; of a Hub dataset, the languages the ensemble covers that it has.
    """

    name: ClassVar[str] = "icl"
    primary = "accuracy"
    higher_is_better = True
    tasks: ClassVar[tuple[str, ...]] = tuple(task_names())
    uses_protocol: ClassVar[bool | None] = True
    uses_shots: ClassVar[bool | None] = True
    uses_runs: ClassVar[bool | None] = True
    uses_seed: ClassVar[bool | None] = True

    @dataclass(frozen=True)
    class Options:
        """The icl evaluator takes no ``--eval-arg`` options (its settings are the request's)."""

    def __init__(self, request: EvalRequest) -> None:
        super().__init__(request)
        self.options = build_options(
            type(self), request.options, label=f"evaluator {self.name!r}", via="--eval-arg"
        )
        if not request.task:
            raise UsageError(
                f"--task is required for the icl evaluator (tasks: {', '.join(task_names())})"
            )
        self.protocol = check_protocol(request.protocol)
        if not request.data:
            raise UsageError(
                f"the icl evaluator needs --data: the directory holding the {request.task} files"
            )
        self.task = open_task(request.task, request.data)
        self.shots = request.shots or 0  # not given: zero-shot
        if request.languages:
            chosen = list(dict.fromkeys(normalize_language(c) for c in request.languages))
        else:
            chosen = self._default_languages()
        # Check every language (listing the available ones) before reading any file.
        self.task.check_languages(chosen)
        self.data: dict[str, TaskData] = {}
        for language in chosen:
            data = self.task.load(
                language, self.protocol, limit=request.limit, demos=self.shots > 0
            )
            check_shots(data, self.shots)
            self.data[language] = data

    def _default_languages(self) -> list[str]:
        """The task's languages; of a Hub dataset (SIB-200 has 200+ configurations), those
        the ensemble covers, with a notice naming the covered ones it lacks."""
        available = self.task.languages()
        covered = self.request.model_languages
        if self.task.dataset is None or not covered:
            return available
        covered = tuple(dict.fromkeys(normalize_language(code) for code in covered))
        chosen = [language for language in covered if language in available]
        skipped = [language for language in covered if language not in available]
        if not chosen:
            raise UsageError(
                f"{self.task.dataset} has none of the ensemble's languages "
                f"({', '.join(covered)}); choose some it has with --langs "
                f"({', '.join(available) or 'none'})"
            )
        if skipped:
            print(
                f"xelm: note: {self.task.name} on {self.task.dataset}: evaluating the "
                f"ensemble's languages {', '.join(chosen)}; skipped {', '.join(skipped)} "
                "(no configuration in the dataset)",
                file=sys.stderr,
            )
        return chosen

    @property
    def languages(self) -> list[str]:
        return list(self.data)

    def on_languages(self, languages: Sequence[str]) -> "IclEvaluator":
        """Restricted to ``languages`` (presented in that order) in memory: their examples and
        demonstration pools, already read, are what loading them again would give, and
        a language's demonstrations are drawn with its own generator (the module docstring),
        so its prompts do not change either."""
        kept = list(dict.fromkeys(normalize_language(code) for code in languages))
        if not kept or not set(kept) <= set(self.data):
            raise UsageError(
                f"cannot restrict the evaluation of {self.task.name} to "
                f"{', '.join(kept) or 'no language'}: choose among {', '.join(self.data)}"
            )
        restricted = copy.copy(self)
        restricted.request = replace(self.request, languages=tuple(kept))
        restricted.data = {language: self.data[language] for language in kept}
        return restricted

    def _prompts(self) -> tuple[list[ChoiceRequest], dict[str, list[list[int]]]]:
        """The unique requests, and per language, per run, each example's request index."""
        slots: dict[ChoiceRequest, int] = {}
        plan: dict[str, list[list[int]]] = {}
        shots = self.shots
        for language, data in self.data.items():
            plan[language] = []
            for run in range(self.request.runs):
                # seeded by (seed, run): other seeds' runs are independent draws, not shifted
                rng = np.random.default_rng([self.request.seed, run])
                indices = []
                for i, prompt in enumerate(data.examples):
                    demos = sample_demonstrations(data, i, shots, rng)
                    request = ChoiceRequest(
                        build_context(demos, prompt.context), prompt.choices, language
                    )
                    indices.append(slots.setdefault(request, len(slots)))
                plan[language].append(indices)
        return list(slots), plan

    def evaluate(self, model: LanguageModel) -> dict[str, Any]:
        requests, plan = self._prompts()
        scored = model.score_choices(requests)
        if len(scored) != len(requests):
            raise PluginError(
                f"model {model.name!r} scored {len(scored)} requests of {len(requests)}"
            )
        predictions = []
        for request, choices in zip(requests, scored, strict=True):
            if len(choices) != len(request.choices) or any(np.size(c) == 0 for c in choices):
                raise PluginError(
                    f"model {model.name!r} returned {len(choices)} scored choices for a request "
                    f"with {len(request.choices)}, or a choice without tokens"
                )
            predictions.append(predict(choices, self.protocol))

        languages: dict[str, Any] = {}
        per_run: dict[str, list[Fraction]] = {}  # exact: equal runs give a stderr of exactly 0
        for language, data in self.data.items():
            labels = [prompt.label for prompt in data.examples]
            per_run[language] = [
                _accuracy([predictions[i] for i in indices], labels) for indices in plan[language]
            ]
            scores = _over_runs(per_run[language])
            examples = len(data.examples)
            languages[language] = {
                **scores,
                "stderr_examples": _binomial_stderr(scores["accuracy"], examples),
                "examples": examples,
                "chance": float(_chance(data)),
            }
        macro = [statistics.mean(run) for run in zip(*per_run.values(), strict=True)]
        # the mean over languages of independent samples: its variance is theirs over L**2
        examples_variance = sum(scope["stderr_examples"] ** 2 for scope in languages.values())
        return {
            "task": self.task.name,
            "protocol": self.protocol,
            "scoring": PROTOCOLS[self.protocol],
            "shots": self.shots,
            "runs": self.request.runs,
            "seed": self.request.seed,
            "data": str(self.task.root),
            "overall": {
                **_over_runs(macro),
                "stderr_examples": math.sqrt(examples_variance) / len(languages),
                "chance": float(statistics.mean(_chance(data) for data in self.data.values())),
            },
            "languages": languages,
        }


def _accuracy(predicted: Sequence[int], labels: Sequence[int]) -> Fraction:
    right = sum(guess == label for guess, label in zip(predicted, labels, strict=True))
    return Fraction(right, len(labels))


def _over_runs(runs: Sequence[Fraction]) -> dict[str, Any]:
    """Mean accuracy over runs and its standard error (sample standard deviation / sqrt(runs)),
    computed on exact fractions and rounded to float once, so no float noise shows."""
    stderr = math.sqrt(statistics.variance(runs) / len(runs)) if len(runs) > 1 else 0.0
    return {
        "accuracy": float(statistics.mean(runs)),
        "stderr": stderr,
        "runs": [float(run) for run in runs],
    }


def _binomial_stderr(accuracy: float, examples: int) -> float:
    """The standard error that drawing ``examples`` examples puts on an ``accuracy``:
    sqrt(p (1 - p) / n). ``stderr`` (over runs) is the demonstrations' share; a reader
    comparing two systems needs both (the table shows their root sum of squares)."""
    return math.sqrt(accuracy * (1 - accuracy) / examples)


def _chance(data: TaskData) -> Fraction:
    return statistics.mean(Fraction(1, len(prompt.choices)) for prompt in data.examples)
