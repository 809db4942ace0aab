"""What a path given in the wrong place is, where xelm can tell: what xelm writes, known by its
manifest (whose file names and ``format`` values spec/bundle-v1.md, spec/shards-v1.md and
spec/allocation-v1.md fix, and which the modules of each format take from here) or by its
archive suffix, and the Hugging Face folders users mistake for those. A refusal names what the
path is (:func:`what_path_is`) and then adds its own way out."""

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


def made_by_xelm(path: str | Path) -> str | None:
    """What xelm made ``path``, as a noun phrase (``BUNDLE``, ``SHARDS``, ``ALLOCATION``,
    ``ARCHIVE``, or the manifest of one of them given by itself); None for anything else (a
    corpus, a missing path)."""
    path = Path(path)
    try:
        if path.is_dir():
            return next((what for name, what in _FOLDERS if (path / name).is_file()), None)
        if path.name.endswith(ARCHIVE_SUFFIX) and path.is_file():
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
