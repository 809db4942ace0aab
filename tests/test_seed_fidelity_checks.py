"""A pretrained seed is refused at init, in one line and before anything is written, when a
later step could not use it (a tokenizer larger than the model's embeddings, one without a fast
version, a framing with neither token, no weights file transformers reads), and it is taken as
stored otherwise: each tensor in its own dtype (fp32 norms of a bf16 checkpoint), buffers an
older class saved dropped, pickles beside a stray *.safetensors converted, a trusted custom
tokenizer prepared with its own code, and generation stopping at generation_config's eos ids."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from custom_code import add_custom_code
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    ByT5Tokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2Tokenizer,
    GPTNeoConfig,
    LlamaConfig,
    LlamaTokenizer,
    PhiConfig,
    TokenizersBackend,
)

from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.bundle.store import Bundle, verify_bundle
from xelm_cli.cli import run
from xelm_cli.common.errors import UsageError
from xelm_cli.data.prepare import prepare
from xelm_cli.ensemble.generation import generate
from xelm_cli.ensemble.routing import build_router

LETTERS = "helowrd"
TEXT = "hello world hello"


def _llama_tokenizer() -> LlamaTokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, **{c: i + 4 for i, c in enumerate(LETTERS)}}
    return LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def _gpt2_tokenizer() -> GPT2Tokenizer:
    vocab = {"<|endoftext|>": 0, "Ġ": 1, **{c: i + 2 for i, c in enumerate(LETTERS)}}
    return GPT2Tokenizer(vocab=vocab, merges=[])


def _save(out: Path, config: Any, tokenizer: Any, dtype: torch.dtype = torch.float32) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _llama(out: Path, vocab_size: int | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """A tiny Llama whose embeddings have ``vocab_size`` rows (default: the tokenizer's)."""
    tokenizer = _llama_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer), hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return _save(out, config, tokenizer, dtype)


def _gpt2(out: Path) -> Path:
    config = GPT2Config(
        vocab_size=9, n_embd=16, n_layer=1, n_head=2, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return _save(out, config, _gpt2_tokenizer())


def _refused(model_dir: Path, out: Path, **options: Any) -> str:
    with pytest.raises(UsageError) as refused:
        init_from_hf(model_dir, out, languages=["en"], **options)
    assert not out.exists()
    assert "\n" not in str(refused.value)
    return str(refused.value)


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors |= load_file(str(file))
    return tensors


def _bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]) for name in a
    )


def _corpus(root: Path) -> Path:
    root.mkdir()
    (root / "en.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    return root


# --- 1. a tokenizer with more ids than the model has embedding rows -----------------------------


def test_a_tokenizer_larger_than_the_embeddings_is_refused(tmp_path: Path) -> None:
    """Training would stop at an IndexError, scoring index past the embeddings."""
    hf = _llama(tmp_path / "hf", vocab_size=8)  # the tokenizer has 11 ids
    line = _refused(hf, tmp_path / "seed")
    assert "its tokenizer gives 11 token ids but the model's input embeddings have 8 rows" in line
    assert "use the tokenizer that belongs to this model, or resize the embeddings" in line


def test_a_tokenizer_smaller_than_the_embeddings_is_taken(tmp_path: Path) -> None:
    """A padded embedding matrix (rows no token id reaches) is fine."""
    seed = init_from_hf(_llama(tmp_path / "hf", vocab_size=16), tmp_path / "seed", languages=["en"])
    assert verify_bundle(seed.path) == []


def test_an_added_token_past_the_embeddings_is_refused(tmp_path: Path) -> None:
    hf = _llama(tmp_path / "hf")
    tokenizer = _llama_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tokenizer.save_pretrained(hf)
    assert "gives 12 token ids but the model's input embeddings have 11 rows" in _refused(
        hf, tmp_path / "seed"
    )


# --- 2. mixed dtypes: each tensor kept as stored ------------------------------------------------


def _mixed(out: Path) -> dict[str, torch.Tensor]:
    """A bf16 Llama whose norm weights are stored in fp32 (values that bf16 cannot hold)."""
    hf = _llama(out, dtype=torch.bfloat16)
    tensors = load_file(hf / "model.safetensors")
    torch.manual_seed(1)
    for name in [name for name in tensors if "norm" in name]:
        tensors[name] = 1 + torch.randn(tensors[name].shape) / 3
    save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
    return tensors


@pytest.mark.parametrize("pickled", [False, True], ids=["safetensors", "convert-pickle"])
def test_tensors_stored_in_another_dtype_keep_it_bit_for_bit(tmp_path: Path, pickled: bool) -> None:
    original = _mixed(tmp_path / "hf")
    if pickled:
        (tmp_path / "hf" / "model.safetensors").unlink()
        torch.save(original, tmp_path / "hf" / "pytorch_model.bin")
    seed = init_from_hf(tmp_path / "hf", tmp_path / "seed", languages=["en"], convert_pickle=True)
    stored = _tensors(seed.path)
    assert {str(t.dtype) for name, t in stored.items() if "norm" in name} == {"torch.float32"}
    assert _bit_exact(stored, original)
    assert seed.manifest.origin["dtype"] == {
        "stored": "bfloat16",
        "tensors": {"bfloat16": 9, "float32": 3},
    }
    assert json.loads((seed.path / "config.json").read_text())["dtype"] == "bfloat16"
    assert seed.weights_dtype() == "bfloat16"
    assert verify_bundle(seed.path) == []
    seed.load_model()  # loads as every bundle loads: in one dtype


def test_a_single_dtype_seed_records_no_tensors(tmp_path: Path) -> None:
    hf = _llama(tmp_path / "hf", dtype=torch.bfloat16)
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"])
    assert "dtype" not in seed.manifest.origin
    assert _bit_exact(_tensors(seed.path), _tensors(hf))


# --- 3. buffers older classes saved with the weights --------------------------------------------


def _with_tensors(hf: Path, extra: dict[str, torch.Tensor], pickled: bool) -> None:
    tensors = {**load_file(hf / "model.safetensors"), **extra}
    if pickled:
        (hf / "model.safetensors").unlink()
        torch.save(tensors, hf / "pytorch_model.bin")
    else:
        save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})


def _gpt_neo(out: Path) -> Path:
    config = GPTNeoConfig(
        vocab_size=9, hidden_size=16, num_layers=2, num_heads=2, max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]], window_size=8, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return _save(out, config, _gpt2_tokenizer())


@pytest.mark.parametrize("pickled", [False, True], ids=["safetensors", "convert-pickle"])
def test_gpt_neo_attention_buffers_in_the_checkpoint_are_dropped(
    tmp_path: Path, pickled: bool
) -> None:
    """GPT-Neo checkpoints saved by older transformers hold each layer's causal mask (now a
    non-persistent buffer) and masked_bias (no longer there): constants, not weights."""
    hf = _gpt_neo(tmp_path / "hf")
    original = _tensors(hf)
    names = [
        f"transformer.h.{i}.attn.attention.{b}" for i in range(2) for b in ("bias", "masked_bias")
    ]
    buffers = {
        name: torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.bool))
        if name.endswith(".bias")
        else torch.tensor(-1e9)
        for name in names
    }
    _with_tensors(hf, buffers, pickled)
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"], convert_pickle=pickled)
    assert seed.manifest.origin["dropped"] == sorted(names)
    assert _bit_exact(_tensors(seed.path), original)


def test_gpt2_masked_bias_in_a_pickle_is_dropped(tmp_path: Path) -> None:
    hf = _gpt2(tmp_path / "hf")
    _with_tensors(hf, {"transformer.h.0.attn.masked_bias": torch.tensor(-1e4)}, pickled=True)
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert seed.manifest.origin["dropped"] == ["transformer.h.0.attn.masked_bias"]


def test_an_unexpected_weight_beside_the_buffers_is_still_refused(tmp_path: Path) -> None:
    hf = _gpt_neo(tmp_path / "hf")
    extra = {
        "transformer.h.0.attn.attention.masked_bias": torch.tensor(-1e9),
        "transformer.h.0.attn.attention.gate.weight": torch.ones(16),
    }
    _with_tensors(hf, extra, pickled=False)
    line = _refused(hf, tmp_path / "seed")
    assert "1 unexpected keys (transformer.h.0.attn.attention.gate.weight, ...)" in line


# --- 4. tokenizers data prepare can use ---------------------------------------------------------


def _custom_with_tokenizer(out: Path) -> Path:
    """A model whose config and tokenizer are its own code (auto_map), as Hub models with
    custom architectures and tokenizers ship."""
    return add_custom_code(_llama(out), "xelm-tiny-custom-tok", tokenizer=True)


def test_a_seed_with_its_own_tokenizer_code_is_prepared_with_it(tmp_path: Path) -> None:
    """data prepare trusts exactly what the bundle's init trusted (before: never, and the
    tokenizer could not be loaded)."""
    hf = _custom_with_tokenizer(tmp_path / "hf")
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"], trust_remote_code=True)
    assert type(seed.load_tokenizer()).__name__ == "TinyCustomTokenizer"
    prepare(_corpus(tmp_path / "corpus"), seed.path, tmp_path / "shards")
    assert (tmp_path / "shards" / "en.tokens.bin").stat().st_size > 0


def test_a_tokenizer_without_a_fast_version_is_refused_at_init(tmp_path: Path) -> None:
    """data prepare needs the Rust backend: such a seed could never be trained."""
    tokenizer = ByT5Tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64,
        bos_token_id=None, eos_token_id=1,
    )  # fmt: skip
    hf = _save(tmp_path / "hf", config, tokenizer)
    line = _refused(hf, tmp_path / "seed")
    assert "its tokenizer (ByT5Tokenizer) has no fast (Rust) version" in line
    assert "convert_slow_tokenizer" in line


# --- 5. a framing with neither a start nor an end token -----------------------------------------


def _no_specials(out: Path) -> Path:
    """A byte-level BPE tokenizer with no special tokens at all, and a GPT-2 on it."""
    vocab = {c: i for i, c in enumerate(["Ġ", *LETTERS])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = TokenizersBackend(tokenizer_object=backend)
    config = GPT2Config(
        vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=64,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return _save(out, config, tokenizer)


def test_a_framing_with_neither_token_is_refused_naming_the_flags(tmp_path: Path) -> None:
    """Training would pack documents with nothing between them; scoring refused only then."""
    hf = _no_specials(tmp_path / "hf")
    line = _refused(hf, tmp_path / "seed")
    assert "neither a start nor an end token" in line
    assert "--doc-start TOKEN or --doc-end TOKEN" in line
    args = ["bundle", "init", "--hf", str(hf), "--langs", "en", "-o", str(tmp_path / "seed")]
    assert run([*args, "--doc-end", "none"]) == 2
    assert run([*args, "--doc-end", "Ġ"]) == 0
    assert Bundle.open(tmp_path / "seed").framing().end == 0


def test_an_override_to_no_tokens_is_refused(tmp_path: Path) -> None:
    hf = _llama(tmp_path / "hf")
    with pytest.raises(UsageError, match=r"\(both were set to none\); name one with --doc-start"):
        init_from_hf(hf, tmp_path / "s", languages=["en"], doc_start="none", doc_end="none")
    assert not (tmp_path / "s").exists()


def test_an_end_set_to_none_where_the_tokenizer_adds_no_start_says_so(tmp_path: Path) -> None:
    """GPT-2 frames ``doc <|endoftext|>``: only --doc-end was set to none, and the refusal
    says that, not that both were."""
    hf = _gpt2(tmp_path / "hf")
    with pytest.raises(UsageError, match=r"\(--doc-end was set to none and the tokenizer puts "
                       r"no start token around text\); name one"):  # fmt: skip
        init_from_hf(hf, tmp_path / "s", languages=["en"], doc_end="none")
    assert not (tmp_path / "s").exists()


# --- 6. the weights files transformers reads ----------------------------------------------------


def test_pickles_beside_a_stray_safetensors_are_converted_on_request(tmp_path: Path) -> None:
    """Mistral ships consolidated.safetensors beside its transformers weights; a PEFT adapter
    is adapter_model.safetensors: transformers reads neither, but reads pytorch_model.bin."""
    hf = _llama(tmp_path / "hf")
    original = _tensors(hf)
    torch.save(original, hf / "pytorch_model.bin")
    (hf / "model.safetensors").rename(hf / "consolidated.safetensors")
    line = _refused(hf, tmp_path / "refused")
    assert "only pickled weights (pytorch_model.bin); pass --convert-pickle" in line
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert seed.manifest.origin["converted"]["from"] == "pytorch_model.bin"
    assert _bit_exact(_tensors(seed.path), original)


@pytest.mark.parametrize("stray", [None, "consolidated.safetensors"])
def test_a_model_without_weights_transformers_reads_is_refused_in_one_line(
    tmp_path: Path, stray: str | None
) -> None:
    hf = _llama(tmp_path / "hf")
    if stray:
        (hf / "model.safetensors").rename(hf / stray)
    else:
        (hf / "model.safetensors").unlink()
    line = _refused(hf, tmp_path / "seed", convert_pickle=True)
    assert "it has none of the weights files transformers reads (model.safetensors, " in line
    assert "or with --convert-pickle pytorch_model.bin, pytorch_model.bin.index.json)" in line
    assert (f"it holds {stray}" if stray else "it holds no weights files") in line


# --- 7. generation stops where the model's generation_config says -----------------------------


def test_generation_stops_at_the_eos_ids_of_generation_config(tmp_path: Path) -> None:
    """A Phi whose output bias makes "h" the next token always; its generation_config names
    "h" an eos beside <|endoftext|> (as Llama 3 names <|eot_id|>): one token, as HF stops."""
    tokenizer = _gpt2_tokenizer()
    stop = tokenizer.convert_tokens_to_ids("h")
    config = PhiConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[stop] = 50.0
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=[0, stop])
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    seed = init_from_hf(tmp_path / "hf", tmp_path / "seed", languages=["en"])
    generated = generate([seed], build_router("uniform"), "hello", max_new_tokens=5, temperature=0)
    assert generated.tokens == [stop]


@pytest.mark.parametrize(("save_dtype", "norms"), [("auto", "float32"), ("bfloat16", "bfloat16")])
def test_a_trained_expert_keeps_each_tensor_in_the_dtype_its_seed_stores_it_in(
    tmp_path: Path, save_dtype: str, norms: str
) -> None:
    """fp32 master weights written back per tensor (was: the whole model cast to bf16, the
    seed's fp32 norms with it); a chosen --save-dtype still casts every tensor."""
    from xelm_cli.api import train

    _mixed(tmp_path / "hf")
    seed = init_from_hf(tmp_path / "hf", tmp_path / "seed", languages=["en"])
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text(f"{TEXT}\n" * 40)
    prepare(corpus, seed.path, tmp_path / "shards", languages=["en"])
    options = {"block_size": 8, "batch_size": 2, "device": "cpu", "save_dtype": save_dtype}
    expert = train(seed.path, data=tmp_path / "shards", tokens=32, output=tmp_path / "expert",
                   **options)  # fmt: skip
    stored = _tensors(expert.path)
    assert {str(t.dtype) for name, t in stored.items() if "norm" in name} == {f"torch.{norms}"}
    assert {str(t.dtype) for name, t in stored.items() if "norm" not in name} == {"torch.bfloat16"}
    assert expert.manifest.training["saved_dtype"] == "bfloat16"
