"""Content digests: sha256 of files, written as ``sha256:<hex>``."""

import hashlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 4 << 20
PREFIX = "sha256:"


def sha256_bytes(data: bytes) -> str:
    return PREFIX + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return PREFIX + h.hexdigest()


def short(digest: str, n: int = 12) -> str:
    return digest.removeprefix(PREFIX)[:n]
