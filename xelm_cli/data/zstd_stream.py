"""Reading zstd-compressed corpus files: every frame of the stream, and an error, never a
silently shorter file, where the last frame is cut short."""

import io
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from xelm_cli.common.errors import FormatError

CHUNK = 1 << 20  # bytes read from a file at a time
# One zstd block (up to 128 KiB) can be encoded in 4 bytes, so compressed input is fed in pieces
# this small: one piece then decompresses to at most 32 MiB, however hostile the stream.
ZSTD_PIECE = 1 << 10


class ZstdReader(io.RawIOBase):
    """Decompresses every zstd frame of ``raw``; a frame cut short raises ``FormatError``.

    (``ZstdDecompressor.stream_reader`` returns end-of-file on a truncated stream.)
    """

    def __init__(self, raw: BinaryIO, path: Path) -> None:
        self._raw = raw
        self._path = path
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._started = False  # has the current frame received any input
        self._input = memoryview(b"")
        self._fed = 0  # how much of ``_input`` was decompressed
        self._pending = b""
        self._at = 0  # how much of ``_pending`` was read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._at == len(self._pending):
            self._pending, self._at = b"", 0
            if not self._fill():
                return 0
        n = min(len(buffer), len(self._pending) - self._at)
        buffer[:n] = self._pending[self._at : self._at + n]
        self._at += n
        return n

    def _fill(self) -> bool:
        """Decompress one more piece of input into ``_pending``; False at the end of the input."""
        if self._fed == len(self._input) and not self._read_input():
            return False
        piece = self._input[self._fed : self._fed + ZSTD_PIECE]
        self._fed += len(piece)
        self._started = True
        self._pending = self._frame.decompress(piece)
        if self._frame.eof:  # what follows the frame in this piece is the next frame
            self._fed -= len(self._frame.unused_data)
            self._frame = zstandard.ZstdDecompressor().decompressobj()
            self._started = False
        return True

    def _read_input(self) -> bool:
        """The next chunk of compressed input; False at the end, where a frame cut short is an
        error."""
        self._input, self._fed = memoryview(self._raw.read(CHUNK)), 0
        if self._input:
            return True
        if self._started:
            raise FormatError(f"{self._path}: truncated zstd stream (the file is cut short)")
        return False
