"""Corpus material for the tests of several modules: slices and texts of the shared corpus, the
documents an allocation sends to each expert, and a progress callback for ``prepare``."""

import io
import itertools
from pathlib import Path

import zstandard
from conftest import SHARED_DATA, TEST_LANGS

from xelm_cli.cluster.assigning import expert_documents
from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare_work import LanguageCount


def corpus_slice(split: str, lines: int, out: Path) -> Path:
    """The first ``lines`` documents of each test language of ../shared/data/corpus/SPLIT."""
    out.mkdir(parents=True)
    for lang in TEST_LANGS:
        with open(SHARED_DATA / "corpus" / split / f"{lang}.jsonl.zst", "rb") as f:
            reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), "utf-8")
            head = [reader.readline() for _ in range(lines)]
        (out / f"{lang}.jsonl").write_text("".join(head), encoding="utf-8")
    return out


def valid_texts(lang: str, n: int) -> list[str]:
    """The texts of the first ``n`` documents of ../shared/data/corpus/valid/LANG."""
    source = SHARED_DATA / "corpus" / "valid" / f"{lang}.jsonl.zst"
    return [d.text for d in itertools.islice(iter_documents(source), n)]


def documents_by_expert(allocation: Path, corpus: Path) -> dict[int, dict[str, list[str]]]:
    """Expert -> language -> the texts the allocation's assigner sends there, in corpus order
    (blank records aside: prepare keeps no empty document)."""
    documents = [d for d in iter_documents(corpus) if d.text.strip()]
    experts = expert_documents(allocation, 0).assigner.assign(documents)
    out: dict[int, dict[str, list[str]]] = {0: {}, 1: {}}
    for document, expert in zip(documents, experts, strict=True):
        out[int(expert)].setdefault(str(document.language), []).append(document.text)
    return out


class Counting:
    """A progress callback that records each language's document count after each batch and,
    after ``stop_after`` batches, interrupts the run as Ctrl-C does."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.seen: list[tuple[str, int]] = []
        self.stop_after = stop_after

    def __call__(self, lang: str, count: LanguageCount, limit: int | None) -> None:
        self.seen.append((lang, count.documents))
        if self.stop_after is not None and len(self.seen) >= self.stop_after:
            raise KeyboardInterrupt
