"""--gate language: each expert's mean router input, computed in padded batches on a device,
equals the document-by-document computation."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from merge_helpers import SMALL_CONFIG, mlp_experts, seed_from_config
from safetensors.torch import load_file

from xelm_cli.bundle.moe import (
    CALIBRATION_TOKENS,
    _calibration_batches,
    _mean_router_inputs,
    build_moe,
)
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.data.corpus import Document, read_documents
from xelm_cli.ensemble.scoring import default_batch_tokens

FLORES = SHARED_DATA / "eval" / "flores200-devtest"
CPU = torch.device("cpu")
SMALL = {**SMALL_CONFIG, "max_position_embeddings": 96}  # the long document below is cut here


def calibration_documents() -> list[Document]:
    """FLORES sentences of many lengths, one document longer than the context, and one blank."""
    sentences = [*read_documents(FLORES, languages=["en"], limit=40)]
    long = Document(" ".join(d.text for d in sentences[:12]), "en")
    return [*sentences, long, Document("", "en")]


def one_by_one(bundle: Bundle, documents: list[Document], cut: int) -> torch.Tensor:
    """The reference: every document alone after the model's prefix token, as training and
    scoring put it (no padding, no mask), float64 sums of each layer's post-attention norm
    output over its first ``cut`` tokens, divided by the tokens."""
    model = bundle.load_model().eval()
    tokenizer = bundle.load_tokenizer()
    prefix = bundle.framing(tokenizer).prefix
    layers = model.model.layers
    sums = torch.zeros(len(layers), model.config.hidden_size, dtype=torch.float64)

    def keep(i: int) -> Callable[..., None]:
        def hook(module: object, inputs: object, output: torch.Tensor) -> None:
            sums[i] += output[0].double().sum(dim=0)

        return hook

    for i, layer in enumerate(layers):
        layer.post_attention_layernorm.register_forward_hook(keep(i))
    count = 0
    with torch.no_grad():
        for document in documents:
            ids = [prefix, *tokenizer(document.text, add_special_tokens=False).input_ids][:cut]
            if len(ids) > 1:
                model(torch.tensor([ids]))
                count += len(ids)
    return sums / count


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_batched_means_equal_one_by_one(
    model_type: str, tmp_path: Path, tokenizer_dir: Path
) -> None:
    seed = seed_from_config(model_type, tokenizer_dir, tmp_path / "seed", ["en"], **SMALL)
    documents = calibration_documents()
    tokenizer = seed.load_tokenizer()
    prefix = seed.framing(tokenizer).prefix
    batches = _calibration_batches(tokenizer, documents, 96, default_batch_tokens(CPU), prefix)
    assert all(s.tokens[0] == prefix for batch in batches for s in batch)
    widths = [[len(s.tokens) for s in batch] for batch in batches]
    assert len(batches) > 1 and any(len(set(w)) > 1 for w in widths)  # padding to mask
    assert max(map(max, widths)) == 96  # the long document, cut at the context
    assert sum(map(len, widths)) == len(documents) - 1  # the blank one is not run
    seen: list[int] = []
    means = _mean_router_inputs(seed, documents, 2, CPU, seen.append)
    assert means.dtype == torch.float64 and means.shape == (2, 32)
    torch.testing.assert_close(means, one_by_one(seed, documents, 96), rtol=1e-5, atol=1e-6)
    assert sum(seen) == sum(len(d.text.encode()) for d in documents)


def test_documents_are_cut_at_the_calibration_length(tmp_path: Path, tokenizer_dir: Path) -> None:
    seed = seed_from_config(
        "llama",
        tokenizer_dir,
        tmp_path / "seed",
        ["en"],
        **{**SMALL, "max_position_embeddings": 4096},
    )
    tokenizer = seed.load_tokenizer()
    sentences = read_documents(FLORES, languages=["en"], limit=200)
    long = Document(" ".join(d.text for d in sentences), "en")
    assert len(tokenizer(long.text, add_special_tokens=False).input_ids) > CALIBRATION_TOKENS
    means = _mean_router_inputs(seed, [long], 2, CPU)
    torch.testing.assert_close(
        means, one_by_one(seed, [long], CALIBRATION_TOKENS), rtol=1e-5, atol=1e-6
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_means_equal_cpu_means(tmp_path: Path, tokenizer_dir: Path) -> None:
    seed = seed_from_config("llama", tokenizer_dir, tmp_path / "seed", ["en"], **SMALL)
    documents = calibration_documents()
    on_cuda = _mean_router_inputs(seed, documents, 2, torch.device("cuda"))
    assert on_cuda.device == CPU
    torch.testing.assert_close(
        on_cuda, _mean_router_inputs(seed, documents, 2, CPU), rtol=1e-5, atol=1e-6
    )


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> list[Bundle]:
    return mlp_experts(seed_bundle, tmp_path_factory.mktemp("gate"), ["en", "tr"])


def test_cli_device_gives_the_api_routers(
    experts: list[Bundle], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(b.path) for b in experts]
    gate = ["--gate", "language", "--calibration", str(FLORES), "--calibration-limit", "8"]
    code = run(["bundle", "moe", *paths, *gate, "--device", "cpu", "-o", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    built = build_moe(
        paths, tmp_path / "api", gate="language", calibration=FLORES, calibration_limit=8
    )
    cli, api = (load_file(str(p / "model.safetensors")) for p in (tmp_path / "cli", built.path))
    router = "model.layers.1.block_sparse_moe.gate.weight"
    assert cli[router].any() and torch.equal(cli[router], api[router])


def test_unavailable_device_refused_before_any_work(experts: list[Bundle], tmp_path: Path) -> None:
    paths = [b.path for b in experts]
    with pytest.raises(UsageError, match="unknown device 'gpu0'; use auto, cpu"):
        build_moe(paths, tmp_path / "moe", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="use --device cpu"):
            build_moe(paths, tmp_path / "moe", gate="language", calibration=FLORES, device="cuda")
    assert not (tmp_path / "moe").exists()


def test_missing_calibration_text_is_named_by_its_option(
    experts: list[Bundle], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any tensor is read, in one line naming --calibration (was: 'evaluation data not
    found', when nothing was being evaluated); ensemble create's --calibration says the same."""
    paths = [str(b.path) for b in experts]
    missing = tmp_path / "valid"
    gate = ["--gate", "language", "--calibration", str(missing)]
    assert run(["bundle", "moe", *paths, *gate, "-o", str(tmp_path / "moe")]) == 2
    line = f"xelm: error: --calibration data (held-out labelled text) not found: {missing}\n"
    assert capsys.readouterr().err == line
    assert not (tmp_path / "moe").exists()
    argv = ["ensemble", "create", *paths, "--router", "posterior", "--calibration", str(missing)]
    assert run([*argv, "-o", str(tmp_path / "ens.json")]) == 2
    assert capsys.readouterr().err == line
