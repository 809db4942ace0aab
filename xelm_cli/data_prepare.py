"""``xelm data prepare``: tokenise a corpus once into per-language token shards.

The run has two passes over the output's temporary directory: every document of the wanted
languages is tokenised (in batches, the Rust tokenizer using its own threads) and appended to
its language's shard; then languages over their token budget are cut down to a seeded random
subset of whole documents, kept in corpus order. The result is renamed into place only when
complete. Budgets (see ``language_budgets``) come from per-language caps and temperature
sampling. Re-running with the same input, tokenizer and options does nothing.
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .atomic import atomic_directory
from .bundle import Bundle
from .corpus import corpus_files, iter_documents, load_hf_dataset, source_kind
from .digest import sha256_bytes, sha256_file
from .errors import FormatError, UsageError, XelmError
from .fingerprint import tokenizer_fingerprint
from .jsonio import canonical_json
from .languages import normalize_language
from .manifest import MANIFEST_NAME as BUNDLE_MANIFEST
from .shards import (
    MANIFEST_NAME,
    OFFSETS_DTYPE,
    TOKEN_DTYPES,
    LanguageWriter,
    Shards,
    offsets_file,
    token_dtype_name,
    tokens_file,
    write_array,
    write_manifest,
)
from .units import parse_token_count

Progress = Callable[[int], None]
DEFAULT_BATCH_SIZE = 1000
ALL_LANGUAGES = "*"


@dataclass(frozen=True)
class PrepareResult:
    shards: Shards
    up_to_date: bool


# -- options -------------------------------------------------------------------------------


def parse_caps(text: str) -> dict[str, int]:
    """``"5M"`` (every language), ``"en=5M,de=2M"`` or both (``"1M,en=5M"``)."""
    caps: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        lang, _, count = item.rpartition("=")
        key = normalize_language(lang) if lang else ALL_LANGUAGES
        caps[key] = parse_token_count(count)
    if not caps:
        raise UsageError("--cap needs a token count such as 5M or en=5M,de=2M")
    return caps


def _normalise_caps(caps: dict[str, int] | int | None) -> dict[str, int] | None:
    if caps is None:
        return None
    if isinstance(caps, int):
        caps = {ALL_LANGUAGES: caps}
    out = {(k if k == ALL_LANGUAGES else normalize_language(k)): int(v) for k, v in caps.items()}
    if any(v < 0 for v in out.values()):
        raise UsageError("token caps must not be negative")
    return dict(sorted(out.items()))


# -- budgets and sampling --------------------------------------------------------------------


def language_budgets(
    tokens: dict[str, int],
    *,
    caps: dict[str, int] | None = None,
    alpha: float | None = None,
    total: int | None = None,
) -> dict[str, int]:
    """How many tokens of each language to keep, given ``tokens`` per language in the corpus.

    Each language is limited to ``u_l = min(n_l, cap_l)``. Without ``alpha`` and ``total`` the
    budget is ``u_l``. Otherwise languages are weighted ``p_l = n_l**alpha / sum(n_k**alpha)``
    (XLM / mT5; ``alpha`` defaults to 1, proportional) and get ``b_l = min(u_l, lam * p_l)``
    with ``lam`` chosen so that the budgets add up to ``total`` (or to everything there is,
    when ``total`` exceeds it): tokens a small language cannot supply go to the others in
    the same proportions. Without ``total``, ``lam`` is the largest value at which no language
    runs out (``min u_l / p_l``): the temperature-sampled mixture that repeats no document.
    Budgets are rounded down.
    """
    limits = {lang: _capped(n, caps, lang) for lang, n in tokens.items()}
    if alpha is None and total is None:
        return limits
    exponent = 1.0 if alpha is None else alpha
    weights = {lang: float(n) ** exponent for lang, n in tokens.items() if n > 0}
    norm = sum(weights.values())
    shares = {lang: w / norm for lang, w in weights.items()}
    budgets = {lang: 0 for lang in tokens}
    if total is None:
        scale = min(limits[lang] / p for lang, p in shares.items())
        budgets.update({lang: _floor(scale * p, limits[lang]) for lang, p in shares.items()})
        return budgets
    remaining, pending = float(total), sorted(shares, key=lambda lang: limits[lang] / shares[lang])
    while pending:
        lang = pending[0]
        share = remaining * shares[lang] / sum(shares[k] for k in pending)
        if limits[lang] > share:  # no language left runs out: split what remains by weight
            weight = sum(shares[k] for k in pending)
            for k in pending:
                budgets[k] = _floor(remaining * shares[k] / weight, limits[k])
            break
        budgets[lang] = limits[lang]
        remaining -= limits[lang]
        pending.pop(0)
    return budgets


def _capped(n: int, caps: dict[str, int] | None, lang: str) -> int:
    cap = (caps or {}).get(lang, (caps or {}).get(ALL_LANGUAGES))
    return n if cap is None else min(n, cap)


def _floor(value: float, limit: int) -> int:
    return min(limit, math.floor(value + 1e-6))  # 99.99999 from float error is 100


def select_documents(
    lengths: NDArray[Any], budget: int, *, seed: int, language: str
) -> NDArray[np.int64]:
    """Indices (ascending) of a seeded random subset of whole documents within ``budget``.

    Documents are taken in a random order (numpy PCG64 seeded with ``seed`` and the language)
    while the running total stays within the budget; the first one that would exceed it ends
    the selection.
    """
    rng = np.random.default_rng([seed, *language.encode()])
    order = rng.permutation(len(lengths))
    cumulative = np.cumsum(np.asarray(lengths, dtype=np.int64)[order])
    taken = int(np.searchsorted(cumulative, budget, side="right"))
    return np.sort(order[:taken])


# -- the source and the tokenizer --------------------------------------------------------------


def source_record(
    source: str | Path, *, split: str | None = None, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the input is, with a digest of its content.

    Files: the digest covers every file's relative name, size and sha256. A file whose name,
    size and modification time equal ``previous`` (the record of an earlier run) keeps its
    recorded sha256 instead of being hashed again. Hub datasets: their ``datasets`` fingerprint.
    """
    kind = source_kind(source)
    if kind == "hf-hub":
        dataset = load_hf_dataset(source, split=split)
        content: Any = {"id": str(source), "fingerprint": dataset._fingerprint}
        return {"kind": kind, "path": str(source), "split": split, **_sealed(kind, split, content)}
    root = Path(source)
    known = {f["name"]: f for f in (previous or {}).get("files", [])}
    files = []
    for path in corpus_files(root):
        info = path.stat()
        name = path.relative_to(root).as_posix() if root.is_dir() else path.name
        old = known.get(name, {})
        same = old.get("size") == info.st_size and old.get("mtime_ns") == info.st_mtime_ns
        sha = old["sha256"] if same and "sha256" in old else sha256_file(path)
        files.append(
            {"name": name, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha}
        )
    content = [{k: f[k] for k in ("name", "size", "sha256")} for f in files]
    record = {"kind": kind, "path": str(source), "split": split, **_sealed(kind, split, content)}
    return {**record, "files": files}


def _sealed(kind: str, split: str | None, content: Any) -> dict[str, str]:
    return {
        "digest": sha256_bytes(canonical_json({"kind": kind, "split": split, "content": content}))
    }


@dataclass(frozen=True)
class TokenizerInfo:
    backend: Any  # tokenizers.Tokenizer
    fingerprint: str
    vocab_size: int
    special_tokens: dict[str, int | None]

    def record(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "special_tokens": self.special_tokens,
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
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds; all mean "not loadable"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot load the tokenizer in {path}: {reason}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"the tokenizer in {path} has no fast (Rust) version; convert it first")
    specials = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }
    return TokenizerInfo(tokenizer.backend_tokenizer, fingerprint, len(tokenizer), specials)


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


# -- the run ---------------------------------------------------------------------------------


@dataclass
class _Batch:
    languages: list[str]
    texts: list[str]


def _batches(
    source: str | Path,
    split: str | None,
    language: str | None,
    wanted: set[str] | None,
    size: int,
) -> Iterator[_Batch]:
    batch = _Batch([], [])
    for doc in iter_documents(source, language=language, split=split, require_language=True):
        assert doc.language is not None  # require_language
        if not doc.text or (wanted is not None and doc.language not in wanted):
            continue
        batch.languages.append(doc.language)
        batch.texts.append(doc.text)
        if len(batch.texts) >= size:
            yield batch
            batch = _Batch([], [])
    if batch.texts:
        yield batch


def _tokenize_corpus(
    directory: Path,
    source: str | Path,
    tokenizer: TokenizerInfo,
    *,
    split: str | None,
    language: str | None,
    wanted: set[str] | None,
    batch_size: int,
    progress: Progress | None,
) -> dict[str, NDArray[np.uint64]]:
    """Pass 1: every wanted document into its language's shard; the offsets per language."""
    dtype_name = token_dtype_name(tokenizer.vocab_size)
    writers: dict[str, LanguageWriter] = {}
    try:
        for batch in _batches(source, split, language, wanted, batch_size):
            encodings = tokenizer.backend.encode_batch_fast(batch.texts, add_special_tokens=False)
            by_language: dict[str, list[list[int]]] = {}
            for lang, encoding in zip(batch.languages, encodings, strict=True):
                if encoding.ids:
                    by_language.setdefault(lang, []).append(encoding.ids)
            for lang, documents in by_language.items():
                if lang not in writers:
                    writers[lang] = LanguageWriter(directory, lang, dtype_name)
                writers[lang].add(documents)
            if progress:
                progress(len(batch.texts))
    finally:
        offsets = {lang: writer.close() for lang, writer in sorted(writers.items())}
    return offsets


def _check_languages(
    source: str | Path, found: set[str], langs: list[str] | None, caps: dict[str, int] | None
) -> None:
    if not found:
        raise UsageError(f"no documents in {source}" + (" for --langs" if langs else ""))
    named = [*(langs or []), *(k for k in (caps or {}) if k != ALL_LANGUAGES)]
    missing = sorted({lang for lang in named if lang not in found})
    if missing:
        raise UsageError(
            f"no documents in {', '.join(missing)} in {source} "
            f"(it has {', '.join(sorted(found))}); drop them from --langs / --cap"
        )


def _subsample(
    directory: Path, lang: str, offsets: NDArray[np.uint64], keep: NDArray[np.int64], dtype: Any
) -> NDArray[np.uint64]:
    """Rewrite ``lang``'s shard with only the documents ``keep``; return the new offsets."""
    lengths = np.asarray(np.diff(offsets), dtype=np.int64)
    token_path = directory / tokens_file(lang)
    mask = np.zeros(len(lengths), dtype=bool)
    mask[keep] = True
    tokens = np.fromfile(token_path, dtype=dtype)[np.repeat(mask, lengths)]
    new_offsets = np.zeros(len(keep) + 1, dtype=OFFSETS_DTYPE)
    np.cumsum(lengths[keep], out=new_offsets[1:])
    token_path.unlink()
    write_array(token_path, tokens)
    write_array(directory / offsets_file(lang), new_offsets)
    return new_offsets


def _sample(
    directory: Path,
    offsets: dict[str, NDArray[np.uint64]],
    budgets: dict[str, int],
    *,
    seed: int,
    dtype: Any,
) -> dict[str, dict[str, Any]]:
    """Pass 2: cut languages over budget down; the manifest's per-language entries."""
    entries = {}
    for lang, full in offsets.items():
        source_tokens, source_documents = int(full[-1]), len(full) - 1
        kept = full
        if budgets[lang] < source_tokens:
            lengths = np.asarray(np.diff(full), dtype=np.int64)
            keep = select_documents(lengths, budgets[lang], seed=seed, language=lang)
            if len(keep) == 0:
                raise UsageError(
                    f"a budget of {budgets[lang]} tokens leaves no whole document in {lang}; "
                    "raise --cap / --tokens or drop it with --langs"
                )
            kept = _subsample(directory, lang, full, keep, dtype)
        entries[lang] = {
            "documents": len(kept) - 1,
            "tokens": int(kept[-1]),
            "source_documents": source_documents,
            "source_tokens": source_tokens,
            "budget": budgets[lang] if budgets[lang] < source_tokens else None,
        }
    return entries


def _options(
    langs: list[str] | None,
    caps: dict[str, int] | None,
    alpha: float | None,
    tokens: int | None,
    seed: int,
    split: str | None,
    language: str | None,
) -> dict[str, Any]:
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
        raise UsageError(f"--alpha must be a number >= 0 (0.3 is usual), not {alpha}")
    if tokens is not None and tokens <= 0:
        raise UsageError(f"--tokens must be positive, not {tokens}")
    options: dict[str, Any] = {
        "languages": langs,
        "token_caps": caps,
        "alpha": alpha,
        "tokens": tokens,
        "seed": seed,
        "split": split,
    }
    if language is not None:  # only when given, so earlier manifests stay comparable
        options["lang"] = language
    return options


def _existing(out: Path, *, overwrite: bool) -> dict[str, Any] | None:
    """The manifest of shards already at ``out``; anything else there is refused."""
    if not out.exists():
        return None
    try:
        return Shards.open(out).manifest
    except XelmError as exc:
        if overwrite:
            return None
        raise UsageError(
            f"output {out} exists and is not usable shards ({exc}); pass --force"
        ) from None


def _differences(
    old: dict[str, Any], source: dict[str, Any], fingerprint: str, options: dict[str, Any]
) -> list[str]:
    changed = []
    if old.get("source", {}).get("digest") != source["digest"]:
        changed.append("the input changed")
    if old.get("tokenizer", {}).get("fingerprint") != fingerprint:
        changed.append("another tokenizer")
    if old.get("options") != options:
        keys = {*options, *old.get("options", {})}
        differing = sorted(k for k in keys if old.get("options", {}).get(k) != options.get(k))
        changed.append("other options (" + ", ".join(differing) + ")")
    return changed


def prepare(
    source: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    *,
    langs: list[str] | None = None,
    token_caps: dict[str, int] | int | None = None,
    alpha: float | None = None,
    tokens: int | None = None,
    seed: int = 0,
    split: str | None = None,
    language: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PrepareResult:
    """Tokenise ``source`` with the tokenizer of a bundle or tokenizer directory into ``out``.

    ``token_caps`` limits tokens per language (an int: every language; ``{"*": n}`` too);
    ``alpha`` and ``tokens`` set temperature sampling (see ``language_budgets``); ``seed``
    picks the sampled documents; ``language`` labels documents that carry no language (one
    left without a language is refused). Nothing is written when ``out`` already holds shards
    of the same input, tokenizer and options (``up_to_date``); other shards there are an error
    unless ``overwrite``.
    """
    out = Path(out)
    wanted = sorted({normalize_language(code) for code in langs}) if langs else None
    caps = _normalise_caps(token_caps)
    language = normalize_language(language) if language else None
    options = _options(wanted, caps, alpha, tokens, seed, split, language)
    info = load_tokenizer(tokenizer)
    old = _existing(out, overwrite=overwrite)
    record = source_record(source, split=split, previous=(old or {}).get("source"))
    if old is not None and not overwrite:
        changed = _differences(old, record, info.fingerprint, options)
        if not changed:
            return PrepareResult(Shards.open(out), up_to_date=True)
        raise UsageError(
            f"{out} holds shards made differently ({'; '.join(changed)}); "
            "pass --force to rebuild, or choose another -o"
        )
    dtype_name = token_dtype_name(info.vocab_size)
    with tokenizer_threads(workers), atomic_directory(out, overwrite=overwrite) as tmp:
        offsets = _tokenize_corpus(
            tmp,
            source,
            info,
            split=split,
            language=language,
            wanted=set(wanted) if wanted else None,
            batch_size=batch_size,
            progress=progress,
        )
        _check_languages(source, set(offsets), wanted, caps)
        counts = {lang: int(o[-1]) for lang, o in offsets.items()}
        budgets = language_budgets(counts, caps=caps, alpha=alpha, total=tokens)
        entries = _sample(tmp, offsets, budgets, seed=seed, dtype=TOKEN_DTYPES[dtype_name])
        fields = {
            "dtype": dtype_name,
            "tokenizer": info.record(),
            "source": record,
            "options": options,
            "languages": entries,
        }
        write_manifest(tmp, fields)
    return PrepareResult(Shards.open(out), up_to_date=False)


__all__ = [
    "MANIFEST_NAME",
    "PrepareResult",
    "language_budgets",
    "load_tokenizer",
    "parse_caps",
    "parse_token_count",
    "prepare",
    "select_documents",
    "source_record",
]
