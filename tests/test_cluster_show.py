"""`xelm cluster show`: tables, JSON and PNG plots of allocations."""

import json
import re
from pathlib import Path

import matplotlib.image
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


def test_plot_without_tree_writes_only_the_heatmap(shares, tmp_path):
    plots = tmp_path / "plots"
    assert run(["cluster", "show", str(shares), "--plot", str(plots)]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["heatmap.png"]
    _check_png(plots / "heatmap.png")


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
            "experts[0] lists language he twice ('iw' and 'he'): list each language once",
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
        f"xelm: error: {out}: experts[0] lists language he twice ('he' and 'iw'): list each "
        "language once\n"
    )
