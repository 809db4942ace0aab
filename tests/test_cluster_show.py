"""`xelm cluster show`: tables, JSON and PNG plots of allocations."""

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from xelm_cli.api import UsageError, allocation_summary, read_allocation, write_allocation
from xelm_cli.bundle.manifest import schema_problems
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import allocation_schema

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TREE = {
    "leaves": ["en", "es", "de", "el"],
    "linkage": [[0, 1, 0.1, 2], [2, 3, 0.2, 2], [4, 5, 0.5, 4]],
}


@pytest.fixture
def typology(tmp_path: Path) -> Path:
    out = tmp_path / "typology.json"
    write_allocation(
        out, clusterer="typology", experts=[["en", "es"], ["de", "el"]], members={"tree": TREE}
    )
    return out


@pytest.fixture
def shares(tmp_path: Path) -> Path:
    out = tmp_path / "tfidf.json"
    shares = {"ar": [0.9, 0.1, 0.0], "zh": [0.05, 0.05, 0.9], "en": [0.2, 0.7, 0.1]}
    write_allocation(
        out, clusterer="tfidf", experts=[["ar", "en"], ["en"], ["zh"]], language_shares=shares
    )
    return out


def _check_png(path: Path) -> None:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 200 and width > 200


def test_show_languages_per_expert(typology, capsys):
    assert run(["cluster", "show", str(typology)]) == 0
    out = capsys.readouterr().out
    assert "en, es" in out and "de, el" in out and "typology" in out


def test_show_shares_table_and_json(shares, capsys):
    assert run(["cluster", "show", str(shares)]) == 0
    out = capsys.readouterr().out
    assert "share of each language" in out and "90%" in out
    assert run(["cluster", "show", str(shares), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["k"] == 3 and data["language_shares"]["zh"] == [0.05, 0.05, 0.9]
    assert data["experts"][2] == {"index": 2, "languages": ["zh"]}
    assert data == allocation_summary(read_allocation(shares))  # the command is the Python call


def test_show_reports_each_languages_purity_and_their_mean(shares, capsys):
    """Purity: a language's largest share (ar 0.9, en 0.7, zh 0.9); their mean 2.5 / 3."""
    assert run(["cluster", "show", str(shares)]) == 0
    out = capsys.readouterr().out
    assert "mean purity 0.83" in out and "0.70" in out
    assert run(["cluster", "show", str(shares), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["language_purity"] == {"ar": 0.9, "en": 0.7, "zh": 0.9}
    assert data["mean_purity"] == round(2.5 / 3, 6)  # rounded: no 0.8333333333333334


def test_plot_writes_heatmap_and_dendrogram(typology, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert run(["cluster", "show", str(typology), "--plot", str(plots), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)["plots"]
    assert sorted(Path(p).name for p in written) == ["dendrogram.png", "heatmap.png"]
    _check_png(plots / "heatmap.png")
    _check_png(plots / "dendrogram.png")


def test_plot_without_tree_writes_only_the_heatmap(shares, typology, tmp_path):
    plots = tmp_path / "plots"
    assert run(["cluster", "show", str(shares), "--plot", str(plots)]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["heatmap.png"]
    _check_png(plots / "heatmap.png")
    # into a folder of a typology's plots: its tree does not stay beside the new heatmap
    assert run(["cluster", "show", str(typology), "--plot", str(plots)]) == 0
    assert run(["cluster", "show", str(shares), "--plot", str(plots)]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["heatmap.png"]


def test_plot_of_a_one_language_tree_writes_only_the_heatmap(tmp_path, capsys):
    """One language: no merges, linkage [] (was refused as not an (n-1) x 4 linkage)."""
    one = tmp_path / "one.json"
    tree = {"leaves": ["en"], "linkage": []}
    write_allocation(one, clusterer="typology", experts=[["en"]], members={"tree": tree})
    plots = tmp_path / "plots"
    assert run(["cluster", "show", str(one), "--plot", str(plots), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plots"] == [str(plots / "heatmap.png")]
    assert sorted(p.name for p in plots.iterdir()) == ["heatmap.png"]
    _check_png(plots / "heatmap.png")


def test_malformed_tree_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    tree = {"leaves": ["en", "es"], "linkage": [[0, 1]]}
    write_allocation(bad, clusterer="typology", experts=[["en", "es"]], members={"tree": tree})
    plots = tmp_path / "plots"
    assert run(["cluster", "show", str(bad), "--plot", str(plots)]) == 3
    assert capsys.readouterr().err.count("\n") == 1
    assert not plots.exists()


def test_missing_allocation(tmp_path, capsys):
    assert run(["cluster", "show", str(tmp_path / "nope")]) == 2
    assert "allocation not found" in capsys.readouterr().err


def test_an_expert_without_languages_is_refused_when_written_and_read(tmp_path, capsys):
    out = tmp_path / "empty.json"
    with pytest.raises(UsageError) as caught:
        write_allocation(out, clusterer="typology", experts=[["en"], []])
    assert str(caught.value) == "expert 1 has no languages; give every expert at least one"
    assert not out.exists()

    # a file written by other code: the same line when read (was a ZeroDivisionError in plan)
    write_allocation(out, clusterer="typology", experts=[["en"], ["es"]])
    data = json.loads(out.read_text())
    data["experts"][1]["languages"] = []
    out.write_text(json.dumps(data))
    assert run(["cluster", "show", str(out)]) == 3
    assert capsys.readouterr().err == (
        f"xelm: error: {out}: expert 1 has no languages; give every expert at least one\n"
    )
    data["experts"][1]["languages"] = ["es"]
    data["experts"].append({"index": 2, "languages": []})
    data["k"] = 3
    problems = schema_problems(data, allocation_schema(), what="allocation")
    assert problems == ["allocation experts/2/languages: [] should be non-empty"]


@pytest.mark.parametrize(
    ("experts", "problem"),
    [
        ([["en", "en"]], "allocation experts/0/languages: ['en', 'en'] has non-unique elements"),
        ([["en", "klingonese"]], "experts[0]: unknown language code 'klingonese': "),
        (
            [["EN", "iw", "he"]],
            "experts[0]: language he is given twice ('iw' and 'he'): give each language once",
        ),
    ],
)
def test_an_invalid_allocation_is_refused_before_it_is_written(tmp_path, experts, problem):
    """The checks a reader makes, made before writing: nothing is left, and --force does not
    replace a valid allocation with the refused one (both were written, then refused)."""
    out = tmp_path / "alloc.json"
    with pytest.raises(UsageError) as caught:
        write_allocation(out, clusterer="typology", experts=experts)
    assert str(caught.value).startswith(problem) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    write_allocation(out, clusterer="typology", experts=[["en"]])
    valid = out.read_bytes()
    with pytest.raises(UsageError, match=re.escape(problem)):
        write_allocation(out, clusterer="typology", experts=experts, overwrite=True)
    assert out.read_bytes() == valid and list(tmp_path.iterdir()) == [out]


def test_an_allocation_is_written_with_normalised_codes(tmp_path: Path, capsys) -> None:
    """Codes are written as a reader reads them (EN is en, iw he); one language under two
    codes in a hand-written file is refused by the reader in one line naming it."""
    out = tmp_path / "w.json"
    written = write_allocation(out, clusterer="typology", experts=[["EN", "iw"], ["de"]])
    assert [e["languages"] for e in json.loads(out.read_text())["experts"]] == [
        ["en", "he"],
        ["de"],
    ]
    assert written.experts == [["en", "he"], ["de"]]
    data = json.loads(out.read_text())
    data["experts"][0]["languages"] = ["he", "en", "iw"]
    out.write_text(json.dumps(data))
    assert run(["cluster", "show", str(out)]) == 3
    assert capsys.readouterr().err == (
        f"xelm: error: {out}: experts[0]: language he is given twice ('he' and 'iw'): give each "
        "language once\n"
    )


def test_show_of_an_allocation_with_damaged_or_missing_arrays_fails(tmp_path, capsys):
    """Its tables describe arrays that are no longer there (was exit 0: show never read them)."""
    out = tmp_path / "alloc"
    write_allocation(
        out, clusterer="tfidf", experts=[["en"], ["es"]], arrays={"centroids": np.eye(2)}
    )
    assert run(["cluster", "show", str(out)]) == 0
    capsys.readouterr()
    arrays = out / "arrays.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-1] + b"!")
    assert run(["cluster", "show", str(out), "--json"]) == 4
    captured = capsys.readouterr()
    assert captured.out == "" and "sha256 does not match allocation.json" in captured.err
    arrays.unlink()
    assert run(["cluster", "show", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"xelm: error: {out}: missing arrays.safetensors: restore the allocation folder from "
        "a copy, or run `xelm cluster` again\n"
    )


def test_language_shares_are_written_by_normalised_code_and_checked(tmp_path, capsys):
    out = tmp_path / "tfidf.json"
    shares = {"EN": [0.25, 0.75], "iw": [1.0, 0.0]}
    allocation = write_allocation(
        out, clusterer="tfidf", experts=[["en"], ["en", "he"]], language_shares=shares
    )
    assert json.loads(out.read_text())["language_shares"] == {
        "en": [0.25, 0.75], "he": [1.0, 0.0],
    }  # fmt: skip
    assert allocation.language_shares == {"en": [0.25, 0.75], "he": [1.0, 0.0]}
    refused = {
        "twice": (
            {"he": [1.0, 0.0], "iw": [1.0, 0.0]},
            "language_shares: language he is given twice",
        ),
        "short": ({"en": [1.0]}, "language_shares['en'] has 1 values for 2 experts"),
        "unknown": ({"xyz": [1.0, 0.0]}, "language_shares: unknown language code 'xyz'"),
    }
    for name, (bad, message) in refused.items():
        with pytest.raises(UsageError, match=re.escape(message)):
            write_allocation(
                tmp_path / f"{name}.json",
                clusterer="tfidf",
                experts=[["en"], ["he"]],
                language_shares=bad,
            )
        assert not (tmp_path / f"{name}.json").exists()
    # a file written by other code: read as the code it names, or refused in one line
    data = json.loads(out.read_text())
    data["language_shares"] = {"EN": [0.5, 0.5]}
    out.write_text(json.dumps(data))
    assert read_allocation(out).language_shares == {"en": [0.5, 0.5]}
    assert run(["cluster", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["language_shares"] == {"en": [0.5, 0.5]}
    data["language_shares"] = {"en": [0.5, 0.25, 0.25]}
    out.write_text(json.dumps(data))
    assert run(["cluster", "show", str(out)]) == 3
    assert "has 3 values for 2 experts" in capsys.readouterr().err
