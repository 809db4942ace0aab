"""Listing an ensemble's members as users do: directories of bundles, an ensemble file with
new experts, and experts branched but not trained yet."""

import json
from pathlib import Path

import pytest
from cli_helpers import xelm

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.seed import init_from_config


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """runs/experts/x0 (en, tr) and x1 (ar), with a training run's hidden checkpoints."""
    root = tmp_path_factory.mktemp("runs")
    for i, langs in enumerate((["en", "tr"], ["ar"])):
        init_from_config("tiny", tokenizer_dir, root / "experts" / f"x{i}", languages=langs, seed=i)
    (root / "experts" / ".x0.ckpt").mkdir()
    return root / "experts"


def test_a_directory_of_bundles_is_refused_naming_the_glob(
    capsys: pytest.CaptureFixture[str], experts: Path, tmp_path: Path
) -> None:
    code, out, err = xelm(capsys, "ensemble", "create", str(experts), "-o", tmp_path / "e.json")
    assert code == 2 and not out
    assert err.strip() == (
        f"xelm: error: {experts} is a directory of bundles, not a bundle: pass its bundles, "
        f"e.g. '{experts / '*'}' (quoted: xelm expands it and skips checkpoints)"
    )
    code, _, err = xelm(capsys, "ensemble", "create", str(experts / "*"), "-o", tmp_path / "e.json")
    assert code == 0, err
    code, _, err = xelm(capsys, "ensemble", "create", str(tmp_path), "-o", tmp_path / "f.json")
    assert code == 2 and "has no xelm.json: an ensemble member must be a bundle" in err


def test_an_ensemble_file_with_new_experts_is_refused_listing_its_bundles(
    capsys: pytest.CaptureFixture[str], experts: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    ensemble = tmp_path / "ens.json"
    code, _, err = xelm(capsys, "ensemble", "create", str(experts / "*"), "-o", ensemble)
    assert code == 0, err
    new = init_from_config("tiny", tokenizer_dir, tmp_path / "pl", languages=["pl"], seed=5)
    code, out, err = xelm(
        capsys, "ensemble", "create", ensemble, str(new.path), "-o", tmp_path / "ens2.json"
    )
    assert code == 2 and not out and not (tmp_path / "ens2.json").exists()
    members = json.loads(ensemble.read_text())["members"]
    listed = " ".join(str(tmp_path / member["path"]) for member in members)
    assert err.strip() == (
        f"xelm: error: {ensemble} is an ensemble file, which stands alone as the members; to "
        f"add experts to it, list its bundles with them: xelm ensemble create {listed} NEW... "
        "-o NEW.json"
    )
    # the way out, as printed, works
    code, _, err = xelm(
        capsys, "ensemble", "create", *listed.split(), str(new.path), "-o", tmp_path / "ens2.json"
    )
    assert code == 0, err
    assert len(json.loads((tmp_path / "ens2.json").read_text())["members"]) == 3


def test_an_untrained_branch_is_noted_when_ensembled(
    capsys: pytest.CaptureFixture[str], experts: Path, tmp_path: Path
) -> None:
    branched = branch(experts / "x1", tmp_path / "fa", languages=["fa"])
    members = [str(experts / "x0"), str(branched.path)]
    code, _, err = xelm(capsys, "ensemble", "create", *members, "-o", tmp_path / "e.json")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("xelm: note:")]
    assert notes == [
        f"xelm: note: {branched.path} has not been trained since its branch: it scores as its "
        f"parent does; train it first (xelm train {branched.path} --data SHARDS --tokens N -o "
        "TRAINED)"
    ]
    code, _, err = xelm(capsys, "ensemble", "create", str(experts / "*"), "-o", tmp_path / "f.json")
    assert code == 0 and "note" not in err  # bundles made by init (or training): no note


def test_the_language_router_notes_once_a_language_a_later_expert_also_covers(
    capsys: pytest.CaptureFixture[str], experts: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    """An expert retrained beside the old one, both listed: the first gets the language."""
    from xelm_cli.api import Document
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.ensemble.routing import build_router
    from xelm_cli.ensemble.runner import EnsembleModel

    again = init_from_config("tiny", tokenizer_dir, tmp_path / "ar-again", languages=["ar"])
    members = [Bundle.read(experts / "x0"), Bundle.read(experts / "x1"), again]
    model = EnsembleModel(members, build_router("language"))
    capsys.readouterr()
    for _ in range(2):  # noted once, however many batches
        model.score_documents([Document("مرحبا بكم", "ar"), Document("hello there", "en")])
    assert capsys.readouterr().err.splitlines() == [
        "xelm: note: the language router sends a language to the first expert that covers "
        "it: ar to x1, not ar-again (reorder the members, or drop one)"
    ]
    assert model.stats.routing.means() == {"ar": [0.0, 1.0, 0.0], "en": [1.0, 0.0, 0.0]}


def test_experts_of_one_document_clustering_share_languages_without_a_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TF-IDF experts share languages by design (the ensemble warns they are routed by
    language); bundles outside a clustering, or of two, get the note."""
    from xelm_cli.api import Document, ExpertInfo
    from xelm_cli.ensemble.routing import build_router

    def reference(expert: int, digest: str = "d1") -> dict[str, object]:
        return {"clusterer": "tfidf", "expert": expert, "k": 2, "digest": digest}

    documents = [Document("hello", "en")]
    clustered = [ExpertInfo(f"id{e}", f"c{e}", ("en", "tr"), reference(e)) for e in (0, 1)]
    build_router("language").route(documents, clustered)
    assert capsys.readouterr().err == ""
    two = [clustered[0], ExpertInfo("id9", "other", ("en",), reference(1, digest="d2"))]
    for experts in (two, [clustered[0], ExpertInfo("id8", "plain", ("en",))]):
        build_router("language").route(documents, experts)
        assert "en to c0, not" in capsys.readouterr().err


def test_a_json_file_other_than_an_ensemble_is_refused_as_a_non_bundle(
    capsys: pytest.CaptureFixture[str], experts: Path, tmp_path: Path
) -> None:
    allocation = tmp_path / "alloc.json"
    allocation.write_text(json.dumps({"format": "xelm-allocation", "experts": []}))
    code, out, err = xelm(
        capsys, "ensemble", "create", str(experts / "x0"), allocation, "-o", tmp_path / "e.json"
    )
    assert code == 2 and not out
    assert err.strip() == (
        f"xelm: error: {allocation} has no xelm.json: an ensemble member must be a bundle "
        "directory (from Python too, a quoted glob such as 'experts/*' takes only the bundles)"
    )


def test_a_prompt_without_its_language_is_refused_alone_when_experts_share_one(
    experts: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Generation probes the router with the experts' languages to name --lang: the probe's
    note on a shared language is not shown (it names a language the user never gave)."""
    from xelm_cli.ensemble.generation import generate_text

    again = init_from_config("tiny", tokenizer_dir, tmp_path / "en-again", languages=["en"])
    with pytest.raises(Exception, match="needs the prompt's language and it has none") as refused:
        generate_text([experts / "x0", again.path], "Hello", max_new_tokens=2)
    assert "pass --lang CODE" in str(refused.value)
    assert capsys.readouterr().err == ""


def test_a_missing_ensemble_file_is_named_as_one_with_the_way_to_make_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A path ending in .json that does not exist was meant as an ensemble file: not blamed
    as a missing bundle directory."""
    missing = tmp_path / "ens3.json"
    code, out, err = xelm(capsys, "ensemble", "eval", missing, "--data", tmp_path)
    assert code == 2 and not out
    assert err.strip() == (
        f"xelm: error: ensemble file not found: {missing} (make one with: xelm ensemble create "
        f"EXPERTS... -o {missing})"
    )
    code, _, err = xelm(capsys, "ensemble", "eval", tmp_path / "gone", "--data", tmp_path)
    assert code == 2
    assert err.strip() == (
        f"xelm: error: {tmp_path / 'gone'} does not exist: an ensemble member must be a bundle "
        "directory"
    )
