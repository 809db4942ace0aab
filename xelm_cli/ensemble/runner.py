"""Ensembles of bundles: loading and checking members, ensemble files, and execution.

Execution (spec/ensemble-v1.md, section 3): a pre-router's weights are known before any expert
runs, so each expert scores only the documents it has weight on; an output-dependent router
needs every expert on every document. Either way the experts run one at a time (load, score
every document it is needed for, keep only the target tokens' log-probabilities, free), and the
mixture is taken afterwards: peak memory is one expert plus k x tokens floats. Logit averaging
needs the experts of a document together and keeps them loaded for the call.
"""

import gc
import glob
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xelm_cli import __version__
from xelm_cli.bundle.store import MANIFEST_NAME, Bundle
from xelm_cli.common.atomic import write_bytes_atomic
from xelm_cli.common.errors import (
    FormatError,
    IntegrityError,
    PluginError,
    UsageError,
    XelmError,
    exception_line,
)
from xelm_cli.common.jsonio import pretty_json, read_json_object
from xelm_cli.common.progress import byte_progress, document_progress
from xelm_cli.ensemble.mixing import mixture
from xelm_cli.ensemble.product import score_product
from xelm_cli.ensemble.scoring import (
    LoadedModel,
    Logprobs,
    default_batch_tokens,
    pick_device,
    score_choice_sets,
    score_sequences,
)
from xelm_cli.ensemble.weights import check_token_weights, check_weights
from xelm_cli.plugin.contracts import (
    ChoiceRequest,
    Document,
    ExpertInfo,
    LanguageModel,
    OutputRouter,
    PreRouter,
    Router,
    ScoredDocument,
)
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import parse_options

ENSEMBLE_FORMAT = "xelm-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
COMBINE_RULES = ("mixture", "logits", "product")
_RULE_NAMES = {"logits": "logit averaging", "product": "the product rule"}


# ---------------------------------------------------------------------------- members


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Paths as given, with unexpanded glob patterns (quoted on the command line) expanded."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):  # a quoted glob: its bundles (not checkpoints, files...)
            found = [Path(p) for p in sorted(glob.glob(pattern))]
            bundles = [p for p in found if (p / MANIFEST_NAME).is_file()]
            if not bundles:
                raise UsageError(f"no bundle matches {pattern!r}")
            paths += bundles
        else:
            paths.append(Path(pattern))
    return paths


def open_members(paths: Sequence[Path]) -> list[Bundle]:
    """Read and verify the bundles of an ensemble (manifests, digests, compatibility); digests
    come first, so nothing is read from a file that does not match its manifest."""
    for path in paths:
        if not (path / MANIFEST_NAME).is_file():
            what = "does not exist" if not path.exists() else f"has no {MANIFEST_NAME}"
            raise UsageError(f"{path} {what}: an ensemble member must be a bundle directory")
    bundles = [Bundle.read(path) for path in paths]
    with byte_progress("verifying experts", sum(b.size for b in bundles)) as advance:
        for bundle in bundles:
            bundle.check_files(progress=advance)
    check_compatible(bundles)
    return bundles


def _model_type(bundle: Bundle) -> str:
    config = read_json_object(bundle.path / "config.json", f"{bundle.path}/config.json")
    return str(config.get("model_type", "?"))


def check_compatible(bundles: Sequence[Bundle]) -> None:
    """One shared tokenizer and architecture family, distinct experts, languages declared."""
    if not bundles:
        raise UsageError("an ensemble needs at least one bundle")
    first = bundles[0]
    first_type = _model_type(first)
    seen: dict[str, Bundle] = {}
    for bundle in bundles:
        if bundle.id in seen:
            raise UsageError(
                f"{seen[bundle.id].path} and {bundle.path} are the same expert "
                f"(id {bundle.id}); list each expert once"
            )
        seen[bundle.id] = bundle
        if bundle.manifest.fingerprints["tokenizer"] != first.manifest.fingerprints["tokenizer"]:
            raise UsageError(
                f"{bundle.path} and {first.path} have different tokenizers; the experts of an "
                "ensemble must share one (branch them from the same seed)"
            )
        if (model_type := _model_type(bundle)) != first_type:
            raise UsageError(
                f"{bundle.path} is a {model_type!r} model but {first.path} is a "
                f"{first_type!r} model; an ensemble needs one architecture family"
            )
        if not bundle.languages:
            raise UsageError(f"{bundle.path} declares no languages")


def expert_infos(bundles: Sequence[Bundle]) -> list[ExpertInfo]:
    return [ExpertInfo(b.id, b.name, tuple(b.languages), b.manifest.allocation) for b in bundles]


# ---------------------------------------------------------------------------- routers


def router_class(name: str) -> type[Router]:
    """The class registered as router ``name`` (or ``DIST:NAME``); one-line error if none."""
    router: type[Router] = get_registry().get("router", name).obj
    return router


def check_router_options(
    name: str,
    options: Mapping[str, Any] | None,
    *,
    where: str | None = None,
    via: str = "--router-arg",
    resolve_paths: bool = False,
) -> dict[str, Any]:
    """``options`` checked against router ``name``'s declaration (spec/plugin-api.md 5.1) and
    converted: text (``--router-arg`` values) by the declared type, JSON values (an ensemble
    file, a Python call) checked against it. The result is JSON-ready (paths as text), as an
    ensemble file records it; ``resolve_paths`` makes path options absolute, so that the file
    does not depend on the working directory. ``where`` names the file the options come from."""
    label = f"router {name!r}" + (f" in {where}" if where else "")
    parsed = parse_options(router_class(name), dict(options or {}), label=label, via=via)
    return {key: _recordable(value, resolve_paths) for key, value in parsed.items()}


def _recordable(value: Any, resolve_paths: bool) -> Any:
    if isinstance(value, Path):
        return str(value.resolve() if resolve_paths else value)
    if isinstance(value, tuple | list):
        return [_recordable(v, resolve_paths) for v in value]
    if isinstance(value, dict):
        return {str(k): _recordable(v, resolve_paths) for k, v in value.items()}
    return value


def build_router(name: str, options: Mapping[str, Any] | None = None) -> Router:
    """Router ``name`` built as ``RouterClass(**options)``, the options first checked and
    converted by its declaration (a one-line :class:`UsageError` naming the option).

    Anything else the constructor raises that is not a :class:`XelmError` is a bug in the
    router: a :class:`PluginError` naming the router and its plugin.
    """
    registration = get_registry().get("router", name)
    values = parse_options(
        registration.obj, dict(options or {}), label=f"router {name!r}", via="--router-arg"
    )
    try:
        router: Router = registration.obj(**values)
    except XelmError:
        raise
    except Exception as exc:
        raise PluginError(
            f"router {name!r} (plugin {registration.plugin!r}) failed while being built: "
            f"{exception_line(exc, with_type=True)}; this is a bug in the router "
            "(XELM_DEBUG=1 shows the traceback)"
        ) from exc
    return router


# ---------------------------------------------------------------------------- ensemble files


@dataclass
class EnsembleSpec:
    """What an ensemble file records: members (with digests), router, combination rule."""

    members: list[Bundle]
    router: str
    router_options: dict[str, Any] = field(default_factory=dict)
    combine: str = "mixture"

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_RULES:
            raise UsageError(
                f"unknown combination rule {self.combine!r}; choose {', '.join(COMBINE_RULES)}"
            )

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        def where(bundle: Bundle) -> str:
            path = bundle.path.resolve()
            if relative_to is not None:
                try:
                    return str(path.relative_to(relative_to.resolve()))
                except ValueError:
                    pass
            return str(path)

        return {
            "format": ENSEMBLE_FORMAT,
            "format_version": ENSEMBLE_FORMAT_VERSION,
            "created_by": f"xelm {__version__}",
            "members": [
                {
                    "path": where(b),
                    "id": b.id,
                    "digest": b.digest,
                    "name": b.name,
                    "languages": b.languages,
                }
                for b in self.members
            ],
            "router": {"name": self.router, "options": self.router_options},
            "combine": self.combine,
        }

    def write(self, path: Path, *, overwrite: bool = False) -> None:
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --force to replace it")
        data = self.to_dict(relative_to=path.parent)
        write_bytes_atomic(path, pretty_json(data), overwrite=True)

    @classmethod
    def read(cls, path: Path) -> "EnsembleSpec":
        data = read_json_object(path, str(path))
        if data.get("format") != ENSEMBLE_FORMAT:
            raise FormatError(f"{path}: not an xelm ensemble file (format {data.get('format')!r})")
        if data.get("format_version") != ENSEMBLE_FORMAT_VERSION:
            raise FormatError(
                f"{path}: ensemble format_version {data.get('format_version')!r} is not "
                f"supported (this xelm reads {ENSEMBLE_FORMAT_VERSION})"
            )
        try:
            entries = list(data["members"])
            router = data["router"]
            name, recorded = str(router["name"]), dict(router.get("options") or {})
            combine = str(data.get("combine", "mixture"))
            paths = [(path.parent / str(entry["path"]), str(entry["digest"])) for entry in entries]
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: malformed ensemble file ({exc!r})") from None
        options = check_router_options(name, recorded, where=str(path))
        members = open_members([member for member, _ in paths])
        for bundle, (member, digest) in zip(members, paths, strict=True):
            if bundle.digest != digest:
                raise IntegrityError(
                    f"{member}: manifest digest {bundle.digest[:12]} differs from the "
                    f"{digest[:12]} recorded in {path}; the bundle changed since the ensemble "
                    "was created"
                )
        return cls(members, name, options, combine)


def is_ensemble_file(path: str) -> bool:
    return path.endswith(".json") and Path(path).is_file()


# ---------------------------------------------------------------------------- execution


@dataclass
class RunStats:
    """What an ensemble ran: model loads and sequences scored, per expert name."""

    loads: Counter[str] = field(default_factory=Counter)
    sequences: Counter[str] = field(default_factory=Counter)


class ScoreCache:
    """Log-probabilities already computed, per (bundle digest, request): lets single-expert
    systems reuse what the ensemble computed in the same run."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, Any], Any] = {}
        self.spare: LoadedModel | None = None  # the last model used, reused by the next load

    def get(self, digest: str, key: Any) -> Any:
        return self._entries.get((digest, key))

    def put(self, digest: str, key: Any, value: Any) -> None:
        self._entries[(digest, key)] = value


_GroupScorer = Callable[[list[LoadedModel], list[float], list[int]], list[Any]]


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
    ) -> None:
        check_compatible(members)
        if combine not in COMBINE_RULES:
            raise UsageError(
                f"unknown combination rule {combine!r}; choose {', '.join(COMBINE_RULES)}"
            )
        if combine in ("logits", "product") and not isinstance(router, PreRouter):
            raise UsageError(
                f"{_RULE_NAMES[combine]} needs weights known before the experts run; router "
                f"{router.name!r} depends on their outputs: use --combine mixture"
            )
        self.members = list(members)
        self.experts = expert_infos(members)
        self.router = router
        self.combine = combine
        self.name = name
        self.device = pick_device(device)
        self.cache = cache if cache is not None else ScoreCache()
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.stats = RunStats()
        self._tokenizer: Any = None
        self._fallback: Router | None = None

    # -- tokens

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
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
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    # -- routing

    def _fallback_router(self, router: PreRouter) -> Router:
        if router.fallback is None:
            raise PluginError(
                f"router {router.name!r} abstained on a document but names no fallback router"
            )
        if self._fallback is None:
            self._fallback = build_router(router.fallback)
            if isinstance(self._fallback, PreRouter) and self._fallback.fallback:
                raise UsageError(
                    f"fallback router {router.fallback!r} must not have a fallback of its own"
                )
        return self._fallback

    def _pre_route(
        self, router: PreRouter, documents: Sequence[Document], offsets: Sequence[Any] | None
    ) -> list[_Route | None]:
        """Routes of a pre-router; None where it abstained."""
        k = len(self.experts)
        if router.stride and offsets is not None:
            return [
                self._prefix_route(router, document, ends)
                for document, ends in zip(documents, offsets, strict=True)
            ]
        weights = check_weights(
            router.route(documents, self.experts),
            len(documents),
            k,
            router=router.name,
            allow_abstain=router.fallback is not None,
        )
        routes: list[_Route | None] = []
        for row in weights:
            if np.isnan(row).all():
                routes.append(None)
            else:
                routes.append(_Route(row, [int(e) for e in np.flatnonzero(row > 0)]))
        return routes

    def _prefix_route(self, router: PreRouter, document: Document, starts: Any) -> _Route:
        """Route the text before target tokens 0, s, 2s, ...: weights (k, T)."""
        stride = int(router.stride or 1)
        positions = list(range(0, len(starts), stride)) or [0]
        prefixes = [
            Document(
                document.text[: int(starts[p])] if p < len(starts) else document.text,
                document.language,
            )
            for p in positions
        ]
        rows = check_weights(
            router.route(prefixes, self.experts),
            len(prefixes),
            len(self.experts),
            router=router.name,
        )
        per_token = np.repeat(rows, stride, axis=0)[: max(len(starts), 1)].T
        return _Route(per_token, [int(e) for e in np.flatnonzero(rows.sum(axis=0) > 0)])

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
    ) -> Logprobs:
        if route.weights is None:
            router = self.output_router()
            stacked = np.stack([logprobs[e] for e in range(len(self.experts))])
            weights = check_token_weights(
                router.route_tokens(ScoredDocument(document, stacked), self.experts),
                stacked.shape,
                router.name,
            )
            return mixture(stacked, weights)
        chosen = route.experts
        if len(chosen) == 1 and route.weights.ndim == 1:
            return logprobs[chosen[0]]
        weights = route.weights[chosen]
        return mixture(np.stack([logprobs[e] for e in chosen]), weights)

    # -- running experts

    def _load(self, index: int) -> LoadedModel:
        self.stats.loads[self.experts[index].name] += 1
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

    def _free(self, model: LoadedModel) -> None:
        """Keep the model as the cache's spare: the next expert of the same architecture is
        loaded into it (one model in memory at a time, built once)."""
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
        compute: Callable[[LoadedModel, list[int], Callable[[int], None]], list[Any]],
    ) -> dict[tuple[int, int], Any]:
        """Run each expert once over the items it is needed for (cache misses only)."""
        results: dict[tuple[int, int], Any] = {}
        for expert, items in needed.items():
            digest = self.members[expert].digest
            missing = []
            for item in items:
                value = self.cache.get(digest, keys[item])
                if value is None:
                    missing.append(item)
                else:
                    results[(expert, item)] = value
            if not missing:
                continue
            info = self.experts[expert]
            label = f"{self.name}: expert {expert + 1}/{len(self.experts)} ({info.name})"
            model = self._load(expert)
            try:
                with document_progress(label) as advance:
                    values = compute(model, missing, advance)
            finally:
                self._free(model)
            self.stats.sequences[self.experts[expert].name] += len(missing)
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

    def score_documents(self, documents: Sequence[Document]) -> list[Logprobs]:
        stride_router = isinstance(self.router, PreRouter) and bool(self.router.stride)
        sequences, starts = [], []
        for document in documents:
            if stride_router:
                encoded = self.tokenizer(
                    document.text, add_special_tokens=False, return_offsets_mapping=True
                )
                sequences.append([self.bos, *encoded["input_ids"]])
                starts.append([start for start, _ in encoded["offset_mapping"]])
            else:
                sequences.append([self.bos, *self.encode(document.text)])
        for document, sequence in zip(documents, sequences, strict=True):
            if len(sequence) < 2:
                raise UsageError(f"a document has no tokens to score: {document.text[:40]!r}")
        routes = self._routes(documents, starts if stride_router else None)
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

        def compute(model: LoadedModel, items: list[int], advance: Callable[[int], None]) -> Any:
            return score_sequences(
                [model],
                [1.0],
                [sequences[i] for i in items],
                batch_tokens=self.batch_tokens,
                advance=advance,
            )

        scored = self._stream(self._needed(routes), keys, compute)
        return [
            self._combine_tokens(route, document, {e: scored[(e, i)] for e in route.experts})
            for i, (route, document) in enumerate(zip(routes, documents, strict=True))
        ]

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[list[Logprobs]]:
        encoded = [
            ([self.bos, *self.encode(r.context)], [self.encode(c) for c in r.choices])
            for r in requests
        ]
        for request, (_, choices) in zip(requests, encoded, strict=True):
            if not choices or any(not c for c in choices):
                raise UsageError(f"a request has an empty choice: {request.choices!r}")
        contexts = [Document(r.context, r.language) for r in requests]
        routes = self._routes(contexts)
        if self.combine == "product":
            return self._product_choices(routes, encoded)
        if self.combine == "logits":
            return [
                choice_lps
                for _, choice_lps in self._logit_average(
                    routes,
                    lambda models, coefs, items: score_choice_sets(
                        models, coefs, [encoded[i] for i in items]
                    ),
                )
            ]
        keys = [
            ("choices", tuple(ctx), tuple(tuple(c) for c in choices)) for ctx, choices in encoded
        ]

        def compute(model: LoadedModel, items: list[int], advance: Callable[[int], None]) -> Any:
            return score_choice_sets([model], [1.0], [encoded[i] for i in items], advance=advance)

        scored = self._stream(self._needed(routes), keys, compute)
        results = []
        for i, (route, request) in enumerate(zip(routes, requests, strict=True)):
            per_expert = {e: scored[(e, i)] for e in route.experts}
            choice_lps = []
            for c, choice in enumerate(request.choices):
                joined = {
                    e: np.concatenate([ctx_lp, choice_list[c]])
                    for e, (ctx_lp, choice_list) in per_expert.items()
                }
                document = Document(request.context + choice, request.language)
                weights = route.weights
                if weights is not None and weights.ndim == 2:  # prefix routing: context's route
                    weights = weights[:, -1]
                combined = self._combine_tokens(_Route(weights, route.experts), document, joined)
                choice_lps.append(combined[-len(encoded[i][1][c]) :])
            results.append(choice_lps)
        return results

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
            if route.weights is None or route.weights.ndim != 1:
                raise UsageError(
                    f"--combine {self.combine} needs one weight vector per document (no prefix "
                    "routing)"
                )
            groups.setdefault(tuple(route.weights.tolist()), []).append(item)
        results: list[Any] = [None] * len(routes)
        loaded: dict[int, LoadedModel] = {}
        try:
            for weights, items in groups.items():
                chosen = [e for e, w in enumerate(weights) if w > 0]
                for e in list(loaded):
                    if e not in chosen:
                        self._free(loaded.pop(e))
                for e in chosen:
                    if e not in loaded:
                        loaded[e] = self._load(e)
                    self.stats.sequences[self.experts[e].name] += len(items)
                values = score([loaded[e] for e in chosen], [weights[e] for e in chosen], items)
                for item, value in zip(items, values, strict=True):
                    results[item] = value
        finally:
            for model in loaded.values():
                self._free(model)
        return results

    def score_all_experts(self, documents: Sequence[Document]) -> list[ScoredDocument]:
        """Every expert on every document (for router calibration)."""
        sequences = [[self.bos, *self.encode(d.text)] for d in documents]
        keys = [("doc", tuple(s)) for s in sequences]
        every = {e: list(range(len(documents))) for e in range(len(self.experts))}

        def compute(model: LoadedModel, items: list[int], advance: Callable[[int], None]) -> Any:
            return score_sequences([model], [1.0], [sequences[i] for i in items], advance=advance)

        scored = self._stream(every, keys, compute)
        return [
            ScoredDocument(d, np.stack([scored[(e, i)] for e in range(len(self.experts))]))
            for i, d in enumerate(documents)
        ]


def single_model(bundle: Bundle, name: str, **kwargs: Any) -> EnsembleModel:
    """One bundle as a LanguageModel (a dense baseline or one expert alone)."""
    return EnsembleModel([bundle], build_router("uniform"), name=name, **kwargs)
