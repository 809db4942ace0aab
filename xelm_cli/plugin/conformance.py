"""``xelm plugins check NAME``: run a router or an evaluator against tiny generated experts and
report, one line per check, what spec/plugin-api.md requires of it.

The experts are real: three tiny randomly initialised bundles (one per language of a small
generated corpus, sharing a byte-level BPE tokenizer trained on it), built in a temporary
directory in a few seconds on a CPU. A router is checked on documents of those languages: the
shape and normalisation of its weights, determinism, that it leaves its arguments alone,
causality (an output router), its options round-trip, its ``stride``/``fallback`` attributes,
and that the ensemble runner runs it. An evaluator is checked for its declared attributes and
options and, when it can build its data from a generated corpus or multiple-choice task without
the network, for what ``evaluate()`` returns on the tiny experts.

Normative text: spec/plugin-api.md section 5.2.
"""

import copy
import json
import math
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xelm_cli.common.errors import UsageError, XelmError, exception_line
from xelm_cli.ensemble.weights import WEIGHT_SUM_TOLERANCE
from xelm_cli.plugin.contracts import (
    Document,
    EvalRequest,
    ExpertInfo,
    OutputRouter,
    PreRouter,
    Router,
    ScoredDocument,
)
from xelm_cli.plugin.host import Registration, get_registry
from xelm_cli.plugin.options import (
    NoOptions,
    as_text,
    declared_options,
    options_class,
    parse_options,
)

PASS, FAIL, SKIP = "pass", "fail", "skip"
UNKNOWN_OPTION = "xelm_check_no_such_option"
CAUSALITY_TOLERANCE = 1e-9

# A tiny generated corpus: three "languages", each its own small vocabulary, so that every
# expert (one per language) and a language router have something to tell apart.
WORDS = {
    "en": [
        "the",
        "a",
        "cat",
        "dog",
        "sees",
        "runs",
        "home",
        "green",
        "small",
        "river",
        "walks",
        "bird",
        "house",
        "old",
    ],
    "tr": [
        "kedi",
        "köpek",
        "ev",
        "yeşil",
        "küçük",
        "nehir",
        "kuş",
        "eski",
        "görüyor",
        "koşuyor",
        "yürüyor",
        "bir",
    ],
    "es": [
        "el",
        "la",
        "gato",
        "perro",
        "casa",
        "verde",
        "pequeño",
        "río",
        "pájaro",
        "viejo",
        "ve",
        "corre",
        "anda",
    ],
}
LANGUAGES = tuple(WORDS)
SENTENCES_PER_LANGUAGE = 120
VOCAB_SIZE = 300


def sentences(language: str, count: int, seed: int = 0) -> list[str]:
    """``count`` short generated sentences of ``language`` (deterministic)."""
    rng = random.Random(f"{language}-{seed}")
    words = WORDS[language]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 9))).capitalize() + "."
        for _ in range(count)
    ]


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: ``check`` passed, failed or was skipped, and why."""

    check: str
    status: str
    reason: str

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.check}: {self.reason}"


@dataclass
class Report:
    """What ``xelm plugins check`` found for one registration."""

    kind: str
    name: str
    plugin: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def add(self, check: str, status: str, reason: str) -> None:
        self.results.append(CheckResult(check, status, reason))

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "passed": not self.failed,
            "checks": [
                {"check": r.check, "status": r.status, "reason": r.reason} for r in self.results
            ],
        }


# ---------------------------------------------------------------------------- tiny experts


@dataclass
class TinyExperts:
    """Three tiny real bundles (one per generated language) and text to route and score."""

    root: Path
    bundles: list[Any]
    documents: list[Document]

    @property
    def corpus(self) -> Path:
        """A corpus directory: ``{lang}.txt``, one held-out document per line."""
        return self.root / "corpus"

    @property
    def choice_task(self) -> Path:
        """A multiple-choice task in the ``jsonl`` layout: ``{lang}.jsonl``."""
        return self.root / "choices"


def build_tiny_experts(root: Path) -> TinyExperts:
    """Write the tokenizer, three tiny bundles, a held-out corpus and a multiple-choice task
    under ``root``; a few seconds on a CPU."""
    from xelm_cli.bundle.seed import init_from_config
    from xelm_cli.data.tokenizer import train_bpe_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    texts = [s for language in LANGUAGES for s in sentences(language, SENTENCES_PER_LANGUAGE)]
    tokenizer = train_bpe_tokenizer(texts, root / "tokenizer", vocab_size=VOCAB_SIZE)
    bundles = [
        init_from_config(
            "tiny", tokenizer, root / f"expert-{language}", languages=[language], seed=i
        )
        for i, language in enumerate(LANGUAGES)
    ]
    documents = []
    (root / "corpus").mkdir(exist_ok=True)
    (root / "choices").mkdir(exist_ok=True)
    for language in LANGUAGES:
        held_out = sentences(language, 4, seed=1)
        pairs = [" ".join(held_out[i : i + 2]) for i in (0, 2)]  # two sentences per document
        documents += [Document(text, language) for text in pairs]
        (root / "corpus" / f"{language}.txt").write_text("\n".join(pairs) + "\n")
        words = WORDS[language]
        records = [
            {"context": held_out[i], "choices": [words[i], words[i + 1]], "label": i % 2}
            for i in range(4)
        ]
        (root / "choices" / f"{language}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )
    return TinyExperts(root, bundles, documents)


@contextmanager
def tiny_experts() -> Iterator[TinyExperts]:
    """:func:`build_tiny_experts` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="xelm-check-") as tmp:
        yield build_tiny_experts(Path(tmp))


# ---------------------------------------------------------------------------- entry point


def check(
    name: str,
    *,
    router_args: Mapping[str, Any] | None = None,
    eval_args: Mapping[str, Any] | None = None,
    experts: TinyExperts | None = None,
) -> list[Report]:
    """Check every router and evaluator that ``name`` (or ``DIST:NAME``) selects.

    ``router_args``/``eval_args``: options for the check to build them with (text, as
    ``--router-arg``/``--eval-arg`` give them, or JSON values); needed for options without a
    default. Anything the plugin gets wrong is a failed check in the report, not an exception;
    an option the user must give and did not is a one-line :class:`UsageError`.
    """
    registry = get_registry()
    registrations: list[Registration] = []
    for kind in ("router", "evaluator"):
        try:
            registrations.append(registry.get(kind, name))
        except UsageError:
            continue
    if not registrations:
        other = [
            kind
            for kind in ("clusterer", "trainer", "command")
            if registry.all_of(kind, name.rpartition(":")[2])
        ]
        if other:
            raise UsageError(
                f"xelm plugins check runs routers and evaluators; {name!r} is a "
                f"{' and a '.join(other)} (see xelm plugins show {name})"
            )
        routers = sorted({r.name for r in registry.all_of("router")})
        evaluators = sorted({r.name for r in registry.all_of("evaluator")})
        raise UsageError(
            f"no router or evaluator {name!r} is installed (routers: "
            f"{', '.join(routers) or 'none'}; evaluators: {', '.join(evaluators) or 'none'})"
        )
    for registration in registrations:  # missing required options: before any model is built
        values = router_args if registration.kind == "router" else eval_args
        _given_options(registration, values)
    if experts is None:
        with tiny_experts() as built:
            return check(name, router_args=router_args, eval_args=eval_args, experts=built)
    reports = []
    for registration in registrations:
        if registration.kind == "router":
            reports.append(check_router(registration, router_args or {}, experts))
        else:
            reports.append(check_evaluator(registration, eval_args or {}, experts))
    return reports


def _label(registration: Registration) -> str:
    return f"{registration.kind} {registration.name!r}"


def _via(registration: Registration) -> str:
    return "--router-arg" if registration.kind == "router" else "--eval-arg"


def _given_options(registration: Registration, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's options converted by the declaration (UsageError if one is wrong or missing)."""
    owner = registration.obj
    if registration.kind == "evaluator" and not declares_options(owner):
        return dict(values or {})
    return parse_options(
        owner, dict(values or {}), label=_label(registration), via=_via(registration)
    )


def declares_options(evaluator: Any) -> bool:
    """Whether an evaluator declares ``Options`` (plugin API 1.1); an API 1.0 evaluator reads
    ``EvalRequest.options`` by itself."""
    return getattr(evaluator, "Options", NoOptions) is not NoOptions


def _recorded(value: Any) -> Any:
    """``value`` as JSON would carry it (tuples as lists, paths as text)."""
    return json.loads(json.dumps(value, default=str))


def _failure(exc: BaseException) -> str:
    if isinstance(exc, XelmError):
        return f"{type(exc).__name__}: {exception_line(exc)}"
    return f"raised {exception_line(exc, with_type=True)}"


# ---------------------------------------------------------------------------- routers


def check_options(registration: Registration, given: Mapping[str, Any], report: Report) -> None:
    """Declaration readable, defaults round-trip as text, unknown options refused."""
    owner, label, via = registration.obj, _label(registration), _via(registration)
    try:
        specs = declared_options(owner)
    except Exception as exc:
        report.add("options declaration", FAIL, f"cannot be read: {_failure(exc)}")
        return
    where = "an Options dataclass" if options_class(owner) is not None else "its constructor"
    names = ", ".join(s.name for s in specs) or "none"
    report.add("options declaration", PASS, f"declared by {where}; options: {names}")
    bad = []
    for spec in specs:
        if spec.required or not spec.cli:
            continue
        # none as JSON null (how an ensemble file records it; a text "none" is a str option's
        # own value), anything else as the text a user would type
        given_as = None if spec.default is None else as_text(spec.default)
        try:
            values = {**given, spec.name: given_as}
            back = parse_options(owner, values, label=label, via=via)[spec.name]
        except UsageError as exc:
            bad.append(f"{spec.name}={as_text(spec.default)} is refused ({exc})")
            continue
        if _recorded(back) != _recorded(spec.default):
            bad.append(f"{spec.name}={as_text(spec.default)} reads back as {back!r}")
    if bad:
        report.add("defaults round-trip", FAIL, "; ".join(bad))
    else:
        report.add("defaults round-trip", PASS, "every default, typed as text, parses to itself")
    try:
        parse_options(owner, {**given, UNKNOWN_OPTION: "1"}, label=label, via=via)
    except UsageError:
        refused = True
    else:
        refused = False
    if registration.kind == "router":
        try:
            owner(**given, **{UNKNOWN_OPTION: 1})
        except Exception:
            built = False
        else:
            built = True
        if refused and not built:
            report.add("unknown option refused", PASS, f"{UNKNOWN_OPTION}=1 is refused")
        else:
            how = "by the declaration" if not refused else "by its constructor (Python calls)"
            report.add("unknown option refused", FAIL, f"{UNKNOWN_OPTION}=1 is accepted {how}")


def _build(registration: Registration, options: Mapping[str, Any], report: Report) -> Any:
    try:
        router = registration.obj(**options)
    except Exception as exc:
        report.add("builds", FAIL, f"{registration.obj.__name__}(**options) {_failure(exc)}")
        return None
    shown = ", ".join(f"{k}={as_text(v)}" for k, v in options.items()) or "no options"
    report.add("builds", PASS, f"with {shown}")
    return router


def _snapshot(value: Any) -> Any:
    return copy.deepcopy(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b, equal_nan=True))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, ScoredDocument) and isinstance(b, ScoredDocument):
        return a.document == b.document and _same(a.logprobs, b.logprobs)
    return bool(a == b)


def _weights_checks(
    report: Report, weights: Any, shape: tuple[int, int], axis: int, what: str
) -> np.ndarray | None:
    """Shape, finite and non-negative, and sums to 1 along ``axis`` (rows: 1, columns: 0)."""
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        report.add("weights shape", FAIL, f"not a numeric array: {exc}")
        return None
    if array.shape != shape:
        report.add("weights shape", FAIL, f"{array.shape}; expected {shape} ({what})")
        return None
    report.add("weights shape", PASS, f"{array.shape} ({what})")
    abstained = np.isnan(array).all(axis=axis) if axis == 1 else np.zeros(shape[1], bool)
    valid = array[~abstained] if axis == 1 else array
    if not np.isfinite(valid).all():
        report.add("non-negative", FAIL, "NaN or infinite weights")
        return None
    if (valid < 0).any():
        report.add("non-negative", FAIL, f"a weight of {valid.min():g}")
    else:
        report.add("non-negative", PASS, "every weight is finite and >= 0")
    sums = valid.sum(axis=axis)
    worst = float(np.abs(sums - 1.0).max()) if sums.size else 0.0
    unit = "row" if axis == 1 else "column"
    if worst > WEIGHT_SUM_TOLERANCE:
        index = int(np.argmax(np.abs(sums - 1.0)))
        report.add(
            "normalised",
            FAIL,
            f"{unit} {index} sums to {sums[index]:.9g}; each {unit} must sum to 1 within 1e-6",
        )
    else:
        note = f" ({int(abstained.sum())} abstained)" if abstained.any() else ""
        report.add("normalised", PASS, f"every {unit} sums to 1 within 1e-6{note}")
    return array


def _routed(
    report: Report, compute: Callable[[], Any], arguments: Sequence[Any]
) -> tuple[Any, Any] | None:
    """Call the router twice on the same input: determinism and untouched arguments."""
    before = _snapshot(list(arguments))
    try:
        first = compute()
    except Exception as exc:
        report.add("routes", FAIL, _failure(exc))
        return None
    changed = [i for i, (a, b) in enumerate(zip(before, arguments, strict=True)) if not _same(a, b)]
    if changed:
        names = ", ".join(("documents/scored", "experts")[i] for i in changed)
        report.add("arguments not mutated", FAIL, f"the router modified its {names}")
    else:
        report.add("arguments not mutated", PASS, "its arguments are unchanged after the call")
    try:
        second = compute()
    except Exception as exc:
        report.add("deterministic", FAIL, f"the second call {_failure(exc)}")
        return first, None
    if _same(np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)):
        report.add("deterministic", PASS, "the same input twice gives the same weights")
    else:
        report.add("deterministic", FAIL, "the same input twice gives different weights")
    return first, second


def _attributes(router: Router, report: Report) -> bool:
    """``stride`` and ``fallback`` sane; True when the router may run in an ensemble."""
    ok = True
    stride = getattr(router, "stride", None)
    if stride is not None and (
        isinstance(stride, bool) or not isinstance(stride, int) or stride < 1
    ):
        report.add("stride", FAIL, f"stride is {stride!r}; it must be None or an int >= 1")
        ok = False
    elif isinstance(router, PreRouter):
        report.add(
            "stride",
            PASS,
            "none: routes whole documents"
            if stride is None
            else f"{stride}: routes the text before every {stride}-th target token",
        )
    fallback = getattr(router, "fallback", None)
    if fallback is None:
        if isinstance(router, PreRouter):
            report.add("fallback", PASS, "none: the router must not abstain")
        return ok
    if not isinstance(fallback, str):
        report.add("fallback", FAIL, f"fallback is {fallback!r}; it must be None or a router name")
        return False
    try:
        other = get_registry().get("router", fallback).obj()
    except Exception as exc:
        report.add("fallback", FAIL, f"router {fallback!r} cannot be built: {_failure(exc)}")
        return False
    if isinstance(other, PreRouter) and other.fallback:
        report.add("fallback", FAIL, f"router {fallback!r} has a fallback of its own")
        return False
    report.add("fallback", PASS, f"router {fallback!r} weighs the documents it abstains on")
    return ok


def _causality(
    router: OutputRouter,
    scored: ScoredDocument,
    experts: list[ExpertInfo],
    base: np.ndarray,
    report: Report,
) -> None:
    """Perturb the log-probabilities of tokens >= t: columns <= t must not move."""
    rng = np.random.default_rng(0)
    k, length = scored.logprobs.shape
    for t in range(length):
        changed = scored.logprobs.copy()
        changed[:, t:] = np.log(rng.uniform(0.01, 1.0, size=(k, length - t)))
        try:
            moved = np.asarray(
                router.route_tokens(ScoredDocument(scored.document, changed), experts), np.float64
            )
        except Exception as exc:
            report.add("causal", FAIL, _failure(exc))
            return
        delta = float(np.abs(moved[:, : t + 1] - base[:, : t + 1]).max())
        if delta > CAUSALITY_TOLERANCE:
            column = int(np.argmax(np.abs(moved[:, : t + 1] - base[:, : t + 1]).max(axis=0)))
            report.add(
                "causal",
                FAIL,
                f"changing the log-probabilities of tokens >= {t} moved the weights of token "
                f"{column} by {delta:.3g}; column t may depend only on tokens < t",
            )
            return
    report.add(
        "causal",
        PASS,
        f"weights of tokens <= t never move when tokens >= t change (t = 0..{length - 1})",
    )


def check_router(
    registration: Registration, values: Mapping[str, Any], experts: TinyExperts
) -> Report:
    """Every router check of section 5.2 on ``experts``."""
    from xelm_cli.ensemble.members import expert_infos
    from xelm_cli.ensemble.runner import EnsembleModel

    report = Report("router", registration.name, registration.plugin)
    given = _given_options(registration, values)
    check_options(registration, given, report)
    router = _build(registration, given, report)
    if router is None:
        return report
    if not isinstance(router, Router):
        report.add("kind", FAIL, f"built a {type(router).__name__}, not a Router")
        return report
    infos = expert_infos(experts.bundles)
    documents = list(experts.documents)
    ensemble = EnsembleModel(experts.bundles, router, device="cpu", name="check")
    scored_all: list[ScoredDocument] | None = None
    if type(router).calibrate is not Router.calibrate:
        scored_all = ensemble.score_all_experts(documents)
        try:
            found = router.calibrate(scored_all, infos)
            options = {
                **given,
                **parse_options(
                    registration.obj, dict(found), label=_label(registration), via="--router-arg"
                ),
            }
            json.dumps(found)
            router = registration.obj(**options)
        except Exception as exc:
            report.add("calibration round-trip", FAIL, _failure(exc))
            return report
        report.add(
            "calibration round-trip",
            PASS,
            f"calibrate() returned {', '.join(found) or 'nothing'}; the router rebuilds from them",
        )
        ensemble = EnsembleModel(experts.bundles, router, device="cpu", name="check")
    runnable = _attributes(router, report)
    k = len(infos)
    if isinstance(router, PreRouter):
        routed = _routed(report, lambda: router.route(documents, infos), [documents, infos])
        if routed is None:
            return report
        _weights_checks(report, routed[0], (len(documents), k), 1, "documents x experts")
    elif isinstance(router, OutputRouter):
        scored_all = scored_all or ensemble.score_all_experts(documents)
        scored = scored_all[0]
        routed = _routed(report, lambda: router.route_tokens(scored, infos), [scored, infos])
        if routed is None:
            return report
        shape = scored.logprobs.shape
        base = _weights_checks(report, routed[0], (shape[0], shape[1]), 0, "experts x tokens")
        if base is not None:
            _causality(router, scored, infos, base, report)
    if runnable and not report.failed:
        try:
            results = ensemble.score_documents(documents)
        except Exception as exc:
            report.add("runs in an ensemble", FAIL, _failure(exc))
            return report
        total = sum(float(r.sum()) for r in results)
        if all(np.isfinite(r).all() and (r <= 1e-6).all() for r in results):
            tokens = sum(r.size for r in results)
            report.add(
                "runs in an ensemble",
                PASS,
                f"{len(results)} documents scored by {k} tiny experts, mean NLL "
                f"{-total / max(tokens, 1):.3f} per token",
            )
        else:
            report.add("runs in an ensemble", FAIL, "log-probabilities not finite and <= 0")
    return report


# ---------------------------------------------------------------------------- evaluators


def check_evaluator(
    registration: Registration, values: Mapping[str, Any], experts: TinyExperts
) -> Report:
    """Attributes, options declaration and, where it can build its data offline, evaluate()."""
    from xelm_cli.ensemble.results import build_evaluator
    from xelm_cli.ensemble.routing import build_router
    from xelm_cli.ensemble.runner import EnsembleModel

    report = Report("evaluator", registration.name, registration.plugin)
    owner = registration.obj
    problems = []
    if getattr(owner, "name", None) != registration.name:
        problems.append(f"name is {getattr(owner, 'name', None)!r}")
    if not isinstance(getattr(owner, "primary", None), str) or not owner.primary:
        problems.append("primary (the headline metric) must be a non-empty str")
    if not isinstance(getattr(owner, "higher_is_better", None), bool):
        problems.append("higher_is_better must be True or False")
    if problems:
        report.add("attributes", FAIL, "; ".join(problems))
    else:
        direction = "higher" if owner.higher_is_better else "lower"
        report.add("attributes", PASS, f"primary metric {owner.primary!r}, {direction} is better")
    if declares_options(owner):
        check_options(registration, _given_options(registration, values), report)
        try:
            build_evaluator(
                registration.qualified_name,
                EvalRequest(data=str(experts.corpus), options={UNKNOWN_OPTION: "1"}),
            )
        except UsageError:
            report.add("unknown option refused", PASS, f"--eval-arg {UNKNOWN_OPTION}=1 is refused")
        except Exception as exc:
            report.add("unknown option refused", FAIL, f"building it {_failure(exc)}")
        else:
            report.add("unknown option refused", FAIL, f"--eval-arg {UNKNOWN_OPTION}=1 is accepted")
    else:
        report.add(
            "options declaration",
            SKIP,
            "no Options (plugin API 1.0): it reads EvalRequest.options by itself",
        )
    languages = tuple(LANGUAGES)
    attempts = [
        (
            "a generated corpus",
            EvalRequest(data=str(experts.corpus), languages=languages, options=dict(values)),
        ),
        (
            "a generated jsonl multiple-choice task",
            EvalRequest(
                data=str(experts.choice_task),
                task="jsonl",
                languages=languages,
                options=dict(values),
            ),
        ),
    ]
    refusals = []
    for what, request in attempts:
        try:
            evaluator = build_evaluator(registration.qualified_name, request)
        except XelmError as exc:
            refusals.append(f"{what}: {exception_line(exc)}")
            continue
        except Exception as exc:
            report.add("builds", FAIL, f"on {what} it {_failure(exc)}")
            return report
        report.add("builds", PASS, f"on {what}")
        model = EnsembleModel(experts.bundles, build_router("uniform"), device="cpu", name="check")
        try:
            result = evaluator.evaluate(model)
        except Exception as exc:
            report.add("evaluate()", FAIL, _failure(exc))
            return report
        report.add(*_check_result(result, owner))
        return report
    report.add(
        "evaluate()",
        SKIP,
        "not run: it needs data that cannot be generated here ("
        + "; ".join(refusals)
        + "); checked its attributes and options only",
    )
    return report


def _check_result(result: Any, owner: Any) -> tuple[str, str, str]:
    if not isinstance(result, dict):
        return "evaluate()", FAIL, f"returned {type(result).__name__}, not a dict"
    overall, languages = result.get("overall"), result.get("languages")
    if not isinstance(overall, dict) or not isinstance(languages, dict):
        return "evaluate()", FAIL, "the result needs 'overall' and 'languages' dicts"
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return "evaluate()", FAIL, f"the result is not JSON-serialisable: {exc}"
    value = overall.get(owner.primary)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "evaluate()", FAIL, f"overall[{owner.primary!r}] is {value!r}, not a number"
    return (
        "evaluate()",
        PASS,
        (f"overall {owner.primary} = {value:.4g} over {len(languages)} languages"),
    )
