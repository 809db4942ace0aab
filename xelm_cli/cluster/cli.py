"""``xelm cluster``: one command per registered clusterer, plus ``show``."""

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from xelm_cli.cluster.allocation import Allocation, read_allocation
from xelm_cli.cluster.fitting import READING_PARAMETERS, cluster_request, fit
from xelm_cli.common.atomic import atomic_file
from xelm_cli.common.cli_options import ForceOpt, JsonOpt, print_json, print_whole
from xelm_cli.common.errors import (
    FormatError,
    PluginError,
    UsageError,
    XelmError,
    exception_line,
)
from xelm_cli.common.outputs import check_replaceable, has_magic
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
    flag: each is a problem of its plugin (spec/plugin-api.md 4), never the end of the CLI."""
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
    return {**_summary(allocation), "digest": allocation.digest, **clusterer.summary(allocation)}


def allocation_matrix(allocation: Allocation) -> tuple[list[str], np.ndarray, bool]:
    """Languages, the language x expert matrix, and whether it holds document shares
    (``language_shares``) rather than 0/1 membership from the experts' languages."""
    shares = allocation.raw.get("language_shares")
    if isinstance(shares, dict) and shares:
        languages = sorted(shares)
        try:
            matrix = np.array([shares[lang] for lang in languages], dtype=np.float64)
        except (TypeError, ValueError):
            raise FormatError(f"{allocation.path}: 'language_shares' must map to numbers") from None
        if matrix.shape != (len(languages), allocation.k):
            raise FormatError(
                f"{allocation.path}: 'language_shares' rows need {allocation.k} values"
            )
        return languages, matrix, True
    languages = allocation.languages
    matrix = np.zeros((len(languages), allocation.k))
    for expert, langs in enumerate(allocation.experts):
        for lang in langs:
            matrix[languages.index(lang), expert] = 1.0
    return languages, matrix, False


def _summary(allocation: Allocation) -> dict[str, Any]:
    languages, matrix, has_shares = allocation_matrix(allocation)
    summary: dict[str, Any] = {
        "path": str(allocation.path),
        "clusterer": allocation.clusterer,
        "k": allocation.k,
        "experts": [{"index": i, "languages": langs} for i, langs in enumerate(allocation.experts)],
    }
    if has_shares:
        summary["language_shares"] = {
            lang: row.tolist() for lang, row in zip(languages, matrix, strict=True)
        }
        summary["language_purity"] = dict(zip(languages, matrix.max(axis=1).tolist(), strict=True))
        summary["mean_purity"] = round(float(matrix.max(axis=1).mean()), 6)  # not 0.834127000001
    return summary


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


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_heatmap(allocation: Allocation, path: Path) -> None:
    """The language x expert allocation (the paper's Figure 5)."""
    import matplotlib.pyplot as plt

    languages, matrix, has_shares = allocation_matrix(allocation)
    height = max(2.5, 0.3 * len(languages) + 1.2)
    figure, axes = plt.subplots(figsize=(max(3.5, 0.55 * allocation.k + 2.5), height))
    image = axes.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(allocation.k), [str(i) for i in range(allocation.k)])
    axes.set_yticks(range(len(languages)), languages)
    axes.set_xlabel("expert")
    axes.set_ylabel("language")
    axes.set_title(f"{allocation.clusterer} allocation, k={allocation.k}")
    label = "share of the language's documents" if has_shares else "language in expert"
    figure.colorbar(image, ax=axes, label=label)
    _save_figure(figure, path)
    plt.close(figure)


def tree_linkage(allocation: Allocation) -> tuple[list[str], np.ndarray] | None:
    """The typology tree as (leaf labels, scipy linkage matrix), or None when there is none."""
    tree = allocation.raw.get("tree")
    if not isinstance(tree, dict):
        return None
    leaves, linkage = tree.get("leaves"), tree.get("linkage")
    try:
        matrix = np.asarray(linkage, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"{allocation.path}: 'tree.linkage' must be a number matrix") from None
    if matrix.size == 0:  # one leaf: no merges, and [] reads as shape (0,)
        matrix = matrix.reshape(0, 4)
    if not isinstance(leaves, list) or matrix.shape != (len(leaves) - 1, 4):
        raise FormatError(
            f"{allocation.path}: 'tree' needs 'leaves' (n languages) and an (n-1) x 4 'linkage'"
        )
    from scipy.cluster.hierarchy import is_valid_linkage

    if len(leaves) > 1 and not is_valid_linkage(matrix):
        raise FormatError(f"{allocation.path}: 'tree.linkage' is not a scipy linkage matrix")
    return [str(leaf) for leaf in leaves], matrix


def _by_round(linkage: np.ndarray, n_leaves: int) -> np.ndarray:
    """The linkage with each merge's height set to its round (1 + the higher child's round).

    The greedy pairing can merge at a smaller distance in a later round, so heights drawn as
    distances would cross; rounds always rise, and the distances stay in the allocation.
    """
    rounds = np.zeros(n_leaves + len(linkage))
    result = linkage.copy()
    for j, (a, b, _, _) in enumerate(linkage):
        rounds[n_leaves + j] = 1 + max(rounds[int(a)], rounds[int(b)])
        result[j, 2] = rounds[n_leaves + j]
    return result


def plot_dendrogram(allocation: Allocation, path: Path) -> bool:
    """The typology tree; False (nothing written) when the allocation has no tree, or one of
    a single language (nothing to draw)."""
    found = tree_linkage(allocation)
    if found is None or len(found[0]) < 2:
        return False
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from scipy.cluster.hierarchy import dendrogram

    leaves, linkage = found
    figure, axes = plt.subplots(figsize=(max(4.0, 0.45 * len(leaves) + 1.5), 4.0))
    dendrogram(_by_round(linkage, len(leaves)), labels=leaves, ax=axes, color_threshold=0)
    axes.set_title(f"typology tree ({len(leaves)} languages)")
    axes.set_ylabel("merge round")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _save_figure(figure, path)
    plt.close(figure)
    return True


PLOTS = ("heatmap.png", "dendrogram.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_plot_folder(directory: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse, in one line, a --plot folder the plots must not be written to: a file, a folder
    inside a bundle or inside the allocation (``inputs``), or one whose heatmap.png /
    dendrogram.png is not a plot (a folder, another file): only those two files are written,
    each replacing an earlier plot."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(
            f"--plot {directory} is a file, not a folder: give a folder for the plots "
            "(heatmap.png, dendrogram.png), e.g. --plot plots/"
        )
    for name in PLOTS:
        check_replaceable(
            directory / name,
            overwrite=True,
            inputs=inputs,
            own=lambda path: has_magic(path, PNG_MAGIC),
            kind="a PNG plot",
            folder=False,
            what="a plot",
        )


def write_plots(allocation: Allocation, directory: Path) -> list[Path]:
    import matplotlib

    check_plot_folder(directory, [allocation.path])
    matplotlib.use("Agg")
    tree_linkage(allocation)  # refuse a malformed tree before writing anything
    allocation_matrix(allocation)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--plot {directory}: cannot make the folder ({exc.strerror or exc}); "
            "give another folder"
        ) from None
    written = [directory / "heatmap.png"]
    plot_heatmap(allocation, written[0])
    if plot_dendrogram(allocation, directory / "dendrogram.png"):
        written.append(directory / "dendrogram.png")
    return written


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
    summary = _summary(allocation)
    if plot is not None:
        summary["plots"] = [str(path) for path in write_plots(allocation, plot)]
    if as_json:
        print_json(summary)
        return
    console = Console(soft_wrap=True)
    _print_tables(allocation, console)
    for path in summary.get("plots", []):
        console.print(f"wrote {path}", markup=False)
