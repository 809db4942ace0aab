"""Loading the tokenizer ``xelm data prepare`` encodes with, from a bundle or a tokenizer
directory, as AutoTokenizer would load it; and the threads its Rust backend may use."""

import contextlib
import json
import os
from collections.abc import Iterator
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


def _from_pretrained(path: Path) -> Any:
    """The tokenizer in ``path`` as AutoTokenizer loads it.

    Beside a model's config.json, AutoTokenizer's class depends on the model type, whatever
    class tokenizer_config.json names (model type qwen2 loads Qwen2Tokenizer, which splits
    digits apart), from tables whose import brings in torch: AutoTokenizer decides. A tokenizer
    directory alone is loaded with the class it names, without torch: the generic fast class,
    or a model's own fast class (LlamaTokenizer) when it builds the same tokenizer as the
    generic class (AutoTokenizer loads a byte-level tokenizer.json named LlamaTokenizer as the
    generic class; where the two agree, its choice makes no difference)."""
    import transformers

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
    if (path / BUNDLE_MANIFEST).is_file():
        Bundle.open(path)  # a bundle's tokenizer must match its digests like any other file
    try:
        fingerprint = tokenizer_fingerprint(path)
    except FormatError:
        raise UsageError(
            f"{path} is not a tokenizer directory (no tokenizer.json, vocabulary or sentencepiece "
            "model); train one with `xelm data tokenizer` or pass a bundle"
        ) from None
    try:
        tokenizer = _from_pretrained(path)
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
