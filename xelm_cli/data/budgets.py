"""How many tokens of each language ``xelm data prepare`` keeps and reads: token caps (``--cap``),
budgets from caps and temperature sampling (``language_budgets``), the seeded choice of whole
documents within a budget (``select_documents``), and how far a streamed source is read
(``read_limits``)."""

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.errors import UsageError
from xelm_cli.common.units import parse_token_count, token_count
from xelm_cli.lang.codes import normalize_language

ALL_LANGUAGES = "*"  # in caps and limits: every language not named


def parse_caps(text: str) -> dict[str, int]:
    """``"5M"`` (every language), ``"en=5M,de=2M"`` or both (``"1M,en=5M"``)."""
    caps: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        lang, _, count = item.rpartition("=")
        key = normalize_language(lang) if lang else ALL_LANGUAGES
        caps[key] = parse_token_count(count)
    if not caps:
        raise UsageError("--cap needs a token count such as 5M or en=5M,de=2M")
    return caps


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
) -> dict[str, int]:
    """How many tokens of each language to keep, given ``tokens`` per language in the corpus.

    Each language is limited to ``u_l = min(n_l, cap_l)``. Without ``alpha`` and ``total`` the
    budget is ``u_l``. Otherwise languages are weighted ``p_l = n_l**alpha / sum(n_k**alpha)``
    (XLM / mT5; ``alpha`` defaults to 1, proportional) and get ``b_l = min(u_l, lam * p_l)``
    with ``lam`` chosen so that the budgets add up to ``total`` (or to everything there is,
    when ``total`` exceeds it): tokens a small language cannot supply go to the others in
    the same proportions. Without ``total``, ``lam`` is the largest value at which no language
    runs out (``min u_l / p_l``): the temperature-sampled mixture that repeats no document.
    Budgets are rounded down.
    """
    limits = {lang: _capped(n, caps, lang) for lang, n in tokens.items()}
    if alpha is None and total is None:
        return limits
    exponent = 1.0 if alpha is None else alpha
    weights = {lang: float(n) ** exponent for lang, n in tokens.items() if n > 0}
    norm = sum(weights.values())
    shares = {lang: w / norm for lang, w in weights.items()}
    budgets = {lang: 0 for lang in tokens}
    if total is None:
        scale = min(limits[lang] / p for lang, p in shares.items())
        budgets.update({lang: _floor(scale * p, limits[lang]) for lang, p in shares.items()})
        return budgets
    remaining, pending = float(total), sorted(shares, key=lambda lang: limits[lang] / shares[lang])
    while pending:
        lang = pending[0]
        share = remaining * shares[lang] / sum(shares[k] for k in pending)
        if limits[lang] > share:  # no language left runs out: split what remains by weight
            weight = sum(shares[k] for k in pending)
            for k in pending:
                budgets[k] = _floor(remaining * shares[k] / weight, limits[k])
            break
        budgets[lang] = limits[lang]
        remaining -= limits[lang]
        pending.pop(0)
    return budgets


def shortfall(
    tokens: dict[str, int], *, caps: dict[str, int] | None, total: int | None
) -> int | None:
    """How many tokens short of ``total`` the budgets fall because the languages, within their
    caps, hold fewer (``total - sum u_l``): 0 when they hold enough, None without a total."""
    if total is None:
        return None
    return max(0, total - sum(_capped(n, caps, lang) for lang, n in tokens.items()))


def _capped(n: int, caps: dict[str, int] | None, lang: str) -> int:
    cap = (caps or {}).get(lang, (caps or {}).get(ALL_LANGUAGES))
    return n if cap is None else min(n, cap)


def _floor(value: float, limit: int) -> int:
    return min(limit, math.floor(value + 1e-6))  # 99.99999 from float error is 100


def select_documents(
    lengths: NDArray[Any], budget: int, *, seed: int, language: str
) -> NDArray[np.int64]:
    """Indices (ascending) of a seeded random subset of whole documents within ``budget``.

    Documents are taken in a random order (numpy PCG64 seeded with ``seed`` and the language)
    while the running total stays within the budget; the first one that would exceed it ends
    the selection.
    """
    rng = np.random.default_rng([seed, *language.encode()])
    order = rng.permutation(len(lengths))
    cumulative = np.cumsum(np.asarray(lengths, dtype=np.int64)[order])
    taken = int(np.searchsorted(cumulative, budget, side="right"))
    return np.sort(order[:taken])


def read_limits(
    languages: list[str] | None, caps: dict[str, int] | None, tokens: int | None
) -> dict[str, int]:
    """How many tokens of each language a streamed source is read for: its cap, else the total
    budget (no language can get more), else everything (no entry). ``"*"`` covers languages not
    named."""
    limits = dict(caps or {})
    if tokens is not None:
        limits = {k: min(v, tokens) for k, v in limits.items()}
        limits.setdefault(ALL_LANGUAGES, tokens)
    return limits


def read_limit(limits: dict[str, int], language: str) -> int | None:
    """``language``'s limit in ``read_limits``'s ``limits``; None: no limit."""
    return limits.get(language, limits.get(ALL_LANGUAGES))
