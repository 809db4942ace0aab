"""Faithful to the seed: documents framed as the seed's own tokenizer frames text, per family;
pickled-only seeds converted on request; no deprecated cache keyword in scoring or generation."""

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertTokenizer,
    GPT2Config,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaTokenizer,
    XGLMConfig,
    XGLMTokenizer,
)
from xelm_trainer.loop import check_inputs
from xelm_trainer.model_setup import load_model

from xelm_cli.api import Document
from xelm_cli.bundle.framing import Framing
from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.ensemble.generation import generate
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.plugin.contracts import TrainRequest

TEXT = "hello world hello"
LETTERS = "helowrd"


def _xglm(out: Path) -> Path:
    pieces = ["▁hello", "▁world", "▁", *LETTERS]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    tokenizer = XGLMTokenizer(vocab=vocab + [(p, -1.0) for p in pieces])
    config = XGLMConfig(
        vocab_size=len(tokenizer), d_model=16, ffn_dim=32, num_layers=1, attention_heads=2,
        max_position_embeddings=64,
    )  # fmt: skip
    return _save(out, config, tokenizer)


def _gpt2(out: Path) -> Path:
    vocab = {"<|endoftext|>": 0, "Ġ": 1, **{c: i + 2 for i, c in enumerate(LETTERS)}}
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[])
    config = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=64)
    return _save(out, config, tokenizer)


def _llama(out: Path) -> Path:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, **{c: i + 4 for i, c in enumerate(LETTERS)}}
    tokenizer = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return _save(out, config, tokenizer)


def _bert_decoder(out: Path) -> Path:
    """A causal LM whose head is more than its output Linear: dense, activation and LayerNorm
    before it (RoBERTa, XLM-R, ELECTRA and RoFormer heads are alike)."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5,
             **{c: i + 6 for i, c in enumerate(LETTERS)}}  # fmt: skip
    tokenizer = BertTokenizer(vocab=vocab)  # and [MASK], added after the vocabulary
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, is_decoder=True,
    )  # fmt: skip
    return _save(out, config, tokenizer)


def _save(out: Path, config: object, tokenizer: object, dtype: torch.dtype = torch.float32) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return out


# family: (builder, start, end); ids from the vocabularies above
FAMILIES = {
    # </s> before text; </s> after it only where the installed transformers' XGLM tokenizer
    # appends one (5.0 does, 5.24 does not): the framing follows the tokenizer either way
    "xglm": (_xglm, 2, "appended"),
    "gpt2": (_gpt2, None, 0),  # nothing added: <|endoftext|> separates documents
    "llama": (_llama, 1, 2),  # <s> before text, </s> after the document
    "bert-decoder": (_bert_decoder, 2, 3),  # [CLS] text [SEP]
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_seed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    build, start, end = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf = build(root / "hf")
    if end == "appended":
        ids = AutoTokenizer.from_pretrained(hf)("hello")["input_ids"]
        end = ids[-1] if ids[-1] == start else None
    seed = init_from_hf(str(hf), root / "seed", languages=["en"])
    return seed.path, start, end


def test_the_manifest_records_what_the_tokenizer_adds(family_seed: tuple) -> None:
    seed, start, end = family_seed
    manifest = json.loads((seed / "xelm.json").read_text())
    assert manifest["framing"] == {"start": start, "end": end, "rule": "tokenizer"}
    assert manifest["format_version"] == "1.3.0"
    assert verify_bundle(seed) == []


def test_branches_inherit_the_framing_and_training_packs_with_it(
    family_seed: tuple, tmp_path: Path
) -> None:
    seed, start, end = family_seed
    assert run(["bundle", "branch", str(seed), "--langs", "en", "-o", str(tmp_path / "b")]) == 0
    assert Bundle.open(tmp_path / "b").framing() == Framing(start, end, "tokenizer")
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "en.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    from xelm_cli.data.prepare import prepare

    prepare(data, tmp_path / "b", tmp_path / "shards")
    request = TrainRequest(tmp_path / "b", tmp_path / "shards", tmp_path / "out", tokens=8,
                           options={"block_size": 4, "batch_size": 1})  # fmt: skip
    inputs = check_inputs(request)
    assert (inputs.framing.start, inputs.framing.end) == (start, end)


def test_scoring_and_generation_start_documents_with_the_seeds_token(
    family_seed: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    seed, start, end = family_seed
    bundle = Bundle.open(seed)
    tokenizer = bundle.load_tokenizer()
    model = bundle.load_model()
    runner = EnsembleModel([bundle], build_router("uniform"), device="cpu")
    assert runner.bos == (start if start is not None else end)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated cache keyword would fail here
        got = runner.score_documents([Document(TEXT, "en")])[0]
        generated = generate([bundle], build_router("uniform"), "hello", max_new_tokens=3)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]  # nor a log line
    ids = [runner.bos, *tokenizer(TEXT, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    expected = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert 1 <= len(generated.tokens) <= 3


def test_the_trainer_trains_the_head_transform_of_a_bert_decoder(tmp_path: Path) -> None:
    """Its logits are not the output Linear of the body's states: the chunked loss, which
    would skip the transform, is not used, and every head parameter gets a gradient."""
    seed = init_from_hf(str(_bert_decoder(tmp_path / "hf")), tmp_path / "seed", languages=["en"])
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "en.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    from xelm_cli.data.prepare import prepare

    prepare(data, seed.path, tmp_path / "shards")
    request = TrainRequest(seed.path, tmp_path / "shards", tmp_path / "out", tokens=8,
                           options={"block_size": 4, "batch_size": 1})  # fmt: skip
    model = load_model(check_inputs(request), torch.device("cpu"))
    assert not getattr(model, "lean_loss", False)
    batch = torch.tensor([[2, 4, 5, 4, 3]])
    model(input_ids=batch, labels=batch).loss.backward()
    transform = model.cls.predictions.transform
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in transform.parameters())


def test_framing_can_be_overridden_at_init(tmp_path: Path) -> None:
    hf = _xglm(tmp_path / "hf")
    out = tmp_path / "seed"
    args = ["bundle", "init", "--hf", str(hf), "--langs", "en", "-o", str(out)]
    assert run([*args, "--doc-start", "<s>", "--doc-end", "2"]) == 0
    assert Bundle.open(out).framing() == Framing(0, 2, "override")
    assert run([*args, "--doc-start", "<nope>", "--force"]) == 2


def test_bundles_without_framing_keep_bos_doc_eos(seed_bundle: Path) -> None:
    golden = Bundle.open(Path(__file__).parent / "fixtures" / "golden-v1")
    assert golden.manifest.framing is None
    tokenizer = golden.load_tokenizer()
    assert golden.framing() == Framing(tokenizer.bos_token_id, tokenizer.eos_token_id, "bos-eos")
    assert "framing" not in golden.manifest.to_dict()  # rewriting keeps it as it was


# --- pickled seeds ---------------------------------------------------------------------------


def test_pickled_only_seed_is_refused_then_converted_on_request(tmp_path: Path) -> None:
    hf = _llama(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(hf)
    (hf / "model.safetensors").unlink()
    torch.save(model.state_dict(), hf / "pytorch_model.bin")
    with pytest.raises(UsageError, match="--convert-pickle"):
        init_from_hf(str(hf), tmp_path / "refused", languages=["en"])
    assert not (tmp_path / "refused").exists()
    seed = init_from_hf(str(hf), tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert not any(seed.path.glob("*.bin"))
    assert seed.manifest.origin["converted"] == {
        "from": "pytorch_model.bin",
        "loader": "torch.load(weights_only)",
    }
    converted = AutoModelForCausalLM.from_pretrained(seed.path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name


def test_sharded_pickles_are_named_by_their_index(tmp_path: Path) -> None:
    hf = _llama(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(hf)
    (hf / "model.safetensors").unlink()
    state = model.state_dict()  # two pickled shards and their index, as older models ship
    names = sorted(state)
    shards = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
    for file, part in shards.items():
        torch.save({name: state[name] for name in part}, hf / file)
    weight_map = {name: file for file, part in shards.items() for name in part}
    index = {"metadata": {}, "weight_map": weight_map}
    (hf / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match=r"only pickled weights \(pytorch_model.bin.index.json\)"):
        init_from_hf(str(hf), tmp_path / "refused", languages=["en"])
    seed = init_from_hf(str(hf), tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert seed.manifest.origin["converted"]["from"] == "pytorch_model.bin.index.json"
    converted = AutoModelForCausalLM.from_pretrained(seed.path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (print, "GLOBAL print was not an allowed global"),
        (os.system, r"unsupported GLOBAL posix\.system whose module posix is blocked"),
    ],
)
def test_a_pickle_that_runs_code_is_not_loaded(tmp_path: Path, call: Any, named: str) -> None:
    hf = _llama(tmp_path / "hf")
    (hf / "model.safetensors").unlink()
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (call, (f"touch {ran}",))

    torch.save({"x": Payload()}, hf / "pytorch_model.bin")
    with pytest.raises(UsageError, match=named) as refused:
        init_from_hf(str(hf), tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert "\n" not in str(refused.value)
    assert "weights_only set to False" not in str(refused.value)  # torch's advice, not ours
    assert not (tmp_path / "seed").exists() and not ran.exists()
