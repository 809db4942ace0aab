"""Text -> terms, the first step of the TF-IDF embedding (normative text: spec/allocation-tfidf.md).

The analyzer is ours, not scikit-learn's, so that a saved allocation can be re-applied by any
implementation: lower-case, split into word tokens (runs of word characters and combining marks),
map tokens that start with a digit to one number token, optionally cut Chinese/Japanese/Thai runs
(which have no spaces) into character n-grams, drop stop words, join word n-grams.
"""

import functools
import itertools
import re
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

NUMBER_TOKEN = "#NUMBER"
SEGMENTERS = ("cjk", "none")

# Scripts written without spaces between words, cut into character n-grams by `segment="cjk"`.
SEGMENTED_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0E00, 0x0E7F, "Thai"),
    (0x3005, 0x3005, "ideographic iteration mark"),
    (0x3040, 0x309F, "Hiragana"),
    (0x30A0, 0x30FF, "Katakana"),
    (0x31F0, 0x31FF, "Katakana phonetic extensions"),
    (0x3400, 0x4DBF, "CJK unified ideographs extension A"),
    (0x4E00, 0x9FFF, "CJK unified ideographs"),
    (0xF900, 0xFAFF, "CJK compatibility ideographs"),
    (0xFF66, 0xFF9F, "halfwidth Katakana"),
    (0x20000, 0x323AF, "CJK unified ideographs extensions B-H, compatibility supplement"),
)


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in ranges
    )


@functools.cache
def _mark_class() -> str:
    """Every combining mark (categories Mn, Mc, Me) as a regex class body, e.g. Hindi vowel
    signs, which Python's ``\\w`` leaves out and would otherwise cut words apart."""
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)).startswith("M"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return _char_class(ranges)


@functools.cache
def _token_regex(segment: bool) -> re.Pattern[str]:
    marks = _mark_class()
    if not segment:
        return re.compile(f"[\\w{marks}]+")
    seg = _segmented_class()
    # Group 1: a run of unsegmented script; otherwise a word without any such character.
    return re.compile(f"([{seg}]+)|(?:(?![{seg}])[\\w{marks}])+")


def _segmented_class() -> str:
    return _char_class((lo, hi) for lo, hi, _ in SEGMENTED_RANGES)


@functools.cache
def _segmented_regex() -> re.Pattern[str]:
    return re.compile(f"[{_segmented_class()}]")


@dataclass(frozen=True)
class AnalyzerSettings:
    """Everything that decides which terms a text yields (saved in the allocation)."""

    lowercase: bool = True
    segment: str = "cjk"  # "cjk": character n-grams for SEGMENTED_RANGES; "none": whole runs
    segment_ngram: int = 2
    min_token_chars: int = 2
    number_token: str = NUMBER_TOKEN
    ngram_range: tuple[int, int] = (1, 1)
    stop_words: frozenset[str] = field(default=frozenset(), repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["stop_words"]  # stored as an array, it can be thousands of words
        data["ngram_range"] = list(self.ngram_range)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], stop_words: Iterable[str]) -> "AnalyzerSettings":
        low, high = data["ngram_range"]
        return cls(
            lowercase=bool(data["lowercase"]),
            segment=str(data["segment"]),
            segment_ngram=int(data["segment_ngram"]),
            min_token_chars=int(data["min_token_chars"]),
            number_token=str(data["number_token"]),
            ngram_range=(int(low), int(high)),
            stop_words=frozenset(stop_words),
        )


def char_ngrams(run: str, n: int) -> list[str]:
    """Overlapping character n-grams of ``run``; a run shorter than ``n`` is one term."""
    if len(run) <= n:
        return [run]
    return [run[i : i + n] for i in range(len(run) - n + 1)]


class Analyzer:
    """Callable text -> list of terms; usable as ``TfidfVectorizer(analyzer=...)``."""

    def __init__(self, settings: AnalyzerSettings) -> None:
        if settings.segment not in SEGMENTERS:
            raise ValueError(f"segment must be one of {', '.join(SEGMENTERS)}")
        self.settings = settings
        self._regex = _token_regex(settings.segment == "cjk")
        self._words = _token_regex(False)
        self._segmented = _segmented_regex() if settings.segment == "cjk" else None

    def tokens(self, text: str) -> list[str]:
        """Word tokens and segment n-grams, numbers mapped and stop words dropped."""
        s = self.settings
        if s.lowercase:
            text = text.lower()
        tokens: list[str] = []
        pieces: Iterable[tuple[str | None, str]]
        if self._segmented is not None and self._segmented.search(text):
            pieces = ((match.group(1), match.group(0)) for match in self._regex.finditer(text))
        else:  # no run to segment: the same words in 0.70-0.76x the time, without a lookahead
            pieces = zip(itertools.repeat(None), self._words.findall(text), strict=False)
        for run, token in pieces:
            if run:
                tokens.extend(char_ngrams(run, s.segment_ngram))
                continue
            if token[0].isdecimal():
                tokens.append(s.number_token)
            elif len(token) >= s.min_token_chars:
                tokens.append(token)
        return [t for t in tokens if t not in s.stop_words]

    def __call__(self, text: str) -> list[str]:
        tokens = self.tokens(text)
        low, high = self.settings.ngram_range
        if (low, high) == (1, 1):
            return tokens
        terms: list[str] = []
        for n in range(low, high + 1):
            terms.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        return terms
