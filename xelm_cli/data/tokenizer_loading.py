"""Loading the tokenizer ``xelm data prepare`` encodes with, from a bundle or a tokenizer
directory, as AutoTokenizer would load it; the threads its Rust backend may use; and document
text encoded as prepare encodes it (``document_encoding``), for scoring and generation."""

import contextlib
import json
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xelm_cli.bundle.fingerprint import tokenizer_fingerprint
from xelm_cli.bundle.manifest import MANIFEST_NAME as BUNDLE_MANIFEST
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import FormatError, UsageError, exception_line
from xelm_cli.common.jsonio import read_json_object


@dataclass(frozen=True)
class TokenizerInfo:
    backend: Any  # tokenizers.Tokenizer
    fingerprint: str
    vocab_size: int  # every token id is below it (the tokenizer's length, or its largest id + 1)
    special_tokens: dict[str, int | None]

    def record(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "special_tokens": self.special_tokens,
        }


# The class AutoTokenizer picks for a tokenizer that names one of these: loading it directly
# spares importing AutoTokenizer's model configurations (and torch with them), about 1 s.
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _named_class(path: Path) -> str | None:
    """The class ``tokenizer_config.json`` names; None without one, or when it declares remote
    code (``auto_map``: AutoTokenizer's to resolve)."""
    with contextlib.suppress(OSError, FormatError):
        config = read_json_object(path / "tokenizer_config.json", "tokenizer configuration")
        named = config.get("tokenizer_class")
        if isinstance(named, str) and "auto_map" not in config:
            return named
    return None


def _has_model_type(path: Path) -> bool:
    with contextlib.suppress(OSError, FormatError):
        return "model_type" in read_json_object(path / "config.json", "model configuration")
    return False


def _from_pretrained(path: Path, trusted: bool = False) -> Any:
    """The tokenizer in ``path`` as AutoTokenizer loads it, running its own code only when
    ``trusted`` (a bundle whose code this machine trusted: ``Bundle.runs_trusted_code``).

    Beside a model's config.json, AutoTokenizer's class depends on the model type, whatever
    class tokenizer_config.json names (model type qwen2 loads Qwen2Tokenizer, which splits
    digits apart), from tables whose import brings in torch: AutoTokenizer decides. A tokenizer
    directory alone is loaded with the class it names, without torch: the generic fast class,
    or a model's own fast class (LlamaTokenizer) when it builds the same tokenizer as the
    generic class (AutoTokenizer loads a byte-level tokenizer.json named LlamaTokenizer as the
    generic class; where the two agree, its choice makes no difference)."""
    import transformers

    if trusted:
        return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    named = None if _has_model_type(path) else _named_class(path)
    generic = transformers.TokenizersBackend
    if named in GENERIC_TOKENIZER_CLASSES:
        return generic.from_pretrained(path, trust_remote_code=False)
    own = getattr(transformers, named, None) if named else None
    if isinstance(own, type) and issubclass(own, generic):
        tokenizer = own.from_pretrained(path, trust_remote_code=False)
        if _same_tokenizer(tokenizer, generic.from_pretrained(path, trust_remote_code=False)):
            return tokenizer
    return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers encode alike and agree on what data prepare reads of them."""
    return (
        a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
        and len(a) == len(b)
        and _special_ids(a) == _special_ids(b)
    )


def _special_ids(tokenizer: Any) -> dict[str, int | None]:
    return {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }


def load_tokenizer(path: str | Path) -> TokenizerInfo:
    """A fast tokenizer from a bundle or tokenizer directory, refused in one line otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"tokenizer not found: {path} is not a directory (a bundle or tokenizer)")
    bundle = None
    if (path / BUNDLE_MANIFEST).is_file():
        bundle = Bundle.open(path)  # a bundle's tokenizer must match its digests like any other
    # a bundle runs its own tokenizer code exactly when Bundle.load_tokenizer runs it
    trusted = bundle is not None and bundle.runs_trusted_code()
    try:
        fingerprint = tokenizer_fingerprint(path)
    except FormatError:
        raise UsageError(
            f"{path} is not a tokenizer directory (no tokenizer.json, vocabulary or sentencepiece "
            "model); train one with `xelm data tokenizer` or pass a bundle"
        ) from None
    try:
        tokenizer = _from_pretrained(path, trusted)
    except Exception as exc:  # transformers raises many kinds; all mean "not loadable"
        raise UsageError(f"cannot load the tokenizer in {path}: {exception_line(exc)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"the tokenizer in {path} has no fast (Rust) version; convert it first")
    specials = _special_ids(tokenizer)
    # ids need not be dense (a word-level vocabulary may skip some): shards hold every id
    id_range = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    return TokenizerInfo(_whole_documents(tokenizer), fingerprint, id_range, specials)


def _whole_documents(tokenizer: Any) -> Any:
    """A copy of ``tokenizer``'s Rust backend that encodes every document whole: truncation
    and padding stored in tokenizer.json would otherwise cut documents or write pad ids into
    them (transformers switches them off per call; data prepare calls the backend itself).

    Document text is text: a special token's string in it (``<s>`` of HTML strikethrough,
    ``</s>``, ``<pad>``) is encoded as the characters it is, never as that token's id, which
    would put a frame token (XGLM frames documents ``</s> doc </s>``) inside a document
    (spec/shards-v1.md section 1.4). Special tokens the tokenizer adds itself
    (``add_special_tokens=True``: its post-processor) are still added as their ids."""
    import tokenizers

    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.encode_special_tokens = True
    twin, reachable = _unreachable_specials(backend)
    return backend if twin is None else DocumentEncoder(backend, twin, reachable)


def _hidden(piece: str) -> str:
    """A name for a special piece that no text holds (private-use characters around it)."""
    return f"\ue000xelm hidden {piece}\ue000"


def _unreachable_specials(backend: Any) -> tuple[Any, frozenset[int]]:
    """A twin of ``backend`` whose model cannot make special tokens out of text, and the ids
    of the special tokens that ``backend``'s model can make; (None, empty) when it makes none.

    ``encode_special_tokens`` stops the added vocabulary from matching a special token's
    string, but a model whose vocabulary holds the token as a piece still produces it: a
    SentencePiece model converted to Unigram (XGLM, XLM-R, mT5) scores ``<s>`` and ``</s>``
    0.0, above any real piece, a WordLevel model looks up a whole word, a BPE model whose merges
    build it. The twin's pieces are renamed (ids and scores unchanged, so everything else
    encodes alike); the merges that build or use one are dropped."""
    import tokenizers

    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    vocab = model.get("vocab")
    specials = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    # the unknown token stays: unknown text is encoded as it in any case
    specials.pop(model.get("unk_token"), None)
    renamed: dict[str, str] = {}
    if model.get("type") == "Unigram" and isinstance(vocab, list):
        for i, entry in enumerate(vocab):
            if specials.get(entry[0]) == i and i != model.get("unk_id"):
                renamed[entry[0]] = entry[0] = _hidden(entry[0])
    elif model.get("type") in ("WordLevel", "WordPiece", "BPE") and isinstance(vocab, dict):
        made = specials.keys() & vocab.keys()
        if model["type"] == "BPE":  # only pieces its merges build, which it then cannot use
            merges = [m if isinstance(m, list) else m.split(" ", 1) for m in model["merges"]]
            made &= {"".join(m) for m in merges}
            model["merges"] = [m for m in merges if made.isdisjoint([*m, "".join(m)])]
        for piece in made:
            if specials[piece] == vocab[piece]:
                renamed[piece] = _hidden(piece)
                vocab[renamed[piece]] = vocab.pop(piece)
    if not renamed:
        return None, frozenset()
    for token in data["added_tokens"]:
        token["content"] = renamed.get(token["content"], token["content"])
    twin = tokenizers.Tokenizer.from_str(json.dumps(data))
    twin.encode_special_tokens = True
    return twin, frozenset(specials[piece] for piece in renamed)


class DocumentEncoder:
    """A tokenizer backend (``tokenizers.Tokenizer``, whose other methods it passes on) that
    encodes text whose encoding holds a special token its model made (``<s>`` in text, for a
    Unigram model) with a twin whose model cannot, and only that text: other text encodes
    exactly as the backend encodes it, the twin's pieces being scored alike."""

    def __init__(self, backend: Any, twin: Any, reachable: frozenset[int]) -> None:
        self._backend = backend
        self._twin = twin
        self._reachable = reachable

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # its own, not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self._backend, name)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        encoding = self._backend.encode(*args, **kwargs)
        return self._twin.encode(*args, **kwargs) if self._made(encoding) else encoding

    def encode_batch(self, inputs: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return self._mend("encode_batch", inputs, args, kwargs)

    def encode_batch_fast(self, inputs: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return self._mend("encode_batch_fast", inputs, args, kwargs)

    def _mend(
        self, method: str, inputs: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Any]:
        encodings = getattr(self._backend, method)(inputs, *args, **kwargs)
        redo = [i for i, encoding in enumerate(encodings) if self._made(encoding)]
        if redo:
            again = getattr(self._twin, method)([inputs[i] for i in redo], *args, **kwargs)
            for i, encoding in zip(redo, again, strict=True):
                encodings[i] = encoding
        return encodings

    def _made(self, encoding: Any) -> bool:
        """Does ``encoding`` hold a special token its model made (not one a post-processor
        added, as ``add_special_tokens`` asks)?"""
        if self._reachable.isdisjoint(encoding.ids):
            return False
        added = encoding.special_tokens_mask
        return any(i in self._reachable and not a for i, a in zip(encoding.ids, added, strict=True))


@dataclass(frozen=True)
class DocumentEncoding:
    """Texts encoded as documents: each text's token ids and, when asked for, each token's
    (start, end) characters in its text, as ``return_offsets_mapping`` gives them."""

    ids: list[list[int]]
    offsets: list[list[tuple[int, int]]] | None = None


# each transformers tokenizer's document backend (``_whole_documents``), built on its first
# document and kept while the tokenizer lives; keyed also by its backend's state, so that a
# token added since (a larger vocabulary) builds it afresh
_DOCUMENT_BACKENDS: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, int], Any]]" = (
    weakref.WeakKeyDictionary()
)


def document_encoding(
    tokenizer: Any, texts: Sequence[str], *, offsets: bool = False
) -> DocumentEncoding:
    """``texts`` encoded with ``tokenizer`` (a transformers tokenizer, ``Bundle.load_tokenizer``)
    as ``xelm data prepare`` encodes documents into shards (spec/shards-v1.md section 1.4): no
    special tokens added (``add_special_tokens=False``; the frame tokens are the caller's), and a
    special token's string in a text (``<s>``, ``</s>``, ``<pad>``) encoded as the characters it
    is, never as that token's id. A text that spells no special token encodes exactly as
    ``tokenizer(text, add_special_tokens=False)`` encodes it, offsets included.

    A fast tokenizer encodes with a copy of its Rust backend (``_whole_documents``, built once
    per tokenizer), all texts in one batched call (its twin re-encodes only the texts that spell
    a special token its model makes). transformers' ``split_special_tokens`` alone would not do:
    it stops the added vocabulary matching ``<s>``, not a model whose vocabulary holds the piece
    (a Unigram model scores ``<s>`` 0.0, a WordLevel one looks it up, a BPE one merges it). A
    slow tokenizer (no backend) encodes as transformers encodes it."""
    texts = list(texts)
    if not texts:
        return DocumentEncoding([], [] if offsets else None)
    backend = _document_backend(tokenizer)
    if backend is None:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)
        ids = [list(each) for each in encoded["input_ids"]]
        if not offsets:
            return DocumentEncoding(ids)
        return DocumentEncoding(ids, [[(a, b) for a, b in o] for o in encoded["offset_mapping"]])
    if offsets:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return DocumentEncoding([e.ids for e in encodings], [e.offsets for e in encodings])
    # no offsets computed: the ids are the same
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    return DocumentEncoding([e.ids for e in encodings])


def _document_backend(tokenizer: Any) -> Any:
    """The backend that encodes ``tokenizer``'s documents (``_whole_documents``), cached; None
    for a tokenizer without a Rust backend."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    state = (id(backend), backend.get_vocab_size(with_added_tokens=True))
    try:
        cached = _DOCUMENT_BACKENDS.get(tokenizer)
    except TypeError:  # a tokenizer class that can be neither hashed nor weakly referenced
        return _whole_documents(tokenizer)
    if cached is None or cached[0] != state:
        cached = (state, _whole_documents(tokenizer))
        _DOCUMENT_BACKENDS[tokenizer] = cached
    return cached[1]


@contextlib.contextmanager
def tokenizer_threads(workers: int | None) -> Iterator[None]:
    """Let the Rust tokenizer use ``workers`` threads (1: none; ``None``: one per core).

    The thread pool size is fixed at the first parallel call in a process, so ``workers > 1``
    only takes effect when nothing was tokenised in parallel before.
    """
    saved = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if workers == 1 else "true"
    if workers and workers > 1:
        os.environ.setdefault("RAYON_NUM_THREADS", str(workers))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
