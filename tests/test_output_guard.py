"""The one output check every writer shares (xelm_cli.common.outputs.check_replaceable): with
--force a writer replaces only an earlier output of its own kind (or an empty folder), never an
input, the working directory or a folder of other things, and never writes inside a bundle;
without --force, an existing output is refused with the --force hint only where --force would
then be accepted. The reviewer's cases, through the command line on real tiny inputs."""

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import xelm
from corpus_helpers import corpus_slice

from xelm_cli.bundle.archive import pack_bundle
from xelm_cli.bundle.store import verify_bundle
from xelm_cli.common.digest import sha256_file
from xelm_cli.common.errors import UsageError
from xelm_cli.demo.report import write_report

FORCE_REFUSED = "--force replaces only"
PNG = b"\x89PNG\r\n\x1a\n" + b"a plot"


def contents(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) with its sha256; a file: itself."""
    if folder.is_file():
        return {folder.name: sha256_file(folder)}
    return {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def refused(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """Run ``xelm ARGS``; it must refuse (exit 2) in one line; returns that line."""
    code, out, err = xelm(capsys, *args)
    assert code == 2, (code, out, err)
    assert err.startswith("xelm: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus_slice("train", 30, tmp_path_factory.mktemp("guard") / "corpus")


@pytest.fixture
def things(tmp_path: Path, seed_bundle: Path) -> dict[str, Path]:
    """What --force must not replace: a folder of PNGs, a plain file, a bundle, a folder of
    bundles with notes beside them, a folder holding a sub-folder."""
    plots = tmp_path / "plots-copy"
    plots.mkdir()
    (plots / "heatmap.png").write_bytes(PNG)
    (plots / "figure.png").write_bytes(PNG)
    a_file = tmp_path / "notes.json"
    a_file.write_text('{"mine": true}')
    bundle = tmp_path / "seed-copy"
    shutil.copytree(seed_bundle, bundle)
    experts = tmp_path / "experts"
    shutil.copytree(seed_bundle, experts / "e0")
    (experts / "notes.txt").write_text("keep me")
    nested = tmp_path / "od3"
    (nested / "sub").mkdir(parents=True)
    (nested / "sub" / "keep.txt").write_text("keep")
    return {"plots": plots, "file": a_file, "bundle": bundle, "experts": experts, "od3": nested}


# ------------------------------------------------------------------ xelm data prepare


def test_prepare_never_replaces_its_inputs_or_other_things(
    corpus: Path,
    tmp_path: Path,
    seed_bundle: Path,
    things: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """-o the corpus it reads, -o the tokenizer bundle it reads, a folder of PNGs, a file, a
    bundle: each refused with --force in one line, nothing changed (the reviewer saw the corpus
    and the tokenizer bundle deleted)."""
    copy = tmp_path / "vcopy"
    shutil.copytree(corpus, copy)
    before = {p: contents(p) for p in (copy, *things.values())}
    prepare = ("data", "prepare", copy, "--langs", "en", "--cap", "500")
    err = refused(capsys, *prepare, "--tokenizer", seed_bundle, "-o", copy, "--force")
    assert f"{copy} is {copy}, which this command reads" in err
    bundle = things["bundle"]
    err = refused(capsys, *prepare, "--tokenizer", bundle, "-o", bundle, "--force")
    assert f"{bundle} is {bundle}, which this command reads" in err
    err = refused(capsys, *prepare, "--tokenizer", seed_bundle, "-o", tmp_path, "--force")
    assert f"{tmp_path} holds {copy}, which this command reads" in err
    for name in ("plots", "file", "experts", "od3"):
        for force in (("--force",), ()):
            out = things[name]
            err = refused(capsys, *prepare, "--tokenizer", seed_bundle, "-o", out, *force)
            assert "not shards; --force replaces only shards" in err, err
            assert "write the output somewhere else" in err
    assert {p: contents(p) for p in before} == before
    assert verify_bundle(bundle) == []


def test_prepare_still_replaces_shards_and_leaves_up_to_date_ones(
    corpus: Path, tmp_path: Path, seed_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    prepare = ("data", "prepare", corpus, "--tokenizer", seed_bundle, "--langs", "en")
    code, _, err = xelm(capsys, *prepare, "--cap", "300", "-o", out)
    assert code == 0, err
    code, stdout, err = xelm(capsys, *prepare, "--cap", "300", "-o", out)
    assert code == 0 and "up to date" in stdout, err
    code, _, err = xelm(capsys, *prepare, "--cap", "200", "-o", out, "--force")
    assert code == 0, err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = xelm(capsys, *prepare, "--cap", "200", "-o", empty, "--force")
    assert code == 0, err
    assert (empty / "shards.json").is_file()


def test_prepare_refuses_shards_inside_a_bundle(
    corpus: Path, tmp_path: Path, seed_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(seed_bundle, bundle)
    err = refused(
        capsys, "data", "prepare", corpus, "-t", seed_bundle, "-o", bundle / "shards", "--force"
    )
    assert f"inside the bundle {bundle}" in err
    assert verify_bundle(bundle) == []


# ------------------------------------------------------------------ xelm data tokenizer


def test_tokenizer_replaces_only_a_tokenizer(
    corpus: Path, tmp_path: Path, things: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: contents(p) for p in (corpus, *things.values())}
    command = ("data", "tokenizer", corpus, "--vocab-size", "300", "--chars-per-language", "500")
    for name in ("plots", "bundle", "file", "od3"):
        err = refused(capsys, *command, "-o", things[name], "--force")
        assert "not a tokenizer; --force replaces only a tokenizer" in err, err
    err = refused(capsys, *command, "-o", corpus, "--force")
    assert "which this command reads" in err
    assert {p: contents(p) for p in before} == before
    out = tmp_path / "tok"
    code, _, err = xelm(capsys, *command, "-o", out)
    assert code == 0, err
    err = refused(capsys, *command, "-o", out)  # its own kind: --force would replace it
    assert err.endswith("already exists; choose another path or pass --force\n")
    code, _, err = xelm(capsys, *command, "-o", out, "--force")
    assert code == 0, err


# ------------------------------------------------------------------ allocations


def test_cluster_writers_replace_only_an_allocation(
    corpus: Path, tmp_path: Path, things: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """typology (a file) and tfidf (a folder) over a bundle, a folder of PNGs, other files:
    refused; over the data they read: refused; over an allocation: replaced."""
    before = {p: contents(p) for p in (corpus, *things.values())}
    typology = ("cluster", "typology", "--langs", "en,tr,ar,ru", "-k", "2")
    tfidf = ("cluster", "tfidf", corpus, "-k", "2", "--max-docs-per-language", "20")
    for command in (typology, tfidf):
        for name in ("bundle", "plots", "file", "od3"):
            err = refused(capsys, *command, "-o", things[name], "--force")
            assert "--force replaces only an allocation" in err, err
    err = refused(capsys, *tfidf, "-o", corpus, "--force")
    assert "which this command reads" in err
    assert {p: contents(p) for p in before} == before
    alloc = tmp_path / "alloc.json"
    code, _, err = xelm(capsys, *typology, "-o", alloc)
    assert code == 0, err
    err = refused(capsys, *typology, "-o", alloc)
    assert "already exists; choose another path or pass --force" in err
    code, _, err = xelm(capsys, *typology, "-o", alloc, "--force")
    assert code == 0, err
    code, _, err = xelm(capsys, *tfidf, "-o", tmp_path / "alloc-tfidf")
    assert code == 0, err
    code, _, err = xelm(capsys, *tfidf, "-o", tmp_path / "alloc-tfidf", "--force")
    assert code == 0, err


def test_write_allocation_itself_refuses_a_bundle(tmp_path: Path, seed_bundle: Path) -> None:
    """A clusterer's own write_allocation (the plugin contract) shares the check."""
    from xelm_cli.cluster.allocation import write_allocation

    bundle = tmp_path / "seed-c2"
    shutil.copytree(seed_bundle, bundle)
    with pytest.raises(UsageError, match=r"--force replaces only an allocation"):
        write_allocation(bundle, clusterer="x", experts=[["en"]], overwrite=True)
    assert verify_bundle(bundle) == []


def test_show_plot_refuses_a_file_in_one_line(
    tmp_path: Path, seed_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alloc = tmp_path / "alloc.json"
    code, _, err = xelm(
        capsys, "cluster", "typology", "--langs", "en,tr,ar", "-k", "2", "-o", alloc
    )
    assert code == 0, err
    kept = alloc.read_bytes()
    code, out, err = xelm(capsys, "cluster", "show", alloc, "--plot", alloc)
    assert code == 2 and out == "", (code, out, err)
    assert err == (
        f"xelm: error: --plot {alloc} is a file, not a folder: give a folder for the plots "
        "(heatmap.png, dendrogram.png), e.g. --plot plots/\n"
    )
    assert alloc.read_bytes() == kept
    bundle = tmp_path / "b"
    shutil.copytree(seed_bundle, bundle)
    err = refused(capsys, "cluster", "show", alloc, "--plot", bundle)
    assert f"inside the bundle {bundle}" in err
    assert verify_bundle(bundle) == []
    plots = tmp_path / "plots"
    code, _, err = xelm(capsys, "cluster", "show", alloc, "--plot", plots)
    assert code == 0, err
    code, _, err = xelm(capsys, "cluster", "show", alloc, "--plot", plots)  # its own plots
    assert code == 0, err
    assert (plots / "heatmap.png").read_bytes().startswith(PNG[:8])


# ------------------------------------------------------------------ bundle writers' hint


def test_the_force_hint_only_where_force_is_then_accepted(
    tmp_path: Path,
    tokenizer_dir: Path,
    things: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bundle init -o experts/ (a folder of bundles) said "pass --force", which --force then
    refused: now one line that says why, without the hint; over a bundle the hint stays."""
    init = ("bundle", "init", "--config", "tiny", "--tokenizer", tokenizer_dir, "--langs", "en")
    for name in ("experts", "file"):
        err = refused(capsys, *init, "-o", things[name])
        assert "pass --force" not in err and FORCE_REFUSED in err, err
        assert "write the output somewhere else" in err
    err = refused(capsys, *init, "-o", things["bundle"])
    assert err.endswith("already exists; choose another path or pass --force\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "or pass --force" in refused(capsys, *init, "-o", empty)


# ------------------------------------------------------------------ bundle pack


def test_pack_never_replaces_a_folder_or_other_files(
    tmp_path: Path, seed_bundle: Path, things: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: contents(p) for p in things.values()}
    for name in ("od3", "plots", "experts", "file"):
        for force in (("--force",), ()):
            err = refused(capsys, "bundle", "pack", seed_bundle, "-o", things[name], *force)
            assert "--force replaces only an archive:" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused(capsys, "bundle", "pack", seed_bundle, "-o", empty, "--force")
    assert f"{empty} is a folder, not an archive; --force replaces only an archive:" in err
    assert {p: contents(p) for p in before} == before
    archive = tmp_path / "a.xelm.tar.zst"
    code, _, err = xelm(capsys, "bundle", "pack", seed_bundle, "-o", archive)
    assert code == 0, err
    assert "or pass --force" in refused(capsys, "bundle", "pack", seed_bundle, "-o", archive)
    code, _, err = xelm(capsys, "bundle", "pack", seed_bundle, "-o", archive, "--force")
    assert code == 0, err
    assert pack_bundle(seed_bundle, archive, overwrite=True) == archive


# ------------------------------------------------------------------ xelm report

REAL = Path(__file__).parents[1] / "docs" / "demo-small" / "results.json"


def test_report_refuses_a_bundle_other_things_and_an_earlier_report_without_force(
    tmp_path: Path, seed_bundle: Path, things: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "run-1.json"  # (a results.json would make tmp_path a report's folder)
    shutil.copy(REAL, results)
    bundle = things["bundle"]
    before = {p: contents(p) for p in things.values()}
    for force in ((), ("--force",)):
        err = refused(capsys, "report", results, "-o", bundle, *force)
        assert f"{bundle} is a folder of other things, not a report" in err, err
        err = refused(capsys, "report", results, "-o", bundle / "report", *force)
        assert f"inside the bundle {bundle}" in err
        err = refused(capsys, "report", results, "-o", things["plots"], *force)
        assert FORCE_REFUSED in err
        err = refused(capsys, "report", results, "-o", tmp_path, *force)
        assert f"{tmp_path} holds {results}, which this command reads" in err
    assert {p: contents(p) for p in before} == before
    assert verify_bundle(bundle) == []
    out = tmp_path / "report"
    code, _, err = xelm(capsys, "report", results, "-o", out)
    assert code == 0, err
    written = contents(out)
    err = refused(capsys, "report", results, "-o", out)
    assert err.endswith("already exists; choose another path or pass --force\n")
    assert contents(out) == written
    code, _, err = xelm(capsys, "report", results, "-o", out, "--force")
    assert code == 0, err
    with pytest.raises(UsageError, match="already exists"):
        write_report(json.loads(REAL.read_text()), out)
    write_report(json.loads(REAL.read_text()), out, overwrite=True)  # the demo's own rewrite
    # a report redrawn in place from its own results.json (read before anything is written)
    kept = json.loads((out / "results.json").read_text())
    code, _, err = xelm(capsys, "report", out / "results.json", "-o", out, "--force")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text()) == kept
    assert (out / "report.md").is_file()
