"""Corpus recipes: which source each language's documents come from (spec/corpus-recipe-v1.md).

A recipe is a JSON file naming, per language, a dataset configuration (``allenai/c4`` config
``ar``) or data directory (``data_dir`` ``data/ar``), or local corpus files, and optionally the
language's size in ``documents`` (``xelm data prepare``'s default ``--sizes``). ``defaults``
hold what most languages share; ``{lang}`` in a ``config``, ``data_dir`` (or ``dataset``) is
replaced by the language's code in that dataset (``code``, default the xelm code: mC4 calls
Hebrew ``iw``). xelm ships recipes for the paper's corpus and
open alternatives (``xelm data recipes``); ``xelm data prepare ID --config '{lang}'`` builds an
unnamed recipe from its options, so one code path reads every per-language source.
"""

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from xelm_cli.bundle.manifest import schema_problems, spec_schema
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.jsonio import read_json_object
from xelm_cli.data.sources import DatasetSource, FileSource, Source
from xelm_cli.lang.codes import distinct_languages, normalize_language

FORMAT_NAME = "xelm-corpus-recipe"
FORMAT_VERSION = "1.1.0"
SUPPORTED_MAJOR = 1
PLACEHOLDER = "{lang}"
SOURCE_FIELDS = ("dataset", "config", "data_dir", "split", "text_column", "revision")
PER_LANGUAGE_FIELDS = ("dataset", "config", "data_dir")  # where {lang} is replaced


def recipe_schema() -> dict[str, Any]:
    return spec_schema("corpus-recipe-v1.schema.json")


@dataclass(frozen=True)
class Recipe:
    """A corpus recipe (:func:`load_recipe`; spec/corpus-recipe-v1.md): per language, the
    dataset, configuration and split to read its text from, and their sizes."""

    name: str
    raw: dict[str, Any]
    base: Path | None  # local paths in the recipe are relative to this directory

    @property
    def languages(self) -> list[str]:
        return list(self.raw["languages"])

    def entry(self, language: str) -> dict[str, Any]:
        """A language's source settings, its own over the recipe's defaults."""
        if language not in self.raw["languages"]:
            raise UsageError(
                f"recipe {self.name} has no {language} (it has {', '.join(self.languages)})"
            )
        entry = {**self.raw.get("defaults", {}), **self.raw["languages"][language]}
        if "path" in self.raw["languages"][language]:  # a local source drops dataset defaults
            entry = dict(self.raw["languages"][language])
        return entry

    def sizes(self, languages: list[str]) -> dict[str, float] | None:
        """``languages``' sizes in documents (the entries' ``documents``), the weights of
        ``xelm data prepare``'s budgets; None unless every one of them has one."""
        sizes = {lang: self.entry(lang).get("documents") for lang in languages}
        if not all(sizes.values()):
            return None
        return {lang: int(size) for lang, size in sizes.items() if size}

    def source(self, language: str, *, split: str | None = None) -> Source:
        """The source of ``language``'s documents; ``split`` overrides the recipe's."""
        entry = self.entry(language)
        if "path" in entry:
            path = Path(entry["path"])
            if not path.is_absolute() and self.base is not None:
                path = self.base / path
            # its documents labelled with a narrower tag (swh, arb_Arab) are of ``language``
            return FileSource(str(path), language=language, languages=(language,))
        if "dataset" not in entry:
            raise UsageError(f"recipe {self.name}: {language} names no dataset and no path")
        code = entry.get("code", language)
        fields = {k: entry[k] for k in SOURCE_FIELDS if k in entry}
        for key in PER_LANGUAGE_FIELDS:
            if key in fields:
                fields[key] = fields[key].replace(PLACEHOLDER, code)
        if split is not None:
            fields["split"] = split
        return DatasetSource(**fields, language=language)

    def sources(
        self, languages: list[str] | None = None, *, split: str | None = None
    ) -> dict[str, Source]:
        return {lang: self.source(lang, split=split) for lang in languages or self.languages}


def parse_recipe(data: dict[str, Any], name: str, base: Path | None) -> Recipe:
    major = str(data.get("format_version", "")).split(".")[0]
    if data.get("format") == FORMAT_NAME and major.isdigit() and int(major) > SUPPORTED_MAJOR:
        raise FormatError(
            f"recipe {name} has format version {data['format_version']}; this xelm reads "
            f"{SUPPORTED_MAJOR}.x: upgrade xelm"
        )
    problems = schema_problems(data, recipe_schema(), what="recipe") or rule_problems(data)
    if problems:
        raise FormatError(f"recipe {name} is not valid: {problems[0]}")
    languages = normalized_entries(data["languages"], name)
    return Recipe(str(data.get("name", name)), {**data, "languages": languages}, base)


def rule_problems(data: dict[str, Any]) -> list[str]:
    """What the schema cannot say (spec section 2): a dataset entry names a ``dataset`` once
    ``defaults`` are merged, and a 1.0 recipe uses no 1.1 field (``documents``)."""
    defaults = data.get("defaults", {})
    problems = [
        f"languages.{lang} names no dataset and no path (give it one, or a dataset in defaults)"
        for lang, entry in data["languages"].items()
        if "path" not in entry and "dataset" not in {**defaults, **entry}
    ]
    minor = int(str(data["format_version"]).split(".")[1])
    problems += [
        f"languages.{lang} holds documents, a 1.1 field, in a {data['format_version']} recipe "
        "(say format_version 1.1.0)"
        for lang, entry in data["languages"].items()
        if minor < 1 and "documents" in entry
    ]
    return problems


def normalized_entries(entries: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe's entries by normalised language tag; two tags of one language (``he`` and
    ``heb``) are refused rather than one silently dropped."""
    try:
        codes = distinct_languages(entries)
    except UsageError as exc:
        raise FormatError(f"recipe {name}: {exc}") from None
    return dict(zip(codes, entries.values(), strict=True))


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with xelm, by name."""
    folder = resources.files("xelm_cli").joinpath("data", "shipped_recipes")
    return {
        entry.name.removesuffix(".json"): Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".json")
    }


def is_recipe(source: str) -> bool:
    """A recipe file (``*.json`` that says it is one) or the name of a shipped recipe."""
    path = Path(source)
    if path.is_file() and path.name.endswith(".json"):
        with path.open("rb") as f:
            return FORMAT_NAME.encode() in f.read(4096)
    return not path.exists() and source in shipped_recipes()


def load_recipe(source: str | Path) -> Recipe:
    """A recipe from a file or a shipped recipe's name."""
    path = Path(source)
    if not path.exists():
        shipped = shipped_recipes()
        if str(source) not in shipped:
            raise UsageError(
                f"no recipe {source}: not a file, and xelm ships {', '.join(shipped)} "
                "(see `xelm data recipes`)"
            )
        path = shipped[str(source)]
        return parse_recipe(read_json_object(path, "recipe", unique_keys=True), str(source), None)
    return parse_recipe(read_json_object(path, "recipe", unique_keys=True), path.name, path.parent)


def recipe_from_options(
    dataset: str,
    *,
    config: str | None,
    languages: list[str],
    lang_map: dict[str, str] | None = None,
    split: str | None = None,
    text_column: str | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
) -> Recipe:
    """The recipe ``xelm data prepare DATASET --config TEMPLATE --langs ... --lang-map ...``
    (or ``--data-dir TEMPLATE``) describes: one configuration (or folder) per language."""
    if PLACEHOLDER not in (config or "") + (data_dir or ""):
        raise UsageError(
            f"--config / --data-dir name one configuration or folder; with --langs, use a "
            f"template such as '{PLACEHOLDER}' (replaced by each language's code)"
        )
    lang_map = lang_map or {}
    unknown = sorted(set(lang_map) - set(languages))
    if unknown:
        raise UsageError(f"--lang-map names {', '.join(unknown)}, which --langs does not list")
    defaults = {"dataset": dataset}
    given = {"config": config, "data_dir": data_dir, "split": split}
    given |= {"text_column": text_column, "revision": revision}
    defaults |= {key: value for key, value in given.items() if value is not None}
    entries = {lang: ({"code": lang_map[lang]} if lang in lang_map else {}) for lang in languages}
    data = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "defaults": defaults,
        "languages": entries,
    }
    return parse_recipe(data, dataset, None)


def parse_lang_map(text: str, flag: str = "--lang-map") -> dict[str, str]:
    """``"he=iw,zh=zh-Hans"``: xelm code = the dataset's code; errors name ``flag``."""
    mapping = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise UsageError(f"{flag} takes LANG=CODE pairs such as he=iw, not {item!r}")
        mapping[normalize_language(ours.strip())] = theirs.strip()
    return mapping


__all__ = [
    "FORMAT_NAME",
    "Recipe",
    "is_recipe",
    "load_recipe",
    "parse_lang_map",
    "recipe_from_options",
    "shipped_recipes",
]
