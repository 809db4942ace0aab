"""What a path given in the wrong place is, where xelm can tell: what xelm writes, known by its
manifest (whose file names and ``format`` values spec/bundle-v1.md, spec/shards-v1.md and
spec/allocation-v1.md fix, and which the modules of each format take from here) or, for an
archive, by its first member, and the Hugging Face folders users mistake for those. A refusal
names what the path is (:func:`what_path_is`) and then adds its own way out."""

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

from xelm_cli.common.outputs import BUNDLE_MANIFEST, json_format

SHARDS_MANIFEST = "shards.json"
ALLOCATION_MANIFEST = "allocation.json"
ARCHIVE_SUFFIX = ".xelm.tar.zst"
BUNDLE_FORMAT = "xelm-bundle"  # each manifest's `format`
SHARDS_FORMAT = "xelm-shards"
ALLOCATION_FORMAT = "xelm-allocation"

BUNDLE = "an xelm bundle"
SHARDS = "xelm shards, made by `xelm data prepare`"
ALLOCATION = "an xelm allocation, made by `xelm cluster`"
ARCHIVE = "a bundle archive, made by `xelm bundle pack`"
BUNDLES = "a folder of xelm bundles"
HF_MODEL = "a Hugging Face model folder"
TOKENIZER = "a tokenizer folder"

_FOLDERS = ((BUNDLE_MANIFEST, BUNDLE), (SHARDS_MANIFEST, SHARDS), (ALLOCATION_MANIFEST, ALLOCATION))
_MANIFESTS = {  # by the format of a manifest given by itself
    BUNDLE_FORMAT: f"the manifest of {BUNDLE}",
    SHARDS_FORMAT: f"the manifest of {SHARDS}",
    ALLOCATION_FORMAT: ALLOCATION,
}
_MANIFEST_BYTES = 1 << 20  # a larger .json file is no manifest of xelm's (a corpus, perhaps)
_TOKENIZER_MARKS = ("tokenizer_config.json", "tokenizer.json")
_ARCHIVE_HEAD = 4 << 10  # decompressed bytes enough for the first member's headers (pax too)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # the first bytes of a zstd frame (zstandard.FRAME_HEADER)
# what a tar or zstd reader raises on data that is not what it reads
_UNREADABLE = (OSError, EOFError, ValueError, LookupError, OverflowError, tarfile.TarError)


def is_bundle_archive(path: str | Path) -> bool:
    """Whether ``path`` is a file of zstd data that decompresses to a tar stream whose first
    member is ``xelm.json``, as ``xelm bundle pack`` writes it: a bundle archive, not any zstd
    file (a compressed corpus). Only its first few KiB are decompressed."""
    import zstandard  # only here: every command imports this module

    try:
        with open(path, "rb") as f:
            if f.read(len(ZSTD_MAGIC)) != ZSTD_MAGIC:
                return False
            f.seek(0)
            head = _read_up_to(zstandard.ZstdDecompressor().stream_reader(f).read, _ARCHIVE_HEAD)
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            first = tar.next()
    except (*_UNREADABLE, zstandard.ZstdError):
        return False
    return first is not None and first.isreg() and first.name == BUNDLE_MANIFEST


def _read_up_to(read: Callable[[int], bytes], size: int) -> bytes:
    """``size`` bytes from a stream's ``read``, fewer only at its end."""
    chunks, left = [], size
    while left and (chunk := read(left)):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def made_by_xelm(path: str | Path) -> str | None:
    """What xelm made ``path``, as a noun phrase (``BUNDLE``, ``SHARDS``, ``ALLOCATION``,
    ``ARCHIVE``, or the manifest of one of them given by itself); None for anything else (a
    corpus, a missing path)."""
    path = Path(path)
    try:
        if path.is_dir():
            return next((what for name, what in _FOLDERS if (path / name).is_file()), None)
        if path.is_file() and is_bundle_archive(path):
            return ARCHIVE
        if path.suffix != ".json" or not path.is_file() or path.stat().st_size > _MANIFEST_BYTES:
            return None
    except OSError:  # an unreadable path only costs the description
        return None
    return _MANIFESTS.get(json_format(path) or "")


def what_path_is(path: str | Path) -> str | None:
    """:func:`made_by_xelm`, else a folder of bundles (``BUNDLES``), a model folder
    (``HF_MODEL``: it has a ``config.json``) or a tokenizer folder (``TOKENIZER``); None for
    anything else."""
    made = made_by_xelm(path)
    if made is not None:
        return made
    path = Path(path)
    try:
        if not path.is_dir():
            return None
        if (path / "config.json").is_file():
            return HF_MODEL
        if any((path / name).is_file() for name in _TOKENIZER_MARKS):
            return TOKENIZER
        if any((child / BUNDLE_MANIFEST).is_file() for child in path.iterdir()):
            return BUNDLES
    except OSError:
        pass
    return None
