"""``xelm cluster``: one command per registered clusterer, plus ``show``."""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from xelm_cli.cluster.allocation import Allocation, read_allocation
from xelm_cli.cluster.fitting import READING_PARAMETERS, cluster_request, fit
from xelm_cli.cluster.plots import (
    allocation_matrix,
    allocation_summary,
    check_plot_folder,
    write_plots,
)
from xelm_cli.common.cli_options import ForceOpt, JsonOpt, print_json, print_whole
from xelm_cli.common.errors import (
    PluginError,
    UsageError,
    XelmError,
    exception_line,
)
from xelm_cli.data.reading_flags import reading_from_flags, reading_parameters
from xelm_cli.plugin.contracts import Clusterer
from xelm_cli.plugin.host import get_registry, report_problem
from xelm_cli.plugin.options import (
    PAIRS_METAVAR,
    command_flags,
    given,
    parse_pairs,
    typer_parameters,
    with_flags,
    with_parameters,
)
from xelm_cli.plugin.registry import PluginProblem, Registration

app = typer.Typer(
    help="Allocate languages or documents to experts. Each clusterer plugin adds a command.\n\n"
    "Example: xelm cluster typology --langs ar,bg,de,el,en,es,fr,hi -k 4 -o alloc.json",
    no_args_is_help=True,
)
_added: set[str] = set()

# the request's own flags: a declared option of the same name is reachable via --cluster-arg
# only (one named like a reading flag is refused when the command runs, refuse_reading_names)
REQUEST_PARAMETERS = (
    "data", "langs", "k", "output", "seed", "force", "overwrite", "cluster_arg", "as_json",
    *READING_PARAMETERS,
)  # fmt: skip


def add_clusterer_commands() -> None:
    """Add ``xelm cluster NAME`` for every registered clusterer (once per name): its own
    ``command()`` when it provides one (plugin API 1.0), else the command built from ``fit``.
    Every registration is also ``xelm cluster DIST:NAME``, its qualified name (spec/plugin-api.md
    3, 5): listed where the plain name does not select it (a name two third parties register,
    or a third party's registration of one of xelm's), hidden where it does.

    A clusterer whose command cannot be built (its options declaration cannot be read, its
    ``command()`` raises) gets none, and an option whose flag is malformed or taken gets no
    flag: each is a problem of its plugin (spec/plugin-api.md 4), never the end of the CLI.

    Idempotent: the commands an earlier call added are replaced, so a call after
    ``reset_registry`` leaves exactly the current registry's clusterers (not one bound to a
    registration of an earlier registry)."""
    app.registered_commands[:] = [c for c in app.registered_commands if c.name not in _added]
    _added.clear()
    registry = get_registry()
    for registration in registry.all_of("clusterer"):
        plain = registry.clusterers.get(registration.name) is registration
        try:
            if plain:
                _add_clusterer_command(registration.name, registration, hidden=False)
            elif registration.name not in registry.clusterers:
                _add_refusal(registration.name)
            _add_clusterer_command(registration.qualified_name, registration, hidden=plain)
        except (Exception, SystemExit) as exc:
            reason = exception_line(exc, with_type=not isinstance(exc, XelmError))
            _problem(registration, f"is left out of xelm cluster: {reason}")
            for name in (registration.name, registration.qualified_name):
                _add_refusal(name, f"clusterer {registration.name!r} is left out: {reason}")


def _problem(registration: Registration, message: str) -> None:
    """Report ``clusterer 'NAME' MESSAGE`` as a problem of its plugin (printed once)."""
    report_problem(
        PluginProblem(
            registration.plugin,
            f"clusterer {registration.name!r} {message}",
            "clusterer",
            registration.name,
        )
    )


def _add_refusal(name: str, broken: str | None = None) -> None:
    """``xelm cluster NAME`` that refuses in one line instead of click's 'No such command': for
    a name several third parties register, the registry's refusal naming each and their
    qualified names; for a clusterer whose command could not be built, ``broken`` (why)."""
    if name in _added or name == "show":
        return

    def command(ctx: typer.Context) -> None:
        if broken is not None:
            raise PluginError(broken)
        get_registry().get("clusterer", name)  # raises: NAME selects no one registration

    command.__name__ = f"cluster_{name.replace('-', '_')}"
    settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    app.command(name, hidden=True, context_settings=settings, add_help_option=False)(command)
    _added.add(name)


def _add_clusterer_command(name: str, registration: Registration, *, hidden: bool) -> None:
    if name in _added or name == "show":
        return
    clusterer: type[Clusterer] = registration.obj
    own = clusterer.command()
    if own is not None:
        app.command(name, help=None, hidden=hidden)(own)
    else:

        def no_flag(option: str, why: str) -> None:
            _problem(
                registration,
                f"option {option!r} gets no flag ({why}); set it as --cluster-arg {option}=VALUE",
            )

        command = fit_command(name, clusterer, refuse=no_flag)
        app.command(name, help=_help(clusterer), hidden=hidden)(command)
    _added.add(name)


def _help(clusterer: type[Clusterer]) -> str:
    text = inspect.getdoc(clusterer) or f"Fit the {clusterer.name} clusterer."
    if "Example:" not in text:
        text += f"\n\nExample: xelm cluster {clusterer.name} CORPUS -k 4 -o alloc/"
    return text


def fit_command(
    name: str, clusterer: type[Clusterer], refuse: Callable[[str, str], None] | None = None
) -> Callable[..., None]:
    """``xelm cluster NAME``: the request's flags (DATA read with ``xelm data prepare``'s
    flags), one flag per declared option and ``--cluster-arg KEY=VALUE``; fits, then prints
    the allocation like ``xelm cluster show``. An option whose flag is malformed or one of the
    command's own gets no flag: ``refuse(option, why)`` is told (see ``typer_parameters``)."""

    def command(
        data: Annotated[
            str | None,
            typer.Argument(
                metavar="DATA",
                help="Corpus (.jsonl[.zst]/.txt files or a directory), a dataset (Hub id "
                "owner/name, or a local directory laid out like one: streamed) or a corpus "
                "recipe (a file, or a name from `xelm data recipes`); clusterers of languages "
                "(typology) take none.",
                show_default=False,
            ),
        ] = None,
        langs: Annotated[
            str | None,
            typer.Option(
                "--langs",
                help="Comma-separated language codes, e.g. ar,bg,de,en: the languages to "
                "allocate (default: every language in DATA).",
            ),
        ] = None,
        k: Annotated[
            int | None,
            typer.Option(
                "-k",
                help="Number of experts"
                + (f". \\[default: {clusterer.default_k}]" if clusterer.default_k else "."),
                show_default=False,
            ),
        ] = None,
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Allocation to write (must not exist).")
        ] = ...,  # type: ignore[assignment]
        seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
        force: ForceOpt = False,
        cluster_arg: Annotated[
            list[str] | None,
            typer.Option(
                "--cluster-arg",
                metavar=PAIRS_METAVAR,
                help="Clusterer option KEY=VALUE (repeatable); the same options as the flags.",
            ),
        ] = None,
        as_json: JsonOpt = False,
        **flags: Any,
    ) -> None:
        if k is None:
            if clusterer.default_k is None:
                raise UsageError(f"xelm cluster {name} needs -k N, the number of experts")
            k = clusterer.default_k
        options = with_flags(
            parse_pairs(cluster_arg or [], "--cluster-arg"),
            given(flags, clusterer),
            clusterer,
            "--cluster-arg",
        )
        request = cluster_request(
            clusterer,
            k=k,
            output=output,
            languages=langs or (),
            data=data,
            seed=seed,
            overwrite=force,
            options=options,
            reading=reading_from_flags(flags),
        )
        allocation = fit(clusterer, request)
        if as_json:
            print_json(fit_summary(clusterer, allocation))
            return
        console = Console(soft_wrap=True)
        _print_tables(allocation, console)
        console.print(
            f"wrote {allocation.path}: {allocation.k} {name} experts", markup=False, highlight=False
        )

    command.__name__ = f"cluster_{name.replace('-', '_').replace(':', '__')}"
    reading = reading_parameters(hidden=not clusterer.reads_data)  # refused: cluster_request
    taken = command_flags(with_parameters(command, reading))
    extra = typer_parameters(clusterer, skip=REQUEST_PARAMETERS, taken=taken, refuse=refuse)
    return with_parameters(command, extra + reading)


def fit_summary(clusterer: type[Clusterer], allocation: Allocation) -> dict[str, Any]:
    """What ``xelm cluster NAME --json`` prints: ``xelm cluster show``'s summary, the digest,
    and the clusterer's own members (``Clusterer.summary``)."""
    return {
        **allocation_summary(allocation),
        "digest": allocation.digest,
        **clusterer.summary(allocation),
    }


def _print_tables(allocation: Allocation, console: Console) -> None:
    experts = Table(title=f"{allocation.path} ({allocation.clusterer}, k={allocation.k})")
    experts.add_column("expert", justify="right")
    experts.add_column("languages")
    for index, langs in enumerate(allocation.experts):
        experts.add_row(str(index), ", ".join(langs) or "-")
    print_whole(console, experts)
    languages, matrix, has_shares = allocation_matrix(allocation)
    if not has_shares:
        return
    purity = matrix.max(axis=1)
    shares = Table(
        title="share of each language's documents per expert",
        caption=f"mean purity {purity.mean():.2f} (purity: a language's largest share; "
        f"1 = one expert, {1 / allocation.k:.2f} = spread evenly)",
    )
    shares.add_column("language")
    for index in range(allocation.k):
        shares.add_column(f"e{index}", justify="right")
    shares.add_column("purity", justify="right")
    for lang, row, pure in zip(languages, matrix, purity, strict=True):
        best = int(row.argmax())
        cells = [
            f"[bold]{value:.0%}[/]" if i == best else f"{value:.0%}" for i, value in enumerate(row)
        ]
        shares.add_row(lang, *cells, f"{pure:.2f}")
    print_whole(console, shares)


@app.command()
def show(
    allocation_path: Annotated[
        Path, typer.Argument(metavar="ALLOC", help="Allocation file or directory.")
    ],
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write heatmap.png (and dendrogram.png for a tree) here."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the languages of each expert and, for TF-IDF, each language's share per expert.

    Example: xelm cluster show alloc-tfidf/ --plot plots/
    """
    if plot is not None:  # before the allocation is read: a refused folder prints nothing
        check_plot_folder(plot, [allocation_path])
    allocation = read_allocation(allocation_path)
    allocation.check_arrays()  # what it shows holds only if the fitted arrays are intact
    summary = allocation_summary(allocation)
    if plot is not None:
        summary["plots"] = [str(path) for path in write_plots(allocation, plot)]
    if as_json:
        print_json(summary)
        return
    console = Console(soft_wrap=True)
    _print_tables(allocation, console)
    for path in summary.get("plots", []):
        console.print(f"wrote {path}", markup=False)
