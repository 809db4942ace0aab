"""Running an ensemble: its members as one :class:`LanguageModel`.

Execution (spec/ensemble-v1.md, section 3): a pre-router's weights are known before any expert
runs, so each expert scores only the documents it has weight on; an output-dependent router
needs every expert on every document. Either way the experts run one at a time (load, score
every document it is needed for, keep only the target tokens' log-probabilities, free), and the
mixture is taken afterwards: peak memory is one expert plus k x tokens floats. Logit averaging
needs the experts of a document together and keeps them loaded for the call. A resident
ensemble (all experts kept on a GPU) reads the next expert's weights while the current one
scores (load_ahead.py).
"""

import gc
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import (
    PluginError,
    UsageError,
)
from xelm_cli.common.progress import count_progress
from xelm_cli.data.tokenizer_loading import DocumentEncoding, document_encoding
from xelm_cli.ensemble.choices import score_choice_sets
from xelm_cli.ensemble.ensemble_file import COMBINE_RULES
from xelm_cli.ensemble.load_ahead import LoadAhead
from xelm_cli.ensemble.members import check_compatible, expert_infos, output_size
from xelm_cli.ensemble.mixing import mixture
from xelm_cli.ensemble.product import score_product
from xelm_cli.ensemble.routing import (
    build_fallback,
    build_router,
    check_router_experts,
    router_class,
    routing,
)
from xelm_cli.ensemble.scoring import (
    LoadedModel,
    Logprobs,
    compute_dtype,
    dtype_name,
    pick_device,
    read_weights,
    score_sequences,
)
from xelm_cli.ensemble.weights import check_distributions, check_token_weights, check_weights
from xelm_cli.plugin.contracts import (
    ChoiceRequest,
    Document,
    LanguageModel,
    OutputRouter,
    PreRouter,
    Router,
    ScoredDocument,
)

RESIDENT_SHARE = (
    0.8  # of a GPU's free memory that resident experts may take (the rest: activations)
)
PREFIX_BATCH = 4096  # prefixes routed per call of a stride router
_RULE_NAMES = {"logits": "logit averaging", "product": "the product rule"}


# ---------------------------------------------------------------------------- execution


@dataclass
class RunStats:
    """What an ensemble ran: model loads and sequences scored, per expert name; and the
    sequences whose scores it took from the cache instead (another system computed them)."""

    loads: Counter[str] = field(default_factory=Counter)
    sequences: Counter[str] = field(default_factory=Counter)
    reused: Counter[str] = field(default_factory=Counter)
    routing: "RoutingTally" = field(default_factory=lambda: RoutingTally())
    load_seconds: float = 0.0  # spent loading experts (throughput leaves it out)


UNDETERMINED = "und"  # BCP 47's code for a document whose language nobody gave


@dataclass
class RoutingTally:
    """The weight each expert got, per language: each document's (or request's) weights
    averaged over its tokens, then over the language's documents. Results record it per
    ensemble, so a user sees which experts a language was sent to."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    documents: Counter[str] = field(default_factory=Counter)

    def add(self, language: str | None, weights: np.ndarray) -> None:
        """Tally one document's weights, (k,) or per token (k, T)."""
        key = language or UNDETERMINED
        per_document = weights if weights.ndim == 1 else weights.mean(axis=1)
        self.sums[key] = self.sums.get(key, 0.0) + per_document
        self.documents[key] += 1

    def means(self) -> dict[str, list[float]]:
        """Per language (sorted), the mean weight of each expert, in ensemble order."""
        return {
            language: [round(float(w), 4) for w in total / self.documents[language]]
            for language, total in sorted(self.sums.items())
        }


class ScoreCache:
    """Log-probabilities already computed, per (bundle digest, request): lets single-expert
    systems reuse what the ensemble computed in the same run. Also the models resident
    systems keep on their device, by (bundle digest, device): systems of one run share one
    copy of a bundle, which lives as long as a system holds it."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, Any], Any] = {}
        self.spare: LoadedModel | None = None  # the last model used, reused by the next load
        self.resident: weakref.WeakValueDictionary[tuple[str, str], LoadedModel] = (
            weakref.WeakValueDictionary()
        )

    def get(self, digest: str, key: Any) -> Any:
        return self._entries.get((digest, key))

    def put(self, digest: str, key: Any, value: Any) -> None:
        self._entries[(digest, key)] = value


_GroupScorer = Callable[[list[LoadedModel], list[float], list[int]], list[Any]]
_ExpertScorer = Callable[[LoadedModel, list[int], Callable[[int], None]], list[Any]]


@dataclass
class _Route:
    """How one document or request is weighed: a pre-router's weights, (k,) or (k, T), or
    None when an output-dependent router decides after the experts ran."""

    weights: np.ndarray | None
    experts: list[int]


class EnsembleModel(LanguageModel):
    """An ensemble (or a single bundle) as a :class:`LanguageModel`."""

    def __init__(
        self,
        members: Sequence[Bundle],
        router: Router,
        combine: str = "mixture",
        *,
        name: str = "ensemble",
        device: str | None = None,
        cache: ScoreCache | None = None,
        batch_tokens: int | None = None,
        resident: bool | None = None,
    ) -> None:
        check_compatible(members)
        if combine not in COMBINE_RULES:
            raise UsageError(
                f"unknown combination rule {combine!r}; choose {', '.join(COMBINE_RULES)}"
            )
        check_rule_weights(router, combine)
        check_output_sizes(members, combine)
        check_prefix_fallback(router)
        self.members = list(members)
        self.experts = expert_infos(members)
        check_router_experts(router, self.experts)
        self.router = router
        self.combine = combine
        self.name = name
        self.device = pick_device(device)
        self.cache = cache if cache is not None else ScoreCache()
        # None: running text's and choices' own defaults on the device
        self.batch_tokens = batch_tokens
        self.stats = RunStats()
        self.resident = fits_on_device(members, self.device) if resident is None else resident
        self._resident: dict[int, LoadedModel] = {}
        self._tokenizer: Any = None
        self._fallback = build_fallback(router, self.experts)

    @property
    def dtypes(self) -> list[str]:
        """The dtype each member computes in on the ensemble's device (``compute_dtype``:
        ``"bfloat16"``, ``"float16"``, ``"float32"``), in ensemble order."""
        return [dtype_name(compute_dtype(bundle, self.device)) for bundle in self.members]

    # -- tokens

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._timing_load():  # loading, as the experts' (and its imports: the first)
                self._tokenizer = self.members[0].load_tokenizer()
        return self._tokenizer

    @property
    def bos(self) -> int:
        """The token before every document: the members' framing (xelm_cli.bundle.framing)."""
        return self.framing.prefix

    @property
    def framing(self) -> Any:
        return self.members[0].framing(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """The token ids of document text, as ``xelm data prepare`` encodes it into shards: no
        frame tokens, and a special token's string (``<s>``) as the characters it is."""
        return self.encode_documents([text]).ids[0]

    def encode_documents(self, texts: Sequence[str], *, offsets: bool = False) -> DocumentEncoding:
        """``texts`` encoded as ``encode`` encodes each, in one call (``DocumentEncoding``:
        ``ids`` and, with ``offsets``, each token's characters)."""
        return document_encoding(self.tokenizer, texts, offsets=offsets)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # -- routing

    def _fallback_router(self, router: PreRouter) -> Router:
        if router.fallback is None:
            raise PluginError(
                f"router {router.name!r} abstained on a document but names no fallback router"
            )
        if self._fallback is None:  # a fallback set after the router was built
            self._fallback = build_fallback(router, self.experts)
        assert self._fallback is not None
        return self._fallback

    def _pre_route(
        self, router: PreRouter, documents: Sequence[Document], offsets: Sequence[Any] | None
    ) -> list[_Route | None]:
        """Routes of a pre-router; None where it abstained."""
        k = len(self.experts)
        if router.stride and offsets is not None:
            return list(self._prefix_routes(router, documents, offsets))
        with routing(router) as plugin:
            returned = router.route(documents, self.experts)
        weights = check_weights(
            returned,
            len(documents),
            k,
            router=router.name,
            allow_abstain=router.fallback is not None,
            plugin=plugin,
        )
        routes: list[_Route | None] = []
        for row in weights:
            if np.isnan(row).all():
                routes.append(None)
            else:
                routes.append(_Route(row, [int(e) for e in np.flatnonzero(row > 0)]))
        return routes

    def _prefix_routes(
        self, router: PreRouter, documents: Sequence[Document], offsets: Sequence[Any]
    ) -> list[_Route]:
        """Route the text before target tokens 0, s, 2s, ... of each document: weights (k, T).

        The prefixes of all documents go to the router together, PREFIX_BATCH at a time (one
        call per document cost more in per-call overhead than in routing)."""
        stride = int(router.stride or 1)
        prefixes: list[Document] = []
        counts: list[int] = []
        for document, starts in zip(documents, offsets, strict=True):
            positions = range(0, max(len(starts), 1), stride)
            prefixes += [
                Document(
                    document.text[: int(starts[p])] if p < len(starts) else document.text,
                    document.language,
                )
                for p in positions
            ]
            counts.append(len(positions))
        rows = np.concatenate(
            [
                self._route_prefixes(router, prefixes[first : first + PREFIX_BATCH])
                for first in range(0, len(prefixes), PREFIX_BATCH)
            ]
            or [np.zeros((0, len(self.experts)))]
        )
        routes = []
        first = 0
        for starts, count in zip(offsets, counts, strict=True):
            own = rows[first : first + count]
            first += count
            per_token = np.repeat(own, stride, axis=0)[: max(len(starts), 1)].T
            routes.append(_Route(per_token, [int(e) for e in np.flatnonzero(own.sum(axis=0) > 0)]))
        return routes

    def _route_prefixes(self, router: PreRouter, prefixes: Sequence[Document]) -> np.ndarray:
        """Rows (len(prefixes), k); where the router abstains, its fallback pre-router's."""
        rows = self._prefix_rows(router, prefixes)
        abstained = [int(i) for i in np.flatnonzero(np.isnan(rows).all(axis=1))]
        if abstained:
            fallback = self._fallback_router(router)
            assert isinstance(fallback, PreRouter)  # __init__ refused an output router
            rows[abstained] = self._prefix_rows(fallback, [prefixes[i] for i in abstained])
        return rows

    def _prefix_rows(self, router: PreRouter, prefixes: Sequence[Document]) -> np.ndarray:
        with routing(router) as plugin:
            returned = router.route(prefixes, self.experts)
        return check_distributions(
            returned,
            (len(prefixes), len(self.experts)),
            expert_axis=1,
            router=router.name,
            allow_abstain=router.fallback is not None,
            unit="prefix",
            plugin=plugin,
        )

    def _routes(
        self, documents: Sequence[Document], offsets: Sequence[Any] | None = None
    ) -> list[_Route]:
        every = list(range(len(self.experts)))
        if not isinstance(self.router, PreRouter):
            return [_Route(None, every) for _ in documents]
        routes = self._pre_route(self.router, documents, offsets)
        abstained = [i for i, route in enumerate(routes) if route is None]
        if abstained:
            fallback = self._fallback_router(self.router)
            if isinstance(fallback, PreRouter):
                more = self._pre_route(fallback, [documents[i] for i in abstained], None)
            else:
                more = [_Route(None, every) for _ in abstained]
            for i, route in zip(abstained, more, strict=True):
                routes[i] = route
        return [route for route in routes if route is not None]

    def route_one(self, document: Document) -> np.ndarray | None:
        """A pre-router's weights (k,) for one document, its fallback's where it abstains;
        None when an output-dependent router weighs the experts token by token."""
        return self._routes([document])[0].weights

    def output_router(self) -> OutputRouter:
        router = self.router if isinstance(self.router, OutputRouter) else self._fallback
        assert isinstance(router, OutputRouter)
        return router

    def _combine_tokens(
        self, route: _Route, document: Document, logprobs: dict[int, Logprobs]
    ) -> tuple[Logprobs, np.ndarray]:
        """The mixture of the experts' log-probabilities, and the weights of every expert it
        took: (k,), or (k, T) per token."""
        if route.weights is None:
            router = self.output_router()
            stacked = np.stack([logprobs[e] for e in range(len(self.experts))])
            with routing(router) as plugin:
                returned = router.route_tokens(ScoredDocument(document, stacked), self.experts)
            weights = check_token_weights(returned, stacked.shape, router.name, plugin)
            return mixture(stacked, weights), weights
        chosen = route.experts
        if len(chosen) == 1 and route.weights.ndim == 1:
            return logprobs[chosen[0]], route.weights
        stacked = np.stack([logprobs[e] for e in chosen])
        return mixture(stacked, route.weights[chosen]), route.weights

    # -- running experts

    def load_expert(self, index: int, ahead: "LoadAhead[Any] | None" = None) -> LoadedModel:
        """Expert ``index`` on the ensemble's device: kept there from an earlier call when the
        ensemble is resident (its weights read by ``ahead`` when given), else loaded (into the
        spare model when it fits)."""
        if index in self._resident:
            return self._resident[index]
        if self.resident:
            self._resident[index] = self._shared_resident(index, ahead)
            return self._resident[index]
        self.stats.loads[self.experts[index].name] += 1
        with self._timing_load():
            spare = self.cache.spare
            self.cache.spare = None
            if spare is not None and spare.device == self.device:
                swapped = spare.swap(self.members[index])
                if swapped is not None:
                    return swapped
            if spare is not None:  # another architecture: free it before loading
                del spare
                self._collect()
            return LoadedModel.load(self.members[index], self.device)

    @contextmanager
    def _timing_load(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stats.load_seconds += time.perf_counter() - started

    def _shared_resident(self, index: int, ahead: "LoadAhead[Any] | None" = None) -> LoadedModel:
        """The copy of expert ``index`` that another resident system of the cache holds on
        this device, else a new one (its weights from ``ahead`` when given) that it shares
        from now on."""
        model = self.cache.resident.get(self._resident_key(index))
        if model is None:
            self.stats.loads[self.experts[index].name] += 1
            with self._timing_load():  # with ``ahead``: the wait for its read, and the build
                weights = None if ahead is None else ahead.take(index)
                model = LoadedModel.load(self.members[index], self.device, weights=weights)
            self.cache.resident[self._resident_key(index)] = model
        return model

    def _resident_key(self, index: int) -> tuple[str, str]:
        return (self.members[index].digest, str(self.device))

    def _load_ahead(self, order: Sequence[int]) -> "LoadAhead[Any] | None":
        """For a resident ensemble, a :class:`LoadAhead` reading the weights of the experts of
        ``order`` not on the device yet (None when fewer than two are: nothing to overlap). A
        streamed ensemble loads each expert into the one spare model the previous one used."""
        if not self.resident:
            return None
        to_load = [
            index
            for index in order
            if index not in self._resident and self._resident_key(index) not in self.cache.resident
        ]
        if len(to_load) < 2:
            return None
        members, device = self.members, self.device
        return LoadAhead(to_load, lambda i: read_weights(members[i], device))

    def free_expert(self, model: LoadedModel) -> None:
        """Done with ``model`` for now: a resident ensemble keeps it on the device; a streamed
        one keeps it as the cache's spare, and the next expert of the same architecture is
        loaded into it (one model in memory at a time, built once)."""
        if not self.resident:
            self.cache.spare = model

    def _collect(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _stream(
        self,
        needed: dict[int, list[int]],
        keys: Sequence[Any],
        compute: _ExpertScorer,
        sizes: Sequence[int],
        unit: str,
    ) -> dict[tuple[int, int], Any]:
        """Run each expert once over the items it is needed for (cache misses only), with a
        progress bar of their ``sizes`` (in ``unit``, as ``compute`` advances it)."""
        results: dict[tuple[int, int], Any] = {}
        to_run: dict[int, list[int]] = {}
        for expert, items in needed.items():
            digest = self.members[expert].digest
            missing = []
            for item in items:
                value = self.cache.get(digest, keys[item])
                if value is None:
                    missing.append(item)
                else:
                    results[(expert, item)] = value
            if len(missing) < len(items):
                self.stats.reused[self.experts[expert].name] += len(items) - len(missing)
            if missing:
                to_run[expert] = missing
        with self._load_ahead(list(to_run)) or nullcontext() as ahead:
            for expert, missing in to_run.items():
                info = self.experts[expert]
                label = f"{self.name}: expert {expert + 1}/{len(self.experts)} ({info.name})"
                model = self.load_expert(expert, ahead)
                try:
                    with count_progress(label, sum(sizes[i] for i in missing), unit) as advance:
                        values = compute(model, missing, advance)
                finally:
                    self.free_expert(model)
                self.stats.sequences[info.name] += len(missing)
                digest = self.members[expert].digest
                for item, value in zip(missing, values, strict=True):
                    self.cache.put(digest, keys[item], value)
                    results[(expert, item)] = value
        return results

    @staticmethod
    def _needed(routes: Sequence[_Route]) -> dict[int, list[int]]:
        needed: dict[int, list[int]] = {}
        for item, route in enumerate(routes):
            for expert in route.experts:
                needed.setdefault(expert, []).append(item)
        return dict(sorted(needed.items()))

    # -- LanguageModel

    def _sequences(
        self, documents: Sequence[Document], *, starts: bool = False
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        """Each document's tokens after the prefix token, and with ``starts`` the character
        where each token starts (for prefix routing); a document without tokens is refused."""
        encoded = self.encode_documents([document.text for document in documents], offsets=starts)
        sequences = [[self.bos, *ids] for ids in encoded.ids]
        for document, sequence in zip(documents, sequences, strict=True):
            if len(sequence) < 2:
                raise UsageError(f"a document has no tokens to score: {document.text[:40]!r}")
        if encoded.offsets is None:
            return sequences, None
        return sequences, [[start for start, _ in offsets] for offsets in encoded.offsets]

    def score_documents(self, documents: Sequence[Document]) -> list[Logprobs]:
        stride_router = isinstance(self.router, PreRouter) and bool(self.router.stride)
        sequences, starts = self._sequences(documents, starts=stride_router)
        routes = self._routes(documents, starts)
        self._tally_rule_weights(routes, [document.language for document in documents])
        if self.combine == "logits":
            return self._logit_average(
                routes,
                lambda models, coefs, items: score_sequences(
                    models, coefs, [sequences[i] for i in items], batch_tokens=self.batch_tokens
                ),
            )
        if self.combine == "product":
            return self._logit_average(
                routes,
                lambda models, coefs, items: score_product(
                    models, coefs, [sequences[i] for i in items]
                ),
            )
        keys = [("doc", tuple(sequence)) for sequence in sequences]
        tokens = [len(sequence) - 1 for sequence in sequences]
        scored = self._stream(
            self._needed(routes), keys, self._each_expert(sequences), tokens, "tokens"
        )
        combined = []
        for i, (route, document) in enumerate(zip(routes, documents, strict=True)):
            logprobs, weights = self._combine_tokens(
                route, document, {e: scored[(e, i)] for e in route.experts}
            )
            self.stats.routing.add(document.language, weights)
            combined.append(logprobs)
        return combined

    def _tally_rule_weights(self, routes: Sequence[_Route], languages: list[str | None]) -> None:
        """Under logit averaging or the product rule, each item's one weight vector (a
        mixture tallies the weights it combined with, in ``_combine_tokens``' callers)."""
        if self.combine not in _RULE_NAMES:
            return
        for route, language in zip(routes, languages, strict=True):
            assert route.weights is not None  # check_rule_weights: a pre-router
            self.stats.routing.add(language, route.weights)

    def _encode_request(self, request: ChoiceRequest) -> tuple[list[int], list[list[int]]]:
        """BOS + the context's tokens, and each choice's: the tokens of the one text context +
        choice after the context's own (as lm-evaluation-harness splits them), so a choice is
        tokenized as running text has it, not as a text of its own. The context's trailing
        whitespace starts every choice (``"right? ", "Yes"`` is scored as ``"right?",
        " Yes"``): a byte-level BPE joins a word-initial space to its word, not a lone space
        token and a word without its space; and a SentencePiece-style tokenizer, which marks
        the start of a text ("▁"), marks no choice that continues a word (``"他说今天很冷",
        "所以"``). Where the whole text's tokens merge across the boundary, the choice's are
        still those after as many tokens as the context has; where that leaves none (the
        context's last token swallowed the choice), the choice's own."""
        context = request.context.rstrip()
        space = request.context[len(context) :]
        context_ids, *wholes = self.encode_documents(
            [context, *(context + space + choice for choice in request.choices)]
        ).ids
        choices = []
        for choice, whole in zip(request.choices, wholes, strict=True):
            continuation = whole[len(context_ids) :]
            choices.append(continuation or self.encode(space + choice))
        if not choices or not all(request.choices) or not all(choices):
            raise UsageError(f"a request has an empty choice: {request.choices!r}")
        return [self.bos, *context_ids], choices

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[list[Logprobs]]:
        encoded = [self._encode_request(request) for request in requests]
        contexts = [Document(r.context, r.language) for r in requests]
        routes = self._routes(contexts)
        self._tally_rule_weights(routes, [request.language for request in requests])
        if self.combine == "product":
            return self._product_choices(routes, encoded)
        if self.combine == "logits":
            averaged = self._logit_average(
                routes,
                lambda models, coefs, items: score_choice_sets(
                    models, coefs, [encoded[i] for i in items], batch_tokens=self.batch_tokens
                ),
            )
            self._warn_cut(encoded, [len(ctx_lp) for ctx_lp, _ in averaged])
            return [choice_lps for _, choice_lps in averaged]
        keys = [
            ("choices", tuple(ctx), tuple(tuple(c) for c in choices)) for ctx, choices in encoded
        ]

        def compute(model: LoadedModel, items: list[int], advance: Callable[[int], None]) -> Any:
            return score_choice_sets(
                [model], [1.0], [encoded[i] for i in items], advance=advance,
                batch_tokens=self.batch_tokens,
            )  # fmt: skip

        scored = self._stream(self._needed(routes), keys, compute, [1] * len(keys), "examples")
        results, scored_contexts = [], []
        for i, (route, request) in enumerate(zip(routes, requests, strict=True)):
            per_expert = {e: scored[(e, i)] for e in route.experts}
            # an expert of fewer positions cut the context more (keeping its last tokens): the
            # experts' context tokens line up on the ones every one of them scored
            shared = min(len(ctx_lp) for ctx_lp, _ in per_expert.values())
            scored_contexts.append(shared)
            choice_lps, choice_weights = [], []
            for c, choice in enumerate(request.choices):
                joined = {
                    e: np.concatenate([ctx_lp[len(ctx_lp) - shared :], choice_list[c]])
                    for e, (ctx_lp, choice_list) in per_expert.items()
                }
                document = Document(request.context + choice, request.language)
                combined, weights = self._combine_tokens(route, document, joined)
                scored_tokens = len(encoded[i][1][c])  # the choice's: the context is not scored
                choice_lps.append(combined[-scored_tokens:])
                choice_weights.append(
                    weights if weights.ndim == 1 else weights[:, -scored_tokens:].mean(axis=1)
                )
            self.stats.routing.add(request.language, np.mean(choice_weights, axis=0))
            results.append(choice_lps)
        self._warn_cut(encoded, scored_contexts)
        return results

    def _warn_cut(
        self, encoded: Sequence[tuple[list[int], list[list[int]]]], scored: Sequence[int]
    ) -> None:
        """One warning for the contexts scored on fewer tokens than they have (every one but
        BOS): too long for the model's positions, they lost their oldest tokens."""
        cut = sum(n < len(context) - 1 for (context, _), n in zip(encoded, scored, strict=True))
        if cut:
            print(
                f"xelm: warning: system {self.name!r}: {cut} of {len(encoded)} contexts were "
                "longer than the model's positions and lost their oldest tokens (in a k-shot "
                "prompt, demonstrations); fewer shots keep them whole",
                file=sys.stderr,
            )

    def _product_choices(
        self, routes: Sequence[_Route], encoded: Sequence[tuple[list[int], list[list[int]]]]
    ) -> list[list[Logprobs]]:
        """The product rule on each choice: context + choice scored as one sequence."""
        sequences = [
            (i, [*context, *choice])
            for i, (context, choices) in enumerate(encoded)
            for choice in choices
        ]
        scored = self._logit_average(
            [routes[i] for i, _ in sequences],
            lambda models, coefs, items: score_product(
                models, coefs, [sequences[j][1] for j in items]
            ),
        )
        results: list[list[Logprobs]] = [[] for _ in encoded]
        for (i, sequence), logprobs in zip(sequences, scored, strict=True):
            choice = encoded[i][1][len(results[i])]
            results[i].append(logprobs[len(sequence) - 1 - len(choice) :])
        return results

    def _logit_average(self, routes: Sequence[_Route], score: "_GroupScorer") -> list[Any]:
        """Score items grouped by their weight vector, each group's experts loaded together."""
        groups: dict[tuple[float, ...], list[int]] = {}
        for item, route in enumerate(routes):
            assert route.weights is not None  # check_rule_weights: a pre-router, no stride
            groups.setdefault(tuple(route.weights.tolist()), []).append(item)
        results: list[Any] = [None] * len(routes)
        loaded: dict[int, LoadedModel] = {}
        # groups of one set of experts run one after another: each set is loaded once
        by_experts = sorted(groups.items(), key=lambda group: [w > 0 for w in group[0]])
        try:
            for weights, items in by_experts:
                chosen = [e for e, w in enumerate(weights) if w > 0]
                for e in list(loaded):
                    if e not in chosen:
                        self.free_expert(loaded.pop(e))
                for e in chosen:
                    if e not in loaded:
                        loaded[e] = self.load_expert(e)
                    self.stats.sequences[self.experts[e].name] += len(items)
                values = score([loaded[e] for e in chosen], [weights[e] for e in chosen], items)
                for item, value in zip(items, values, strict=True):
                    results[item] = value
        finally:
            for model in loaded.values():
                self.free_expert(model)
        return results

    def _each_expert(self, sequences: Sequence[list[int]]) -> _ExpertScorer:
        """What ``_stream`` runs for an expert: its own log-probabilities of the sequences."""

        def compute(model: LoadedModel, items: list[int], advance: Callable[[int], None]) -> Any:
            return score_sequences(
                [model],
                [1.0],
                [sequences[i] for i in items],
                batch_tokens=self.batch_tokens,
                advance=advance,
            )

        return compute

    def score_all_experts(self, documents: Sequence[Document]) -> list[ScoredDocument]:
        """Every expert on every document (for router calibration)."""
        sequences, _ = self._sequences(documents)
        keys = [("doc", tuple(s)) for s in sequences]
        every = {e: list(range(len(documents))) for e in range(len(self.experts))}
        tokens = [len(s) - 1 for s in sequences]
        scored = self._stream(every, keys, self._each_expert(sequences), tokens, "tokens")
        return [
            ScoredDocument(d, np.stack([scored[(e, i)] for e in range(len(self.experts))]))
            for i, d in enumerate(documents)
        ]


def check_rule_weights(router: Router, combine: str) -> None:
    """Logit averaging and the product rule need one weight vector per document before the
    experts run: no output router, as the router or as its fallback, and no prefix routing."""
    rule = _RULE_NAMES.get(combine)
    if rule is None:
        return
    if not isinstance(router, PreRouter):
        raise UsageError(
            f"{rule} needs weights known before the experts run; router {router.name!r} "
            "depends on their outputs: use --combine mixture"
        )
    if router.stride:
        raise UsageError(
            f"{rule} needs one weight vector per document; router {router.name!r} routes "
            f"prefixes (stride {router.stride}): use --combine mixture or no stride"
        )
    if router.fallback and issubclass(router_class(router.fallback), OutputRouter):
        raise UsageError(
            f"{rule} needs weights known before the experts run; router {router.name!r} falls "
            f"back to {router.fallback!r}, which depends on their outputs: use --combine "
            "mixture or a pre-router fallback"
        )


def check_output_sizes(members: Sequence[Bundle], combine: str) -> None:
    """Logit averaging and the product rule add the experts' logits position by position: the
    experts must give as many (one tokenizer can sit on embedding tables padded differently)."""
    rule = _RULE_NAMES.get(combine)
    if rule is None:
        return
    first = members[0]
    expected = output_size(first)
    for member in members[1:]:
        if (size := output_size(member)) != expected:
            raise UsageError(
                f"{rule} adds the experts' logits, which needs as many from each: {member.path} "
                f"gives {size} a token, {first.path} {expected}: use --combine mixture"
            )


def check_prefix_fallback(router: Router) -> None:
    """A router that routes prefixes falls back on prefixes too: only a pre-router can weigh
    a prefix before the experts run (an output router weighs whole scored documents)."""
    if not (isinstance(router, PreRouter) and router.stride and router.fallback):
        return
    if issubclass(router_class(router.fallback), OutputRouter):
        raise UsageError(
            f"router {router.name!r} routes prefixes (stride {router.stride}) but its fallback "
            f"{router.fallback!r} depends on the experts' outputs: give it a pre-router "
            "fallback (e.g. fallback=uniform) or no stride"
        )


def fits_on_device(members: Sequence[Bundle], device: Any) -> bool:
    """Whether every member can stay loaded on ``device`` (a CUDA device with the members'
    files, an upper bound of the weights they compute in, ``compute_dtype``: their own bf16 or
    fp16, else bf16, within RESIDENT_SHARE of its free memory).
    On a CPU the experts stream: memory stays at one expert whatever k is."""
    if device.type != "cuda":
        return False
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return sum(bundle.size for bundle in members) <= RESIDENT_SHARE * free


def single_model(bundle: Bundle, name: str, **kwargs: Any) -> EnsembleModel:
    """One bundle as a LanguageModel (a dense baseline or one expert alone)."""
    return EnsembleModel([bundle], build_router("uniform"), name=name, **kwargs)
