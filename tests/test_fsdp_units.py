"""FSDP's shard units and the plan's count of a decoder layer agree for every family: the
modules transformers declares unsplittable, the tensors with a numbered part in their names."""

from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from xelm_trainer.distributed import shard_units

from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.training.estimates import ModelShape


def _gpt2(vocab: int) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=3, n_head=2, n_positions=32)
    return GPT2LMHeadModel(config)


def test_every_familys_decoder_layers_are_shard_units() -> None:
    gpt2 = _gpt2(50)
    assert shard_units(gpt2) == list(gpt2.transformer.h)[::-1]
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    assert shard_units(llama) == list(llama.model.layers)[::-1]
    assert shard_units(torch.nn.Linear(2, 2)) == []  # no declared layers: one unit


def test_a_module_tied_to_one_outside_it_stays_in_the_root_unit() -> None:
    """BERT as a decoder declares BertEmbeddings unsplittable, but its word embeddings are
    the output layer's weights: FSDP refuses a parameter in two units, so only the layers
    are units."""
    from transformers import BertConfig, BertLMHeadModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, is_decoder=True, tie_word_embeddings=True)  # fmt: skip
    bert = BertLMHeadModel(config)
    assert "BertEmbeddings" in bert._no_split_modules
    assert bert.cls.predictions.decoder.weight is bert.bert.embeddings.word_embeddings.weight
    assert shard_units(bert) == list(bert.bert.encoder.layer)[::-1]


def test_the_plan_counts_a_gpt2_layer_from_its_tensors(tokenizer_dir: Path, tmp_path: Path) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    model = _gpt2(len(tokenizer))
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    seed = init_from_hf(str(tmp_path / "hf"), tmp_path / "seed", languages=["en"])
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    assert block == 12 * 16**2 + 13 * 16
    assert ModelShape.of(seed).layer_parameters == block
