"""A third-party evaluator and its plugin, installed in this process, for the evaluator
contract tests."""

from pathlib import Path
from typing import Any

import numpy as np

from xelm_cli.api import Document, EvalRequest, Evaluator, LanguageModel, Register, hookimpl
from xelm_cli.plugin import host


class EvaluatorPlugin:
    """A plugin that registers ``evaluator`` under its name."""

    def __init__(self, evaluator: type[Evaluator]) -> None:
        self.evaluator = evaluator

    @hookimpl
    def register_evaluators(self, register: Register) -> None:
        register(self.evaluator.name, self.evaluator)


class FirstLine(Evaluator):
    """Mean ln p of the tokens of each language's first corpus line."""

    name = "first-line"
    primary = "logprob"
    higher_is_better = True

    def __init__(self, request: EvalRequest) -> None:  # no super().__init__(request)
        corpus = Path(str(request.data))
        self.documents = [
            Document(path.read_text().splitlines()[0], path.stem)
            for path in sorted(corpus.glob("*.txt"))
        ]

    @property
    def languages(self) -> list[str]:
        return [str(document.language) for document in self.documents]

    def evaluate(self, model: LanguageModel) -> dict[str, Any]:
        scores = model.score_documents(self.documents)
        by_language = {
            str(document.language): {self.primary: float(np.mean(logprobs))}
            for document, logprobs in zip(self.documents, scores, strict=True)
        }
        overall = float(np.mean([scope[self.primary] for scope in by_language.values()]))
        return {"overall": {self.primary: overall}, "languages": by_language}


def install_evaluator(evaluator: type[Evaluator]) -> None:
    """A fresh registry of the installed plugins and one more, ``mine``, with ``evaluator``."""
    plugin = EvaluatorPlugin(evaluator)
    host.reset_registry(host.load_registry(extra_plugins=[("mine", plugin)]))
