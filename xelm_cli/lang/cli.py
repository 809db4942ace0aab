"""``xelm lang``: language codes, their URIEL codes, and typological donor choice."""

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from xelm_cli.common.cli_options import JsonOpt, print_json
from xelm_cli.lang.codes import normalize_language, parse_language_list
from xelm_cli.lang.info import language_info
from xelm_cli.lang.typology import (
    DEFAULT_FEATURE_SET,
    feature_set_name,
    rank_donors,
    uriel_code,
)

app = typer.Typer(
    help="Languages: normalised codes, URIEL codes, typologically nearest donors.\n\n"
    "Example: xelm lang nearest az --among ar,tr,ru,en",
    no_args_is_help=True,
)

FeaturesOpt = Annotated[
    str,
    typer.Option(
        "--features",
        help="lang2vec feature set: syntax (syntax_average, the default), phonology, "
        "inventory, family (fam), geo, or any lang2vec name such as syntax_knn.",
    ),
]


@app.command()
def nearest(
    lang: Annotated[str, typer.Argument(help="The new language, e.g. az.", show_default=False)],
    among: Annotated[
        str, typer.Option("--among", help="Candidate donors, comma-separated, e.g. ar,tr,ru,en.")
    ],
    features: FeaturesOpt = DEFAULT_FEATURE_SET,
    every_feature: Annotated[
        bool,
        typer.Option(
            "--no-minimal",
            help="Keep the features that do not vary across LANG and --among (by default "
            "they are dropped, so distances depend on the candidates; with this they do not).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rank candidate donor languages by typological distance to LANG, nearest first.

    The distance is the cosine distance over the URIEL features both languages have.

    Example: xelm lang nearest az --among ar,tr,ru,en --features syntax
    """
    feature_set = feature_set_name(features)
    target = normalize_language(lang)
    ranked = rank_donors(target, parse_language_list(among), feature_set, not every_feature)
    rows: list[dict[str, Any]] = [
        {"language": code, "uriel": uriel_code(code, feature_set), "distance": distance}
        for code, distance in ranked
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("rank", "language", "URIEL", "distance")
    for rank, row in enumerate(rows, start=1):
        table.add_row(str(rank), row["language"], row["uriel"], f"{row['distance']:.4f}")
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(
        f"{target} ({uriel_code(target, feature_set)}): nearest donor {rows[0]['language']} "
        f"by {feature_set}",
        markup=False,
        highlight=False,
    )


@app.command()
def info(
    code: Annotated[str, typer.Argument(help="A language code, e.g. ar or arb.")],
    features: FeaturesOpt = DEFAULT_FEATURE_SET,
    as_json: JsonOpt = False,
) -> None:
    """Show a language code's normalised tag, name, ISO 639-3 code, and what lang2vec (URIEL)
    holds for it in a feature set: the code it is held under, how many of the set's features
    have a value, and for the family set its family tree.

    Example: xelm lang info ar --features family
    """
    details = language_info(code, features)
    if as_json:
        print_json(details)
        return
    meaning = {
        "alpha3": "ISO 639-3 code",
        "features": "lang2vec feature set",
        "uriel": "lang2vec's code for it in this set",
        "known": "features of the set with a value",
        "family": "language family, outermost first",
    }
    table = Table(show_header=False, box=None)
    for key, value in details.items():
        table.add_row(key, str(value), meaning.get(key, ""))
    Console(soft_wrap=True).print(table)
