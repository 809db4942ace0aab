"""What xelm knows of one language code: its normalised tag, English name, ISO 639-3 code, and
what lang2vec (URIEL) holds for it in a feature set (``xelm lang info``)."""

import importlib.util
from typing import Any

import langcodes
import numpy as np

from xelm_cli.common.errors import UsageError
from xelm_cli.lang.codes import COMMON_NAMES, normalize_language
from xelm_cli.lang.typology import (
    DEFAULT_FEATURE_SET,
    FAMILY_BASED_SETS,
    feature_set_name,
    feature_vectors,
    uriel_code,
)


def language_info(code: str, features: str = DEFAULT_FEATURE_SET) -> dict[str, Any]:
    """``{"language", "name", "alpha3", "features", "uriel", "known"}`` of ``code`` (any form
    ``normalize_language`` reads) in the lang2vec feature set ``features`` (a name or alias:
    ``syntax``, ``family``, ...): ``known`` is "N of M" features of the set with a value, or
    "none"; of a family set also ``family``, outermost first ("Afro-Asiatic > Semitic > ...").
    An unknown code or set is a one-line ``UsageError``."""
    feature_set = feature_set_name(features)
    tag = normalize_language(code)
    return {
        "language": tag,
        "name": _english_name(tag),
        "alpha3": langcodes.Language.get(tag, normalize=False).to_alpha3(),
        "features": feature_set,
        "uriel": uriel_code(tag, feature_set),
        **_feature_summary(tag, feature_set),
    }


def _english_name(tag: str) -> str | None:
    """The language's English name where langcodes has name data, or xelm's short list does."""
    if importlib.util.find_spec("language_data") is not None:
        return str(langcodes.Language.get(tag, normalize=False).display_name())
    names = {code: name.title() for name, code in COMMON_NAMES.items()}
    return names.get(langcodes.Language.get(tag, normalize=False).language or tag)


def _feature_summary(tag: str, feature_set: str) -> dict[str, Any]:
    """How many of the set's features lang2vec has a value for; of the family set, also the
    families the language belongs to (its features with value 1)."""
    try:
        values, names = feature_vectors([tag], feature_set, minimal=False)
    except UsageError:  # lang2vec knows the language but has no value in this set
        return {"known": "none"}
    row = values[0]
    summary: dict[str, Any] = {"known": f"{int(np.sum(~np.isnan(row)))} of {len(names)}"}
    if feature_set in FAMILY_BASED_SETS:
        families = [name for name, value in zip(names, row, strict=True) if value == 1]
        summary["family"] = " > ".join(f.removeprefix("F_").replace("_", " ") for f in families)
    return summary
