"""Corpus recipes (spec/corpus-recipe-v1.md): what a recipe file may name, read without any
dataset (the end-to-end reads are in test_data_hub.py)."""

import json
from pathlib import Path

import pytest

from xelm_cli.cli import run
from xelm_cli.common.errors import FormatError
from xelm_cli.data.recipes import load_recipe


def write_recipe(path: Path, languages: dict[str, dict[str, str]]) -> Path:
    recipe = {
        "format": "xelm-corpus-recipe",
        "format_version": "1.0.0",
        "defaults": {"dataset": "allenai/c4", "config": "{lang}"},
        "languages": languages,
    }
    path.write_text(json.dumps(recipe))
    return path


def test_two_spellings_of_one_language_are_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`he` and `heb` are one language: the recipe is refused before anything is read or
    written, rather than one entry silently replacing the other."""
    path = write_recipe(tmp_path / "twice.json", {"he": {"code": "iw"}, "ar": {}, "heb": {}})
    out = tmp_path / "shards"
    assert run(["data", "prepare", str(path), "--tokenizer", "unused", "-o", str(out)]) == 3
    assert capsys.readouterr().err == (
        "xelm: error: recipe twice.json: language he is given twice ('he' and 'heb'): give each "
        "language once\n"
    )
    assert not out.exists()


def test_tags_are_normalised_and_kept_in_order(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path / "once.json", {"heb": {"code": "iw"}, "ar": {}}))
    assert recipe.languages == ["he", "ar"]
    assert recipe.source("he").config == "iw"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (  # the schema holds no unknown top-level member
            '{"format": "xelm-corpus-recipe", "format_version": "1.0.0", "extra": 1, '
            '"languages": {"ar": {"dataset": "allenai/c4"}}}',
            "Additional properties are not allowed ('extra' was unexpected)",
        ),
        (  # refused though only ar would be read: the recipe as a whole is invalid
            '{"format": "xelm-corpus-recipe", "format_version": "1.0.0", '
            '"languages": {"ar": {"dataset": "allenai/c4"}, "pl": {"config": "pl"}}}',
            "languages.pl names no dataset and no path (give it one, or a dataset in defaults)",
        ),
        (
            '{"format": "xelm-corpus-recipe", "format_version": "1.0.0", '
            '"languages": {"ar": {"dataset": "allenai/c4", "documents": 5}}}',
            "languages.ar holds documents, a 1.1 field, in a 1.0.0 recipe (say format_version "
            "1.1.0)",
        ),
    ],
)
def test_a_recipe_the_spec_calls_invalid_is_refused_in_one_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(FormatError) as refused:
        load_recipe(tmp_path / "r.json")
    assert str(refused.value).startswith("recipe r.json is not valid: ")
    assert problem in str(refused.value) and "\n" not in str(refused.value)


def test_a_key_repeated_in_a_recipe_is_refused(tmp_path: Path) -> None:
    """Readers disagree on which of two values counts: neither is taken."""
    path = tmp_path / "r.json"
    path.write_text(
        '{"format": "xelm-corpus-recipe", "format_version": "1.0.0", '
        '"languages": {"ar": {"dataset": "allenai/c4", "dataset": "mc4"}}}'
    )
    with pytest.raises(FormatError, match=r"key 'dataset' appears twice in one object$"):
        load_recipe(path)
