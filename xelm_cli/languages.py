"""Language codes: accept ISO 639-1, ISO 639-3 and BCP-47, store one normalised form."""

import langcodes

from .errors import UsageError


def normalize_language(code: str) -> str:
    """Return the shortest standard tag for ``code`` (``ara`` -> ``ar``, ``en-us`` -> ``en-US``).

    Individual languages keep their own code (``arb`` stays ``arb``), so a macrolanguage and one
    of its members remain distinguishable.
    """
    raw = code.strip()
    try:
        tag = langcodes.standardize_tag(raw, macro=False)
    except (ValueError, langcodes.tag_parser.LanguageTagError):
        tag = ""
    if not tag or not langcodes.tag_is_valid(tag) or tag == "und":
        raise UsageError(
            f"unknown language code {code!r}: use an ISO 639-1, ISO 639-3 or BCP-47 code "
            "such as 'tr', 'azj' or 'zh-Hant'"
        )
    return tag


def parse_language_list(text: str) -> list[str]:
    """Parse ``"ar, tr,az"`` into normalised codes, keeping order and dropping duplicates."""
    codes = [normalize_language(part) for part in text.split(",") if part.strip()]
    if not codes:
        raise UsageError("no language codes given: pass a comma-separated list such as ar,tr")
    return list(dict.fromkeys(codes))
