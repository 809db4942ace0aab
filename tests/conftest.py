"""Shared fixtures: a real tokenizer trained on sample text and real tiny bundles."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures"
TEST_LANGS = ("en", "tr", "ar", "ru")


def sample_texts() -> list[str]:
    """Real multilingual text (UDHR) from ../shared/data, a few languages."""
    texts = []
    for lang in TEST_LANGS:
        path = SHARED_DATA / "eval" / "udhr" / f"{lang}.txt"
        texts += [line for line in path.read_text().splitlines() if line.strip()]
    return texts


def train_tokenizer(out: Path, vocab_size: int = 320) -> Path:
    """A byte-level BPE tokenizer saved in the transformers layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(sample_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="session")
def seed_bundle(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny randomly initialised seed bundle. Session-wide: tests must not modify it."""
    from xelm_cli.seed import init_from_config

    out = tmp_path_factory.mktemp("bundles") / "seed"
    init_from_config("tiny", tokenizer_dir, out, languages=list(TEST_LANGS))
    return out
