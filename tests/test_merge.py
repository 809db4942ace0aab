"""Parameter averaging (xelm bundle merge): weights against hand computation, lineage, dtypes,
shards, weight sources, and refusals that come before any tensor is read."""

import json
from pathlib import Path

import pytest
import torch
from conftest import sample_texts, weights
from merge_helpers import perturbed_expert
from transformers import AutoModelForCausalLM

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.merging import merge_average, merge_weights
from xelm_cli.bundle.seed import NAMED_CONFIGS, init_from_config
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.bundle.tensor_stream import INDEX_NAME, TensorSource
from xelm_cli.cluster.allocation import Allocation, write_allocation
from xelm_cli.common.errors import UsageError
from xelm_cli.data.tokenizer import train_bpe_tokenizer

LANGS = ("en", "tr", "ar")


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> list[Bundle]:
    root = tmp_path_factory.mktemp("merge")
    made = []
    for i, lang in enumerate(LANGS):
        branched = branch(seed_bundle, root / f"b-{lang}", languages=[lang])
        made.append(perturbed_expert(branched.path, root / lang, seed=i, languages=[lang]))
    return made


def hand_average(bundles: list[Bundle], w: list[float]) -> dict[str, torch.Tensor]:
    tensors = [weights(b.path) for b in bundles]
    return {
        name: sum(
            (wi * t[name].float() for wi, t in zip(w[1:], tensors[1:], strict=True)),
            w[0] * tensors[0][name].float(),
        ).to(tensors[0][name].dtype)
        for name in tensors[0]
    }


def test_weighted_average_equals_hand_computation_and_loads(
    experts: list[Bundle], tmp_path: Path
) -> None:
    merged = merge_average([b.path for b in experts], tmp_path / "avg", weights=[5, 3, 2])
    expected = hand_average(experts, [0.5, 0.3, 0.2])
    got = weights(merged.path)
    assert got.keys() == expected.keys()
    for name in got:
        assert torch.equal(got[name], expected[name]), name
    assert not torch.equal(got["model.norm.weight"], weights(experts[0].path)["model.norm.weight"])
    step = merged.manifest.lineage[-1]
    assert step["relation"] == "merge" and step["method"] == "average"
    assert step["parents"] == [b.ref for b in experts]
    assert step["weights"] == [0.5, 0.3, 0.2]
    assert merged.manifest.lineage[:-1] == experts[0].manifest.lineage  # first parent's history
    assert merged.manifest.role == "dense" and merged.languages == list(LANGS)
    assert verify_bundle(merged.path) == []
    model = AutoModelForCausalLM.from_pretrained(merged.path)  # plain transformers
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert torch.isfinite(logits).all()
    assert "merge" in (merged.path / "README.md").read_text()


def test_bf16_experts_give_a_bf16_average_computed_in_float32(
    experts: list[Bundle], tmp_path: Path
) -> None:
    halves = [
        perturbed_expert(
            b.path, tmp_path / b.name, seed=9, languages=b.languages, scale=0, dtype=torch.bfloat16
        )
        for b in experts[:2]
    ]
    merged = merge_average([b.path for b in halves], tmp_path / "avg")
    got = weights(merged.path)
    a, b = weights(halves[0].path), weights(halves[1].path)
    for name in got:
        assert got[name].dtype == torch.bfloat16
        expected = (0.5 * a[name].float() + 0.5 * b[name].float()).to(torch.bfloat16)
        assert torch.equal(got[name], expected), name


def test_sharded_experts_give_a_sharded_average(experts: list[Bundle], tmp_path: Path) -> None:
    sharded = [
        perturbed_expert(
            b.path,
            tmp_path / b.name,
            seed=0,
            languages=b.languages,
            scale=0,
            max_shard_size="150KB",
        )
        for b in experts[:2]
    ]
    assert (sharded[0].path / INDEX_NAME).is_file()
    merged = merge_average([b.path for b in sharded], tmp_path / "avg")
    source = TensorSource(merged.path)
    assert source.index is not None and len(source.files) > 1
    assert source.files == TensorSource(sharded[0].path).files
    assert verify_bundle(merged.path) == []
    model = AutoModelForCausalLM.from_pretrained(merged.path)
    expected = hand_average(experts[:2], [0.5, 0.5])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def allocated_experts(experts: list[Bundle], tmp_path: Path) -> tuple[Allocation, list[Bundle]]:
    """A TF-IDF allocation of ``experts``' languages and copies of them as its experts."""
    alloc = write_allocation(
        tmp_path / "alloc.json",
        clusterer="tfidf",
        experts=[["en"], ["tr"], ["ar"]],
        language_shares={"en": [0.5, 0.25, 0.25], "tr": [0.0, 1.0, 0.0]},
    )
    bundles = []
    for i, b in enumerate(experts):
        out = tmp_path / f"x{i}"
        bundles.append(
            perturbed_expert(
                b.path, out, seed=0, languages=b.languages, scale=0, allocation=alloc.reference(i)
            )
        )
    return alloc, bundles


def prior_ensemble(members: list[Bundle], path: Path) -> Path:
    """An ensemble file of ``members`` whose posterior router's prior is 0.2, 0.2, 0.6."""
    listed = [{"path": str(b.path), "id": b.id, "digest": b.digest} for b in members]
    path.write_text(
        json.dumps(
            {
                "format": "xelm-ensemble",
                "format_version": 1,
                "members": listed,
                "router": {"name": "posterior", "options": {"prior": [0.2, 0.2, 0.6]}},
                "combine": "mixture",
            }
        )
    )
    return path


def test_weights_from_a_calibrated_prior_and_from_a_language(
    experts: list[Bundle], tmp_path: Path
) -> None:
    ens = prior_ensemble(experts[::-1], tmp_path / "ens.json")
    assert merge_weights(experts, prior=ens) == pytest.approx([0.6, 0.2, 0.2])
    by_prior = merge_average([b.path for b in experts], tmp_path / "p", prior=str(ens))
    assert by_prior.manifest.lineage[-1]["weights"] == pytest.approx([0.6, 0.2, 0.2])

    alloc, bundles = allocated_experts(experts, tmp_path)
    assert merge_weights(bundles, language="en", allocation=alloc) == [0.5, 0.25, 0.25]
    assert merge_weights(bundles, language="ar", allocation=alloc) == [0.0, 0.0, 1.0]  # one-hot
    merged = merge_average(
        [b.path for b in bundles], tmp_path / "tr", language="tr", allocation=alloc
    )
    assert merged.manifest.role == "expert" and merged.languages == ["tr"]
    assert merged.manifest.lineage[-1]["language"] == "tr"
    assert torch.equal(
        weights(merged.path)["lm_head.weight"], weights(bundles[1].path)["lm_head.weight"]
    )
    with pytest.raises(UsageError, match="not an expert of the allocation"):
        merge_weights(experts, language="en", allocation=alloc)
    with pytest.raises(UsageError, match="both set the weights"):
        merge_weights(experts, weights="1,1,1", prior=ens)


@pytest.fixture()
def no_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: TensorSource, name: str) -> None:
        raise AssertionError(f"read {name} before refusing")

    monkeypatch.setattr(TensorSource, "get", refuse)


def test_experts_of_another_seed_are_refused_before_any_tensor_is_read(
    experts: list[Bundle], tmp_path: Path, tokenizer_dir: Path, no_tensor_reads: None
) -> None:
    other = init_from_config("tiny", tokenizer_dir, tmp_path / "other", languages=["en"], seed=7)
    with pytest.raises(UsageError, match="different seeds"):
        merge_average([experts[0].path, other.path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_architecture_and_tokenizer_are_refused_naming_the_difference(
    experts: list[Bundle],
    tmp_path: Path,
    tokenizer_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_tensor_reads: None,
) -> None:
    monkeypatch.setitem(NAMED_CONFIGS, "tiny3", {**NAMED_CONFIGS["tiny"], "num_hidden_layers": 3})
    deeper = init_from_config("tiny3", tokenizer_dir, tmp_path / "deep", languages=["en"])
    with pytest.raises(UsageError, match=r"different architectures \(tensor model.layers.2"):
        merge_average([experts[0].path, deeper.path], tmp_path / "out")
    # the shapes in the order of the paths that the message names
    monkeypatch.setitem(NAMED_CONFIGS, "wide", {**NAMED_CONFIGS["tiny"], "intermediate_size": 344})
    wide = init_from_config("wide", tokenizer_dir, tmp_path / "wide", languages=["en"])
    with pytest.raises(UsageError) as refused:
        merge_average([experts[0].path, wide.path], tmp_path / "out")
    assert str(refused.value).startswith(
        f"{experts[0].path} and {wide.path} have different architectures "
        "(model.layers.0.mlp.down_proj.weight has shape [64, 172] vs [64, 344]); "
    )
    english = [t for t in sample_texts() if t.isascii()]  # another tokenizer, same size
    tok = train_bpe_tokenizer(english, tmp_path / "tok", vocab_size=320)
    retok = init_from_config("tiny", tok, tmp_path / "retok", languages=["en"])
    assert (
        retok.manifest.fingerprints["architecture"]
        == experts[0].manifest.fingerprints["architecture"]
    )
    with pytest.raises(UsageError, match="different tokenizers"):
        merge_average([experts[0].path, retok.path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_merge_and_one_line_errors(experts: list[Bundle], tmp_path: Path, capsys) -> None:
    from xelm_cli.cli import run  # (imports every command group)

    paths = [str(b.path) for b in experts]
    code = run(
        ["bundle", "merge", *paths, "--weights", "en=1,ar=3", "-o", str(tmp_path / "m"), "--json"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["weights"] == [0.25, 0.0, 0.75]
    code = run(["bundle", "merge", *paths, "--weights", "1,2", "-o", str(tmp_path / "n")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "2 values for 3 experts" in err
    code = run(["bundle", "merge", paths[0], "-o", str(tmp_path / "n")])
    _, err = capsys.readouterr()
    assert code == 2 and "at least two experts" in err
    assert not (tmp_path / "n").exists()


def test_merge_from_python_weighs_a_language_as_the_command_does(
    experts: list[Bundle], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xelm_cli.cli import run  # (imports every command group)

    alloc, bundles = allocated_experts(experts, tmp_path)
    paths = [str(b.path) for b in bundles]
    args = ["--language", "en", "--allocation", str(alloc.path), "-o", str(tmp_path / "cli")]
    assert run(["bundle", "merge", *paths, *args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == [0.5, 0.25, 0.25]
    by_python = merge_average(paths, tmp_path / "py", language="eng", allocation=alloc.path)
    by_command = Bundle.read(tmp_path / "cli")
    for merged in (by_python, by_command):
        step = merged.manifest.lineage[-1]
        assert step["weights"] == [0.5, 0.25, 0.25] and step["language"] == "en"
        assert merged.languages == ["en"] and merged.manifest.role == "expert"
    assert weights(by_python.path).keys() == weights(by_command.path).keys()
    assert all(
        torch.equal(weights(by_python.path)[n], t) for n, t in weights(by_command.path).items()
    )


def test_merge_from_python_refuses_a_language_without_its_weights(
    experts: list[Bundle], tmp_path: Path
) -> None:
    paths = [b.path for b in experts]
    with pytest.raises(UsageError, match=r"^--lang LANG and --allocation FILE go together$"):
        merge_average(paths, tmp_path / "m", language="tr")
    with pytest.raises(UsageError, match=r"^--weights and --language both set the weights"):
        merge_average(paths, tmp_path / "m", language="tr", weights=[0, 1, 0])
    with pytest.raises(UsageError, match=r"^unknown role 'boss'; choose one of"):
        merge_average(paths, tmp_path / "m", role="boss")
    assert not (tmp_path / "m").exists()


def test_merge_from_python_expands_a_quoted_glob(experts: list[Bundle], tmp_path: Path) -> None:
    pattern = str(experts[0].path.parent / "??")  # the experts, not the b-* branches beside them
    merged = merge_average(pattern, tmp_path / "m")
    in_glob_order = sorted(experts, key=lambda b: b.path.name)
    assert merged.manifest.lineage[-1]["parents"] == [b.ref for b in in_glob_order]
    with pytest.raises(UsageError, match=r"^no bundle matches '.*/none\*'$"):
        merge_average(str(tmp_path / "none*"), tmp_path / "n")


def test_two_bundles_of_one_expert_are_refused_when_weighing_a_language(
    experts: list[Bundle], tmp_path: Path
) -> None:
    """A branch beside the expert trained from it, both expert 0: one would silently take the
    language's weight and the other none."""
    alloc, bundles = allocated_experts(experts, tmp_path)
    twin = perturbed_expert(bundles[0].path, tmp_path / "twin", seed=1, languages=["en"],
                            scale=0, allocation=alloc.reference(0))  # fmt: skip
    paths = [*(b.path for b in bundles), twin.path]
    with pytest.raises(UsageError) as refused:
        merge_average(paths, tmp_path / "m", language="en", allocation=alloc.path)
    assert str(refused.value) == (
        f"{bundles[0].path} and {twin.path} are both expert 0 of {alloc.path}: weights by "
        "language need one bundle an expert"
    )
    assert not (tmp_path / "m").exists()


def test_tensors_of_other_shapes_are_not_averaged_flattened(tmp_path: Path) -> None:
    """Six values as 2 x 3 in one bundle and 3 x 2 in another (manifests that lie about their
    architecture): refused by name, not averaged element by element."""
    from safetensors.torch import save_file

    from xelm_cli.bundle.merging import average_tensor

    sources = []
    for name, shape in (("a", (2, 3)), ("b", (3, 2))):
        (tmp_path / name).mkdir()
        save_file({"w": torch.ones(shape)}, str(tmp_path / name / "model.safetensors"))
        sources.append(TensorSource(tmp_path / name))
    with pytest.raises(UsageError) as refused:
        average_tensor(sources, [0.5, 0.5], "w")
    assert str(refused.value) == (
        f"w is (2, 3) in {tmp_path / 'a'} but (3, 2) in {tmp_path / 'b'}; it cannot be averaged"
    )
    assert torch.equal(average_tensor(sources[:1] * 2, [0.5, 0.5], "w"), torch.ones(2, 3))


def test_lineage_names_the_relation_of_every_parent_of_a_merge(
    experts: list[Bundle], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A merge records its first parent's line only: the others, not in the set, show as
    'relation unknown' (not '?'); in the set, after the merge or before it, their own step."""
    from xelm_cli.cli import run  # (imports every command group)

    merged = merge_average([b.path for b in experts], tmp_path / "avg")
    assert run(["bundle", "lineage", str(merged.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    others = [line for line in lines if line.startswith(tuple(b.id[:12] for b in experts[1:]))]
    assert others == [
        f"{b.id[:12]} (not in this set) relation unknown {b.digest.removeprefix('sha256:')[:12]}"
        for b in experts[1:]
    ]
    assert not any(" ? " in line for line in lines)
    assert run(["bundle", "lineage", str(merged.path), "--json"]) == 0
    nodes = {node["id"]: node for node in json.loads(capsys.readouterr().out)["nodes"]}
    assert [nodes[b.id]["relation"] for b in experts] == ["train", "unknown", "unknown"]
    for order in ([merged.path, experts[1].path], [experts[1].path, merged.path]):
        assert run(["bundle", "lineage", *map(str, order), "--json"]) == 0
        nodes = {node["id"]: node for node in json.loads(capsys.readouterr().out)["nodes"]}
        assert nodes[experts[1].id]["relation"] == "train", order
        assert nodes[experts[2].id]["relation"] == "unknown"


def test_the_text_report_names_the_weights_and_their_source(
    experts: list[Bundle], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json had the weights; the text report names them too, each by its expert's path,
    with where they came from (a prior's or a language's weights are computed, not given)."""
    from xelm_cli.cli import run  # (imports every command group)

    ens = prior_ensemble(experts, tmp_path / "ens.json")
    alloc, bundles = allocated_experts(experts, tmp_path)
    paths = [str(b.path) for b in experts]
    allocated = [str(b.path) for b in bundles]
    cases = [
        (paths, ["--prior", str(ens)], f"the calibrated prior of {ens}", ["0.2", "0.2", "0.6"]),
        (allocated, ["--lang", "en", "--allocation", str(alloc.path)],
         f"en's row of {alloc.path}", ["0.5", "0.25", "0.25"]),
        (paths, ["--weights", "1,1,2"], "from --weights", ["0.25", "0.25", "0.5"]),
        (paths, [], "uniform", ["0.3333", "0.3333", "0.3333"]),
    ]  # fmt: skip
    for i, (given, args, source, shown) in enumerate(cases):
        out = tmp_path / f"m{i}"
        assert run(["bundle", "merge", *given, *args, "-o", str(out)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"wrote {Bundle.read(out).manifest.role} bundle {out} (")
        listed = ", ".join(f"{p} {w}" for p, w in zip(given, shown, strict=True))
        assert lines[1:] == [f"weights ({source}): {listed}"]
