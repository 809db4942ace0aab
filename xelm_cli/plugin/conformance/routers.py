"""Conformance of a router: its weights, determinism, untouched arguments, causality, options,
attributes and a run in an ensemble (spec/plugin-api.md 5.2, 6)."""

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from xelm_cli.common.errors import UsageError, exception_line
from xelm_cli.ensemble.weights import WEIGHT_SUM_TOLERANCE
from xelm_cli.plugin.conformance.report import (
    FAIL,
    PASS,
    Report,
    check_options,
    failure,
    plugin_label,
)
from xelm_cli.plugin.conformance.tiny import TinyExperts
from xelm_cli.plugin.contracts import (
    ExpertInfo,
    OutputRouter,
    PreRouter,
    Router,
    ScoredDocument,
    calibrates,
)
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import (
    as_text,
    declared_options,
    parse_options,
)
from xelm_cli.plugin.registry import Registration

CAUSALITY_TOLERANCE = 1e-9  # how far an earlier token's weights may move


def _build(registration: Registration, options: Mapping[str, Any], report: Report) -> Any:
    """``RouterClass(**options)``, then with every declared default not given passed
    explicitly, as a user's ``--router-arg`` of the default's value passes it: a router with
    ``Options`` but no constructor that takes them builds only without options."""
    cls = registration.obj
    try:
        router = cls(**options)
    except Exception as exc:
        report.add("builds", FAIL, f"{cls.__name__}(**options) {failure(exc)}")
        return None
    shown = ", ".join(f"{k}={as_text(v)}" for k, v in options.items()) or "no options"
    defaults = {
        spec.name: copy.deepcopy(spec.default)
        for spec in declared_options(cls)
        if not spec.required and spec.name not in options
    }
    if defaults:
        try:
            cls(**options, **defaults)
        except Exception as exc:
            given = ", ".join(f"{k}={as_text(v)}" for k, v in defaults.items())
            report.add(
                "builds",
                FAIL,
                f"{cls.__name__}(**options) with its defaults given explicitly ({given}) "
                f"{failure(exc)}; its constructor must take every declared option as a keyword",
            )
            return None
        shown += ", and with every default given explicitly"
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
    report: Report,
    compute: Callable[[], Any],
    arguments: Sequence[Any],
    given: Mapping[str, Any],
) -> tuple[Any, Any] | None:
    """Call the router twice on the same input: determinism and untouched arguments. A
    ``UsageError`` with options the user ``given`` is theirs to fix (options that do not fit
    the check's experts), not the router's failure."""
    before = _snapshot(list(arguments))
    try:
        first = compute()
    except UsageError as exc:
        if not given:
            report.add("routes", FAIL, failure(exc))
            return None
        raise _not_fitting(report, arguments[-1], exc) from None
    except Exception as exc:
        report.add("routes", FAIL, failure(exc))
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
        report.add("deterministic", FAIL, f"the second call {failure(exc)}")
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
            else f"{stride}: routes the text before target tokens 0, {stride}, {2 * stride}, ...",
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
        report.add("fallback", FAIL, f"router {fallback!r} cannot be built: {failure(exc)}")
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
            report.add("causal", FAIL, failure(exc))
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


def _not_fitting(report: Report, experts: Sequence[Any], exc: Exception) -> UsageError:
    """The user's --router-arg that the check's tiny ``experts`` cannot take (``exc``: the
    router's refusal): theirs to fix, not the router's failure."""
    shown = " / ".join(",".join(info.languages) for info in experts)
    return UsageError(
        f"the --router-arg given do not fit the check's {len(experts)} tiny experts "
        f"({shown}): router {report.name!r} refused them: {exception_line(exc)}"
    )


def _ensemble(report: Report, experts: Any, router: Any, given: Mapping[str, Any]) -> Any:
    """The check's ensemble of ``router`` (None, with a failure reported, when the router's
    ``check_experts`` fails on them); a refusal of options the user ``given``: theirs."""
    from xelm_cli.ensemble.members import expert_infos
    from xelm_cli.ensemble.runner import EnsembleModel

    try:
        return EnsembleModel(experts.bundles, router, device="cpu", name="check")
    except UsageError as exc:
        if given:
            raise _not_fitting(report, expert_infos(experts.bundles), exc) from None
        report.add("check_experts", FAIL, failure(exc))
    except Exception as exc:
        report.add("check_experts", FAIL, failure(exc))
    return None


def check_router(
    registration: Registration, values: Mapping[str, Any], experts: TinyExperts
) -> Report:
    """Every router check of section 5.2 on ``experts``."""
    from xelm_cli.ensemble.members import expert_infos

    report = Report("router", registration.name, registration.plugin)
    given = check_options(registration, values, report)
    if given is None:
        return report
    router = _build(registration, given, report)
    if router is None:
        return report
    if not isinstance(router, Router):
        report.add("kind", FAIL, f"built a {type(router).__name__}, not a Router")
        return report
    infos = expert_infos(experts.bundles)
    documents = list(experts.documents)
    ensemble = _ensemble(report, experts, router, given)
    if ensemble is None:
        return report
    scored_all: list[ScoredDocument] | None = None
    if calibrates(router):
        scored_all = ensemble.score_all_experts(documents)
        try:
            found = router.calibrate(scored_all, infos)
            options = {
                **given,
                **parse_options(
                    registration.obj,
                    dict(found),
                    label=plugin_label(registration),
                    via="--router-arg",
                ),
            }
            json.dumps(found)
            router = registration.obj(**options)
        except Exception as exc:
            report.add("calibration round-trip", FAIL, failure(exc))
            return report
        report.add(
            "calibration round-trip",
            PASS,
            f"calibrate() returned {', '.join(found) or 'nothing'}; the router rebuilds from them",
        )
        ensemble = _ensemble(report, experts, router, given)
        if ensemble is None:
            return report
    runnable = _attributes(router, report)
    k = len(infos)
    if isinstance(router, PreRouter):
        routed = _routed(report, lambda: router.route(documents, infos), [documents, infos], given)
        if routed is None:
            return report
        _weights_checks(report, routed[0], (len(documents), k), 1, "documents x experts")
    elif isinstance(router, OutputRouter):
        scored_all = scored_all or ensemble.score_all_experts(documents)
        scored = scored_all[0]
        routed = _routed(report, lambda: router.route_tokens(scored, infos), [scored, infos], given)
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
            report.add("runs in an ensemble", FAIL, failure(exc))
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
