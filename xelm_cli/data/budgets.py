"""How many tokens of each language ``xelm data prepare`` keeps and reads: token caps (``--cap``),
sizes known before reading (``--sizes``), budgets from caps and temperature sampling
(``language_budgets``), the seeded choice of whole documents within a budget
(``select_documents``), and how far a streamed source is read (``read_limits``)."""

import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.errors import UsageError
from xelm_cli.common.units import parse_token_count, token_count
from xelm_cli.lang.codes import normalize_language

ALL_LANGUAGES = "*"  # in caps and limits: every language not named
Number = TypeVar("Number", int, float)


def _items(text: str) -> Iterator[tuple[str, str, str]]:
    """``"en=5M, 1M"`` as (item, language or "", value) for each non-blank item."""
    for item in (part.strip() for part in text.split(",")):
        if item:
            lang, _, value = item.rpartition("=")
            yield item, lang.strip(), value


def parse_caps(text: str) -> dict[str, int]:
    """``"5M"`` (every language), ``"en=5M,de=2M"`` or both (``"1M,en=5M"``)."""
    caps = {
        normalize_language(lang) if lang else ALL_LANGUAGES: parse_token_count(
            count, f"--cap {item}"
        )
        for item, lang, count in _items(text)
    }
    if not caps:
        raise UsageError("--cap needs a token count such as 5M or en=5M,de=2M")
    return caps


def parse_sizes(text: str) -> dict[str, float]:
    """``"en=3.07B,de=397M,sw=1.1M"``: each language's size in any one unit."""
    sizes: dict[str, float] = {}
    for item, lang, size in _items(text):
        if not lang:
            raise UsageError(f"--sizes {item}: give LANG=SIZE pairs such as en=3.07B,de=397M")
        sizes[normalize_language(lang)] = _size(size, item)
    if not sizes:
        raise UsageError("--sizes needs LANG=SIZE pairs such as en=3.07B,de=397M,sw=1.1M")
    return sizes


def _size(value: float | str, item: str) -> float:
    way_out = f"--sizes {item}: a size is a positive number such as 3.07B, 397M or 1.1M"
    if isinstance(value, str):
        try:
            return parse_token_count(value)
        except UsageError:
            raise UsageError(way_out) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(way_out)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(way_out)
    return value


def normalise_sizes(
    sizes: Mapping[str, float | str] | str | None,
) -> dict[str, float] | None:
    """``prepare``'s ``sizes`` (text as ``--sizes`` takes it, or a dict) by normalised code,
    sorted."""
    if sizes is None:
        return None
    if isinstance(sizes, str):
        return dict(sorted(parse_sizes(sizes).items()))
    out = {normalize_language(k): _size(v, f"{k}={v}") for k, v in sizes.items()}
    return dict(sorted(out.items()))


def total_budget(tokens: int | str | None) -> int | None:
    """``prepare``'s ``tokens``: an int or text such as ``"20M"``; None: no total budget."""
    return None if tokens is None else token_count(tokens, "--tokens")


def normalise_caps(caps: dict[str, int] | int | str | None) -> dict[str, int] | None:
    """``prepare``'s ``token_caps`` (an int: every language; text as ``--cap`` takes it) by
    normalised code, sorted."""
    if caps is None:
        return None
    if isinstance(caps, str):
        caps = parse_caps(caps)
    if isinstance(caps, int):
        caps = {ALL_LANGUAGES: caps}
    out = {(k if k == ALL_LANGUAGES else normalize_language(k)): int(v) for k, v in caps.items()}
    if any(v < 0 for v in out.values()):
        raise UsageError("token caps must not be negative")
    return dict(sorted(out.items()))


def language_budgets(
    tokens: dict[str, int],
    *,
    caps: dict[str, int] | None = None,
    alpha: float | None = None,
    total: int | None = None,
    sizes: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """How many tokens of each language to keep, given ``tokens`` per language in the corpus.

    Each language is limited to ``u_l = min(n_l, cap_l)``. Without ``alpha`` and ``total`` the
    budget is ``u_l``. Otherwise languages are weighted ``p_l = s_l**alpha / sum(s_k**alpha)``
    (XLM / mT5; ``alpha`` defaults to 1, proportional), ``s_l`` their ``sizes`` (any unit),
    else their tokens ``n_l``, and get ``b_l = min(u_l, lam * p_l)`` with ``lam`` chosen so
    that the budgets add up to ``total`` (or to everything there is, when ``total`` exceeds
    it): tokens a small language cannot supply go to the others in the same proportions.
    Without ``total``, ``lam`` is the largest value at which no language runs out
    (``min u_l / p_l``): the temperature-sampled mixture that repeats no document. A language
    with no tokens gets none. Budgets are rounded down.
    """
    limits = {lang: _capped(n, caps, lang) for lang, n in tokens.items()}
    if alpha is None and total is None:
        return limits
    weights = sizes or tokens
    shares = _shares({lang: weights[lang] for lang, n in tokens.items() if n > 0}, alpha)
    budgets = {lang: 0 for lang in tokens}
    if total is None:
        scale = min(limits[lang] / p for lang, p in shares.items())
        budgets.update({lang: _floor(scale * p, limits[lang]) for lang, p in shares.items()})
    else:
        filled = _water_fill(shares, limits, total)
        budgets.update({lang: _floor(value, limits[lang]) for lang, value in filled.items()})
    return budgets


def _shares(weights: Mapping[str, float], alpha: float | None) -> dict[str, float]:
    """``p_l = w_l**alpha / sum(w_k**alpha)``; ``alpha`` defaults to 1."""
    powered = {lang: float(w) ** (1.0 if alpha is None else alpha) for lang, w in weights.items()}
    norm = sum(powered.values())
    return {lang: w / norm for lang, w in powered.items()}


def _water_fill(shares: dict[str, float], limits: dict[str, int], total: int) -> dict[str, float]:
    """``min(u_l, lam * p_l)`` (not rounded) with ``lam`` such that they add up to ``total``,
    or to every ``u_l`` when ``total`` exceeds their sum."""
    filled: dict[str, float] = {}
    remaining, pending = float(total), sorted(shares, key=lambda lang: limits[lang] / shares[lang])
    while pending:
        lang = pending[0]
        weight = sum(shares[k] for k in pending)
        if limits[lang] > remaining * shares[lang] / weight:  # no language left runs out
            filled.update({k: remaining * shares[k] / weight for k in pending})
            break
        filled[lang] = float(limits[lang])
        remaining -= limits[lang]
        pending.pop(0)
    return filled


def shortfall(
    tokens: dict[str, int],
    *,
    caps: dict[str, int] | None,
    total: int | None,
    read_to: dict[str, float] | None = None,
) -> int | None:
    """How many tokens short of ``total`` the budgets fall because the languages, within their
    caps, hold fewer (``total - sum u_l``): 0 when they hold enough, None without a total.
    A language in ``read_to`` (its reading stopped at its read limit, ``unrounded_read_limits``)
    holds at least that limit."""
    if total is None:
        return None
    held = {lang: max(n, (read_to or {}).get(lang, 0)) for lang, n in tokens.items()}
    within = sum(_capped(n, caps, lang) for lang, n in held.items())
    return max(0, total - math.floor(within + 1e-6))


def _capped(n: Number, caps: dict[str, int] | None, lang: str) -> Number:
    cap = (caps or {}).get(lang, (caps or {}).get(ALL_LANGUAGES))
    return n if cap is None else min(n, cap)


def _floor(value: float, limit: int) -> int:
    return min(limit, math.floor(value + 1e-6))  # 99.99999 from float error is 100


SELECTION_CHUNK = 1 << 20
"""Documents whose running total ``select_documents`` holds at once."""


def select_documents(
    lengths: NDArray[Any], budget: int, *, seed: int, language: str
) -> NDArray[np.int64]:
    """Indices (ascending) of a seeded random subset of whole documents within ``budget``.

    Documents are taken in a random order (numpy PCG64 seeded with ``seed`` and the language)
    while the running total stays within the budget; the first one that would exceed it ends
    the selection. Beside ``lengths``, it holds the order (8 bytes a document) and one
    ``SELECTION_CHUNK`` of running totals, not a running total of every document.
    """
    rng = np.random.default_rng([seed, *language.encode()])
    order = rng.permutation(len(lengths))
    taken, total = 0, 0
    for start in range(0, len(order), SELECTION_CHUNK):
        chunk = order[start : start + SELECTION_CHUNK]
        cumulative = np.cumsum(np.asarray(lengths[chunk], dtype=np.int64)) + total
        within = int(np.searchsorted(cumulative, budget, side="right"))
        taken += within
        if within < len(chunk):
            break
        total = int(cumulative[-1])
    return np.sort(order[:taken])


def unrounded_read_limits(
    caps: dict[str, int] | None,
    tokens: int | None,
    *,
    sizes: Mapping[str, float] | None = None,
    alpha: float | None = None,
    held: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """How many tokens of each language a streamed source is read for. With ``sizes`` (every
    language's) and the total ``tokens``: its share of the total, ``min(cap_l, lam * p_l)``
    weighed by the sizes as ``language_budgets`` does, not rounded; the languages in ``held``
    (read to their end) hold at most those tokens, and what they cannot supply goes to the
    others in proportion. Otherwise its cap, else ``tokens`` (no language can get more), else
    everything (no entry); ``"*"`` covers the languages not named."""
    if sizes and tokens is not None:
        limits = {lang: _capped(tokens, caps, lang) for lang in sizes}
        limits.update({k: min(limits[k], n) for k, n in (held or {}).items() if k in limits})
        return _water_fill(_shares(sizes, alpha), limits, tokens)
    limits = dict(caps or {})
    if tokens is not None:
        limits = {k: min(v, tokens) for k, v in limits.items()}
        limits.setdefault(ALL_LANGUAGES, tokens)
    return {k: float(v) for k, v in limits.items()}


def read_limits(
    caps: dict[str, int] | None,
    tokens: int | None,
    *,
    sizes: Mapping[str, float] | None = None,
    alpha: float | None = None,
    held: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """``unrounded_read_limits`` rounded down: the tokens a streamed language is read for."""
    limits = unrounded_read_limits(caps, tokens, sizes=sizes, alpha=alpha, held=held)
    return {lang: math.floor(value + 1e-6) for lang, value in limits.items()}


def read_limit(limits: dict[str, Number], language: str) -> Number | None:
    """``language``'s limit in ``read_limits``'s ``limits``; None: no limit."""
    return limits.get(language, limits.get(ALL_LANGUAGES))
