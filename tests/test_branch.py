"""Branching and HMR: O(1) links, lineage, and parents that never change."""

import json
from pathlib import Path

import pytest
import torch

from xelm_cli.bundle.branching import branch, hmr_branch
from xelm_cli.bundle.lineage import lineage_graph, roots
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.cluster.allocation import read_allocation
from xelm_cli.common.errors import UsageError


def write_allocation(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "format": "xelm-allocation",
                "format_version": "1.0.0",
                "clusterer": "typology",
                "experts": [
                    {"index": 0, "languages": ["en", "ru"]},
                    {"index": 1, "languages": ["tr", "ar"]},
                ],
            }
        )
    )
    return path


def digests(bundle_dir: Path) -> dict[str, str]:
    from xelm_cli.common.digest import sha256_file

    return {p.name: sha256_file(p) for p in sorted(bundle_dir.iterdir())}


@pytest.fixture
def experts(tmp_path: Path, seed_bundle: Path) -> tuple[Path, Path]:
    alloc = read_allocation(write_allocation(tmp_path / "alloc.json"))
    pool = tmp_path / "experts"
    e0 = branch(seed_bundle, pool / "e0", allocation=alloc, expert=0)
    e1 = branch(seed_bundle, pool / "e1", allocation=alloc, expert=1)
    return e0.path, e1.path


def test_branch_links_weights_and_records_allocation(experts, seed_bundle: Path) -> None:
    e0, e1 = experts
    seed = Bundle.open(seed_bundle)
    child = Bundle.open(e1)
    assert child.languages == ["tr", "ar"]
    assert child.manifest.role == "expert"
    assert child.manifest.allocation["expert"] == 1
    assert child.manifest.allocation["clusterer"] == "typology"
    assert child.manifest.allocation["digest"].startswith("sha256:")
    assert child.manifest.relation == "branch"
    assert child.manifest.parents == [seed.ref]
    assert child.id != seed.id and child.digest != seed.digest
    assert (e1 / "model.safetensors").stat().st_ino == (
        seed_bundle / "model.safetensors"
    ).stat().st_ino
    assert child.manifest.fingerprints == seed.manifest.fingerprints
    assert verify_bundle(e0) == [] and verify_bundle(e1) == []


def test_training_a_child_leaves_parent_and_sibling_unchanged(
    experts, tmp_path, seed_bundle
) -> None:
    e0, e1 = experts
    before = {p: digests(p) for p in (seed_bundle, e0, e1)}
    parent = Bundle.open(e1)
    model = parent.load_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    training = {"tokens": 1000, "steps": 2, "data_digest": None, "command": "test", "options": {}}
    with write_bundle(
        tmp_path / "e1-trained",
        role="expert",
        languages=parent.languages,
        parent=parent,
        step={"relation": "train", "parents": [parent.ref]},
        training=training,
    ) as writer:
        writer.save_model(model)
    trained = writer.result
    assert {p: digests(p) for p in (seed_bundle, e0, e1)} == before
    assert verify_bundle(trained.path) == []
    assert trained.manifest.files["model.safetensors"] != parent.manifest.files["model.safetensors"]
    assert trained.manifest.files["tokenizer.json"] == parent.manifest.files["tokenizer.json"]
    assert [s["relation"] for s in trained.manifest.lineage] == ["init", "branch", "train"]
    assert trained.manifest.training["tokens"] == 1000


def test_hmr_branch_picks_donor_expert(experts, tmp_path: Path) -> None:
    e0, e1 = experts
    az = hmr_branch([e0.parent], "tr", "az", tmp_path / "az")
    assert az.languages == ["az"]
    step = az.manifest.lineage[-1]
    assert step["relation"] == "hmr-branch" and step["donor"] == "tr" and step["language"] == "az"
    assert step["parents"] == [Bundle.open(e1).ref]


def test_hmr_errors_list_candidates(experts, tmp_path: Path, seed_bundle: Path) -> None:
    e0, _ = experts
    with pytest.raises(UsageError, match=r"no bundle in the pool covers donor language 'sw'.*e0"):
        hmr_branch([e0.parent], "sw", "az", tmp_path / "x")
    alloc = read_allocation(write_allocation(tmp_path / "a2.json"))
    branch(seed_bundle, e0.parent / "e1-again", allocation=alloc, expert=1)
    with pytest.raises(UsageError, match=r"several bundles.*e1.*e1-again"):
        hmr_branch([e0.parent], "tr", "az", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_lineage_graph_from_manifests(experts, tmp_path: Path, seed_bundle: Path) -> None:
    e0, e1 = experts
    az = hmr_branch([e0.parent], "tr", "az", tmp_path / "az")
    # the seed is not in the set: it still appears, by reference, as the common root
    nodes = lineage_graph([Bundle.read(p) for p in (e0, e1, az.path)])
    (root,) = roots(nodes)
    assert root.digest == Bundle.read(seed_bundle).digest and not root.present
    assert nodes[az.digest].parents == [Bundle.read(e1).digest]
    assert len(nodes) == 4


def test_bad_branch_requests(tmp_path: Path, seed_bundle: Path) -> None:
    alloc = read_allocation(write_allocation(tmp_path / "alloc.json"))
    with pytest.raises(UsageError, match="expert 5 does not exist"):
        branch(seed_bundle, tmp_path / "x", allocation=alloc, expert=5)
    with pytest.raises(UsageError, match="--allocation needs --expert"):
        branch(seed_bundle, tmp_path / "x", allocation=alloc)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format_version="2.0.0"), "not supported"),
        (lambda d: d.update(experts=[]), "allocation experts"),
        (lambda d: d["experts"][0].update(languages="en"), "allocation experts/0/languages"),
        (lambda d: d.update(k=3), "'k' is 3 but there are 2 experts"),
        (lambda d: d["experts"][1].update(languages=["tr", "xx"]), "unknown language code 'xx'"),
    ],
)
def test_bad_allocation_files_are_refused(tmp_path: Path, edit, message: str) -> None:
    from xelm_cli.common.errors import FormatError

    path = write_allocation(tmp_path / "alloc.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=message):
        read_allocation(path)


def test_branch_from_python_takes_an_allocation_file_and_language_text(
    tmp_path: Path, seed_bundle: Path
) -> None:
    alloc_file = write_allocation(tmp_path / "alloc.json")
    by_path = branch(seed_bundle, tmp_path / "e1", allocation=alloc_file, expert=1)
    by_text = branch(
        str(seed_bundle), str(tmp_path / "e1-text"), allocation=str(alloc_file), expert=1
    )
    assert by_path.languages == by_text.languages == ["tr", "ar"]
    assert by_path.manifest.allocation == read_allocation(alloc_file).reference(1)
    assert branch(seed_bundle, tmp_path / "en-tr", languages="en, tur").languages == ["en", "tr"]


def test_branch_refuses_an_unknown_role_in_one_line(tmp_path: Path, seed_bundle: Path) -> None:
    with pytest.raises(
        UsageError, match=r"^unknown role 'boss'; choose one of: seed, expert, dense$"
    ):
        branch(seed_bundle, tmp_path / "x", languages=["en"], role="boss")
    assert not (tmp_path / "x").exists()


def test_hmr_from_python_records_what_the_command_records(experts, tmp_path: Path) -> None:
    from xelm_cli.cli import run  # (imports every command group)

    pool = experts[0].parent
    args = ["--from", str(pool), "--donor", "tr", "--lang", "az", "-o", str(tmp_path / "cli")]
    assert run(["bundle", "branch", *args]) == 0
    by_python = hmr_branch(str(pool), "tur", "aze", tmp_path / "py")  # codes are normalised
    by_command = Bundle.open(tmp_path / "cli")
    lineage = [b.manifest.lineage[-1] for b in (by_python, by_command)]
    keys = ("relation", "parents", "donor", "language")
    assert [{k: step[k] for k in keys} for step in lineage] == 2 * [
        {
            "relation": "hmr-branch",
            "parents": [Bundle.read(experts[1]).ref],
            "donor": "tr",
            "language": "az",
        }
    ]
    assert by_python.languages == by_command.languages == ["az"]


def test_hmr_refuses_an_output_that_overlaps_a_bundle_of_the_pool(
    experts, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o the donor itself (with --force), a folder inside a pool bundle, or the folder that
    holds them: one line naming the bundle, before anything is written; the pool is intact."""
    from xelm_cli.cli import run

    e0, e1 = experts
    pool = e0.parent
    before = {p: digests(p) for p in (e0, e1)}
    for out, overlapped in ((e1, e1), (e0 / "az", e0), (pool, e0)):
        expected = (
            f"-o {out} overlaps {overlapped}, a bundle of the pool (--from) that must not "
            "change: write the new expert elsewhere (e.g. -o branches/az)"
        )
        with pytest.raises(UsageError) as refused:
            hmr_branch([pool], "tr", "az", out, overwrite=True)
        assert str(refused.value) == expected
        args = ["--from", str(pool), "--donor", "tr", "--lang", "az", "-o", str(out), "--force"]
        assert run(["bundle", "branch", *args]) == 2
        assert capsys.readouterr().err == f"xelm: error: {expected}\n"
    assert {p: digests(p) for p in (e0, e1)} == before
    assert not (e0 / "az").exists()
    assert verify_bundle(e0) == [] and verify_bundle(e1) == []


def test_hmr_pool_entries_that_overlap_name_each_bundle_once(experts, tmp_path: Path) -> None:
    """``--from experts --from experts/e1`` (or ``experts/../experts``) holds e1 once: it is
    the one donor, not "several bundles"."""
    e0, e1 = experts
    pool = e0.parent
    for entries in ([pool, e1], [pool, pool / ".." / pool.name]):
        az = hmr_branch(entries, "tr", "az", tmp_path / "az", overwrite=True)
        assert az.manifest.parents == [Bundle.read(e1).ref]
