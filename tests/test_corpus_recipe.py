"""Corpus recipes (spec/corpus-recipe-v1.md): what a recipe file may name, read without any
dataset (the end-to-end reads are in test_data_hub.py)."""

import json
from pathlib import Path

import pytest

from xelm_cli.cli import run
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
