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
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.bundle.fingerprint import tokenizer_fingerprint
from xelm_cli.bundle.manifest import MANIFEST_NAME as BUNDLE_MANIFEST
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.atomic import atomic_directory, output_lock
from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import FormatError, UsageError, XelmError, exception_line
from xelm_cli.common.jsonio import canonical_json, read_json_object
from xelm_cli.common.units import parse_token_count
from xelm_cli.data.corpus import source_kind
from xelm_cli.data.prepare_work import LanguageCount, WorkDirectory
from xelm_cli.data.recipes import PLACEHOLDER, Recipe, is_recipe, load_recipe, recipe_from_options
from xelm_cli.data.shards import (
    MANIFEST_NAME,
    OFFSETS_DTYPE,
    Shards,
    offsets_file,
    token_dtype_name,
    tokens_file,
    write_array,
    write_manifest,
)
from xelm_cli.data.sources import (
    Batch,
    DatasetSource,
    FileSource,
    Source,
    prefetched,
    read_ahead,
)
from xelm_cli.lang.codes import normalize_language

# (language, its counts so far, its read limit or None): called after each batch
Progress = Callable[[str, LanguageCount, int | None], None]
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


# -- the tokenizer ------------------------------------------------------------------------------


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


# -- what to read ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePlan:
    """The sources of a preparation, by name, and the one language each yields (None: its
    documents are labelled)."""

    path: str
    kind: str  # files | dataset | recipe
    sources: dict[str, Source]
    recipe: Recipe | None = None

    def only_language(self, name: str) -> str | None:
        source = self.sources[name]
        return source.language if self.recipe is not None else None

    def streamed_languages(self, found: Iterable[str]) -> set[str]:
        """Which of the languages ``found`` were read from a streamed source (a dataset)."""
        streamed: set[str] = set()
        for name, source in self.sources.items():
            if isinstance(source, DatasetSource):
                only = self.only_language(name)
                streamed |= {only} if only else set(found)
        return streamed

    def record(self, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the input is, with a digest of its content (spec/shards-v1.md section 3)."""
        if self.kind == "files":
            source = self.sources["corpus"]
            assert isinstance(source, FileSource)
            return source.record(previous)
        if self.kind == "dataset":
            return {"path": self.path, **self.sources["corpus"].record()}
        records = {lang: source.record() for lang, source in self.sources.items()}
        content = {lang: r["digest"] for lang, r in records.items()}
        return {
            "kind": "recipe",
            "path": self.path,
            "name": self.recipe.name if self.recipe else self.path,
            "digest": sha256_bytes(canonical_json({"kind": "recipe", "content": content})),
            "languages": records,
        }


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source, beyond its path: what ``xelm data prepare`` takes for datasets and
    unlabelled corpora (each None when not given)."""

    split: str | None = None
    language: str | None = None  # the language of documents that carry none
    config: str | None = None  # with {lang}: one configuration per language
    lang_map: dict[str, str] | None = None  # xelm code -> the dataset's, for {lang}
    text_column: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.language:  # one form of each code, whoever builds the options
            object.__setattr__(self, "language", normalize_language(self.language))

    def recorded(self) -> dict[str, Any]:
        """The options a shards manifest records beside ``split`` (only those given, so that
        manifests of earlier versions stay comparable)."""
        given = {
            "lang": self.language,
            "config": self.config,
            "lang_map": dict(sorted(self.lang_map.items())) if self.lang_map else None,
            "text_column": self.text_column,
            "revision": self.revision,
        }
        return {k: v for k, v in given.items() if v}


def plan_sources(
    source: str | Path, langs: list[str] | None = None, options: SourceOptions = SourceOptions()
) -> SourcePlan:
    """What ``xelm data prepare SOURCE`` reads: a recipe (a file, or a shipped recipe's name);
    a dataset with a per-language ``config`` template; a dataset whose rows carry languages
    (or ``options.language``); or corpus files."""
    split, language, config = options.split, options.language, options.config
    lang_map, text_column, revision = options.lang_map, options.text_column, options.revision
    text = str(source)
    per_language = config is not None and PLACEHOLDER in config
    if is_recipe(text) or per_language:
        if language is not None:
            raise UsageError("--lang labels an unlabelled corpus; a recipe names each language")
        if per_language:
            if not langs:
                raise UsageError(f"--config {config!r} needs --langs: the languages to read")
            assert config is not None
            recipe = recipe_from_options(
                text,
                config=config,
                languages=langs,
                lang_map=lang_map,
                split=split,
                text_column=text_column,
                revision=revision,
            )
            split = None  # in the recipe already
        else:
            if config is not None or lang_map or text_column or revision:
                raise UsageError(
                    "--config, --lang-map, --text-column and --revision describe a dataset; "
                    "a recipe sets them per language"
                )
            recipe = load_recipe(text)
        chosen = langs or recipe.languages
        return SourcePlan(text, "recipe", recipe.sources(chosen, split=split), recipe)
    if lang_map:
        raise UsageError("--lang-map maps languages into a --config template such as '{lang}'")
    kind = source_kind(source)
    if config is not None or kind in ("hf-hub", "hf-dir"):
        dataset = DatasetSource(
            text,
            config=config,
            split=split or "train",
            text_column=text_column or "text",
            revision=revision,
            language=language,  # normalised by SourceOptions
        )
        return SourcePlan(text, "dataset", {"corpus": dataset})
    if text_column or revision:
        raise UsageError("--text-column and --revision are for datasets, not corpus files")
    if not Path(source).exists():
        raise UsageError(
            f"corpus not found: {text} (not a file or directory, a dataset id owner/name, or a "
            "recipe that `xelm data recipes` lists)"
        )
    files = FileSource(
        text,
        language=language,
        split=split,
        languages=tuple(langs) if langs else None,
    )
    return SourcePlan(text, "files", {"corpus": files})


def read_limits(
    languages: list[str] | None, caps: dict[str, int] | None, tokens: int | None
) -> dict[str, int]:
    """How many tokens of each language a streamed source is read for: its cap, else the total
    budget (no language can get more), else everything (no entry). ``"*"`` covers languages not
    named."""
    limits = dict(caps or {})
    if tokens is not None:
        limits = {k: min(v, tokens) for k, v in limits.items()}
        limits.setdefault(ALL_LANGUAGES, tokens)
    return limits


def _limit(limits: dict[str, int], language: str) -> int | None:
    return limits.get(language, limits.get(ALL_LANGUAGES))


# -- the run ---------------------------------------------------------------------------------


@dataclass
class _Encoded:
    """A batch, the encodings of its documents ``kept`` (the others were not wanted) and its
    source position after it."""

    batch: Batch
    position: Any
    kept: Sequence[int]
    encodings: list[Any]  # tokenizers.Encoding, one per kept document


def _encode(
    items: Iterable[tuple[Batch, Any]],
    tokenizer: TokenizerInfo,
    wanted: set[str] | None,
    counts: dict[str, LanguageCount],
) -> Iterator[_Encoded]:
    """Tokenise each batch's documents of wanted languages that are not full yet. Runs ahead
    of the writer (``_add_batch``): a language that fills meanwhile only costs the encoding
    of documents the writer then drops (``full`` only ever turns on). Token ids are taken out
    of the encodings by the writer, leaving this thread to the tokenizer."""
    for batch, position in items:
        languages = batch.languages
        skip = {lang for lang, c in list(counts.items()) if c.full}  # list(): one atomic copy
        if wanted is None and not skip:
            keep: Sequence[int] = range(len(languages))  # no test per document
        else:
            allowed = {lang for lang in set(languages) if lang not in skip}
            if wanted is not None:
                allowed &= wanted
            keep = [i for i, lang in enumerate(languages) if lang in allowed]
        texts = batch.texts if len(keep) == len(languages) else [batch.texts[i] for i in keep]
        encodings = tokenizer.backend.encode_batch_fast(texts, add_special_tokens=False)
        yield _Encoded(batch, position, keep, encodings)


def _add_batch(
    work: WorkDirectory,
    encoded: _Encoded,
    wanted: set[str] | None,
    limits: dict[str, int],
    progress: Progress | None,
) -> None:
    """Append each wanted document of a tokenised batch to its language, stopping a language
    at the first document that would take it over its read limit."""
    batch = encoded.batch
    grouped: dict[str, tuple[list[list[int]], int]] = {}
    for i, encoding in zip(encoded.kept, encoded.encodings, strict=True):
        lang = batch.languages[i]
        count = work.counts.get(lang)
        if (count is not None and count.full) or not (ids := encoding.ids):
            continue
        documents, nbytes = grouped.get(lang, ([], 0))
        documents.append(ids)
        grouped[lang] = (documents, nbytes + len(batch.texts[i].encode()))
    for lang, (documents, nbytes) in grouped.items():
        appender = work.appender(lang)
        limit = _limit(limits, lang)
        if limit is not None:
            room = limit - appender.count.tokens
            lengths = np.cumsum([len(d) for d in documents])
            fits = int(np.searchsorted(lengths, room, side="right"))
            if fits < len(documents):
                appender.count.full = True
                nbytes = round(nbytes * fits / len(documents))  # for progress only
                documents = documents[:fits]
        if documents:
            appender.add(documents, nbytes)
        if progress:
            progress(lang, appender.count, limit)


def _read_sources(
    work: WorkDirectory,
    plan: SourcePlan,
    tokenizer: TokenizerInfo,
    *,
    wanted: set[str] | None,
    limits: dict[str, int],
    batch_size: int,
    progress: Progress | None,
) -> None:
    """Pass 1: every source, from where an earlier run stopped, into the work directory.
    Streamed (dataset) sources stop at their languages' read limits; corpus files are read
    whole, their budgets applied by sampling afterwards. Three stages overlap: reading (a
    thread), tokenising (a thread; the Rust tokenizer releases the GIL) and writing here."""
    for name, source in plan.sources.items():
        if work.finished(name):
            continue
        streamed = isinstance(source, DatasetSource)
        only = plan.only_language(name)
        yields = {only} if only else wanted
        source_limits = limits if streamed else {}

        def exhausted(languages: set[str] | None = yields, bounded: bool = streamed) -> bool:
            return bool(
                bounded
                and languages
                and all(lang in work.counts and work.counts[lang].full for lang in languages)
            )

        if exhausted():
            work.checkpoint(name, work.position(name), done=True)
            continue
        stream = source.open(work.position(name), batch_size=batch_size)
        position = work.position(name)
        batches = read_ahead(_encode(prefetched(stream), tokenizer, wanted, work.counts))
        try:
            for encoded in batches:
                position = encoded.position
                _add_batch(work, encoded, wanted, source_limits, progress)
                if exhausted():
                    break
                work.checkpoint(name, position)
        finally:
            batches.close()
        work.checkpoint(name, position, done=True)


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


SUBSAMPLE_TOKENS = 1 << 24  # tokens gathered per step when cutting a language down


def _subsample(
    work: Path,
    out: Path,
    lang: str,
    offsets: NDArray[np.uint64],
    keep: NDArray[np.int64],
    dtype: Any,
) -> NDArray[np.uint64]:
    """Write ``lang``'s documents ``keep`` from ``work`` to ``out``; return their offsets.
    Memory stays bounded: documents are gathered a slice of ``SUBSAMPLE_TOKENS`` at a time."""
    starts = np.asarray(offsets[:-1], dtype=np.int64)[keep]
    lengths = np.asarray(np.diff(offsets), dtype=np.int64)[keep]
    new_offsets = np.zeros(len(keep) + 1, dtype=OFFSETS_DTYPE)
    np.cumsum(lengths, out=new_offsets[1:])
    tokens = np.memmap(work / tokens_file(lang), dtype=dtype, mode="r")
    with open(out / tokens_file(lang), "wb") as f:
        first = 0
        while first < len(keep):
            ends = new_offsets[first + 1 :] - new_offsets[first]
            last = first + max(1, int(np.searchsorted(ends, SUBSAMPLE_TOKENS, side="right")))
            part_lengths = lengths[first:last]
            shift = starts[first:last] - (np.cumsum(part_lengths) - part_lengths)
            index = np.arange(int(part_lengths.sum()), dtype=np.int64)
            index += np.repeat(shift, part_lengths)
            f.write(np.ascontiguousarray(tokens[index]).data)
            first = last
    del tokens
    write_array(out / offsets_file(lang), new_offsets)
    return new_offsets


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def _finish(
    work: WorkDirectory,
    out: Path,
    offsets: dict[str, NDArray[np.uint64]],
    budgets: dict[str, int],
    *,
    seed: int,
    streamed: set[str],
) -> dict[str, dict[str, Any]]:
    """Pass 2: each language into ``out``, cut down to its budget where over it; the manifest's
    per-language entries."""
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
            kept = _subsample(work.path, out, lang, full, keep, work.dtype)
        else:  # a link, not a move: a run killed now still finds the file to resume from
            _link_or_copy(work.path / tokens_file(lang), out / tokens_file(lang))
            write_array(out / offsets_file(lang), full)
        entries[lang] = {
            "documents": len(kept) - 1,
            "tokens": int(kept[-1]),
            "source_documents": source_documents,
            "source_tokens": source_tokens,
            "budget": budgets[lang] if budgets[lang] < source_tokens else None,
        }
        if lang in streamed:
            entries[lang]["read_to_limit"] = work.counts[lang].full
    return entries


def _options(
    langs: list[str] | None,
    caps: dict[str, int] | None,
    alpha: float | None,
    tokens: int | None,
    seed: int,
    source: SourceOptions,
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
        "split": source.split,
    }
    return {**options, **source.recorded()}


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
    config: str | None = None,
    lang_map: dict[str, str] | None = None,
    text_column: str | None = None,
    revision: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PrepareResult:
    """Tokenise ``source`` with the tokenizer of a bundle or tokenizer directory into ``out``.

    ``source`` is a corpus (files, a directory, a ``save_to_disk`` dataset), a dataset (a Hub
    id or a local directory laid out like one: streamed, never materialised), or a recipe
    (a file or a shipped recipe's name); ``config`` with ``{lang}`` reads one configuration
    per language of ``langs``, ``lang_map`` giving the dataset's code where it differs.
    ``token_caps`` limits tokens per language (an int: every language; ``{"*": n}`` too);
    ``alpha`` and ``tokens`` set temperature sampling (see ``language_budgets``); ``seed``
    picks the sampled documents; ``language`` labels documents that carry no language.

    A streamed language is read until its cap (else ``tokens``) is reached; its size for
    ``alpha`` is what was read. A killed or interrupted run continues where it stopped when
    run again with the same arguments. Nothing is written when ``out`` already holds shards of
    the same input, tokenizer and options (``up_to_date``); other shards there are an error
    unless ``overwrite``.
    """
    out = Path(os.path.abspath(out))
    wanted = sorted({normalize_language(code) for code in langs}) if langs else None
    caps = _normalise_caps(token_caps)
    reading = SourceOptions(
        split=split,
        language=language,
        config=config,
        lang_map=lang_map,
        text_column=text_column,
        revision=revision,
    )
    options = _options(wanted, caps, alpha, tokens, seed, reading)
    plan = plan_sources(source, wanted, reading)
    if wanted is None and plan.recipe is not None:
        wanted = sorted(plan.sources)
    info = load_tokenizer(tokenizer)
    with output_lock(out):
        old = _existing(out, overwrite=overwrite)
        record = plan.record(previous=(old or {}).get("source"))
        if old is not None and not overwrite:
            changed = _differences(old, record, info.fingerprint, options)
            if not changed:
                return PrepareResult(Shards.open(out), up_to_date=True)
            raise UsageError(
                f"{out} holds shards made differently ({'; '.join(changed)}); "
                "pass --force to rebuild, or choose another -o"
            )
        dtype_name = token_dtype_name(info.vocab_size)
        key = sha256_bytes(
            canonical_json([record["digest"], info.fingerprint, options, dtype_name])
        )
        work = WorkDirectory(out, key, dtype_name, fresh=False)
        with work.removed_unless_resumable():
            with tokenizer_threads(workers):
                _read_sources(
                    work,
                    plan,
                    info,
                    wanted=set(wanted) if wanted else None,
                    limits=read_limits(wanted, caps, tokens),
                    batch_size=batch_size,
                    progress=progress,
                )
            offsets = work.close()
            _check_languages(source, set(offsets), wanted, caps)
            counts = {lang: int(o[-1]) for lang, o in offsets.items()}
            budgets = language_budgets(counts, caps=caps, alpha=alpha, total=tokens)
            streamed = plan.streamed_languages(counts)
            with atomic_directory(out, overwrite=overwrite) as tmp:
                entries = _finish(work, tmp, offsets, budgets, seed=seed, streamed=streamed)
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
    "SourceOptions",
    "SourcePlan",
    "language_budgets",
    "load_tokenizer",
    "parse_caps",
    "parse_token_count",
    "plan_sources",
    "prepare",
    "read_limits",
    "select_documents",
]
