"""Checkpoints that are not decoder-only causal LMs are refused as seeds, in one line, before
anything is written (transformers would load them as a causal-LM class and give wrong numbers)."""

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

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
