"""Typological features and distances from URIEL, read straight from lang2vec's data files.

lang2vec 1.1.2 ships its knowledge base as ``.npz`` files inside the package. Importing the
package itself costs about 3 s (and needs ``pkg_resources``), so this module only locates the
installed package and reads its data. Each file holds ``langs`` (ISO 639-3 codes), ``feats``
(feature names), ``sources`` and ``data``, an array (language, feature, source) where -1 marks
a missing value. A feature set is one file, one source and a feature-name prefix; it yields the
same values as ``lang2vec.get_features(langs, name, minimal=...)``, with NaN for lang2vec's
``'--'``.

Distances follow xelm-method.md section 3: the cosine distance over the features both
languages have, each vector's norm taken over its *own* non-missing features.

Codes. lang2vec wants ISO 639-3. For most languages the ISO 639-3 form of the tag is the
right code. For four languages whose 2-letter code denotes a macrolanguage, URIEL holds both
the macrolanguage and the individual language, with different data:

===  =============  ==========  ===========================================================
tag  macrolanguage  individual  which one is used
===  =============  ==========  ===========================================================
ar   ara            arb         ``ara`` for typological sets, ``arb`` for family-based sets
zh   zho            cmn         ``zho`` for typological sets, ``cmn`` for family-based sets
sw   swa            swh         ``swa`` for typological sets, ``swh`` for family-based sets
az   aze            azj         ``aze`` for typological sets, ``azj`` for family-based sets
===  =============  ==========  ===========================================================

The family tree of a macrolanguage is shallow (``zho`` has 1 family node, ``cmn`` 4; ``aze``
3, ``azj`` 6), so family-based sets (``fam``) use the individual code. The typological sets
keep lang2vec's own macrolanguage mapping: it is what the reference used, the individual codes
have fewer typological values (``arb`` 66 syntax values, ``ara`` 98; ``azj`` none), and only
the macrolanguage codes reproduce the expected expert groups and donors. An explicit
individual code (``arb``) is always used as given.
"""

import functools
import importlib.metadata
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import langcodes
import numpy as np
from langcodes.data_dicts import MACROLANGUAGES
from numpy.typing import NDArray

from xelm_cli.common.errors import UsageError
from xelm_cli.lang.codes import language_codes, normalize_language, parse_language_list

MISSING = -1.0

# name -> (data file, source, feature-name prefix), as lang2vec 1.1.2 defines its sets.
# 'id' and 'learned' are left out: one is a one-hot of the language, the other a pickle.
FEATURE_SETS: dict[str, tuple[str, str, str]] = {
    "syntax_wals": ("features.npz", "WALS", "S_"),
    "phonology_wals": ("features.npz", "WALS", "P_"),
    "syntax_sswl": ("features.npz", "SSWL", "S_"),
    "syntax_ethnologue": ("features.npz", "ETHNO", "S_"),
    "phonology_ethnologue": ("features.npz", "ETHNO", "P_"),
    "inventory_ethnologue": ("features.npz", "ETHNO", "INV_"),
    "inventory_phoible_aa": ("features.npz", "PHOIBLE_AA", "INV_"),
    "inventory_phoible_gm": ("features.npz", "PHOIBLE_GM", "INV_"),
    "inventory_phoible_saphon": ("features.npz", "PHOIBLE_SAPHON", "INV_"),
    "inventory_phoible_spa": ("features.npz", "PHOIBLE_SPA", "INV_"),
    "inventory_phoible_ph": ("features.npz", "PHOIBLE_PH", "INV_"),
    "inventory_phoible_ra": ("features.npz", "PHOIBLE_RA", "INV_"),
    "inventory_phoible_upsid": ("features.npz", "PHOIBLE_UPSID", "INV_"),
    "syntax_knn": ("feature_predictions.npz", "predicted", "S_"),
    "phonology_knn": ("feature_predictions.npz", "predicted", "P_"),
    "inventory_knn": ("feature_predictions.npz", "predicted", "INV_"),
    "syntax_average": ("feature_averages.npz", "avg", "S_"),
    "phonology_average": ("feature_averages.npz", "avg", "P_"),
    "inventory_average": ("feature_averages.npz", "avg", "INV_"),
    "fam": ("family_features.npz", "FAM", ""),
    "geo": ("geocoord_features.npz", "GEOCOORDS", ""),
}
ALIASES: dict[str, str] = {
    "syntax": "syntax_average",
    "phonology": "phonology_average",
    "inventory": "inventory_average",
    "family": "fam",
    "geo": "geo",
}
DEFAULT_FEATURE_SET = "syntax_average"
FAMILY_BASED_SETS = frozenset({"fam"})
INDIVIDUAL_CODES: dict[str, str] = {"ar": "arb", "zh": "cmn", "sw": "swh", "az": "azj"}

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class _FeatureTable:
    """One feature set for every URIEL language: values (language, feature), -1 = missing."""

    row_of: dict[str, int]
    names: list[str]
    values: FloatArray


def feature_set_name(name: str) -> str:
    """The canonical name of a feature set or alias (``syntax`` -> ``syntax_average``)."""
    canonical = ALIASES.get(name.strip().lower(), name.strip().lower())
    if canonical not in FEATURE_SETS:
        aliases = ", ".join(f"{a}={c}" for a, c in ALIASES.items() if a != c)
        raise UsageError(
            f"unknown feature set {name!r}: use one of {', '.join(FEATURE_SETS)} "
            f"(aliases: {aliases})"
        )
    return canonical


def _data_dir() -> Path:
    """lang2vec's data folder, found without importing lang2vec.

    The distribution's metadata comes first: lang2vec also installs a script ``bin/lang2vec.py``
    that shadows the package for ``find_spec`` whenever a console script (``xelm``) runs.
    """
    try:
        package = Path(str(importlib.metadata.distribution("lang2vec").locate_file("lang2vec")))
        if (package / "data").is_dir():
            return package / "data"
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("lang2vec")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise UsageError("lang2vec is not installed: pip install lang2vec==1.1.2")
    return Path(locations[0]) / "data"


@functools.cache
def _feature_table(feature_set: str) -> _FeatureTable:
    filename, source, prefix = FEATURE_SETS[feature_set]
    with np.load(_data_dir() / filename, allow_pickle=False) as archive:
        langs = [str(code) for code in archive["langs"]]
        feats = [str(name) for name in archive["feats"]]
        sources = [str(name) for name in archive["sources"]]
        columns = [i for i, name in enumerate(feats) if name.startswith(prefix)]
        values = archive["data"][:, columns, sources.index(source)]
    return _FeatureTable(
        row_of={code: row for row, code in enumerate(langs)},
        names=[feats[i].replace(" ", "_") for i in columns],
        values=np.asarray(values, dtype=np.float64),
    )


@functools.cache
def _lang2vec_letter_codes() -> dict[str, str]:
    """lang2vec's own 2-letter -> ISO 639-3 table (a fallback where langcodes differs)."""
    path = _data_dir() / "letter_codes.json"
    codes: dict[str, str] = json.loads(path.read_text())
    return codes


def _candidate_codes(tag: str, feature_set: str) -> list[str]:
    # tag is standard already: normalising again would turn tl into fil (CLDR's alias)
    language = langcodes.Language.get(tag, normalize=False).language or tag
    candidates = []
    if feature_set in FAMILY_BASED_SETS and language in INDIVIDUAL_CODES:
        candidates.append(INDIVIDUAL_CODES[language])
    candidates.append(langcodes.Language.get(language, normalize=False).to_alpha3())
    if language in _lang2vec_letter_codes():
        candidates.append(_lang2vec_letter_codes()[language])
    return list(dict.fromkeys(candidates))


def uriel_code(lang: str, feature_set: str = DEFAULT_FEATURE_SET) -> str:
    """The ISO 639-3 code under which lang2vec holds ``lang`` for ``feature_set``.

    ``ar`` -> ``ara`` (``arb`` for the family set ``fam``); see the module docstring for the
    macrolanguage table. Raises :class:`UsageError` when lang2vec does not know the language.
    """
    tag = normalize_language(lang)
    feature_set = feature_set_name(feature_set)
    table = _feature_table(feature_set)
    candidates = _candidate_codes(tag, feature_set)
    for code in candidates:
        if code in table.row_of:
            return code
    raise UsageError(
        f"lang2vec (URIEL) does not know language {tag!r} (ISO 639-3 {candidates[0]!r}): "
        "pass a related language it knows, or another ISO 639-3 code"
    )


def _check_has_values(tag: str, code: str, row: FloatArray, feature_set: str) -> None:
    if np.all(row == MISSING):
        raise UsageError(
            f"lang2vec has no {feature_set} values for {tag!r} (URIEL code {code!r}): "
            "use another feature set (e.g. --features family) or a related language"
        )
    if feature_set in FAMILY_BASED_SETS and not np.any(row > 0):
        # no family node: at distance 1 from every language, so any ranking is input order
        raise UsageError(
            f"lang2vec has no family for {tag!r} (URIEL code {code!r}), so it would be at "
            f"distance 1 from every language: {_individual_hint(tag, feature_set)}"
        )


def _individual_hint(tag: str, feature_set: str) -> str:
    """The way out for a language without family data: its individual languages that have
    some (a macrolanguage such as qu), else a related language."""
    language = langcodes.Language.get(tag, normalize=False).language or tag
    table = _feature_table(feature_set)
    members = sorted(
        member
        for member, macro in MACROLANGUAGES.items()
        if macro == language and member in table.row_of
        and np.any(table.values[table.row_of[member]] > 0)
    )  # fmt: skip
    if not members:
        return "use a related language, or another feature set (e.g. --features syntax)"
    named = ", ".join(members[:3]) + (f" ({len(members)} in all)" if len(members) > 3 else "")
    return f"use one of its individual languages, e.g. {named}"


def _minimal_mask(values: FloatArray) -> NDArray[np.bool_]:
    """Features lang2vec's ``minimal=True`` keeps: not all 0, not all 1, not all missing."""
    constant = np.zeros(values.shape[1], dtype=bool)
    for value in (0.0, 1.0, MISSING):
        constant |= np.all(values == value, axis=0)
    return ~constant


def feature_vectors(
    langs: list[str], feature_set: str = DEFAULT_FEATURE_SET, minimal: bool = True
) -> tuple[FloatArray, list[str]]:
    """The languages' feature values, one row per language, NaN where lang2vec has ``'--'``.

    Returns the (len(langs), n_features) array and the feature names. ``minimal=True`` drops
    the features that are all 0, all 1 or all missing across ``langs`` (as lang2vec does), so
    the result depends on the whole set of languages. A language lang2vec does not know, or
    for which it has no value in this set, raises :class:`UsageError`.
    """
    feature_set = feature_set_name(feature_set)
    table = _feature_table(feature_set)
    rows = []
    for lang in langs:
        code = uriel_code(lang, feature_set)
        row = table.values[table.row_of[code]]
        _check_has_values(normalize_language(lang), code, row, feature_set)
        rows.append(row)
    values = np.array(rows, dtype=np.float64).reshape(len(langs), len(table.names))
    keep = _minimal_mask(values) if minimal else np.ones(values.shape[1], dtype=bool)
    kept = values[:, keep]
    kept[kept == MISSING] = np.nan
    return kept, [name for name, k in zip(table.names, keep, strict=True) if k]


def cosine_distances(vectors: FloatArray) -> FloatArray:
    """Pairwise cosine distances of rows with NaN for missing values.

    The dot product runs over the features both rows have; each norm over the row's own
    non-missing features (xelm-method.md section 3). A row without any non-zero value is at
    distance 1 from every other row.
    """
    filled = np.nan_to_num(np.asarray(vectors, dtype=np.float64), nan=0.0)
    norms = np.sqrt(np.einsum("ij,ij->i", filled, filled))
    dots = filled @ filled.T  # a missing value is 0 here, so it adds nothing to a dot product
    scale = np.outer(norms, norms)
    with np.errstate(divide="ignore", invalid="ignore"):
        distances = np.where(scale > 0, 1.0 - dots / scale, 1.0)
    distances = np.clip(distances, 0.0, None)  # rounding must not make identical rows negative
    np.fill_diagonal(distances, 0.0)
    return np.asarray(distances, dtype=np.float64)


def distance_matrix(
    langs: list[str] | str, feature_set: str = DEFAULT_FEATURE_SET, minimal: bool = True
) -> FloatArray:
    """Typological distances between ``langs`` (a list, or text such as ``"ar,tr"``): a
    symmetric (n, n) matrix, zero diagonal.

    Features are chosen over the whole set of ``langs`` (see :func:`feature_vectors`).
    """
    if isinstance(langs, str):
        langs = parse_language_list(langs)
    vectors, _ = feature_vectors(langs, feature_set, minimal)
    return cosine_distances(vectors)


def rank_donors(
    lang: str,
    among: Sequence[str] | str,
    feature_set: str = DEFAULT_FEATURE_SET,
    minimal: bool = True,
) -> list[tuple[str, float]]:
    """The languages of ``among`` (a list, or text such as ``"en,tr"``) from nearest to
    farthest from ``lang``, with distances.

    Features are chosen over ``{lang} | among`` (choosing them per pair would drop every
    feature the two languages share and make all distances large and uninformative). ``lang``
    itself is left out of ``among``; ties keep the order of ``among``. Codes are returned
    normalised.
    """
    target = normalize_language(lang)
    candidates = [c for c in language_codes(among) or () if c != target]
    if not candidates:
        raise UsageError(f"no candidate donors for {target!r}: --among needs other languages")
    distances = distance_matrix([target, *candidates], feature_set, minimal)[0, 1:]
    order = sorted(range(len(candidates)), key=lambda i: (distances[i], i))
    return [(candidates[i], float(distances[i])) for i in order]
