"""An xelm :class:`LanguageModel` seen by lm-evaluation-harness as an ``lm_eval`` model.

This module imports ``lm_eval`` when it is imported; :mod:`xelm_lmeval` imports it only when
an evaluation needs it, so xelm runs without lm-eval installed.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from lm_eval.api.model import LM

from xelm_cli.api import ChoiceRequest, Document, LanguageModel

GENERATION_UNSUPPORTED = (
    "xelm's LanguageModel API scores text but does not generate it, so lm-eval tasks with "
    "output_type generate_until cannot run on xelm models; choose multiple_choice, "
    "loglikelihood or loglikelihood_rolling tasks"
)


def split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation, as lm-eval's own models do
    (``"Answer: ", "Paris"`` is scored as ``"Answer:", " Paris"``): a word-initial space
    belongs to the word's token in the usual BPE vocabularies."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


class XelmLM(LM):
    """lm-eval's model interface over an xelm :class:`LanguageModel` (an ensemble or a bundle).

    ``language`` is given to the model with every request (``ChoiceRequest.language``,
    ``Document.language``): a language router needs it to choose experts.

    ``loglikelihood`` returns ``(sum of ln p(continuation tokens | BOS + context), False)``.
    The second value, lm-eval's *is_greedy* (would greedy decoding produce the continuation),
    needs the model's full next-token distribution, which the LanguageModel API does not
    expose (it returns the log-probability of the given tokens only); it is always False.
    Only metrics built on it are affected: ``acc`` of ``loglikelihood`` tasks (e.g. LAMBADA)
    and ``exact_match`` of ``multiple_choice`` tasks; the lm-eval evaluator reports them as
    null.
    """

    def __init__(self, model: LanguageModel, language: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.language = language

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """One ``(log-likelihood, is_greedy)`` per instance (``args = (context, continuation)``),
        in the order of ``requests``.

        The instances of one document (lm-eval's ``task_name`` and ``doc_id``: the choices of a
        multiple-choice item) that share a context become one :class:`ChoiceRequest`, so the
        context is encoded and routed once; a document's instances with different contexts
        (e.g. ``acc_mutual_info``'s unconditional ones) are separate requests. Documents are
        never merged, even with the same context: a task whose context is empty (XNLI, whose
        choices are whole sentences) makes one request per document, not one with every
        document's choices. Instances that do not name their document (not from lm-eval's
        evaluator) are grouped by context alone. Every request goes to the model in a single
        call, so an ensemble loads each expert once.
        """
        pairs = [split_trailing_space(str(r.args[0]), str(r.args[1])) for r in requests]
        keys = [(*_document(r), context) for r, (context, _) in zip(requests, pairs, strict=True)]
        groups: dict[tuple[Any, Any, str], dict[str, int]] = {}
        for key, (_, continuation) in zip(keys, pairs, strict=True):
            if continuation:
                known = groups.setdefault(key, {})
                known.setdefault(continuation, len(known))
        batch = [
            ChoiceRequest(key[-1], tuple(options), self.language) for key, options in groups.items()
        ]
        scored = self.model.score_choices(batch) if batch else []
        totals = {
            (key, choice): float(np.sum(logprobs))
            for key, per_choice in zip(groups, scored, strict=True)
            for choice, logprobs in zip(groups[key], per_choice, strict=True)
        }
        # an empty continuation has probability 1: log-likelihood 0
        return [
            (totals.get((key, continuation), 0.0), False)
            for key, (_, continuation) in zip(keys, pairs, strict=True)
        ]

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        """ln p of each whole text given BOS, one document per text (``args = (text,)``);
        texts longer than the model's context are scored in windows by the model."""
        texts = [str(r.args[0]) for r in requests]
        wanted = [i for i, text in enumerate(texts) if text]  # the empty text: ln 1 = 0
        scored = self.model.score_documents([Document(texts[i], self.language) for i in wanted])
        totals = [0.0] * len(texts)
        for i, logprobs in zip(wanted, scored, strict=True):
            totals[i] = float(np.sum(logprobs))
        return totals

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(GENERATION_UNSUPPORTED)


def _document(instance: Any) -> tuple[Any, Any]:
    """The lm-eval document ``instance`` belongs to, ``(task_name, doc_id)`` (lm-eval's
    ``Instance`` sets both from its metadata), or ``(None, None)`` when it does not say."""
    doc_id = getattr(instance, "doc_id", None)
    if doc_id is None:
        return None, None
    return getattr(instance, "task_name", None), doc_id
