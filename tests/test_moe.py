"""xelm bundle moe: experts' MLPs as the experts of a transformers Mixture-of-Experts model."""

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, weights
from merge_helpers import SMALL_CONFIG, mlp_experts, perturbed_expert, seed_from_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.moe import build_moe
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.bundle.tensor_stream import TensorSource
from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import read_documents

LANGS = ("en", "tr", "ar")
FLORES = SHARED_DATA / "eval" / "flores200-devtest"


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> list[Bundle]:
    return mlp_experts(seed_bundle, tmp_path_factory.mktemp("moe"), LANGS)


def route_all_to(model: torch.nn.Module, expert: int) -> None:
    """Top-1 routing fixed to one expert in every layer (whatever the router weights say)."""
    for layer in model.model.layers:
        gate = layer.mlp.gate

        def forward(hidden: torch.Tensor, gate: torch.nn.Module = gate) -> tuple:
            n = hidden.reshape(-1, gate.weight.shape[1]).shape[0]
            return (
                torch.zeros(n, gate.weight.shape[0]),
                torch.ones(n, 1),
                torch.full((n, 1), expert),
            )

        gate.forward = forward


def check_moe(moe: Bundle, experts: list[Bundle], architecture: str) -> None:
    assert verify_bundle(moe.path) == []
    model = AutoModelForCausalLM.from_pretrained(moe.path)  # plain transformers
    assert type(model).__name__ == architecture
    step = moe.manifest.lineage[-1]
    assert (step["relation"], step["method"]) == ("merge", "moe")
    assert step["parents"] == [b.ref for b in experts]
    ids = torch.tensor([[3, 50, 7, 120, 9, 33, 200]])
    for e, bundle in enumerate(experts):
        dense = bundle.load_model()
        layer = dense.model.layers[1].mlp
        fused = model.model.layers[1].mlp.experts
        gate_up = torch.cat([layer.gate_proj.weight, layer.up_proj.weight])  # bit for bit
        assert torch.equal(fused.gate_up_proj[e], gate_up)
        assert torch.equal(fused.down_proj[e], layer.down_proj.weight)
        route_all_to(model, e)
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, dense(ids).logits, atol=2e-5, rtol=0)


def test_llama_experts_become_mixtral(experts: list[Bundle], tmp_path: Path) -> None:
    moe = build_moe([b.path for b in experts], tmp_path / "moe", top_k=1, gate="uniform")
    check_moe(moe, experts, "MixtralForCausalLM")
    stored = load_file(str(moe.path / "model.safetensors"))
    for e, bundle in enumerate(experts):
        dense = weights(bundle.path)
        for ours, theirs in (("w1", "gate"), ("w2", "down"), ("w3", "up")):
            name = f"model.layers.0.block_sparse_moe.experts.{e}.{ours}.weight"
            assert torch.equal(stored[name], dense[f"model.layers.0.mlp.{theirs}_proj.weight"])
    assert not stored["model.layers.0.block_sparse_moe.gate.weight"].any()  # uniform
    config = json.loads((moe.path / "config.json").read_text())
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (3, 1)
    assert moe.languages == list(LANGS)


@pytest.mark.parametrize(
    ("model_type", "architecture"),
    [
        ("mistral", "MixtralForCausalLM"),
        ("qwen2", "Qwen2MoeForCausalLM"),
        ("qwen3", "Qwen3MoeForCausalLM"),
    ],
)
def test_mistral_and_qwen_experts(
    model_type: str, architecture: str, tmp_path: Path, tokenizer_dir: Path
) -> None:
    seed = seed_from_config(
        model_type, tokenizer_dir, tmp_path / "seed", list(LANGS), **SMALL_CONFIG
    )
    experts = mlp_experts(seed.path, tmp_path, LANGS)
    moe = build_moe([b.path for b in experts], tmp_path / "moe", top_k=1, gate="random")
    check_moe(moe, experts, architecture)
    if model_type == "qwen2":  # its always-on shared expert adds nothing and learns nothing
        model = AutoModelForCausalLM.from_pretrained(moe.path)
        ids = torch.tensor([[3, 50, 7, 120, 9, 33, 200]])
        model(ids, labels=ids).loss.backward()
        shared = {n: p for n, p in model.named_parameters() if ".shared_expert" in n}
        assert len(shared) == 4 * SMALL_CONFIG["num_hidden_layers"]
        for name, parameter in shared.items():
            assert parameter.numel() > 0 and not parameter.any(), name
            assert parameter.grad is not None and not parameter.grad.any(), name


def test_language_gates_route_language_pure_text_to_its_expert(
    experts: list[Bundle], tmp_path: Path
) -> None:
    moe = build_moe(
        [b.path for b in experts],
        tmp_path / "moe",
        top_k=1,
        gate="language",
        calibration=str(FLORES),
        calibration_limit=10,
    )
    model = AutoModelForCausalLM.from_pretrained(moe.path)
    router = model.model.layers[0].mlp.gate.weight
    torch.testing.assert_close(router.norm(dim=1), torch.ones(3))
    chosen: list[torch.Tensor] = []
    model.model.layers[0].mlp.gate.register_forward_hook(
        lambda module, inputs, output: chosen.append(output[2].flatten())
    )
    tokenizer = experts[0].load_tokenizer()
    for e, lang in enumerate(LANGS):
        held_out = read_documents(FLORES, languages=[lang], limit=30)[10:]  # not calibration
        chosen.clear()
        with torch.no_grad():
            for doc in held_out:
                model(torch.tensor([tokenizer(doc.text, add_special_tokens=False).input_ids]))
        share = (torch.cat(chosen) == e).float().mean().item()
        assert share > 0.4, (lang, share)  # chance is 1/3


def test_shared_weights_from_the_seed(
    experts: list[Bundle], tmp_path: Path, seed_bundle: Path
) -> None:
    general = mlp_experts(seed_bundle, tmp_path, LANGS, only="")  # all weights differ
    moe = build_moe([b.path for b in general], tmp_path / "moe", shared_from=seed_bundle)
    stored, seed = load_file(str(moe.path / "model.safetensors")), weights(seed_bundle)
    assert torch.equal(
        stored["model.layers.1.self_attn.q_proj.weight"],
        seed["model.layers.1.self_attn.q_proj.weight"],
    )
    assert moe.manifest.lineage[-1]["shared_from"] == Bundle.read(seed_bundle).ref
    with pytest.raises(UsageError, match="is not an ancestor of every expert"):
        build_moe([b.path for b in general], tmp_path / "x", shared_from=general[0].path)
    with pytest.raises(UsageError, match="--shared-from replaces by the seed's: give one of them"):
        paths = [b.path for b in general]
        build_moe(paths, tmp_path / "x", shared_from=seed_bundle, weights=[0.3] * len(paths))
    assert not (tmp_path / "x").exists()


@pytest.fixture()
def no_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: TensorSource, name: str) -> None:
        raise AssertionError(f"read {name} before refusing")

    monkeypatch.setattr(TensorSource, "get", refuse)


def test_unsupported_architecture_is_one_line(
    tmp_path: Path, tokenizer_dir: Path, no_tensor_reads: None, capsys: pytest.CaptureFixture
) -> None:
    from xelm_cli.cli import run

    seed = seed_from_config(
        "gpt2",
        tokenizer_dir,
        tmp_path / "seed",
        ["en"],
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=64,
    )
    paths = [str(branch(seed.path, tmp_path / f"b{i}", languages=["en"]).path) for i in range(2)]
    capsys.readouterr()
    code = run(["bundle", "moe", *paths, "-o", str(tmp_path / "moe")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert "cannot build an MoE model from 'gpt2' experts; supported: llama/mistral -> " in err
    assert "Qwen3MoeForCausalLM" in err
    assert not (tmp_path / "moe").exists()


def test_experts_of_another_seed_are_refused(
    experts: list[Bundle], tmp_path: Path, tokenizer_dir: Path, no_tensor_reads: None
) -> None:
    from xelm_cli.bundle.seed import init_from_config

    other = init_from_config("tiny", tokenizer_dir, tmp_path / "o", languages=["en"], seed=5)
    with pytest.raises(UsageError, match=r"different seeds.*joined into one MoE model"):
        build_moe([experts[0].path, other.path], tmp_path / "moe")


def test_a_large_moe_is_sharded(
    experts: list[Bundle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xelm_cli.bundle import moe as moe_module
    from xelm_cli.bundle.tensor_stream import INDEX_NAME, plan_shards

    monkeypatch.setattr(moe_module, "plan_shards", lambda layout: plan_shards(layout, 300_000))
    moe = build_moe([b.path for b in experts], tmp_path / "moe", top_k=1)
    assert (moe.path / INDEX_NAME).is_file() and not (moe.path / "model.safetensors").exists()
    assert len(TensorSource(moe.path).files) > 1
    check_moe(moe, experts, "MixtralForCausalLM")


def test_bf16_experts_give_a_bf16_moe_that_runs(experts: list[Bundle], tmp_path: Path) -> None:
    """bf16 rows of the tiny config's 172-wide MLP are not 16-byte multiples, which
    transformers' default MoE kernel needs: the config asks for the eager one."""
    halves = [
        perturbed_expert(
            b.path, tmp_path / b.name, seed=0, languages=b.languages, scale=0, dtype=torch.bfloat16
        )
        for b in experts
    ]
    moe = build_moe([b.path for b in halves], tmp_path / "moe", top_k=1)
    stored = load_file(str(moe.path / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert json.loads((moe.path / "config.json").read_text())["experts_implementation"] == "eager"
    model = AutoModelForCausalLM.from_pretrained(moe.path)
    dense = halves[2].load_model()
    torch.testing.assert_close(
        model.model.layers[0].mlp.experts.down_proj[2],
        dense.model.layers[0].mlp.down_proj.weight,
        rtol=0,
        atol=0,
    )
    route_all_to(model, 2)
    ids = torch.tensor([[3, 50, 7, 120, 9]])
    with torch.no_grad():
        gap = (model(ids).logits - dense(ids).logits).abs().max().item()
    assert gap < 1e-3  # 0.0 on the development machine


def test_moe_from_python_expands_a_quoted_glob(experts: list[Bundle], tmp_path: Path) -> None:
    pattern = str(experts[0].path.parent / "??")  # the experts, not the b-* branches beside them
    moe = build_moe(pattern, tmp_path / "moe", top_k=1)
    in_glob_order = sorted(experts, key=lambda b: b.path.name)
    assert moe.manifest.lineage[-1]["parents"] == [b.ref for b in in_glob_order]


def test_the_default_gate_spreads_tokens_over_the_experts(
    experts: list[Bundle], tmp_path: Path
) -> None:
    """Random rows by default: an untrained MoE sends tokens to more than one expert (the zero
    rows of --gate uniform tie, and top-1 then sends every token to the same expert)."""
    from transformers import AutoModelForCausalLM

    ids = torch.arange(3, 40)[None]
    chosen = {}
    for gate in ("random", "uniform"):
        built = build_moe([b.path for b in experts], tmp_path / gate, top_k=1, **(
            {} if gate == "random" else {"gate": gate}))  # fmt: skip
        assert built.manifest.lineage[-1]["gate"] == gate
        model = AutoModelForCausalLM.from_pretrained(built.path).eval()
        with torch.no_grad():
            hidden = model.model.embed_tokens(ids)
            logits = hidden @ model.model.layers[0].mlp.gate.weight.T  # the router's logits
        chosen[gate] = set(logits.argmax(-1).flatten().tolist())
    assert len(chosen["random"]) > 1 and len(chosen["uniform"]) == 1


def test_experts_of_different_dtypes_are_refused_not_rounded(
    experts: list[Bundle], tmp_path: Path, no_tensor_reads: None
) -> None:
    """An fp32 expert beside a bf16 one passed every check and was cast to the first's dtype:
    not the MLPs bit for bit that the spec promises."""
    half = perturbed_expert(
        experts[1].path, tmp_path / "half", seed=9, languages=["tr"], scale=0.0,
        dtype=torch.bfloat16,
    )  # fmt: skip
    with pytest.raises(UsageError) as refused:
        build_moe([experts[0].path, half.path], tmp_path / "moe", top_k=1, gate="random")
    assert str(refused.value) == (
        f"the experts are stored in different dtypes ({experts[0].name} float32, half "
        "bfloat16): an MoE keeps their MLPs bit for bit in one dtype; train them to one "
        "(xelm train --save-dtype)"
    )
    assert not (tmp_path / "moe").exists()


def test_weights_from_python_take_the_text_the_command_takes(
    seed_bundle: Path, tmp_path: Path
) -> None:
    """``weights="0.7,0.3"`` or ``"NAME=1"``, as ``--weights`` and ``merge_average`` take them
    (was a bare ValueError: the text was read a character at a time)."""
    first, second = mlp_experts(seed_bundle, tmp_path, LANGS[:2], only="")  # all weights differ
    paths = [first.path, second.path]
    as_numbers = build_moe(paths, tmp_path / "numbers", weights=[0.7, 0.3])
    as_text = build_moe(paths, tmp_path / "text", weights="0.7,0.3")
    shared = "model.layers.1.self_attn.q_proj.weight"
    numbers = load_file(str(as_numbers.path / "model.safetensors"))[shared]
    assert torch.equal(load_file(str(as_text.path / "model.safetensors"))[shared], numbers)
    named = build_moe(paths, tmp_path / "named", weights=f"{first.path.name}=1")
    stored = load_file(str(named.path / "model.safetensors"))[shared]
    assert torch.equal(stored, weights(first.path)[shared])  # the named expert's alone
    assert not torch.equal(stored, numbers)  # the weights were used


def test_the_language_gate_warns_of_experts_holding_the_same_languages(
    experts: list[Bundle], seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TF-IDF experts hold every language: calibrated on the same text, their gate rows tell
    them apart by weights alone. Experts of their own languages get no warning."""
    build_moe([b.path for b in experts[:2]], tmp_path / "own", gate="language",
              calibration=str(FLORES), calibration_limit=2)  # fmt: skip
    assert "warning" not in capsys.readouterr().err
    both = ["en", "tr"]
    shared = [
        perturbed_expert(branch(seed_bundle, tmp_path / f"b{i}", languages=both).path,
                         tmp_path / f"e{i}", seed=i, languages=both)
        for i in range(2)
    ]  # fmt: skip
    build_moe([b.path for b in shared], tmp_path / "shared", gate="language",
              calibration=str(FLORES), calibration_limit=2)  # fmt: skip
    err = capsys.readouterr().err
    assert "xelm: warning: experts e0, e1 hold the same languages: --gate language" in err


def test_tfidf_experts_are_calibrated_on_the_documents_of_their_clusters(
    expert_corpus: Path, seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --allocation, expert i's gate row is the centred, unit-norm mean router input over
    the calibration documents the allocation's assigner sends to cluster i (checked against
    gate_row computed by hand from that split); the step records the allocation's digest."""
    from test_moe_gate import one_by_one

    from xelm_cli.cluster.allocation import read_allocation
    from xelm_cli.cluster.assigning import expert_documents
    from xelm_cli.cluster.fitting import cluster

    alloc_path = tmp_path / "alloc"
    cluster("tfidf", k=2, output=alloc_path, languages=["en", "tr"], data=expert_corpus,
            components=8)  # fmt: skip
    capsys.readouterr()  # the fit's own warning of short documents
    alloc = read_allocation(alloc_path)
    experts = []
    for i in range(2):
        branched = branch(seed_bundle, tmp_path / f"b{i}", allocation=alloc_path, expert=i)
        experts.append(perturbed_expert(
            branched.path, tmp_path / f"e{i}", seed=i, languages=branched.languages,
            only="mlp", scale=0.2, allocation=branched.manifest.allocation,
        ))  # fmt: skip
    moe = build_moe([e.path for e in experts], tmp_path / "moe", gate="language",
                    calibration=str(FLORES), calibration_limit=6,
                    allocation=alloc_path)  # fmt: skip
    assert "warning" not in capsys.readouterr().err  # not the one of shared languages
    assert moe.manifest.lineage[-1]["gate_allocation"] == alloc.digest

    documents = read_documents(FLORES, languages=["en", "tr"], limit=6)
    sent = expert_documents(alloc, 0).assigner.assign(documents)
    means = torch.stack([
        one_by_one(expert, [d for d, e in zip(documents, sent, strict=True) if e == i], 10**6)
        for i, expert in enumerate(experts)
    ], dim=1)  # fmt: skip
    centred = means - means.mean(dim=1, keepdim=True)
    expected = (centred / centred.norm(dim=-1, keepdim=True)).float()
    stored = load_file(str(moe.path / "model.safetensors"))
    for layer in range(expected.shape[0]):
        torch.testing.assert_close(
            stored[f"model.layers.{layer}.block_sparse_moe.gate.weight"],
            expected[layer],
            rtol=1e-4,
            atol=1e-5,
        )


def test_an_allocation_the_experts_are_not_of_is_refused_before_any_work(
    experts: list[Bundle], expert_corpus: Path, tmp_path: Path
) -> None:
    from xelm_cli.cluster.fitting import cluster

    alloc = tmp_path / "alloc"
    cluster("tfidf", k=2, output=alloc, languages=["en", "tr"], data=expert_corpus, components=8)
    paths = [b.path for b in experts[:2]]
    with pytest.raises(UsageError, match=r"is no expert of the allocation .* names no allocation"):
        build_moe(paths, tmp_path / "moe", gate="language", calibration=str(FLORES),
                  allocation=alloc)  # fmt: skip
    with pytest.raises(UsageError, match="--allocation picks the calibration text of --gate"):
        build_moe(paths, tmp_path / "moe", gate="random", allocation=alloc)
    assert not (tmp_path / "moe").exists()
