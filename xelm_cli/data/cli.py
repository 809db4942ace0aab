"""``xelm data``: tokenise corpora into shards, train tokenizers, inspect shards."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from xelm_cli.common.cli_options import (
    PROSE_WIDTH,
    ForceOpt,
    JsonOpt,
    OutDirOpt,
    print_json,
    print_whole,
)
from xelm_cli.common.digest import short
from xelm_cli.common.errors import IntegrityError, UsageError
from xelm_cli.common.progress import language_progress, stderr_console
from xelm_cli.common.units import parse_token_count
from xelm_cli.data.budgets import parse_caps, parse_sizes
from xelm_cli.data.prepare import (
    ALL_EXPERTS,
    DEFAULT_BATCH_SIZE,
    MIN_BATCH_SIZE,
    prepare,
    prepare_experts,
    token_shortfall,
)
from xelm_cli.data.reading_flags import reading_from_flags, reading_parameters
from xelm_cli.data.recipes import load_recipe, shipped_recipes
from xelm_cli.data.shards import Shards
from xelm_cli.data.sources import FileSource
from xelm_cli.data.tokenizer import (
    DEFAULT_CHARS_PER_LANGUAGE,
    MIN_VOCAB_SIZE,
    train_tokenizer_on_corpus,
)
from xelm_cli.lang.codes import parse_language_list
from xelm_cli.plugin.options import with_parameters

app = typer.Typer(
    help="Corpora: tokenise them into per-language shards, train tokenizers.\n\n"
    "Example: xelm data prepare ../shared/data/corpus/train --tokenizer seed/ -o shards/",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)

SourceArg = Annotated[
    str,
    typer.Argument(
        metavar="SOURCE",
        help="What to read: a corpus (.jsonl / .json / .ndjson / .txt file, plain, .zst or "
        ".gz, or a directory of them; a save_to_disk "
        "dataset), a dataset (Hub id owner/name, or a local directory laid out like one: "
        "streamed), or a corpus recipe (a recipe file, or a name from `xelm data recipes`).",
        show_default=False,
    ),
]
LangsOpt = Annotated[
    str | None, typer.Option("--langs", help="Only these languages, comma-separated: en,tr.")
]


def _shards_summary(shards: Shards) -> dict[str, Any]:
    m = shards.manifest
    return {
        "path": str(shards.path),
        "digest": shards.digest,
        "dtype": m["dtype"],
        "tokenizer": m["tokenizer"],
        "source": {k: v for k, v in m["source"].items() if k != "files"},
        "options": m["options"],
        "languages": {
            lang: {k: v for k, v in entry.items() if k != "files"}
            for lang, entry in sorted(m["languages"].items())
        },
        "documents": sum(s.documents for s in shards.stats.values()),
        "tokens": sum(s.tokens for s in shards.stats.values()),
        "shortfall": token_shortfall(m),
    }


def _warn_shortfall(shards: Shards) -> None:
    """One line when the corpus held too few tokens for ``--tokens``."""
    missing = token_shortfall(shards.manifest)
    if not missing:
        return
    options = shards.manifest["options"]
    total = options["tokens"]
    within = " within --cap" if options.get("token_caps") else ""
    languages = shards.manifest["languages"].values()
    if options.get("sizes") and any(entry.get("read_to_limit") for entry in languages):
        within += " within their shares by --sizes"  # some were read only up to their shares
    ceiling = options.get("max_records")
    stopped = sorted(  # streamed languages that the ceiling may have stopped before their limit
        lang
        for lang, entry in shards.manifest["languages"].items()
        if "read_to_limit" in entry and not entry["read_to_limit"]
    )
    if ceiling and stopped:
        line = (
            f"--tokens {total:,} not reached: {total - missing:,} tokens{within} read in "
            f"{', '.join(shards.languages)}; reading stopped at --max-records {ceiling:,} "
            f"records (or its end) in {', '.join(stopped)}: raise --max-records"
        )
    else:
        line = (
            f"--tokens {total:,} not reached: the corpus holds {total - missing:,} "
            f"tokens{within} in {', '.join(shards.languages)}"
        )
    stderr_console.print(f"xelm: warning: {line}", highlight=False, markup=False)


def _language_table(shards: Shards) -> Table:
    table = Table("language", "documents", "tokens", "of corpus tokens", "budget")
    max_records = shards.manifest.get("options", {}).get("max_records")
    for lang, entry in sorted(shards.manifest["languages"].items()):
        source_tokens = entry.get("source_tokens") or entry["tokens"]
        budget = entry.get("budget")
        # a stream read to its limit: a share of what was read, not of the source's tokens
        streamed = "read_to_limit" in entry
        cut = "*" if entry.get("read_to_limit") or (streamed and max_records) else ""
        table.add_row(
            lang,
            f"{entry['documents']:,}",
            f"{entry['tokens']:,}",
            f"{entry['tokens'] / max(source_tokens, 1):.0%}{cut}",
            "-" if budget is None else f"{budget:,}",
        )
        if cut:
            table.caption = (
                "* of the tokens read: reading stopped at the language's token limit (--cap, "
                "--tokens or its --sizes share)"
                + (f" or at {max_records:,} records (--max-records)" if max_records else "")
                + ", so the source may hold more"
            )
    stats = shards.stats.values()
    table.add_row(
        "[bold]all[/]",
        f"{sum(s.documents for s in stats):,}",
        f"{sum(s.tokens for s in stats):,}",
        "",
        "",
    )
    return table


def prepare_command(
    source: SourceArg,
    tokenizer: Annotated[
        Path, typer.Option("--tokenizer", "-t", help="Bundle or tokenizer directory.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Shards directory to write; the same command run again leaves it as it is (up "
            "to date), other shards there are refused unless --force. With --expert: "
            "{expert} stands for the index (shards-{expert}/).",
        ),
    ],
    langs: LangsOpt = None,
    cap: Annotated[
        str | None,
        typer.Option("--cap", help="Token cap per language: 5M for all, or en=5M,de=2M."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="Temperature sampling: language weights s_l**alpha (e.g. 0.3), s_l the "
            "language's --sizes, else its tokens. Without --sizes, a streamed language cut at "
            "its read limit is weighed by the tokens read, not its size (a --cap per language "
            "avoids it too)."
        ),
    ] = None,
    tokens: Annotated[
        str | None, typer.Option("--tokens", help="Total token budget, e.g. 20M.")
    ] = None,
    sizes: Annotated[
        str | None,
        typer.Option(
            "--sizes",
            help="Each language's size in one unit (documents, bytes or tokens: only ratios "
            "count), e.g. en=3.07B,de=397M,sw=1.1M; default: a recipe's documents. The "
            "languages' weights for --alpha / --tokens; with --tokens, a streamed language is "
            "read only up to its share (without it, up to its --cap, else whole).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the document sampling.")] = 0,
    allocation: Annotated[
        Path | None,
        typer.Option(
            help="Keep only the documents this allocation assigns to --expert (a TF-IDF "
            "allocation: each expert trains on its own documents); default --langs: every "
            "language of the allocation.",
        ),
    ] = None,
    expert: Annotated[
        str | None,
        typer.Option(
            metavar="I|all",
            help="The expert of --allocation whose documents to keep; all: every expert's, "
            "reading the corpus once, into -o with {expert} for its index (shards-{expert}/).",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Tokenizer threads (default: one per core).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=MIN_BATCH_SIZE, help="Documents per tokenizer call.")
    ] = DEFAULT_BATCH_SIZE,
    max_records: Annotated[
        str | None,
        typer.Option(
            "--max-records",
            help="Read each streamed dataset for at most about N records, e.g. 2M (to the end "
            "of the --batch-size records that reach them; per language with --config '{lang}' "
            "or a recipe), whatever is kept: bounds the reading where an expert gets a small "
            "share of a language (--allocation).",
        ),
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    **reading: Any,
) -> None:
    """Tokenise a corpus into memory-mappable shards with a per-language index.

    Datasets are streamed: each language stops at its --cap (else --tokens), or with --sizes
    and --tokens at its share of --tokens. A killed or interrupted run continues where it
    stopped when run again; re-running a finished one does nothing.

    Example: xelm data prepare corpus/ --tokenizer seed/ --alpha 0.3 --tokens 20M -o shards/

    Example: xelm data prepare allenai/c4 --config '{lang}' --langs ar,bg,he --lang-map he=iw
    --cap 100M --tokenizer seed/ -o shards/

    Example (a shipped recipe): xelm data prepare mc4 --langs ar,tr --cap 10M -t seed/ -o shards/

    Example (each language read only up to its share of 1B tokens, by its mC4 documents):
    xelm data prepare allenai/c4 --config '{lang}' --langs ar,de,hi --sizes
    ar=53.3M,de=397M,hi=18.5M --alpha 0.3 --tokens 1B -t seed/ -o shards/

    Example (the documents a TF-IDF allocation assigns to expert 0, for `xelm train`):
    xelm data prepare corpus/ --allocation alloc-tfidf/ --expert 0 -t seed/ -o shards-0/

    Example (every expert's documents, the corpus read once: shards-0/, shards-1/, ...):
    xelm data prepare corpus/ --allocation alloc-tfidf/ --expert all -t seed/ -o 'shards-{expert}/'
    """
    every = expert == ALL_EXPERTS
    if every and allocation is None:
        raise UsageError(
            "--expert all needs --allocation: the allocation whose experts' documents to keep "
            "(e.g. --allocation alloc-tfidf/)"
        )
    with language_progress() as progress:
        options: dict[str, Any] = {
            "languages": parse_language_list(langs) if langs else None,
            "token_caps": parse_caps(cap) if cap else None,
            "alpha": alpha,
            "tokens": parse_token_count(tokens, "--tokens") if tokens else None,
            "sizes": parse_sizes(sizes) if sizes else None,
            "seed": seed,
            "reading": reading_from_flags(reading),
            "batch_size": batch_size,
            "max_records": max_records,
            "workers": workers,
            "overwrite": force,
            "progress": progress,
        }
        if every:
            assert allocation is not None
            results = prepare_experts(source, tokenizer, out, allocation=allocation, **options)
        else:
            one = _expert_index(expert)
            result = prepare(source, tokenizer, out, allocation=allocation, expert=one, **options)
            results = [result]
    for result in results:
        _warn_shortfall(result.shards)
    summaries = [{"up_to_date": r.up_to_date, **_shards_summary(r.shards)} for r in results]
    if as_json:
        print_json({"experts": summaries} if every else summaries[0])
        return
    for result in results:
        shards = result.shards
        if result.up_to_date:
            console.print(
                f"{shards.path}: up to date (digest {short(shards.digest)})", markup=False
            )
            continue
        print_whole(console, _language_table(shards))
        console.print(
            f"wrote shards [bold]{escape(str(shards.path))}[/] (digest {short(shards.digest)})"
        )


def _expert_index(text: str | None) -> int | None:
    """``--expert``'s index (None: not given)."""
    if text is None:
        return None
    if not text.isdigit():
        raise UsageError(f"--expert takes an expert's index (0, 1, ...) or all, not {text!r}")
    return int(text)


app.command("prepare")(with_parameters(prepare_command, reading_parameters()))


def tokenizer_command(
    corpus: SourceArg,
    out: OutDirOpt,
    vocab_size: Annotated[int, typer.Option(min=MIN_VOCAB_SIZE, help="Vocabulary size.")] = 32000,
    langs: LangsOpt = None,
    chars_per_language: Annotated[
        int, typer.Option(min=1, help="Characters of training text per language.")
    ] = DEFAULT_CHARS_PER_LANGUAGE,
    seed: Annotated[int, typer.Option(help="Seed of the text sampling.")] = 0,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    **reading: Any,
) -> None:
    """Train a byte-level BPE tokenizer on the same amount of text from every language.

    Corpus files are sampled across the whole corpus. Datasets and recipes are streamed as
    `xelm data prepare` reads them, each language only until it has --chars-per-language.

    Example: xelm data tokenizer ../shared/data/corpus/train --vocab-size 32000 -o tok/

    Example: xelm data tokenizer allenai/c4 --config '{lang}' --langs ar,bg,he --lang-map he=iw
    --chars-per-language 2000000 -o tok/
    """
    with stderr_console.status("training the tokenizer", spinner="dots"):
        trained = train_tokenizer_on_corpus(
            corpus,
            out,
            vocab_size=vocab_size,
            languages=parse_language_list(langs) if langs else None,
            chars_per_language=chars_per_language,
            seed=seed,
            overwrite=force,
            reading=reading_from_flags(reading),
        )
    if trained.short:
        short = ", ".join(f"{k} {v:,}" for k, v in trained.short.items())
        if len(trained.short) == len(trained.characters):
            warning = (
                f"every language has less text than --chars-per-language "
                f"{chars_per_language:,} ({short} characters): the tokenizer trains on all of "
                "it, so each language weighs as much as its text, not equally"
            )
        else:
            warning = (
                f"less text than --chars-per-language {chars_per_language:,} in {short} "
                "characters: the corpus holds no more, so these languages weigh less"
            )
        stderr_console.print(f"xelm: warning: {warning}", highlight=False, markup=False)
    if trained.vocab_size < trained.requested:
        stderr_console.print(
            f"xelm: warning: the tokenizer has {trained.vocab_size:,} tokens, fewer than "
            f"--vocab-size {trained.requested:,}: its text held no more merges (more text a "
            "language, --chars-per-language, gives more)",
            highlight=False,
            markup=False,
        )
    if as_json:
        print_json(
            {
                "path": str(trained.path),
                "vocab_size": trained.vocab_size,
                "requested_vocab_size": trained.requested,
                "chars_per_language": chars_per_language,
                "characters": trained.characters,
                "short": trained.short,
            }
        )
        return
    languages = ", ".join(f"{k} {v:,}" for k, v in trained.characters.items())
    console.print(
        f"wrote tokenizer [bold]{escape(str(trained.path))}[/] "
        f"(characters per language: {languages})"
    )


app.command("tokenizer")(with_parameters(tokenizer_command, reading_parameters()))


@app.command("inspect")
def inspect_command(
    shards_dir: Annotated[Path, typer.Argument(help="Shards directory.", show_default=False)],
    verify: Annotated[
        bool, typer.Option("--verify", help="Also check every file's sha256.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show shards: documents and tokens per language, tokenizer, source and options.

    Example: xelm data inspect shards/ --json
    """
    shards = Shards.open(shards_dir)
    problems = shards.verify() if verify else []
    if as_json:
        extra = {"problems": problems} if verify else {}
        print_json({**_shards_summary(shards), **extra})
    else:
        m = shards.manifest
        about = Table(show_header=False, box=None)
        about.add_column(no_wrap=True)
        about.add_column(overflow="fold")
        for key, value in (
            ("path", str(shards.path)),
            ("format", f"{m['format']} {m['format_version']}, {m['dtype']}"),
            ("digest", shards.digest),
            ("tokenizer", shards.tokenizer_fingerprint),
            ("source", f"{m['source'].get('path')} ({m['source']['digest']})"),
            ("options", json.dumps(m["options"])),
        ):
            about.add_row(f"[bold]{key}[/]", escape(value))
        print_whole(console, about)
        print_whole(console, _language_table(shards))
        for problem in problems:
            console.print(f"[red]FAIL[/] {escape(problem)}", highlight=False)
    if problems:
        raise IntegrityError(f"{shards.path}: {len(problems)} problems found")


def _recipe_summary(name: str) -> dict[str, Any]:
    recipe = load_recipe(name)
    languages: dict[str, dict[str, Any]] = {}
    for lang in recipe.languages:
        entry = recipe.entry(lang)
        source = recipe.source(lang)
        languages[lang] = {
            **({"path": source.path} if isinstance(source, FileSource) else source.options()),
            **{k: entry[k] for k in ("size", "licence") if k in entry},
        }
    return {
        "name": recipe.name,
        "description": recipe.raw.get("description", ""),
        "licence": recipe.raw.get("licence", ""),
        "languages": languages,
    }


@app.command("recipes")
def recipes_command(
    name: Annotated[
        str | None, typer.Argument(help="Show this recipe's sources.", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the corpus recipes that ship with xelm, or show one (a name or a recipe file).

    Example: xelm data recipes mc4
    """
    summaries = [_recipe_summary(name)] if name else [_recipe_summary(n) for n in shipped_recipes()]
    if as_json:
        print_json(summaries[0] if name else summaries)
        return
    if not name:
        # prose wraps, into a pipe too (print_whole keeps lines of names and paths whole)
        table = Table("recipe", "languages", Column("description", max_width=PROSE_WIDTH))
        for summary in summaries:
            table.add_row(
                summary["name"], str(len(summary["languages"])), escape(summary["description"])
            )
        print_whole(console, table)
        return
    summary = summaries[0]
    console.print(f"[bold]{escape(summary['name'])}[/]: {escape(summary['description'])}")
    if summary["licence"]:
        console.print(f"licence: {escape(summary['licence'])}")
    table = Table("language", "source", "size")
    for lang, entry in summary["languages"].items():
        where = entry.get("path") or " ".join(
            str(entry[k]) for k in ("dataset", "config", "split") if k in entry
        )
        table.add_row(lang, escape(where), escape(entry.get("size", "")))
    console.print(table)


from xelm_cli.data.fetch_cli import fetch_command  # noqa: E402 (registered last: its own module)

app.command("fetch")(fetch_command)
