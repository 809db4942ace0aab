"""What ``xelm data prepare`` (and ``xelm data tokenizer``) reads: a recipe, a dataset or
corpus files, as named sources (``plan_sources``), and how to read them (``SourceOptions``)."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import canonical_json
from xelm_cli.data.corpus import source_kind
from xelm_cli.data.recipes import (
    PLACEHOLDER,
    Recipe,
    is_recipe,
    load_recipe,
    parse_lang_map,
    recipe_from_options,
)
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

    @property
    def streams(self) -> bool:
        """Whether any source is streamed (a dataset); corpus files are read whole."""
        return any(isinstance(source, DatasetSource) for source in self.sources.values())

    def streamed_languages(self, found: Iterable[str]) -> set[str]:
        """Which of the languages ``found`` were read from a streamed source (a dataset)."""
        streamed: set[str] = set()
        for name, source in self.sources.items():
            if isinstance(source, DatasetSource):
                only = self.only_language(name)
                streamed |= {only} if only else set(found)
        return streamed & set(found)  # a source of one language may have given none of it

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


def reading_field(flag: str, help: str, parse: Callable[[str], Any] | None = None) -> Any:
    """A field of ``SourceOptions``: its command-line flag (``--lang``), the flag's help, and
    how the flag's text becomes the field's value (``parse``; the text itself when None)."""
    return field(default=None, metadata={"flag": flag, "help": help, "parse": parse})


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source, beyond its path (each None when not given): the ``reading`` of
    ``prepare``, ``train_tokenizer_on_corpus``, ``cluster`` and ``sample_documents``. The flags
    of ``xelm data prepare``, ``xelm data tokenizer`` and ``xelm cluster NAME`` that set them
    are derived from these fields (``xelm_cli.data.reading_flags``)."""

    split: str | None = reading_field("--split", "Split of a Hugging Face dataset (default train).")
    language: str | None = reading_field(
        "--lang",
        "Language of documents that carry none (records without 'lang', files not named "
        "LANG.jsonl / LANG.txt, datasets without a lang column).",
    )
    config: str | None = reading_field(
        "--config",
        "Dataset configuration; '{lang}' reads one per language of --langs, replaced by the "
        "language's code in the dataset (see --lang-map).",
    )
    data_dir: str | None = reading_field(
        "--data-dir",
        "Dataset folder to read (data/ar); '{lang}' reads one per language of --langs, as in "
        "--config.",
    )
    lang_map: dict[str, str] | None = reading_field(
        "--lang-map",
        "The dataset's code where it differs from xelm's: he=iw,zh=zh-Hans.",
        parse_lang_map,
    )
    text_column: str | None = reading_field("--text-column", "Dataset column with the text (text).")
    revision: str | None = reading_field("--revision", "Dataset revision: a branch, tag or commit.")

    @classmethod
    def flags(cls) -> dict[str, str]:
        """Each field's flag, in declaration order (``{"split": "--split", "language":
        "--lang", ...}``)."""
        return {f.name: f.metadata["flag"] for f in fields(cls)}

    def given_flags(self, *, fields: bool = False) -> list[str]:
        """The flags of the options given (not None), in declaration order; with ``fields``,
        their field names (as a Python caller gives them)."""
        given = [
            (name, flag) for name, flag in self.flags().items() if getattr(self, name) is not None
        ]
        return [name if fields else flag for name, flag in given]

    @classmethod
    def parameters(cls) -> dict[str, str]:
        """Each field's parameter in a command: its flag's name (``{"language": "lang",
        "lang_map": "lang_map", ...}``)."""
        return {name: flag[2:].replace("-", "_") for name, flag in cls.flags().items()}

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
    if split is not None and kind != "hf-disk":
        raise UsageError(
            "--split is for datasets, not corpus files (every file is read): drop it, or pass "
            "the folder or file of the split you mean"
        )
    files = FileSource(
        text,
        language=language,
        split=split,
        languages=tuple(langs) if langs else None,
        text_column=text_column,
    )
    return SourcePlan(text, "files", {"corpus": files})
