"""Byte-level BPE tokenizers for seeds trained from scratch, saved in the transformers layout."""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from xelm_cli.common.atomic import atomic_directory
from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import Document, iter_documents
from xelm_cli.lang.codes import normalize_language

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
    vocab_size: int
    characters: dict[str, int]  # characters of training text per language


def _documents(source: str | Path, split: str | None, language: str | None) -> Iterator[Document]:
    return iter_documents(source, language=language, split=split, require_language=True)


def _characters_per_language(
    source: str | Path, split: str | None, language: str | None, wanted: set[str] | None
) -> dict[str, int]:
    totals: dict[str, int] = {}
    for doc in _documents(source, split, language):
        if doc.language and (wanted is None or doc.language in wanted):
            totals[doc.language] = totals.get(doc.language, 0) + len(doc.text)
    return totals


def _balanced_texts(
    source: str | Path,
    split: str | None,
    language: str | None,
    keep_rate: dict[str, float],
    used: dict[str, int],
    seed: int,
) -> Iterator[str]:
    """Each document of a kept language with probability ``keep_rate[lang]`` (seeded)."""
    rng = random.Random(seed)
    for doc in _documents(source, split, language):
        rate = keep_rate.get(doc.language or "")
        if rate is not None and doc.text and (rate >= 1.0 or rng.random() < rate):
            used[doc.language or ""] += len(doc.text)
            yield doc.text


def train_tokenizer_on_corpus(
    source: str | Path,
    out: str | Path,
    *,
    vocab_size: int = 32000,
    langs: list[str] | None = None,
    chars_per_language: int = DEFAULT_CHARS_PER_LANGUAGE,
    split: str | None = None,
    language: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> TrainedTokenizer:
    """Train a byte-level BPE on about the same amount of text from every language.

    A first pass counts each language's characters; the second keeps each document with
    probability ``chars_per_language / characters[lang]`` (a seeded draw, spread over the whole
    corpus), so large languages do not take all the merges; languages with less text than that
    are taken whole. ``language`` labels documents that carry no language (a document left
    without one is refused).
    """
    wanted = {normalize_language(code) for code in langs} if langs else None
    if vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(f"--vocab-size must be at least {MIN_VOCAB_SIZE}, not {vocab_size}")
    totals = _characters_per_language(source, split, language, wanted)
    missing = sorted((wanted or set()) - set(totals))
    if not totals or missing:
        what = f"in {', '.join(missing)} " if missing else ""
        raise UsageError(f"no documents {what}in {source}")
    keep_rate = {lang: chars_per_language / max(n, 1) for lang, n in sorted(totals.items())}
    used = dict.fromkeys(keep_rate, 0)
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        texts = _balanced_texts(source, split, language, keep_rate, used, seed)
        train_bpe_tokenizer(texts, tmp, vocab_size=vocab_size)
    return TrainedTokenizer(Path(out), vocab_size, used)
