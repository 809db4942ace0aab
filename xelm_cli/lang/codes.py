"""Language codes: accept ISO 639-1, ISO 639-3 and BCP-47, store one normalised form."""

import difflib
import functools
import itertools
import re
import string
from collections.abc import Collection, Iterable, Sequence

import langcodes
from langcodes.data_dicts import DEFAULT_SCRIPTS, LIKELY_SUBTAGS, MACROLANGUAGES

from xelm_cli.bundle.manifest import bundle_schema
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import short_repr

# English names of the languages xelm users name most often (langcodes has no name data
# without the optional `language_data` package), so "turkish" can suggest 'tr'.
COMMON_NAMES: dict[str, str] = {
    "arabic": "ar",
    "azerbaijani": "az",
    "bulgarian": "bg",
    "bengali": "bn",
    "catalan": "ca",
    "czech": "cs",
    "danish": "da",
    "german": "de",
    "greek": "el",
    "english": "en",
    "spanish": "es",
    "estonian": "et",
    "basque": "eu",
    "persian": "fa",
    "finnish": "fi",
    "french": "fr",
    "hebrew": "he",
    "hindi": "hi",
    "croatian": "hr",
    "hungarian": "hu",
    "armenian": "hy",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "georgian": "ka",
    "kazakh": "kk",
    "korean": "ko",
    "lithuanian": "lt",
    "latvian": "lv",
    "malay": "ms",
    "dutch": "nl",
    "norwegian": "no",
    "polish": "pl",
    "portuguese": "pt",
    "romanian": "ro",
    "russian": "ru",
    "slovak": "sk",
    "slovenian": "sl",
    "serbian": "sr",
    "swedish": "sv",
    "swahili": "sw",
    "tamil": "ta",
    "telugu": "te",
    "thai": "th",
    "turkish": "tr",
    "ukrainian": "uk",
    "urdu": "ur",
    "uzbek": "uz",
    "vietnamese": "vi",
    "chinese": "zh",
    "mandarin": "cmn",
    "cantonese": "yue",
    "tagalog": "tl",
    "filipino": "fil",
}
# langcodes applies CLDR's language aliases, and some of them are no IANA deprecation: CLDR
# folds Tagalog into Filipino, Serbo-Croatian into Serbian, Dari into Persian of Afghanistan.
# Under BCP 47 these stay as given (tl,fil are two languages) and their ISO 639-3 forms are
# theirs; deprecated codes whose IANA Preferred-Value differs from CLDR's get IANA's. The
# deprecations CLDR and IANA agree on (iw -> he, in -> id, mo -> ro, ji -> yi) still apply.
IANA_LANGUAGES: dict[str, str] = {
    "tl": "tl", "tgl": "tl", "sh": "sh", "hbs": "sh", "prs": "prs", "tnf": "prs", "drw": "prs",
    "swc": "swc", "cnr": "cnr", "xsj": "xsj", "drh": "khk",
}  # fmt: skip
# their IANA macrolanguages, which langcodes does not know (CLDR replaces them instead)
_MACROLANGUAGES = {"prs": "fa", "swc": "sw", "cnr": "sh"}
MAX_SUGGESTIONS = 3
# Longer than any real tag (the schemas allow 75 characters); langcodes' parser recurses once
# per subtag, so a code of thousands of subtags overflowed the stack.
MAX_CODE_LENGTH = 100


@functools.cache
def _two_letter_codes() -> tuple[str, ...]:
    """Every ISO 639-1 code langcodes accepts as a language of its own."""
    pairs = ("".join(p) for p in itertools.product(string.ascii_lowercase, repeat=2))
    return tuple(code for code in pairs if langcodes.tag_is_valid(code) and _standard(code) == code)


def suggest_languages(code: str) -> list[str]:
    """Up to three known codes close to ``code``: by English name first, then by spelling."""
    text = code.strip().lower()
    if len(text) > MAX_CODE_LENGTH:
        return []
    by_name = difflib.get_close_matches(text, COMMON_NAMES, MAX_SUGGESTIONS, cutoff=0.75)
    by_code: list[str] = []
    if len(text) <= 3:  # a mistyped code, not a name
        by_code = difflib.get_close_matches(text, _two_letter_codes(), MAX_SUGGESTIONS, 0.5)
    suggestions = [COMMON_NAMES[name] for name in by_name] + by_code
    return list(dict.fromkeys(suggestions))[:MAX_SUGGESTIONS]


def _unknown(code: str) -> UsageError:
    suggestions = suggest_languages(code)
    hint = f" (did you mean {' or '.join(repr(s) for s in suggestions)}?)" if suggestions else ""
    return UsageError(
        f"unknown language code {short_repr(code)}: use an ISO 639-1, ISO 639-3 or BCP-47 code "
        f"such as 'tr', 'azj' or 'zh-Hant'{hint}"
    )


def normalize_language(code: str) -> str:
    """Return the shortest standard tag for ``code`` (``ara`` -> ``ar``, ``en-us`` -> ``en-US``).

    Individual languages keep their own code (``arb`` stays ``arb``), so a macrolanguage and one
    of its members remain distinguishable. An unknown code raises :class:`UsageError` with up
    to three suggestions.
    """
    raw = code.strip()
    try:
        tag = _standard(raw) if len(raw) <= MAX_CODE_LENGTH else ""
    except (ValueError, langcodes.tag_parser.LanguageTagError):
        tag = ""
    if not tag or not langcodes.tag_is_valid(tag) or _language(tag).language in (None, "und"):
        raise _unknown(code)  # und-Latn names a script, not a language
    if not _manifest_tag().fullmatch(tag):  # e.g. the private-use x-en: no manifest holds it
        raise _unknown(code)
    return tag


def _language(tag: str) -> langcodes.Language:
    """``tag`` parsed and normalised by langcodes, its language as IANA has it."""
    language, sep, rest = tag.replace("_", "-").partition("-")
    iana = IANA_LANGUAGES.get(language.lower())
    if iana is None:
        return langcodes.Language.get(tag)
    return langcodes.Language.get("und" + sep + rest).update_dict({"language": iana})


def _standard(tag: str) -> str:
    """The standard form of ``tag``: langcodes' ``standardize_tag``, with IANA's languages,
    without the script when it is the language's default (``default_script``)."""
    return str(_without_default_script(_language(tag)).to_tag())


def _without_default_script(language: langcodes.Language) -> langcodes.Language:
    if language.script and language.script == default_script(language.language or ""):
        return language.update_dict({"script": None})
    return language


def _macrolanguage(language: str) -> str | None:
    return _MACROLANGUAGES.get(language) or MACROLANGUAGES.get(language)


@functools.cache
def default_script(language: str) -> str | None:
    """The script a tag of ``language`` (a language subtag) leaves out: its IANA
    Suppress-Script (``ar``: Arab, ``hi``: Deva), else, for an individual language of a
    macrolanguage, the macrolanguage's unless CLDR's likely subtags give the individual
    language another (``arb``, ``arz``: Arab; ``swh``: Latn); None for a language written
    in several scripts (``zh``, ``cmn``, ``sr``, ``az``) or without data."""
    own = DEFAULT_SCRIPTS.get(language)  # langcodes' copy of IANA's Suppress-Script
    if own is not None:
        return own
    macro = _macrolanguage(language)
    inherited = DEFAULT_SCRIPTS.get(macro) if macro is not None else None
    likely = LIKELY_SUBTAGS.get(language)
    if inherited is None or (likely and langcodes.Language.get(likely).script != inherited):
        return None
    return inherited


def wanted_form(code: str, wanted: Collection[str]) -> str:
    """``code`` as ``wanted`` names its language: ``code`` when listed, else the first broader
    tag listed (without the script, then the macrolanguage: FineWeb-2's ``arb_Arab`` rows are
    ``ar`` when ar is wanted, ``cmn_Hani`` ``zh``, ``swh_Latn`` ``sw``), else ``code``. A
    script the language is not usually written in (:func:`_unusual_script`) is kept:
    ``hi-Latn`` (romanised Hindi) is not ``hi``, nor ``zh-Latn`` ``zh``, though ``hi-Latn-IN``
    is ``hi-Latn``."""
    if code in wanted:
        return code
    return next((tag for tag in _broader_tags(code) if tag in wanted), code)


@functools.cache
def _broader_tags(code: str) -> tuple[str, ...]:
    language = _without_default_script(_language(code))
    tags = language.broader_tags()
    macro = _MACROLANGUAGES.get(language.language or "")
    if macro is not None:
        tags += language.update_dict({"language": macro}).broader_tags()
    script = language.script
    if script and _unusual_script(language.language or "", script):
        # another script than the language's usual ones: its broader tags keep it
        tags = [tag for tag in tags if langcodes.Language.get(tag).script == script]
    broader = (tag for tag in tags if tag != code and not tag.startswith("und"))
    return tuple(dict.fromkeys(broader))


def _unusual_script(language: str, script: str) -> bool:
    """Whether ``language`` is not usually written in ``script`` (which its tag then keeps):
    any script but its default one (``hi-Latn``), or, for a language written in several
    (no default), one that CLDR's likely subtags never give it or its macrolanguage
    (``zh-Latn``, pinyin, unlike ``zh-Hant`` or ``sr-Latn``). Without data: usual."""
    default = default_script(language)
    if default is not None:
        return script != default
    usual = _likely_scripts(language) | _likely_scripts(_macrolanguage(language) or "")
    return bool(usual) and script not in usual


@functools.cache
def _likely_scripts(language: str) -> frozenset[str]:
    """The scripts CLDR's likely subtags give tags of ``language`` (``sr``: Cyrl, Latn)."""
    return frozenset(
        parsed.script
        for parsed in map(langcodes.Language.get, LIKELY_SUBTAGS.values())
        if parsed.language == language and parsed.script
    )


@functools.cache
def _manifest_tag() -> re.Pattern[str]:
    """The language tags a bundle manifest may hold (spec/bundle-v1.schema.json)."""
    return re.compile(bundle_schema()["$defs"]["language"]["pattern"])


def distinct_languages(codes: Iterable[str]) -> list[str]:
    """``codes`` normalised, in order, each language once: a :class:`UsageError` for an
    unknown code, or for a language given twice, also under two of its codes (``iw`` and
    ``he``), where silently keeping one would drop what the other said."""
    given: dict[str, str] = {}
    for raw in codes:
        code = normalize_language(raw)
        if code in given:
            raise UsageError(
                f"language {code} is given twice ({short_repr(given[code])} and "
                f"{short_repr(raw)}): give each language once"
            )
        given[code] = raw
    return list(given)


def parse_language_list(text: str) -> list[str]:
    """Parse ``"ar, tr,az"`` into normalised codes, keeping order and dropping duplicates."""
    codes = [normalize_language(part) for part in text.split(",") if part.strip()]
    if not codes:
        raise UsageError("no language codes given: pass a comma-separated list such as ar,tr")
    return list(dict.fromkeys(codes))


def language_codes(languages: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Languages as a Python caller gives them (``"ar,tr"`` or ``["ar", "tr"]``), normalised,
    in order, without repeats; None for no choice (None, blank text, an empty list)."""
    if isinstance(languages, str):
        return tuple(parse_language_list(languages)) if languages.strip() else None
    codes = tuple(dict.fromkeys(normalize_language(str(code)) for code in languages or ()))
    return codes or None
