"""Evaluation results: running the systems of one evaluation, the JSON record, table and CSV.

A *system* is what one column of results describes: the ensemble, one expert alone, or a
baseline bundle. Systems share a score cache, so an expert alone reuses what the ensemble
already computed with it.
"""

import csv
import dataclasses
import io
import json
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from xelm_cli import __version__
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import PluginError, UsageError
from xelm_cli.ensemble.ensemble_file import EnsembleSpec
from xelm_cli.ensemble.runner import (
    EnsembleModel,
    RunStats,
    ScoreCache,
    fits_on_device,
    single_model,
)
from xelm_cli.ensemble.scoring import pick_device
from xelm_cli.plugin.contracts import EvalRequest, Evaluator, PreRouter, result_problem
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import (
    build_options,
    declares_options,
    options_record,
    parse_options,
)
from xelm_cli.plugin.registry import Kind, Registration, bugs_reported

RESULTS_FORMAT = "xelm-results"
MEAN_OVER_LANGUAGES = "mean_over_languages"  # in a pooled overall: each language once
FORMATS = ("table", "json", "csv")


@dataclass
class System:
    name: str
    kind: str  # ensemble | expert | baseline
    model: EnsembleModel


def build_evaluator(name: str, request: EvalRequest) -> Evaluator:
    """Evaluator ``name`` built from ``request``; its ``options`` (``--eval-arg`` text or
    Python values) first checked and converted by the evaluator's declared ``Options``.
    ``evaluator.request`` is that request even when the class did not call
    ``super().__init__(request)``."""
    registration = get_registry().get("evaluator", name)
    check_request_fields(registration.obj, name, request)
    with bugs_reported(registration, "while being built"):
        options = evaluator_options(registration.obj, name, request.options)
        converted = dataclasses.replace(request, options=options)
        evaluator: Evaluator = registration.obj(converted)
    if not hasattr(evaluator, "request"):
        evaluator.request = converted
    return evaluator


# The request fields an evaluator declares it reads (Evaluator.uses_FIELD): each one's flag
# and what it applies to, for the refusal of one given to an evaluator that does not read it.
REQUEST_FIELDS = {
    "shots": ("--shots", "in-context tasks"),
    "runs": ("--runs", "in-context tasks that sample demonstrations"),
    "seed": ("--seed", "in-context tasks that sample demonstrations"),
    "protocol": ("--protocol", "scoring the choices of in-context tasks"),
}


def check_request_fields(evaluator: Any, name: str, request: EvalRequest) -> None:
    """Refuse in one line a request field given a value other than its default (``--shots``
    at all, ``--runs`` other than 1, ...) that evaluator class ``evaluator`` declares it does
    not read (``uses_FIELD = False``): it would be ignored, yet recorded as if it applied.
    An evaluator that declares nothing (None) accepts every field."""
    defaults = EvalRequest()
    for field, (flag, applies) in REQUEST_FIELDS.items():
        if getattr(evaluator, f"uses_{field}", None) is not False:
            continue
        if getattr(request, field) == getattr(defaults, field):
            continue
        users = [
            registration.name
            for registration in get_registry().all_of("evaluator")
            if getattr(registration.obj, f"uses_{field}", None)
        ]
        readers = f", evaluator {' or '.join(users)}" if users else ""
        raise UsageError(
            f"{flag} applies to {applies} (--task{readers}); evaluator {name!r} does not use "
            f"it: drop {flag}"
        )


def evaluate_checked(registration: Registration, evaluator: Evaluator, system: System) -> Any:
    """``evaluator.evaluate(system.model)``, refused in one line (a :class:`PluginError`) when it
    raises or returns what the contract does not allow (as ``xelm plugins check`` checks)."""
    with bugs_reported(registration, f"while evaluating {system.name}"):
        metrics = evaluator.evaluate(system.model)
    problem = result_problem(metrics, evaluator.primary)
    if problem is not None:
        raise PluginError(
            f"{registration.object_label()} broke its contract evaluating {system.name}: "
            f"{problem}; this is a bug in the evaluator (xelm plugins check "
            f"{registration.name} shows it)"
        )
    return metrics


def evaluator_options(evaluator: Any, name: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` converted by ``evaluator``'s ``Options`` (spec/plugin-api.md 5.1), JSON-ready
    as results record them (paths as text); an evaluator of plugin API 1.0 (no ``Options``)
    gets text values as JSON where they parse."""
    if not declares_options(evaluator):
        return {key: _json_or_text(value) for key, value in values.items()}
    parsed = parse_options(evaluator, values, label=f"evaluator {name!r}", via="--eval-arg")
    recorded: dict[str, Any] = json.loads(json.dumps(parsed, default=str))
    return recorded


def _json_or_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def systems_for(
    spec: EnsembleSpec,
    router: Any,
    *,
    each: bool,
    baselines: Sequence[Bundle],
    device: str | None,
    per_token: bool = True,
) -> list[System]:
    """The systems of one evaluation. They share a score cache and, on a device that holds
    every distinct bundle among them at once, one resident copy of each (decided here, before
    anything loads, and not per system: each would see the same free memory).

    ``per_token``: the evaluator's metric is one per token (:func:`per_token_metric`), so a
    baseline with another tokenizer than the ensemble's is refused; a metric that does not
    depend on the tokenizer (accuracy) compares any baseline (each system tokenizes the same
    text with its own tokenizer)."""
    distinct = list({bundle.digest: bundle for bundle in [*spec.members, *baselines]}.values())
    resident = fits_on_device(distinct, pick_device(device))
    cache = ScoreCache()
    name = f"ensemble[{spec.router}]"
    if len(spec.members) == 1:  # one bundle (a dense model evaluated alone) is no ensemble
        name = f"model:{spec.members[0].name}"
    systems = [
        System(
            name,
            "ensemble",
            EnsembleModel(
                spec.members,
                router,
                spec.combine,
                name="ensemble",
                device=device,
                cache=cache,
                resident=resident,
            ),
        )
    ]
    if each:
        for bundle in spec.members:
            model = single_model(
                bundle, f"expert:{bundle.name}", device=device, cache=cache, resident=resident
            )
            systems.append(System(model.name, "expert", model))
    for bundle in baselines:
        if (
            per_token
            and bundle.manifest.fingerprints["tokenizer"]
            != spec.members[0].manifest.fingerprints["tokenizer"]
        ):
            raise UsageError(
                f"baseline {bundle.path} has a different tokenizer from the ensemble, so token "
                "perplexities are not comparable: compare bits_per_byte (tokenizer-free) of "
                f"each evaluated on its own (xelm ensemble eval {bundle.path} --data DATA "
                "--format json)"
            )
        model = single_model(
            bundle, f"baseline:{bundle.name}", device=device, cache=cache, resident=resident
        )
        systems.append(System(model.name, "baseline", model))
    paths = [bundle.path.resolve() for bundle in baselines]
    twice = next(
        (b.path for b, p in zip(baselines, paths, strict=True) if paths.count(p) > 1), None
    )
    if twice is not None:
        raise UsageError(f"--baseline {twice} is given twice: give each baseline once")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise UsageError(f"two systems share a name ({', '.join(names)}); rename a bundle")
    return systems


PER_TOKEN_METRICS = frozenset({"perplexity"})  # headline metrics counted in tokens


def per_token_metric(evaluator: Evaluator) -> bool:
    """Whether ``evaluator``'s headline metric is counted in tokens (token perplexity): it
    then differs between tokenizers for the same text. Accuracy, bits per byte, lm-eval's
    ``word_perplexity`` do not."""
    return evaluator.primary in PER_TOKEN_METRICS


def plugin_record(kind: Kind, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``{name, options, plugin, distribution, version}`` of the plugin object ``name`` selects
    (spec/ensemble-v1.md section 5): which installed code produced a result. ``options`` are
    those given; a plugin that declares its options records every one it ran with, its
    defaults included."""
    registration = get_registry().get(kind, name)
    if declares_options(registration.obj):
        via = "--router-arg" if kind == "router" else "--eval-arg"
        label = f"{kind} {name!r}"
        options = options_record(build_options(registration.obj, options, label=label, via=via))
    provenance = registration.provenance
    return {"name": provenance["name"], "options": options, **provenance}


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "xelm": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run_evaluation(
    evaluator_name: str,
    evaluator: Evaluator,
    spec: EnsembleSpec,
    systems: Sequence[System],
) -> dict[str, Any]:
    """Evaluate every system; the results record (spec/ensemble-v1.md section 5)."""
    registration = get_registry().get("evaluator", evaluator_name)
    records = []
    dtypes: set[str] = set()
    for system in systems:
        started = time.perf_counter()
        metrics = evaluate_checked(registration, evaluator, system)
        seconds = round(time.perf_counter() - started, 3)  # the rate agrees with the record
        loading = round(system.model.stats.load_seconds, 3)
        computed = system.model.dtypes
        dtypes.update(computed)
        records.append(
            {
                "name": system.name,
                "kind": system.kind,
                "bundles": [
                    {"name": b.name, "id": b.id, "digest": b.digest, "dtype": dtype}
                    for b, dtype in zip(system.model.members, computed, strict=True)
                ],
                "metrics": metrics,
                "executed": {
                    "loads": dict(system.model.stats.loads),
                    "sequences": dict(system.model.stats.sequences),
                    "reused": dict(system.model.stats.reused),
                },
                "seconds": seconds,
                "load_seconds": loading,
                **_throughput(metrics, seconds - loading, stats=system.model.stats),
                **_routing(system),
            }
        )
    request = evaluator.request
    provenance = {
        "router": plugin_record("router", spec.router, spec.router_options),
        **_fallback_record(systems),
        "evaluator": plugin_record("evaluator", evaluator_name, request.options),
    }
    return {
        "format": RESULTS_FORMAT,
        "format_version": 1,
        "evaluator": evaluator_name,
        "primary": evaluator.primary,
        "higher_is_better": evaluator.higher_is_better,
        "request": {
            "data": request.data,
            "languages": evaluator.languages,
            "limit": request.limit,
            "task": request.task,
            "shots": request.shots,
            "runs": request.runs,
            "seed": request.seed,
            "protocol": request.protocol if evaluator.uses_protocol else None,
            "options": request.options,
        },
        "ensemble": spec.to_dict(),
        "device": str(systems[0].model.device),
        # what the bundles computed in (each one's under systems[].bundles[].dtype)
        "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
        "versions": _versions(),
        "provenance": provenance,
        "systems": records,
    }


def _throughput(metrics: dict[str, Any], seconds: float, *, stats: RunStats) -> dict[str, Any]:
    """``tokens_per_second`` when the evaluator counted the tokens it scored (perplexity
    does), over the ``seconds`` spent scoring: loading experts is left out, since systems of
    one run share resident experts and the first to need one pays for its load (and for the
    process's one-off start-up). None for a system that reused scores another system
    computed: its time leaves that work out."""
    tokens = metrics.get("overall", {}).get("tokens")
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        return {}
    if stats.reused or seconds <= 0:  # no time of its own to divide by
        return {"tokens_per_second": None}
    return {"tokens_per_second": round(tokens / seconds, 1)}


def _fallback_record(systems: Sequence[System]) -> dict[str, Any]:
    """``fallback``: the provenance of the router a pre-router hands what it abstains on,
    built without options (spec/plugin-api.md 6.5); absent when the router names none."""
    for system in systems:  # the ensemble file's router is every ensemble system's
        router = system.model.router
        if system.kind == "ensemble" and isinstance(router, PreRouter) and router.fallback:
            return {"fallback": plugin_record("router", router.fallback, {})}
    return {}


def _routing(system: System) -> dict[str, Any]:
    """``routing``, for a system of several experts: per language, the mean weight each
    expert got (in the order of ``bundles``), as the router actually weighed them."""
    if len(system.model.members) < 2:
        return {}
    return {"routing": system.model.stats.routing.means()}


def _value(metrics: dict[str, Any], scope: tuple[str, ...], metric: str) -> float:
    """``metric`` of the metrics at the path ``scope`` (``("languages", "en")``,
    ``("overall",)``); NaN where there is none."""
    values = metrics
    for key in scope:
        values = values.get(key, {})
    value = values.get(metric)
    return float(value) if isinstance(value, int | float) else math.nan


def _scopes(results: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The table's rows: (label, scope) per language, then overall. Where a system records
    ``overall.mean_over_languages`` (perplexity), ``overall`` pools every token: its row is
    ``pooled``, and ``mean``, the mean over the languages (each once, the paper's), follows.
    Labels no wider than ``tokens/s``: a wider first column would fold the system names."""
    rows = [(language, ("languages", language)) for language in results["request"]["languages"]]
    if any(MEAN_OVER_LANGUAGES in s["metrics"].get("overall", {}) for s in results["systems"]):
        return [*rows, ("pooled", ("overall",)), ("mean", ("overall", MEAN_OVER_LANGUAGES))]
    return [*rows, ("overall", ("overall",))]


def _rows(results: dict[str, Any], baseline: str | None) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows as text: the primary metric per language and system (with
    its standard error when the evaluator averaged several runs), then the first system's
    difference from the baseline."""
    metric = results["primary"]
    systems = results["systems"]
    spread = _shows_stderr(results)
    header = ["language", *(s["name"] for s in systems)]
    if baseline:
        header.append(f"delta vs {baseline}")
    rows = []
    base = next((s for s in systems if s["name"] == baseline), None)
    for label, scope in _scopes(results):
        row = [label, *(_cell(s["metrics"], scope, metric, spread) for s in systems)]
        if base is not None:
            first = _value(systems[0]["metrics"], scope, metric)
            row.append(f"{first - _value(base['metrics'], scope, metric):+.3f}")
        rows.append(row)
    return header, rows


def _runs(results: dict[str, Any]) -> int:
    return int(results["request"].get("runs") or 1)


def _shows_stderr(results: dict[str, Any]) -> bool:
    """Whether the metrics carry standard errors: the examples' (icl) or, from evaluators
    that give only those, the runs' over several runs."""
    overall = [system["metrics"].get("overall", {}) for system in results["systems"]]
    if any("stderr_examples" in scope for scope in overall):
        return True
    return _runs(results) > 1 and any("stderr" in scope for scope in overall)


def _stderr_title(results: dict[str, Any]) -> str:
    overall = [system["metrics"].get("overall", {}) for system in results["systems"]]
    if any("stderr_examples" in scope for scope in overall):
        runs = _runs(results)
        drawn = f" and demonstrations ({runs} runs)" if runs > 1 else ""
        return f" ± standard error of the examples{drawn}"
    return f" ± standard error over {_runs(results)} runs"


def _cell(metrics: dict[str, Any], scope: tuple[str, ...], metric: str, spread: bool) -> str:
    """A metric, with its standard error where the table shows them: the examples' and the
    runs' combined (root sum of squares) where the evaluator gives both."""
    text = f"{_value(metrics, scope, metric):.3f}"
    stderr = _value(metrics, scope, "stderr")
    examples = _value(metrics, scope, "stderr_examples")
    if not math.isnan(examples):
        stderr = math.hypot(examples, 0.0 if math.isnan(stderr) else stderr)
    return f"{text} ± {stderr:.3f}" if spread and not math.isnan(stderr) else text


def baseline_name(results: dict[str, Any]) -> str | None:
    return next((s["name"] for s in results["systems"] if s["kind"] == "baseline"), None)


def render_csv(results: dict[str, Any]) -> str:
    """Long format: system, kind, language, metric, value (every numeric metric; one in a
    group, as perplexity's ``overall.mean_over_languages``, named ``group.metric``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["system", "kind", "language", "metric", "value"])
    for system in results["systems"]:
        metrics = system["metrics"]
        scopes = [("overall", metrics.get("overall", {}))]
        scopes += sorted(metrics.get("languages", {}).items())
        for language, values in scopes:
            for metric, value in _numbers(values):
                writer.writerow([system["name"], system["kind"], language, metric, value])
    return out.getvalue()


def _numbers(values: dict[str, Any], group: str = "") -> Iterator[tuple[str, float]]:
    for metric, value in values.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{group}{metric}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{group}{metric}", value


def render_table(results: dict[str, Any]) -> Any:
    """The results table, followed by each ensemble's routing table."""
    from rich.console import Group

    routing = [_routing_table(system) for system in results["systems"] if system.get("routing")]
    return Group(_results_table(results), *routing)


def _routing_table(system: dict[str, Any]) -> Any:
    """Mean routing weight per language (rows) and expert (columns) of one ensemble; the
    experts with the most weight on a language in bold (none when all weigh the same)."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=escape(f"{system['name']}: mean routing weight per language"))
    table.add_column("language")
    for bundle in system["bundles"]:
        table.add_column(Text(bundle["name"]), justify="right", overflow="fold", min_width=5)
    for language, weights in system["routing"].items():
        top = max(weights) if len(set(weights)) > 1 else None  # a tie for all: none in bold
        table.add_row(
            language, *(Text(f"{w:.2f}", style="bold" if w == top else "") for w in weights)
        )
    return table


def _results_table(results: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    header, rows = _rows(results, baseline_name(results))
    direction = "higher" if results["higher_is_better"] else "lower"
    title = results["primary"]
    if _shows_stderr(results):
        title += _stderr_title(results)
    title += f" ({direction} is better)"
    if results["request"].get("protocol"):
        title += f", protocol {results['request']['protocol']}"
    title += f"; router {results['ensemble']['router']['name']}, {results['ensemble']['combine']}"
    if any("tokens_per_second" in system for system in results["systems"]):
        cells = [_speed(system) for system in results["systems"]]
        rows.append(["tokens/s", *cells, *([""] if header[-1].startswith("delta") else [])])
    table = Table(title=escape(title))
    # No column is narrower than its widest cell, so a number never wraps: a narrow terminal
    # (80 columns when stdout is no terminal) folds the system names in the header instead,
    # and a table that cannot fit stays whole, wider than the terminal (printed soft-wrapped).
    for index, name in enumerate(header):
        table.add_column(
            Text(name),
            justify="right" if index else "left",
            overflow="fold",
            min_width=max(len(line) for row in rows for line in row[index].splitlines()),
        )
    for row in rows:
        table.add_row(*row)
    return table


def _speed(system: dict[str, Any]) -> str:
    """The system's tokens/s; for one that reused scores (no rate), the share of its
    sequences another system of the run scored, when it scored some itself."""
    if "tokens_per_second" not in system:
        return ""
    speed = system["tokens_per_second"]
    if speed is not None:
        return f"{speed:,.0f}"
    executed = system.get("executed", {})
    reused = sum(executed.get("reused", {}).values())
    own = sum(executed.get("sequences", {}).values())
    return "reused" if not own else f"{100 * reused / (reused + own):.0f}%\nreused"
