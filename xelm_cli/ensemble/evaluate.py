"""``evaluate(...)``: evaluate an ensemble from Python, as ``xelm ensemble eval`` does.

The members are checked like the command's (digests, one tokenizer), the router and evaluator
are the registered plugins, and the result is the same record the command writes with
``--format json`` (spec/ensemble-v1.md section 5).
"""

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from xelm_cli.bundle.store import Bundle
from xelm_cli.common.atomic import output_lock, write_bytes_atomic
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import pretty_json
from xelm_cli.common.outputs import small_json
from xelm_cli.ensemble.ensemble_file import Member, check_file_output, resolve_ensemble
from xelm_cli.ensemble.members import split_covered
from xelm_cli.ensemble.results import (
    RESULTS_FORMAT,
    build_evaluator,
    check_request_fields,
    per_token_metric,
    run_evaluation,
    systems_for,
)
from xelm_cli.lang.codes import language_codes
from xelm_cli.plugin.contracts import EvalRequest, Evaluator
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.registry import bugs_reported

RESULTS_FILE = "results.json"  # the file named where -o gives a directory


def evaluate(
    members: Member | Sequence[Member],
    *,
    data: str | Path | None,
    router: str | None = None,
    router_options: dict[str, Any] | None = None,
    evaluator: str | None = None,
    languages: Sequence[str] | str | None = None,
    limit: int | None = None,
    task: str | None = None,
    shots: int | None = None,
    runs: int = 1,
    seed: int = 0,
    protocol: str = "paper",
    combine: str | None = None,
    each: bool = False,
    baselines: str | Path | Bundle | Sequence[str | Path | Bundle] = (),
    output: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    **eval_options: Any,
) -> dict[str, Any]:
    """Evaluate the ensemble of ``members`` on ``data``; the results record.

    ``members``: bundle directories (or :class:`Bundle` objects, or quoted globs such as
    ``"experts/*"``), or one ensemble file; ``router`` and ``router_options``: the registered
    router and its options (default: the ensemble file's, else ``language``); ``evaluator``:
    default ``icl`` with a ``task``, else ``perplexity``; ``languages``: codes (or one
    comma-separated text), None for the data's languages (only those the experts cover, a note
    on stderr naming the others, when the router routes no other: ``language`` without a
    fallback); ``limit``: documents or examples per language; ``each``: also
    score every expert alone; ``baselines``: bundles scored alongside; ``output``: also write
    the record there (atomically; an existing file only with ``overwrite``); ``eval_options``: the
    evaluator's own options (``--eval-arg``).

    Example: ``evaluate(["experts/0", "experts/1"], data="flores200-devtest", router="language")``
    """
    name = evaluator or ("icl" if task else "perplexity")
    chosen = evaluator is not None or task is not None
    with _writing(output, overwrite):
        request = EvalRequest(
            data=None if data is None else str(data),
            languages=language_codes(languages),
            limit=limit,
            task=task,
            shots=shots,
            runs=runs,
            seed=seed,
            protocol=protocol,
            options=dict(eval_options),
        )
        with _task_hint(request.data, chosen=chosen):  # before the members are read, hashed
            check_request_fields(get_registry().get("evaluator", name).obj, name, request)
        spec = resolve_ensemble(
            members, router=router, router_options=router_options, combine=combine
        )
        languages_covered = dict.fromkeys(lang for b in spec.members for lang in b.languages)
        request = replace(request, model_languages=tuple(languages_covered))
        with _task_hint(request.data, chosen=chosen):
            built = build_evaluator(name, request)
        chosen_router = spec.built_router()
        if request.languages is None and not chosen_router.routes_uncovered_languages:
            built = _on_covered_languages(name, request, built, router=spec.router)
        systems = systems_for(
            spec,
            chosen_router,
            each=each,
            baselines=[
                Bundle.of(b)
                for b in ([baselines] if isinstance(baselines, str | Path | Bundle) else baselines)
            ],
            device=device,
            per_token=per_token_metric(built),
        )
        results = run_evaluation(name, built, spec, systems)
        if output is not None:  # ours alone: locked
            write_bytes_atomic(Path(output), pretty_json(results), overwrite=True)
    return results


def evaluate_per_shots(
    members: Member | Sequence[Member],
    *,
    shots: Sequence[int],
    output: str | Path | None = None,
    overwrite: bool = False,
    **keywords: Any,
) -> list[dict[str, Any]]:
    """``evaluate`` once for each number of ``shots`` (``xelm ensemble eval --shots 0,8``),
    the other ``keywords`` the same: the results records in that order, written to ``output``
    as one JSON array (atomically; an existing file only with ``overwrite``).

    Example: ``evaluate_per_shots("experts/*", data="sib200/", task="sib200", shots=[0, 8])``
    """
    if not shots:
        raise UsageError("give at least one number of shots")
    with _writing(output, overwrite):
        records = [evaluate(members, shots=count, **keywords) for count in shots]
        if output is not None:
            write_bytes_atomic(Path(output), pretty_json(records), overwrite=True)
    return records


def check_results_output(path: str | Path) -> None:
    """:func:`check_file_output` for results: --force replaces only earlier results."""
    check_file_output(path, what="the results", example=RESULTS_FILE, kind="xelm results",
                      own=holds_results)  # fmt: skip


def holds_results(path: Path) -> bool:
    """Whether ``path`` holds results: one record, or a list of them (one a shot count)."""
    data = small_json(path)
    records = data if isinstance(data, list) and data else [data]
    return all(isinstance(r, dict) and r.get("format") == RESULTS_FORMAT for r in records)


@contextlib.contextmanager
def _writing(output: str | Path | None, overwrite: bool) -> Iterator[None]:
    """Be the one writer of ``output`` (when given) for the block, refusing an existing one
    without ``overwrite`` (other things even with it: :func:`check_results_output`): a second
    evaluation into it fails at once, not when both finish."""
    if output is None:
        yield
        return
    check_results_output(output)
    with output_lock(output):
        if Path(output).exists() and not overwrite:
            raise UsageError(f"{output} exists; pass overwrite=True to replace it")
        yield


@contextlib.contextmanager
def _task_hint(data: str | None, *, chosen: bool) -> Iterator[None]:
    """Building the evaluator: when the perplexity one was taken by default (not ``chosen``),
    a refusal of data from a folder named for an in-context task (or of its flags) names
    ``--task`` as the way out."""
    try:
        yield
    except UsageError as exc:
        task = None if chosen else _task_of_folder(data)
        if task is None:
            raise
        raise UsageError(
            f"{exc}; to evaluate the {task} task in context pass --task {task}"
        ) from None


def _task_of_folder(data: str | None) -> str | None:
    """The in-context task a local folder is named for (``sib200``, ``XNLI-1.0``), or None."""
    if data is None or not Path(data).is_dir():
        return None
    folder = Path(data).resolve().name.lower()
    tasks = [task for r in get_registry().all_of("evaluator") for task in r.obj.tasks]
    return next((task for task in tasks if folder.startswith(task)), None)


def _on_covered_languages(
    name: str, request: EvalRequest, built: Evaluator, *, router: str
) -> Evaluator:
    """Without chosen languages, the evaluator restricted to the data's languages that the
    experts (``EvalRequest.model_languages``, which an in-context task on a Hub dataset already
    keeps to) cover as the language router routes them (``split_covered``: ``arb`` to an
    ``ar`` expert), for a ``router`` that refuses the others
    (``Router.routes_uncovered_languages`` False): ``Evaluator.on_languages``, which xelm's own
    evaluators answer without reading their data again. With none covered, the evaluator as it
    is (the router's refusal names the covered languages)."""
    split = split_covered(built.languages, request.model_languages or ())
    if split is None:
        return built
    kept, left_out = split
    print(
        f"xelm: note: evaluating the languages of {request.data} that the experts cover "
        f"({', '.join(kept)}); left out {', '.join(left_out)}, which router {router!r} does "
        "not route: evaluate them with a router that does (e.g. --router posterior; the "
        "language router with --router-arg fallback=typology)",
        file=sys.stderr,
    )
    registration = get_registry().get("evaluator", name)
    with bugs_reported(registration, f"while being restricted to {', '.join(kept)}"):
        return built.on_languages(kept)
