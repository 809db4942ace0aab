"""``xelm data fetch``: the demo's data from the Hugging Face Hub into xelm's cache."""

from pathlib import Path
from typing import Annotated

import typer

from xelm_cli.common.cli_options import JsonOpt, print_json
from xelm_cli.common.progress import byte_progress, stderr_console
from xelm_cli.common.units import parse_byte_size
from xelm_cli.data.fetch import (
    DEFAULT_SIZE,
    DEFAULT_VALID_DOCUMENTS,
    default_data_dir,
    describe_download,
    fetch,
    missing_parts,
    plan_fetch,
)
from xelm_cli.lang.codes import parse_language_list


def fetch_command(
    langs: Annotated[
        str | None,
        typer.Option("--langs", help="Languages, comma-separated (default: the paper's 20)."),
    ] = None,
    size: Annotated[
        str, typer.Option("--size", help="Training text per language, in bytes: 500K, 2M.")
    ] = f"{DEFAULT_SIZE // 1_000_000}M",
    valid_docs: Annotated[
        int, typer.Option("--valid-docs", min=1, help="Held-out documents per language.")
    ] = DEFAULT_VALID_DOCUMENTS,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Data directory (default: $XELM_HOME/data, ~/.cache/xelm/data)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download the data `xelm demo` reads (training and held-out text per language, FLORES
    sentences, SIB-200) from non-gated Hugging Face datasets into xelm's cache.

    Training text is mC4 (allenai/c4), streamed and cut at --size per language; FLORES and
    SIB-200 come from Davlan/sib200. An interrupted fetch continues where it stopped when run
    again; a finished one is not downloaded again. The folder's README names each source and
    licence.

    Example: xelm data fetch --langs en,tr,sw --size 500K
    """
    out = output if output is not None else default_data_dir()
    parts = plan_fetch(
        parse_language_list(langs) if langs else None, parse_byte_size(size, "--size"), valid_docs
    )
    missing = missing_parts(out, parts)
    if missing:
        stderr_console.print(describe_download(missing, out))
    with byte_progress("fetching", sum(p.estimate for p in missing) or None) as advance:
        result = fetch(
            out,
            [part.language for part in parts if part.kind == "train"],
            parse_byte_size(size, "--size"),
            valid_docs,
            progress=advance,
        )
    if as_json:
        print_json(result)
        return
    for key, record in result["parts"].items():
        state = "fetched" if key in result["fetched"] else "present"
        typer.echo(
            f"{key:<12} {record['documents']:>8,} documents {record['bytes'] / 1e6:>8.2f} MB  "
            f"{state}  ({record['source']})"
        )
    typer.echo(f"data: {result['path']}")
