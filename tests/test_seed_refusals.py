"""Checkpoints that are not decoder-only causal LMs are refused as seeds, in one line, before
anything is written (transformers would load them as a causal-LM class and give wrong numbers)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    DistilBertConfig,
    DistilBertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    LlamaTokenizer,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.common.errors import UsageError

WORDS = ["hello", "world", "h", "e", "l", "o", "w", "r", "d"]


def _save(out: Path, model: torch.nn.Module, tokenizer: object) -> str:
    model.save_pretrained(out)  # type: ignore[operator]
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return str(out)


def _refused(model_dir: str, out: Path) -> str:
    with pytest.raises(UsageError) as refused:
        init_from_hf(model_dir, out, languages=["en"])
    assert not out.exists()
    assert "\n" not in str(refused.value)
    return str(refused.value)


def _bert_tokenizer() -> BertTokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return BertTokenizer(vocab={word: i for i, word in enumerate(specials + WORDS)})


def test_a_masked_lm_is_refused_for_its_bidirectional_attention(tmp_path: Path) -> None:
    """BertForMaskedLM loads as BertLMHeadModel with is_decoder=False: every position sees
    the tokens after it."""
    tokenizer = _bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = _save(tmp_path / "hf", BertForMaskedLM(config), tokenizer)
    line = _refused(hf, tmp_path / "seed")
    assert "change when a later token changes" in line
    assert "decoder-only causal LM" in line


def _llama_config(tie_word_embeddings: bool = False) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=4 + len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip


def _llama_tokenizer() -> LlamaTokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    return LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def test_an_encoder_decoder_is_refused_not_cut_to_its_decoder(tmp_path: Path) -> None:
    """transformers would load BART as BartForCausalLM: encoder dropped, head initialised."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = BartTokenizer(vocab=vocab, merges=[])
    config = BartConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64,
    )  # fmt: skip
    hf = _save(tmp_path / "hf", BartForConditionalGeneration(config), tokenizer)
    line = _refused(hf, tmp_path / "seed")
    assert "is an encoder-decoder model (bart)" in line
    assert "decoder-only causal LM" in line


def test_t5_is_refused_as_an_encoder_decoder(tmp_path: Path) -> None:
    """transformers has no causal-LM class for T5: its own refusal named a config class."""
    tokenizer = T5Tokenizer(
        vocab=[(p, 0.0) for p in ["<pad>", "</s>", "<unk>", *WORDS]], extra_ids=0
    )
    config = T5Config(
        vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2
    )
    hf = _save(tmp_path / "hf", T5ForConditionalGeneration(config), tokenizer)
    line = _refused(hf, tmp_path / "seed")
    assert "is an encoder-decoder model (t5)" in line
    assert "decoder-only causal LM" in line


def test_a_model_type_without_a_causal_lm_class_is_refused_as_such(tmp_path: Path) -> None:
    config = DistilBertConfig(
        vocab_size=len(_bert_tokenizer()), dim=16, n_layers=1, n_heads=2, hidden_dim=32,
        max_position_embeddings=64,
    )  # fmt: skip
    hf = _save(tmp_path / "hf", DistilBertForMaskedLM(config), _bert_tokenizer())
    line = _refused(hf, tmp_path / "seed")
    assert "is not a causal LM (transformers has no causal-LM class for distilbert)" in line
    assert "Unrecognized configuration class" not in line


def test_a_checkpoint_without_its_output_layer_is_refused(tmp_path: Path) -> None:
    """A body alone (LlamaModel) loads as LlamaForCausalLM with a random lm_head."""
    hf = _save(tmp_path / "hf", LlamaModel(_llama_config()), _llama_tokenizer())
    line = _refused(hf, tmp_path / "seed")
    assert "its weights do not fit LlamaForCausalLM: 1 missing keys (lm_head.weight, ...)" in line


def test_a_checkpoint_with_weights_its_class_does_not_have_is_refused(tmp_path: Path) -> None:
    hf = _save(tmp_path / "hf", LlamaForCausalLM(_llama_config()), _llama_tokenizer())
    file = tmp_path / "hf" / "model.safetensors"
    weights = {**load_file(file), "model.adapter.weight": torch.zeros(2)}
    save_file(weights, file, metadata={"format": "pt"})
    line = _refused(hf, tmp_path / "seed")
    assert "1 unexpected keys (model.adapter.weight, ...)" in line


def test_tied_output_weights_absent_from_the_checkpoint_are_not_missing(tmp_path: Path) -> None:
    model = LlamaForCausalLM(_llama_config(tie_word_embeddings=True))
    hf = _save(tmp_path / "hf", model, _llama_tokenizer())
    assert "lm_head.weight" not in load_file(tmp_path / "hf" / "model.safetensors")
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"])
    loaded = seed.load_model()
    assert torch.equal(loaded.lm_head.weight, model.model.embed_tokens.weight)
