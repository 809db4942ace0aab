"""Pass 2 of ``xelm data prepare``: each output's shards, from what the work directory holds,
every language cut down to its budget (a seeded random subset of whole documents, in corpus
order) where it is over it."""

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.data.budgets import (
    language_budgets,
    read_limit,
    read_limits,
    select_documents,
    shortfall,
    unrounded_read_limits,
)
from xelm_cli.data.prepare_work import RepeatedByARerun, ReusedByARerun, WorkDirectory
from xelm_cli.data.shards import OFFSETS_DTYPE, offsets_file, tokens_file, write_array
from xelm_cli.data.source_plan import SourcePlan


def shortfall_under(
    tokens: dict[str, int], reached: set[str], options: dict[str, Any], *, made_up: bool = True
) -> int | None:
    """``shortfall`` of languages holding ``tokens``, ``reached`` those read to their limit,
    under a manifest's ``options``. With sizes, the languages ``reached`` were read to the
    limits that the others' tokens give (``made_up``: shards of format 1.3 on; before, to their
    first shares). A language of the sizes with no document holds 0."""
    caps, total, sizes = options.get("token_caps"), options.get("tokens"), options.get("sizes")
    held = None
    if sizes and made_up:
        held = {lang: tokens.get(lang, 0) for lang in sizes if lang not in reached}
    limits = unrounded_read_limits(caps, total, sizes=sizes, alpha=options.get("alpha"), held=held)
    read_to = {lang: read_limit(limits, lang) or 0.0 for lang in reached}
    return shortfall(tokens, caps=caps, total=total, read_to=read_to)


@dataclass(frozen=True)
class Held:
    """What the work holds for one output: each language's key, document offsets (mapped from
    the work's offsets files: ``WorkDirectory.close``) and whether it was read to its limit;
    ``who`` names the expert in warnings ("" for a single output)."""

    keys: dict[str, str]
    offsets: dict[str, NDArray[np.uint64]]
    full: dict[str, bool]
    who: str = ""

    @classmethod
    def of(
        cls, work: WorkDirectory, offsets: dict[str, NDArray[np.uint64]], keys: dict[str, str]
    ) -> "Held":
        """The languages of ``keys`` (language -> key) among the work's ``offsets``."""
        return cls(
            keys,
            {lang: offsets[key] for lang, key in keys.items()},
            {lang: work.counts[key].full for lang, key in keys.items()},
        )


def output_budgets(
    held: Held, plan: SourcePlan, options: dict[str, Any]
) -> tuple[dict[str, int], set[str]]:
    """Each language's budget under ``options`` (its manifest's), from the tokens ``held``, and
    the languages read from streamed sources. With sizes and ``--tokens``, a warning names
    those that held less than their share. (Without sizes, the streamed languages whose read
    limit stands in for their size were named before reading: ``warn_unsized``.)"""
    caps, alpha, tokens, sizes = (
        options.get(k) for k in ("token_caps", "alpha", "tokens", "sizes")
    )
    counts = {lang: int(o[-1]) for lang, o in held.offsets.items()}
    budgets = language_budgets(counts, caps=caps, alpha=alpha, total=tokens, sizes=sizes)
    streamed = plan.streamed_languages(counts)
    cut = sorted(lang for lang in streamed if held.full[lang])
    if sizes is not None and tokens is not None:
        limits = read_limits(caps, tokens, sizes=sizes, alpha=alpha)
        short = [
            lang for lang in sorted(streamed) if lang not in cut and counts[lang] < limits[lang]
        ]
        if short:
            missing = shortfall_under(counts, set(cut), options) or 0
            shares = {lang: (counts[lang], limits[lang]) for lang in short}
            _warn_short_of_share(shares, missing, held.who)
    return budgets, streamed


def _warn_short_of_share(short: dict[str, tuple[int, int]], missing: int, who: str) -> None:
    """Streamed languages that held fewer tokens than their share of ``--tokens`` (``short``:
    language -> tokens held, share) are kept whole and the others read further in their place;
    ``missing``: the tokens the others could not make up (the shortfall; whole documents aside,
    which leave each share a little short too)."""
    held = ", ".join(f"{lang} {n:,} of {share:,}" for lang, (n, share) in short.items())
    their = "its" if len(short) == 1 else "their"
    made_up = (
        f"the others could not make up {missing:,} tokens of it (read to their end or --cap)"
        if missing
        else f"the other languages read further in {their} place"
    )
    sys.stderr.write(
        f"xelm: warning: {who}{', '.join(short)} held fewer tokens than {their} share of --tokens "
        f"by --sizes ({held}): kept whole, {made_up}\n"
    )


SUBSAMPLE_TOKENS = 1 << 24  # tokens gathered per step when cutting a language down


def _subsample(
    work: Path,
    out: Path,
    lang: str,
    offsets: NDArray[np.uint64],
    keep: NDArray[np.int64],
    dtype: Any,
    key: str,
) -> NDArray[np.uint64]:
    """Write ``lang``'s documents ``keep`` from ``work`` (its files under ``key``) to ``out``;
    return their offsets. Memory stays bounded by the documents kept: only their offsets are
    read from ``offsets`` (a memory map), and documents are gathered a slice of
    ``SUBSAMPLE_TOKENS`` at a time."""
    starts = np.asarray(offsets[:-1][keep], dtype=np.int64)
    lengths = np.asarray(offsets[1:][keep], dtype=np.int64) - starts
    new_offsets = np.zeros(len(keep) + 1, dtype=OFFSETS_DTYPE)
    np.cumsum(lengths, out=new_offsets[1:])
    tokens = np.memmap(work / tokens_file(key), dtype=dtype, mode="r")
    with open(out / tokens_file(lang), "wb") as f:
        first = 0
        while first < len(keep):
            # the documents that end within SUBSAMPLE_TOKENS of this slice's start (at least one)
            limit = new_offsets[first] + np.uint64(SUBSAMPLE_TOKENS)
            ending = int(np.searchsorted(new_offsets, limit, side="right")) - first - 1
            last = first + max(1, ending)
            part_lengths = lengths[first:last]
            shift = starts[first:last] - (np.cumsum(part_lengths) - part_lengths)
            index = np.arange(int(part_lengths.sum()), dtype=np.int64)
            index += np.repeat(shift, part_lengths)
            f.write(np.ascontiguousarray(tokens[index]).data)
            first = last
    del tokens
    write_array(out / offsets_file(lang), new_offsets)
    return new_offsets


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def finish(
    work: WorkDirectory,
    out: Path,
    held: Held,
    budgets: dict[str, int],
    *,
    seed: int,
    streamed: set[str],
) -> dict[str, dict[str, Any]]:
    """Pass 2: each language ``held`` into ``out``, cut down to its budget where over it; the
    manifest's per-language entries."""
    entries = {}
    for lang, full in held.offsets.items():
        key = held.keys[lang]
        source_tokens, source_documents = int(full[-1]), len(full) - 1
        kept = full
        if budgets[lang] < source_tokens:
            lengths = np.diff(full).view(np.int64)  # one array of every length, not two
            keep = select_documents(lengths, budgets[lang], seed=seed, language=lang)
            if len(keep) == 0:
                message = (
                    f"a budget of {budgets[lang]} tokens leaves no whole document in {lang}; "
                    "raise --cap / --tokens or drop it with --langs"
                )
                if streamed:  # read to limits that are part of the work's key: it is not
                    raise RepeatedByARerun(message)  # reused by other limits
                raise ReusedByARerun(message, "a rerun with a higher --cap / --tokens")
            kept = _subsample(work.path, out, lang, full, keep, work.dtype, key)
        else:  # links, not moves: a run killed now still finds the files to resume from (a
            # rerun writes its offsets afresh under another name: these stay as they are)
            _link_or_copy(work.path / tokens_file(key), out / tokens_file(lang))
            _link_or_copy(work.path / offsets_file(key), out / offsets_file(lang))
        entries[lang] = {
            "documents": len(kept) - 1,
            "tokens": int(kept[-1]),
            "source_documents": source_documents,
            "source_tokens": source_tokens,
            "budget": budgets[lang] if budgets[lang] < source_tokens else None,
        }
        if lang in streamed:
            entries[lang]["read_to_limit"] = held.full[lang]
    return entries


__all__ = ["SUBSAMPLE_TOKENS", "Held", "finish", "output_budgets", "shortfall_under"]
