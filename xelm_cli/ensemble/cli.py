"""``xelm ensemble``: create an ensemble file, evaluate, generate."""

import json
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer

from xelm_cli.common.cli_options import DeviceOpt, ForceOpt, print_json, print_whole
from xelm_cli.common.errors import UsageError
from xelm_cli.common.progress import stderr_console
from xelm_cli.ensemble.create import create_ensemble
from xelm_cli.ensemble.ensemble_file import COMBINE_RULES
from xelm_cli.plugin.options import PAIRS_METAVAR, parse_pairs

app = typer.Typer(
    help="Ensembles of expert bundles: routers, evaluation, generation.\n\n"
    "Example: xelm ensemble eval experts/* --router language "
    "--data ../shared/data/eval/flores200-devtest",
    no_args_is_help=True,
)

MembersArg = Annotated[
    list[str],
    typer.Argument(
        help="Expert bundles (paths or quoted globs), or one ensemble file (ens.json).",
        show_default=False,
    ),
]
RouterOpt = Annotated[
    str | None,
    typer.Option(
        "--router",
        help="Router name (xelm plugins list); default: the ensemble file's, else language.",
    ),
]
RouterArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--router-arg",
        metavar=PAIRS_METAVAR,
        help="Router option KEY=VALUE (repeatable), e.g. fallback=typology, top_k=2; a "
        "router's options: xelm plugins show NAME.",
    ),
]
CombineOpt = Annotated[
    str | None,
    typer.Option(
        "--combine",
        help=f"How experts combine: {', '.join(COMBINE_RULES)} (default: the ensemble "
        "file's, else mixture; product: product of experts, spec/ensemble-v1.md section 3).",
    ),
]


class RoutingKeywords(TypedDict):
    """--router, --router-arg and --combine as the Python API's keywords."""

    router: str | None
    router_options: dict[str, Any]
    combine: str | None


def _routing_keywords(
    router: str | None, router_arg: list[str] | None, combine: str | None
) -> RoutingKeywords:
    router_options = parse_pairs(router_arg or [], "--router-arg")
    return RoutingKeywords(router=router, router_options=router_options, combine=combine)


@app.command()
def create(
    members: MembersArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Ensemble file to write.")],
    router: RouterOpt = None,
    router_arg: RouterArgOpt = None,
    combine: CombineOpt = None,
    calibrate: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            "--calibrate",
            help="Held-out corpus to fit the router on (posterior prior, oracle table).",
        ),
    ] = None,
    langs: Annotated[
        str | None,
        typer.Option("--langs", help="Calibration languages (default: those the experts cover)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--calibration-limit", help="Calibration documents per language."),
    ] = 200,
    older_limit: Annotated[int | None, typer.Option("--limit", hidden=True)] = None,
    device: DeviceOpt = None,
    force: ForceOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the ensemble file written, with its path.")
    ] = False,
) -> None:
    """Record an ensemble: member bundles (with digests), router and its options, combination.

    Example: xelm ensemble create experts/* --router posterior --calibration valid/ -o ens.json

    Python: xelm_cli.api.create_ensemble
    """
    spec = create_ensemble(
        members,
        output,
        **_routing_keywords(router, router_arg, combine),
        calibrate=calibrate,
        languages=langs,
        limit=limit if older_limit is None else older_limit,  # --limit: the older spelling
        device=device,
        overwrite=force,
    )
    if as_json:
        print_json({"path": str(output), **json.loads(output.read_text(encoding="utf-8"))})
        return
    stderr_console.print(
        f"wrote {output}: {len(spec.members)} experts, router {spec.router} "
        f"{json.dumps(spec.router_options)}, {spec.combine}"
    )


@app.command("eval")
def evaluate(
    members: MembersArg,
    router: RouterOpt = None,
    router_arg: RouterArgOpt = None,
    combine: CombineOpt = None,
    evaluator: Annotated[
        str | None,
        typer.Option(
            "--evaluator",
            help="perplexity, icl, lm-eval, or a plugin's (default: icl with --task, "
            "else perplexity).",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Evaluation data: a corpus, a task's directory, or a Hub dataset id "
            "(openlanguagedata/flores_plus, Davlan/sib200, cambridgeltl/xcopa, ...).",
        ),
    ] = None,
    langs: Annotated[
        str | None,
        typer.Option(
            "--langs",
            help="Languages (default: the data's; those no expert covers are left out, "
            "in a note, when the router cannot route them; a dataset with a configuration per "
            "language needs them, unless an in-context task keeps to the experts').",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Documents or examples per language.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="In-context task (icl: xnli, xstorycloze, sib200, xcopa, belebele, jsonl).",
        ),
    ] = None,
    shots: Annotated[
        str | None,
        typer.Option(
            "--shots",
            help="Demonstrations per example; several, comma-separated (0,8), evaluate once "
            "for each: a table each, a JSON array of records \\[default: the evaluator's: 0 "
            "for icl, each lm-eval task's own].",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="Demonstration samplings.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of demonstration sampling.")] = 0,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="paper (English template words, mean token NLL) or harness (summed "
            "log-likelihood).",
        ),
    ] = "paper",
    eval_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--eval-arg",
            metavar=PAIRS_METAVAR,
            help="Evaluator option KEY=VALUE (repeatable; the evaluator's options: xelm plugins "
            "show NAME, e.g. perplexity's config=, lang_map=, split=, text_column=).",
        ),
    ] = None,
    each: Annotated[
        bool, typer.Option("--each", help="Also score every expert alone (expert x language).")
    ] = False,
    baseline: Annotated[
        list[Path] | None,
        typer.Option("--baseline", help="A bundle to score alongside (first one: delta column)."),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="table, json or csv (on stdout).")
    ] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the JSON results here.")
    ] = None,
    device: DeviceOpt = None,
    force: ForceOpt = False,
) -> None:
    """Evaluate an ensemble (and optionally each expert and baselines) on held-out text or
    an in-context task.

    Example: xelm ensemble eval experts/* --data flores200-devtest/ --each --baseline dense/
    """
    from xelm_cli.ensemble.evaluate import check_results_output, evaluate_per_shots
    from xelm_cli.ensemble.evaluate import evaluate as evaluate_ensemble
    from xelm_cli.ensemble.results import FORMATS

    if output_format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    if as_json and output_format not in ("table", "json"):
        raise UsageError(f"--json and --format {output_format} disagree: pass one of them")
    if as_json:
        output_format = "json"
    if output is not None:  # before any other check: --force would not help
        check_results_output(output)
    if output is not None and output.exists() and not force:
        raise UsageError(f"{output} exists; pass --force to replace it")
    counts = _shot_counts(shots)
    keywords: dict[str, Any] = dict(
        data=data,
        **_routing_keywords(router, router_arg, combine),
        evaluator=evaluator,
        languages=langs,
        limit=limit,
        task=task,
        runs=runs,
        seed=seed,
        protocol=protocol,
        each=each,
        baselines=baseline or [],
        output=output,
        overwrite=force,  # checked above too: the one-line refusal names --force
        device=device,
        **parse_pairs(eval_arg or [], "--eval-arg"),
    )
    if counts is None or len(counts) == 1:
        shots_given = counts[0] if counts else None
        _print_results([evaluate_ensemble(members, shots=shots_given, **keywords)], output_format)
    else:
        _print_results(evaluate_per_shots(members, shots=counts, **keywords), output_format)


def _shot_counts(text: str | None) -> list[int] | None:
    """``--shots``: each comma-separated count; None when not given (the evaluator's default)."""
    if text is None:
        return None
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(
            f"--shots takes whole numbers, comma-separated (8, or 0,8), not {text!r}"
        ) from None
    if len(set(counts)) < len(counts):
        raise UsageError(f"--shots {text} names a count twice: give each once")
    return counts


def _print_results(records: list[dict[str, Any]], output_format: str) -> None:
    """One record as the format shows it; several (one per --shots count): a JSON array, the
    CSV rows with a leading shots column, a table each under its count."""
    from xelm_cli.ensemble.results import render_csv, render_table

    several = len(records) > 1
    if output_format == "json":
        print_json(records if several else records[0])
    elif output_format == "csv":
        if not several:
            typer.echo(render_csv(records[0]), nl=False)
            return
        for index, record in enumerate(records):
            header, *rows = render_csv(record).splitlines(keepends=True)
            if index == 0:
                typer.echo(f"shots,{header}", nl=False)
            typer.echo("".join(f"{record['request']['shots']},{row}" for row in rows), nl=False)
    else:
        from rich.console import Console

        console = Console(soft_wrap=True)
        for record in records:
            if several:
                console.print(f"{record['request']['shots']}-shot", style="bold", markup=False)
            print_whole(console, render_table(record))  # piped: whole names, not cut at 80


@app.command()
def generate(
    members: MembersArg,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
    lang: Annotated[
        str | None, typer.Option("--lang", help="The prompt's language (language router).")
    ] = None,
    router: RouterOpt = None,
    router_arg: RouterArgOpt = None,
    combine: CombineOpt = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 50,
    temperature: Annotated[
        float, typer.Option("--temperature", help="0 picks the most likely token.")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print tokens and weights.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Sample a continuation from the experts' next-token distributions, combined by the
    ensemble's rule (--combine); it never emits the document-start token (unless that token
    also ends a text, as XGLM's does).

    Example: xelm ensemble generate experts/* --router language --lang tr --prompt "Bugün"

    Python: xelm_cli.api.generate_text
    """
    from xelm_cli.ensemble.generation import generate_text

    record = generate_text(
        members,
        prompt,
        **_routing_keywords(router, router_arg, combine),
        language=lang,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        device=device,
    )
    typer.echo(json.dumps(record, ensure_ascii=False) if as_json else prompt + record["text"])
