"""What ``xelm data prepare`` (and ``xelm data tokenizer``) reads: a recipe, a dataset or
corpus files, as named sources (``plan_sources``), and how to read them (``SourceOptions``)."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import canonical_json
from xelm_cli.data.corpus import source_kind
from xelm_cli.data.recipes import PLACEHOLDER, Recipe, is_recipe, load_recipe, recipe_from_options
from xelm_cli.data.sources import DatasetSource, FileSource, Source
from xelm_cli.lang.codes import normalize_language


@dataclass(frozen=True)
class SourcePlan:
    """The sources of a preparation, by name, and the one language each yields (None: its
    documents are labelled)."""

    path: str
    kind: str  # files | dataset | recipe
    sources: dict[str, Source]
    recipe: Recipe | None = None

    def only_language(self, name: str) -> str | None:
        source = self.sources[name]
        return source.language if self.recipe is not None else None

    def streamed_languages(self, found: Iterable[str]) -> set[str]:
        """Which of the languages ``found`` were read from a streamed source (a dataset)."""
        streamed: set[str] = set()
        for name, source in self.sources.items():
            if isinstance(source, DatasetSource):
                only = self.only_language(name)
                streamed |= {only} if only else set(found)
        return streamed

    def record(self, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the input is, with a digest of its content (spec/shards-v1.md section 3)."""
        if self.kind == "files":
            source = self.sources["corpus"]
            assert isinstance(source, FileSource)
            return source.record(previous)
        if self.kind == "dataset":
            return {"path": self.path, **self.sources["corpus"].record()}
        records = {lang: source.record() for lang, source in self.sources.items()}
        content = {lang: r["digest"] for lang, r in records.items()}
        return {
            "kind": "recipe",
            "path": self.path,
            "name": self.recipe.name if self.recipe else self.path,
            "digest": sha256_bytes(canonical_json({"kind": "recipe", "content": content})),
            "languages": records,
        }


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source, beyond its path: what ``xelm data prepare`` takes for datasets and
    unlabelled corpora (each None when not given)."""

    split: str | None = None
    language: str | None = None  # the language of documents that carry none
    config: str | None = None  # with {lang}: one configuration per language
    data_dir: str | None = None  # a folder of a dataset; with {lang}: one per language
    lang_map: dict[str, str] | None = None  # xelm code -> the dataset's, for {lang}
    text_column: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.language:  # one form of each code, whoever builds the options
            object.__setattr__(self, "language", normalize_language(self.language))

    def recorded(self) -> dict[str, Any]:
        """The options a shards manifest records beside ``split`` (only those given, so that
        manifests of earlier versions stay comparable)."""
        given = {
            "lang": self.language,
            "config": self.config,
            "data_dir": self.data_dir,
            "lang_map": dict(sorted(self.lang_map.items())) if self.lang_map else None,
            "text_column": self.text_column,
            "revision": self.revision,
        }
        return {k: v for k, v in given.items() if v}


def plan_sources(
    source: str | Path, langs: list[str] | None = None, options: SourceOptions = SourceOptions()
) -> SourcePlan:
    """What ``xelm data prepare SOURCE`` reads: a recipe (a file, or a shipped recipe's name);
    a dataset with a per-language ``config`` template; a dataset whose rows carry languages
    (or ``options.language``); or corpus files."""
    split, language, config = options.split, options.language, options.config
    lang_map, text_column, revision = options.lang_map, options.text_column, options.revision
    data_dir = options.data_dir
    text = str(source)
    per_language = PLACEHOLDER in (config or "") + (data_dir or "")
    if is_recipe(text) or per_language:
        if language is not None:
            raise UsageError("--lang labels an unlabelled corpus; a recipe names each language")
        if per_language:
            if not langs:
                option, template = (
                    ("--config", config)
                    if PLACEHOLDER in (config or "")
                    else ("--data-dir", data_dir)
                )
                raise UsageError(f"{option} {template!r} needs --langs: the languages to read")
            recipe = recipe_from_options(
                text,
                config=config,
                languages=langs,
                lang_map=lang_map,
                split=split,
                text_column=text_column,
                revision=revision,
                data_dir=data_dir,
            )
            split = None  # in the recipe already
        else:
            if config is not None or data_dir or lang_map or text_column or revision:
                raise UsageError(
                    "--config, --data-dir, --lang-map, --text-column and --revision describe a "
                    "dataset; a recipe sets them per language"
                )
            recipe = load_recipe(text)
        chosen = langs or recipe.languages
        return SourcePlan(text, "recipe", recipe.sources(chosen, split=split), recipe)
    if lang_map:
        raise UsageError(
            "--lang-map maps languages into a --config / --data-dir template such as '{lang}'"
        )
    kind = source_kind(source)
    if config is not None or data_dir or kind in ("hf-hub", "hf-dir"):
        dataset = DatasetSource(
            text,
            config=config,
            data_dir=data_dir,
            languages=tuple(langs) if langs else None,
            split=split or "train",
            text_column=text_column or "text",
            revision=revision,
            label=language,  # normalised by SourceOptions
        )
        return SourcePlan(text, "dataset", {"corpus": dataset})
    if not Path(source).exists():
        raise UsageError(
            f"corpus not found: {text} (not a file or directory, a dataset id owner/name, or a "
            "recipe that `xelm data recipes` lists)"
        )
    if revision:
        raise UsageError("--revision is for Hub datasets, not corpus files: drop it")
    if text_column and kind != "hf-disk":
        raise UsageError(
            "--text-column is for datasets, not corpus files (their records hold 'text'): drop it"
        )
    files = FileSource(
        text,
        language=language,
        split=split,
        languages=tuple(langs) if langs else None,
        text_column=text_column,
    )
    return SourcePlan(text, "files", {"corpus": files})
