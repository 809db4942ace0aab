"""Content digests: sha256 of files, written as ``sha256:<hex>``."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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


class HashingWriter:
    """Writes to a binary file and hashes exactly the bytes written, so the file's digest
    (``sha256_file``'s) and size are known without reading it back."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._out.write(data)  # a buffered file writes all of it or raises
        self._hash.update(data)
        self.size += memoryview(data).nbytes

    def digest(self) -> str:
        return PREFIX + self._hash.hexdigest()


def short(digest: str, n: int = 12) -> str:
    return digest.removeprefix(PREFIX)[:n]
