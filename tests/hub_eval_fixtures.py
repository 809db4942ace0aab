"""Local stand-ins for the evaluation sets on the Hub (SIB-200, FLORES+, XCOPA, XNLI) and a
mirror holding everything ``xelm data fetch`` reads, with synthetic text per language.

Laid out like the Hub repositories (a README with a ``configs:`` section, data files per
configuration), so ``datasets`` reads them exactly as it reads the Hub; see hub_fixtures.py.
"""

import csv
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from hub_fixtures import c4_like, write_readme, write_rows

from xelm_cli.data.evalsets import FLORES_PLUS, flores_code

SIB200_CATEGORIES = ("science/technology", "travel", "politics", "sports", "health",
                     "entertainment", "geography")  # fmt: skip
SIB200_SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # split -> file stem

_LATIN = "abcdefghijklmnoprstuvwyz"
_ALPHABETS = {
    "ar": "".join(map(chr, range(0x0627, 0x064B))),
    "ur": "".join(map(chr, range(0x0627, 0x063B))) + "\u06a9\u06af\u06ba\u06be\u06c1\u06d2",
    "he": "".join(map(chr, range(0x05D0, 0x05EB))),
    "bg": "".join(map(chr, range(0x0430, 0x0450))).replace("\u044b", ""),
    "ru": "".join(map(chr, range(0x0430, 0x0450))),
    "el": "".join(map(chr, range(0x03B1, 0x03CA))),
    "hi": "".join(map(chr, range(0x0915, 0x093A))) + "\u093e\u093f\u0940\u0941\u0947\u094b",
    "ja": "".join(map(chr, range(0x3041, 0x3094))),
    "ko": "".join(map(chr, range(0xAC00, 0xAC00 + 400, 7))),
    "zh": "".join(map(chr, range(0x4E00, 0x4E00 + 600, 3))),
    "de": _LATIN + "äöüß",
    "en": _LATIN + "qx",
    "es": _LATIN + "ñáéíóú",
    "fr": _LATIN + "éèàçê",
    "sw": _LATIN.replace("q", ""),
    "tr": _LATIN + "çğışöü",
    "vi": _LATIN + "ăâđêôơưạảấầ",
    "pl": _LATIN + "ąćęłńóśźż",
    "sv": _LATIN + "åäö",
    "az": _LATIN + "çəğıöşü",
}
_SPACELESS = {"ja", "zh"}


def synthetic_texts(language: str, count: int, sentences: int = 3) -> list[str]:
    """``count`` documents of made-up words in ``language``'s script: a fixed vocabulary per
    language drawn with Zipf-like frequencies, so each language has its own statistics."""
    rng = random.Random(f"stand-in-{language}")
    letters = _ALPHABETS[language]
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(300)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    joiner = "" if language in _SPACELESS else " "
    documents = []
    for _ in range(count):
        parts = []
        for _ in range(sentences):
            words = rng.choices(vocabulary, weights, k=rng.randint(6, 14))
            parts.append(joiner.join(words) + ".")
        documents.append(" ".join(parts))
    return documents


def _write_tsv(path: Path, header: Sequence[str], rows: list[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(rows)


def sib200_like(
    root: Path, texts: dict[str, Sequence[str]], *, sizes: tuple[int, int, int] = (7, 2, 5)
) -> Path:
    """A mirror laid out like ``Davlan/sib200``: configuration ``arb_Arab`` (keys of ``texts``
    are xelm codes) with ``data/CONFIG/{train,dev,test}.tsv`` (index_id, category, text) as
    the train, validation and test splits, ``sizes`` rows each, categories in turn."""
    configs = {}
    for language, documents in texts.items():
        config = flores_code(language)
        start = 0
        for stem, size in zip(SIB200_SPLITS.values(), sizes, strict=True):
            ids = range(start, start + size)
            rows = [[i, SIB200_CATEGORIES[i % 7], documents[i % len(documents)]] for i in ids]
            _write_tsv(
                root / "data" / config / f"{stem}.tsv", ["index_id", "category", "text"], rows
            )
            start += size
        configs[config] = {s: f"data/{config}/{stem}.tsv" for s, stem in SIB200_SPLITS.items()}
    write_readme(root, configs, "sib200 stand-in")
    return root


def flores_plus_like(root: Path, texts: dict[str, Sequence[str]]) -> Path:
    """A mirror laid out like ``openlanguagedata/flores_plus``: ``devtest/CONFIG.parquet``
    per language (FLORES+ configuration names, ``cmn_Hans`` for Chinese)."""
    configs = {}
    for language, documents in texts.items():
        config = FLORES_PLUS.config_for(language)
        iso, script = config.split("_")
        rows = [{"id": i, "iso_639_3": iso, "iso_15924": script, "text": t}
                for i, t in enumerate(documents)]  # fmt: skip
        write_rows(root / "devtest" / f"{config}.parquet", rows)
        configs[config] = {"devtest": f"devtest/{config}.parquet"}
    write_readme(root, configs, "flores_plus stand-in")
    return root


def per_language(
    root: Path,
    languages: Sequence[str],
    splits: dict[str, int],
    row: Callable[[list[str], int], dict[str, object]],
    *,
    suffix: str = "parquet",
    title: str = "stand-in",
) -> Path:
    """A mirror with a configuration per language (named by its xelm code) and files
    ``LANG/SPLIT.SUFFIX`` of ``splits[SPLIT]`` rows, row ``i`` (counted across the splits)
    being ``row(sentences, i)`` with six made-up sentences of the language per row."""
    configs = {}
    for language in languages:
        sentences = synthetic_texts(language, 6 * sum(splits.values()), sentences=1)
        files, start = {}, 0
        for split, size in splits.items():
            name = f"{language}/{split}.{suffix}"
            write_rows(root / name, [row(sentences, i) for i in range(start, start + size)])
            files[split] = name
            start += size
        configs[language] = files
    write_readme(root, configs, title)
    return root


def xcopa_like(root: Path, languages: Sequence[str], *, sizes: tuple[int, int] = (4, 6)) -> Path:
    """Laid out like ``cambridgeltl/xcopa``'s parquet: validation and test splits of
    premise/choice1/choice2/question/label rows."""
    return per_language(
        root, languages, {"validation": sizes[0], "test": sizes[1]},
        lambda s, i: {"premise": s[6 * i], "choice1": s[6 * i + 1], "choice2": s[6 * i + 2],
                      "question": ("cause", "effect")[i % 2], "label": i % 2, "idx": i},
        title="xcopa stand-in",
    )  # fmt: skip


def xnli_like(root: Path, languages: Sequence[str], *, size: int = 6) -> Path:
    """Laid out like ``facebook/xnli``: validation and test splits of premise/hypothesis/label
    (0 entailment, 1 neutral, 2 contradiction), as JSON lines."""
    return per_language(
        root, languages, {"validation": size, "test": size},
        lambda s, i: {"premise": s[6 * i], "hypothesis": s[6 * i + 1], "label": i % 3},
        suffix="jsonl", title="xnli stand-in",
    )  # fmt: skip


def xstorycloze_like(
    root: Path, languages: Sequence[str], *, sizes: tuple[int, int] = (3, 5)
) -> Path:
    """Laid out like ``juletxara/xstory_cloze``: train and eval splits of four-sentence
    stories with two endings."""

    def story(s: list[str], i: int) -> dict[str, object]:
        row: dict[str, object] = {"story_id": f"s{i}"}
        row.update({f"input_sentence_{k}": s[6 * i + k - 1] for k in range(1, 5)})
        row.update(sentence_quiz1=s[6 * i + 4], sentence_quiz2=s[6 * i + 5])
        return {**row, "answer_right_ending": 1 + i % 2}

    return per_language(
        root, languages, {"train": sizes[0], "eval": sizes[1]}, story, title="xstory_cloze stand-in"
    )


def fetch_mirror(root: Path, languages: Sequence[str], documents: int = 30) -> Path:
    """Everything ``xelm data fetch`` reads for ``languages``, under ``root/OWNER/NAME``:
    ``allenai/c4`` (mC4's codes: ``en-multi``, ``iw``) and ``Davlan/sib200``."""
    texts = {language: synthetic_texts(language, documents) for language in languages}
    mc4_codes = {"en": "en-multi", "he": "iw"}
    c4_like(root / "allenai" / "c4",
            {mc4_codes.get(lang, lang): docs for lang, docs in texts.items()},
            validation=5)  # fmt: skip
    sentences = {lang: [s for d in docs for s in d.split(". ")] for lang, docs in texts.items()}
    sib200_like(root / "Davlan" / "sib200", sentences)
    return root


def belebele_rows(language: str, count: int) -> list[dict[str, object]]:
    """Belebele items (the release's columns) of made-up text."""
    words = synthetic_texts(language, 6 * count, sentences=1)
    return [
        {"link": f"u{i}", "question_number": 1, "flores_passage": words[6 * i],
         "question": words[6 * i + 1],
         **{f"mc_answer{k}": words[6 * i + 1 + k] for k in range(1, 5)},
         "correct_answer_num": str(1 + i % 4), "dialect": flores_code(language)}
        for i in range(count)
    ]  # fmt: skip


def belebele_like(root: Path, languages: Sequence[str], count: int = 6) -> Path:
    """A mirror laid out like ``facebook/belebele``: ``data/CONFIG.jsonl`` per language
    (FLORES-style configurations), one test split."""
    configs = {}
    for language in languages:
        config = flores_code(language)
        write_rows(root / "data" / f"{config}.jsonl", belebele_rows(language, count))
        configs[config] = {"test": f"data/{config}.jsonl"}
    write_readme(root, configs, "belebele stand-in")
    return root
