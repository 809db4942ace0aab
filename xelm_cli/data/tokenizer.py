"""Byte-level BPE tokenizers for seeds trained from scratch, saved in the transformers layout.

Training text comes from corpus files (sampled across the whole corpus) or from datasets and
recipes, streamed like ``xelm data prepare`` reads them and read only until each language has
enough text.
"""

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from xelm_cli.common.atomic import atomic_directory
from xelm_cli.common.errors import UsageError
from xelm_cli.common.outputs import check_replaceable
from xelm_cli.data.sampling import first_records
from xelm_cli.data.source_plan import SourceOptions, SourcePlan, plan_sources
from xelm_cli.data.sources import Source
from xelm_cli.lang.codes import language_codes

DEFAULT_CHARS_PER_LANGUAGE = 1_000_000
MIN_VOCAB_SIZE = 256 + 4  # the byte alphabet and the special tokens

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}


def train_bpe_tokenizer(texts: Iterable[str], out: Path, *, vocab_size: int = 32000) -> Path:
    """Train a byte-level BPE on ``texts`` and save it (tokenizer.json + config) in ``out``.

    Byte-level means every string is encodable; no normaliser, so text round-trips exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS).save_pretrained(out)
    return out


@dataclass(frozen=True)
class TrainedTokenizer:
    path: Path
    vocab_size: int  # tokens it has: fewer than asked for when the text ran out of merges
    requested: int  # the vocabulary size asked for
    characters: dict[str, int]  # characters of training text per language
    short: dict[str, int]  # the languages with less text than asked for: all they have

    def __fspath__(self) -> str:
        """Its directory: ``init_from_config("tiny", train_tokenizer_on_corpus(...), ...)``."""
        return os.fspath(self.path)


def _labelled_texts(files: Source) -> Iterator[tuple[str, str]]:
    """Each document of corpus files (or a ``save_to_disk`` dataset) with its language, read
    as ``xelm data prepare`` reads them: labels in the form the wanted languages name, blank
    documents dropped, files named for other languages unread."""
    for batch in files.open():
        yield from zip(batch.languages, batch.texts, strict=True)


def _characters_per_language(files: Source, wanted: set[str] | None) -> dict[str, int]:
    totals: dict[str, int] = {}
    for lang, text in _labelled_texts(files):
        if wanted is None or lang in wanted:
            totals[lang] = totals.get(lang, 0) + len(text)
    return totals


def _balanced_texts(
    files: Source, keep_rate: dict[str, float], used: dict[str, int], seed: int
) -> Iterator[str]:
    """Each document of a kept language with probability ``keep_rate[lang]`` (seeded)."""
    rng = random.Random(seed)
    for lang, text in _labelled_texts(files):
        rate = keep_rate.get(lang)
        if rate is not None and (rate >= 1.0 or rng.random() < rate):
            used[lang] += len(text)
            yield text


def _streamed_texts(
    plan: SourcePlan, wanted: set[str] | None, chars_per_language: int
) -> tuple[list[str], dict[str, int]]:
    """The first documents of each language of ``plan``'s sources, in stream order, until the
    language has ``chars_per_language`` characters (the document that reaches it included):
    a stream is read only as far as that (``first_records``). Held in memory: at most about
    ``chars_per_language`` characters per language."""
    texts: list[str] = []
    used: dict[str, int] = {}
    for text, lang in first_records(
        plan, wanted, lambda lang: used.get(lang, 0) >= chars_per_language
    ):
        used[lang] = used.get(lang, 0) + len(text)
        texts.append(text)
    return texts, dict(sorted(used.items()))


# what save_pretrained writes for a tokenizer (this one or another transformers version)
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
    }
)


def is_tokenizer_directory(path: Path) -> bool:
    """Whether ``path`` is a tokenizer directory as ``xelm data tokenizer`` writes one (its
    tokenizer.json and the files beside it, nothing else; a bundle is none)."""
    if not path.is_dir() or path.is_symlink() or not (path / "tokenizer.json").is_file():
        return False
    return all(
        entry.name.startswith(".") or (entry.name in TOKENIZER_FILES and entry.is_file())
        for entry in path.iterdir()
    )


def train_tokenizer_on_corpus(
    source: str | Path,
    out: str | Path,
    *,
    vocab_size: int = 32000,
    languages: Sequence[str] | str | None = None,
    chars_per_language: int = DEFAULT_CHARS_PER_LANGUAGE,
    seed: int = 0,
    overwrite: bool = False,
    reading: SourceOptions | None = None,
) -> TrainedTokenizer:
    """Train a byte-level BPE on about the same amount of text from every language.

    A first pass counts each language's characters; the second keeps each document with
    probability ``chars_per_language / characters[lang]`` (a seeded draw, spread over the whole
    corpus), so large languages do not take all the merges; languages with less text than that
    are taken whole (``short`` of the result lists them). ``languages`` is a list or text such as
    ``"en,tr"``. ``reading`` says how to read ``source`` as ``prepare`` takes it; its
    ``language`` labels documents that carry no language (a document left without one is
    refused).

    A dataset (a Hub id or a local directory laid out like one; ``reading.config`` with
    ``{lang}`` reads one configuration per language of ``languages``, see ``prepare``) or a recipe
    is streamed instead, never loaded whole: each language's first documents up to
    ``chars_per_language`` characters (see ``_streamed_texts``).
    """
    chosen = language_codes(languages)
    wanted = set(chosen) if chosen else None
    if vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(f"--vocab-size must be at least {MIN_VOCAB_SIZE}, not {vocab_size}")
    if chars_per_language < 1:
        raise UsageError(f"--chars-per-language must be positive, not {chars_per_language}")
    check_replaceable(  # before the corpus is read
        out,
        overwrite=overwrite,
        inputs=[source],
        own=is_tokenizer_directory,
        kind="a tokenizer",
    )
    plan = plan_sources(source, sorted(wanted) if wanted else None, reading or SourceOptions())
    if wanted is None and plan.recipe is not None:
        wanted = set(plan.sources)
    streamed: list[str] | None = None
    if plan.kind == "files":
        totals = _characters_per_language(plan.sources["corpus"], wanted)
    else:
        streamed, totals = _streamed_texts(plan, wanted, chars_per_language)
    missing = sorted((wanted or set()) - set(totals))
    if not totals or missing:
        what = f"in {', '.join(missing)} " if missing else ""
        raise UsageError(f"no documents {what}in {source}")
    keep_rate = {lang: chars_per_language / max(n, 1) for lang, n in sorted(totals.items())}
    used = dict.fromkeys(keep_rate, 0) if streamed is None else totals
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        texts: Iterable[str] = (
            _balanced_texts(plan.sources["corpus"], keep_rate, used, seed)
            if streamed is None
            else streamed
        )
        train_bpe_tokenizer(texts, tmp, vocab_size=vocab_size)
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(tmp / "tokenizer.json")).get_vocab_size()
    short = {lang: n for lang, n in sorted(totals.items()) if n < chars_per_language}
    return TrainedTokenizer(Path(out), size, vocab_size, used, short)
