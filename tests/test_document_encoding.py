"""Document text is encoded alike wherever xelm encodes it (spec/shards-v1.md section 1.4): a
document spelling a special token (`<s>` of HTML strikethrough, `</s>`, `<pad>`) gets the same
ids in prepare's shards as in scoring, choice contexts, generation prompts, stride-router
prefixes and MoE calibration, and text spelling none encodes exactly as the tokenizer itself
encodes it, offsets included. Tokenizers trained here: a SentencePiece-style Unigram as XGLM's
(its model makes `<s>` out of text), the tests' byte-level BPE, a WordLevel."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from corpus_helpers import valid_texts

from xelm_cli.bundle.moe import _calibration_batches
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.data import tokenizer_loading
from xelm_cli.data.shards import Shards
from xelm_cli.data.tokenizer_loading import document_encoding
from xelm_cli.ensemble import generation
from xelm_cli.ensemble.runner import EnsembleModel, single_model
from xelm_cli.plugin.contracts import ChoiceRequest, Document, ExpertInfo, PreRouter

HTML = "code: <s>strike</s> and <pad> here"
SPECIAL_TEXTS = [HTML, "plain text </s> then<s>more", "<pad><pad> padded", "a <s>"]
SAMPLE_LANGS = ("en", "de", "ru", "ar", "hi", "zh", "ja", "ko", "tr", "vi")
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def sample() -> list[str]:
    """A few hundred documents of the shared corpus (valid split), ten languages."""
    return [text for lang in SAMPLE_LANGS for text in valid_texts(lang, 30)]


def _unigram(out: Path) -> Path:
    """A SentencePiece-style Unigram trained on the sample, as XGLM's: `<s>`, `<pad>`, `</s>`,
    `<unk>` first, scored 0.0 (above every piece), documents framed `</s> doc`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XGLMTokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=1500, unk_token="<unk>")
    unigram.train_from_iterator(sample(), trainer)
    pieces = [(p, s) for p, s in json.loads(unigram.to_str())["model"]["vocab"] if p != "<unk>"]
    head = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    XGLMTokenizer(vocab=head + pieces).save_pretrained(out)
    return out


def _word_level(out: Path) -> Path:
    """A WordLevel tokenizer trained on the sample: it looks a whole word up, `<pad>` too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=3000, special_tokens=list(SPECIALS.values()))
    words.train_from_iterator(sample(), trainer)
    PreTrainedTokenizerFast(tokenizer_object=words, **SPECIALS).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["unigram", "byte-level", "word-level"])
def bundle(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path
) -> Bundle:
    """A tiny model on each kind of tokenizer (the byte-level BPE: the tests' seed bundle)."""
    if request.param == "byte-level":
        return Bundle.open(seed_bundle)
    root = tmp_path_factory.mktemp(request.param)
    make = _unigram if request.param == "unigram" else _word_level
    return init_from_config("tiny", make(root / "tok"), root / "bundle", languages=["en"])


@pytest.fixture(scope="module")
def tokenizer(bundle: Bundle) -> Any:
    return bundle.load_tokenizer()


def specials_of(tokenizer: Any) -> set[int]:
    return {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}


def _covers(text: str, offsets: Sequence[tuple[int, int]]) -> None:
    """Offsets in order, within the text, and covering every character but whitespace."""
    covered = [False] * len(text)
    start = 0
    for s, e in offsets:
        assert start <= s <= e <= len(text), offsets
        start = s
        covered[s:e] = [True] * (e - s)
    assert all(c or ch.isspace() for c, ch in zip(covered, text, strict=True)), offsets


def test_text_without_special_strings_encodes_as_the_tokenizer_does(tokenizer: Any) -> None:
    texts = sample()
    assert len(texts) == 300 and not any(s in t for t in texts for s in SPECIALS.values())
    plain = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    assert document_encoding(tokenizer, texts).ids == plain["input_ids"]
    encoded = document_encoding(tokenizer, texts, offsets=True)
    assert encoded.ids == plain["input_ids"]
    assert encoded.offsets == [list(map(tuple, o)) for o in plain["offset_mapping"]]
    # one at a time, as before: the same ids
    for text in texts[::29]:
        assert document_encoding(tokenizer, [text]).ids == [
            tokenizer(text, add_special_tokens=False)["input_ids"]
        ]
    assert document_encoding(tokenizer, []).ids == []


def test_special_strings_are_text_and_split_special_tokens_alone_does_not_do(
    bundle: Bundle, tokenizer: Any
) -> None:
    """transformers' split_special_tokens stops the added vocabulary from matching `<s>`; a
    Unigram model (which holds `<s>` as a piece scored 0.0) and a WordLevel one (which looks
    `<pad>` up) still make special ids of text. Document encoding makes none."""
    specials = specials_of(tokenizer)
    split = tokenizer(SPECIAL_TEXTS, add_special_tokens=False, split_special_tokens=True)
    made = set().union(*split["input_ids"]) & specials
    if tokenizer.backend_tokenizer.model.__class__.__name__ in ("Unigram", "WordLevel"):
        assert made  # split_special_tokens alone would leave special ids in documents
    encoded = document_encoding(tokenizer, SPECIAL_TEXTS, offsets=True)
    assert encoded.offsets is not None
    for text, ids, offsets in zip(SPECIAL_TEXTS, encoded.ids, encoded.offsets, strict=True):
        assert specials.isdisjoint(ids), tokenizer.convert_ids_to_tokens(ids)
        assert len(offsets) == len(ids)
        _covers(text, offsets)


class Recording(PreRouter):
    """A stride-1 pre-router (as c-BTM's) that records the prefixes it is asked about."""

    name = "recording"
    stride = 1

    def __init__(self) -> None:
        self.seen: list[str] = []

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Any:
        self.seen += [d.text for d in documents]
        return np.ones((len(documents), len(experts)))


def test_prepare_and_scoring_encode_a_document_alike(
    bundle: Bundle, tokenizer: Any, tmp_path: Path
) -> None:
    """Shards' tokens = what the runner scores (after its prefix token) = stride-router
    prefixes = generation's prefix cuts = MoE calibration tokens, `<s>` in text or not."""
    texts = [*SPECIAL_TEXTS, *valid_texts("en", 5)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    records = "".join(json.dumps({"text": t, "lang": "en"}) + "\n" for t in texts)
    (corpus / "en.jsonl").write_text(records, encoding="utf-8")
    assert (
        run(["data", "prepare", str(corpus), "-t", str(bundle.path), "-o", str(tmp_path / "s")])
        == 0
    )
    shards = [list(map(int, d)) for d in Shards.open(tmp_path / "s").iter_documents(["en"])]
    assert len(shards) == len(texts)
    specials = specials_of(tokenizer)
    assert specials.isdisjoint(np.concatenate(shards[: len(SPECIAL_TEXTS)]).tolist())
    # before: the HF tokenizer made special ids of `<s>` (so scoring differed from training)
    assert not specials.isdisjoint(tokenizer(HTML, add_special_tokens=False)["input_ids"])

    documents = [Document(t, "en") for t in texts]
    runner = single_model(bundle, "e", device="cpu")
    assert [runner.encode(t) for t in texts] == shards
    assert [runner.count_tokens(t) for t in texts] == [len(s) for s in shards]
    sequences, _ = runner._sequences(documents)
    assert sequences == [[runner.bos, *s] for s in shards]  # the frame token stays its id
    scored = runner.score_documents(documents)
    assert [len(lp) for lp in scored] == [len(s) for s in shards]

    router = Recording()
    strided = EnsembleModel([bundle], router, device="cpu")
    sequences, starts = strided._sequences(documents, starts=True)
    assert sequences == [[strided.bos, *s] for s in shards] and starts is not None
    offsets = document_encoding(tokenizer, texts, offsets=True).offsets
    assert offsets is not None
    assert starts == [[s for s, _ in o] for o in offsets]
    assert [len(lp) for lp in strided.score_documents(documents)] == [len(s) for s in shards]
    assert router.seen == [t[:s] for t, each in zip(texts, starts, strict=True) for s in each]
    html, html_starts = documents[0], starts[0]
    for position in range(len(html_starts)):
        cut = generation._prefix(strided, html, len(shards[0]), position, [])
        assert cut.text == HTML[: html_starts[position]]

    batches = _calibration_batches(tokenizer, documents, 10_000, 1 << 20, runner.bos)
    segments = sorted((s for batch in batches for s in batch), key=lambda s: s.sequence)
    assert [s.tokens for s in segments] == [[runner.bos, *s] for s in shards]


def test_choices_and_prompts_encode_special_strings_as_text(bundle: Bundle, tokenizer: Any) -> None:
    runner = single_model(bundle, "e", device="cpu")
    request = ChoiceRequest("Strike it: <s>", ["gone</s>", " kept"], "en")
    context, choices = runner._encode_request(request)
    specials = specials_of(tokenizer)
    assert context == [runner.bos, *runner.encode("Strike it: <s>")]
    assert specials.isdisjoint([*context[1:], *(t for c in choices for t in c)])
    whole = runner.encode("Strike it: <s>gone</s>")
    assert choices[0] == whole[len(context) - 1 :] or choices[0] == runner.encode("gone</s>")
    assert [len(lp) for lp in runner.score_choices([request])[0]] == [len(c) for c in choices]


class _Counting:
    """A backend that records the calls made of it."""

    def __init__(self, backend: Any, calls: list[str]) -> None:
        self.backend, self.calls = backend, calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.backend, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def test_one_backend_built_per_tokenizer_and_one_batched_call(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Any] = []
    calls: list[str] = []
    whole = tokenizer_loading._whole_documents

    def counted(tokenizer: Any) -> Any:
        builds.append(tokenizer)
        return _Counting(whole(tokenizer), calls)

    monkeypatch.setattr(tokenizer_loading, "_whole_documents", counted)
    runner = single_model(bundle, "e", device="cpu")
    documents = [Document(t, "en") for t in sample()[:40]]
    runner._sequences(documents)
    runner._sequences(documents, starts=True)
    runner.encode("hello")
    assert len(builds) == 1  # cached with the tokenizer
    assert calls == ["encode_batch_fast", "encode_batch", "encode_batch_fast"]
    runner.tokenizer.add_tokens(["<new-token>"])  # a changed tokenizer: built afresh
    runner.encode("hello <new-token>")
    assert len(builds) == 2


def test_a_tokenizer_without_a_rust_backend_encodes_as_transformers_does() -> None:
    class Slow:
        is_fast = False

        def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, Any]:
            assert kwargs == {"add_special_tokens": False, "return_offsets_mapping": True}
            return {
                "input_ids": [[len(t)] for t in texts],
                "offset_mapping": [[(0, len(t))] for t in texts],
            }

    encoded = document_encoding(Slow(), ["ab", "<s>"], offsets=True)
    assert encoded.ids == [[2], [3]] and encoded.offsets == [[(0, 2)], [(0, 3)]]
