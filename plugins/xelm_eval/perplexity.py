"""The perplexity evaluator: token perplexity and bits per byte, per language and overall
(pooled over every token, and the mean over languages)."""

import copy
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from xelm_cli.api import (
    Document,
    EvalRequest,
    EvalSet,
    Evaluator,
    LanguageModel,
    UsageError,
    build_options,
    dataset_configs,
    eval_set_with,
    eval_texts,
    held_out_split,
    is_hub_dataset,
    known_eval_set,
    option,
    read_documents,
    usable_eval_set,
)


def perplexity_metrics(nll: float, tokens: int, n_bytes: int, documents: int) -> dict[str, Any]:
    """ppl = exp(NLL / tokens) (micro-averaged over target tokens); bits per byte =
    NLL / (ln 2 * UTF-8 bytes)."""
    return {
        "perplexity": math.exp(nll / tokens),
        "bits_per_byte": nll / (math.log(2) * n_bytes) if n_bytes else math.nan,
        "nll": nll,
        "tokens": tokens,
        "bytes": n_bytes,
        "documents": documents,
    }


class PerplexityEvaluator(Evaluator):
    """Held-out text scored one document per sequence (long documents in windows).

    ``data`` is any corpus ``iter_documents`` reads whose documents carry a language: a
    directory of ``{lang}.txt`` files with one document per line (FLORES-200, NTREX-128 in
    ../shared/data/eval), JSON-lines files, a Hugging Face dataset. ``limit`` keeps the first
    N documents of each language.

    Or a dataset with a configuration per language (a Hub id or a local copy laid out like
    one): FLORES+ (``openlanguagedata/flores_plus``, devtest; gated, so without a token the
    evaluator falls back to SIB-200's FLORES sentences and says so), SIB-200's FLORES text
    (``Davlan/sib200``), or any other with ``--eval-arg config=TEMPLATE`` (``{lang}``: xelm's
    code, ``{flores}``: ``arb_Arab``), ``lang_map=he=iw`` (the dataset's code for ``{lang}``
    where it differs), ``split=a,b`` and ``text_column=``; a dataset with several
    configurations is read that way even without them.
    """

    name: ClassVar[str] = "perplexity"
    primary = "perplexity"
    higher_is_better = False
    # held-out text, scored whole: no demonstrations, no choices (--shots, --runs, --seed
    # and --protocol are refused)
    uses_shots: ClassVar[bool | None] = False
    uses_runs: ClassVar[bool | None] = False
    uses_seed: ClassVar[bool | None] = False
    uses_protocol: ClassVar[bool | None] = False

    @dataclass(frozen=True, kw_only=True)
    class Options:
        config: str | None = option(
            None,
            help="A dataset's configuration of a language: {lang} is xelm's code, {flores} "
            "the FLORES-style one (arb_Arab).",
        )
        split: list[str] | None = option(
            None, help="The dataset's splits to read, comma-separated (default: the set's own)."
        )
        text_column: str | None = option(None, help="The column holding the text.")
        lang_map: str | None = option(
            None,
            help="The dataset's code for {lang} where it differs from xelm's, comma-separated "
            "(allenai/c4: he=iw,en=en-multi).",
        )

    def __init__(self, request: EvalRequest) -> None:
        super().__init__(request)
        self.options = build_options(
            type(self), request.options, label=f"evaluator {self.name!r}", via="--eval-arg"
        )
        if request.task is not None:  # it scores held-out text: a task would be ignored
            raise UsageError(
                f"--task {request.task} is for in-context evaluators (--evaluator icl or "
                "lm-eval); the perplexity evaluator scores the text of --data: drop --task"
            )
        if not request.data:
            raise UsageError("the perplexity evaluator needs --data (a corpus of held-out text)")
        hub_options = self._hub_options()
        self.source: dict[str, Any] = {}  # what a dataset read from the Hub was
        base = known_eval_set(request.data)
        hub = is_hub_dataset(request.data)
        if hub and (base or hub_options or _has_several_configs(request.data)):
            self.documents = self._hub_documents(request, base, hub_options)
        else:
            if hub_options:
                raise UsageError(
                    f"--eval-arg {', '.join(hub_options)} applies to a dataset with a "
                    f"configuration per language; {request.data} is a corpus"
                )
            self.documents = read_documents(
                request.data, languages=request.languages, limit=request.limit
            )
        present = {str(document.language) for document in self.documents}
        order = list(request.languages) if request.languages else sorted(present)
        self._languages = [language for language in order if language in present]

    @property
    def languages(self) -> list[str]:
        return list(self._languages)

    def on_languages(self, languages: Sequence[str]) -> "PerplexityEvaluator":
        """Restricted to ``languages`` (presented in that order) in memory: the documents
        already read of them are those reading the data again would give (a Hub corpus is
        not streamed twice)."""
        kept = list(dict.fromkeys(languages))
        wanted = set(kept)
        if not kept or not wanted <= set(self._languages):
            raise UsageError(
                f"cannot restrict the evaluation of {self.request.data} to "
                f"{', '.join(kept) or 'no language'}: choose among {', '.join(self._languages)}"
            )
        restricted = copy.copy(self)
        restricted.request = replace(self.request, languages=tuple(kept))
        restricted.documents = [d for d in self.documents if str(d.language) in wanted]
        restricted._languages = kept
        return restricted

    def _hub_options(self) -> dict[str, str]:
        """The dataset options given, as ``eval_set_with`` reads them."""
        given = {
            "config": self.options.config,
            "split": ",".join(self.options.split) if self.options.split is not None else None,
            "text_column": self.options.text_column,
            "lang_map": self.options.lang_map,
        }
        return {key: value for key, value in given.items() if value is not None}

    def _hub_documents(
        self, request: EvalRequest, base: EvalSet | None, options: dict[str, str]
    ) -> list[Document]:
        data = str(request.data)
        if not request.languages:
            raise UsageError(
                f"{request.data} has a configuration per language: name the languages to "
                "evaluate with --langs"
            )
        unknown = base is None  # a dataset xelm knows nothing of: its held-out split is found
        if base is None:
            base = EvalSet(data, data, "{lang}", ("test",), "text", "unknown")
        asked = eval_set_with(replace(base, dataset=data), options)
        configs = {asked.config_for(language) for language in request.languages}
        if len(request.languages) > 1 and len(configs) == 1:
            raise UsageError(
                f"--eval-arg config={asked.config} names one configuration for every language "
                f"({', '.join(request.languages)}): give a template with {{lang}} or {{flores}} "
                "in it, or evaluate one language at a time"
            )
        split_note = None
        if unknown and "split" not in options:
            asked, split_note = held_out_split(asked, request.languages)
        chosen, fallback_note = usable_eval_set(asked)
        if fallback_note and options:  # they choose within the gated set, not the fallback
            given = " ".join(f"--eval-arg {key}=" for key in options)
            raise UsageError(
                f"{data} is gated and no Hugging Face token is set, so {given} cannot apply: "
                "accept its terms on its Hub page, then `hf auth login` or set HF_TOKEN (or "
                "drop them to evaluate on SIB-200's FLORES text)"
            )
        notes = [note for note in (split_note, fallback_note) if note]
        for note in notes:
            print(f"xelm: note: {note}", file=sys.stderr)
        if notes:
            self.source["note"] = "; ".join(notes)
        self.source.update(dataset=chosen.dataset, title=chosen.title, splits=chosen.splits)
        chosen.check_languages(request.languages)
        documents = []
        for language in request.languages:
            texts = list(eval_texts(chosen, language, request.limit))
            if not texts:
                raise UsageError(
                    f"{chosen.dataset} [{chosen.config_for(language)}] has no text to evaluate"
                )
            documents += [Document(text, language) for text in texts]
        return documents

    def evaluate(self, model: LanguageModel) -> dict[str, Any]:
        scores = model.score_documents(self.documents)
        metrics = summarise(self.documents, scores, self._languages)
        return {**metrics, "source": self.source} if self.source else metrics


def _has_several_configs(dataset: str) -> bool:
    """Whether a Hub dataset has several configurations: read as one corpus, ``datasets``
    refuses it, so each is taken as a language's (its errors name ``--eval-arg config=``)."""
    return len(dataset_configs(dataset)) > 1


def summarise(
    documents: Sequence[Document], scores: Sequence[np.ndarray], languages: Sequence[str]
) -> dict[str, Any]:
    nll = dict.fromkeys(languages, 0.0)
    counts = {language: [0, 0, 0] for language in languages}  # tokens, bytes, documents
    for document, logprobs in zip(documents, scores, strict=True):
        if logprobs.size == 0:  # nothing scored (a model's tokenizer dropped it): no bytes either
            continue
        language = str(document.language)
        nll[language] -= float(np.sum(logprobs))
        counts[language][0] += int(logprobs.size)
        counts[language][1] += len(document.text.encode("utf-8"))
        counts[language][2] += 1
    unscored = [language for language in languages if counts[language][0] == 0]
    if unscored:
        raise UsageError(
            f"the model scored no token of the {', '.join(unscored)} documents; leave "
            f"{'it' if len(unscored) == 1 else 'them'} out with --langs"
        )
    per_language = {
        language: perplexity_metrics(nll[language], *counts[language]) for language in languages
    }
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    overall = perplexity_metrics(sum(nll.values()), *totals)
    return {
        "overall": {**overall, "mean_over_languages": mean_over_languages(per_language)},
        "languages": per_language,
    }


def mean_over_languages(per_language: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each language's perplexity and bits per byte averaged, every language counting once
    whatever its tokens: the paper's headline numbers (method section 9), where ``overall``
    pools the tokens, so that the languages with the most tokens weigh the most."""
    means = {
        metric: statistics.fmean(scores[metric] for scores in per_language.values())
        for metric in ("perplexity", "bits_per_byte")
    }
    return {**means, "languages": len(per_language)}
