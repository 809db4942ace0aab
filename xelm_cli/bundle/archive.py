"""One-file bundle archives (``<name>.xelm.tar.zst``) for sharing bundles.

An archive is a POSIX (pax) tar stream compressed with zstandard. ``xelm.json`` is the first
member, so a reader checks the format version, the schema and the file list before it extracts
anything; the other members follow in sorted order. Members are regular files with flat names and
normalised metadata (mode 0444, uid/gid 0, no owner names, mtime 0), so one bundle always packs
to the same bytes.

Unpacking streams the archive once: each member is refused unless it is a regular file the
manifest lists, with the manifest's size; it is hashed while it is written into a temporary
directory that is renamed into place only after every size and digest has matched (with
``xelm.json`` written last, so a killed unpack leaves no folder with a manifest). Decompressed
bytes are counted as they are read, so a decompression bomb stops at the sizes the manifest
declares (plus header room) instead of filling memory or disk. After tar's end-of-archive
blocks only zero bytes (its record padding) may follow: anything else is refused.

Both ways, the bundle must keep the rules ``xelm bundle verify`` checks besides the digests: the
manifest's (spec 7.2), before anything is packed or extracted, and the fingerprints, once the
files are known to be the manifest's.
"""

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Self, cast

import zstandard

from xelm_cli.bundle.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    check_format_version,
    first_of,
)
from xelm_cli.bundle.store import Bundle, check_output, rule_problems
from xelm_cli.common.atomic import atomic_file, sealed_directory, write_last
from xelm_cli.common.digest import PREFIX, sha256_bytes
from xelm_cli.common.errors import (
    ArchiveError,
    FormatError,
    IntegrityError,
    UsageError,
    XelmError,
    exception_line,
)
from xelm_cli.common.jsonio import parse_json_object
from xelm_cli.common.outputs import (
    check_replaceable,
    has_magic,
    refuse_inside_bundle,
    resolved_output,
)
from xelm_cli.common.recognise import (
    ARCHIVE_SUFFIX,
    ZSTD_MAGIC,
    is_bundle_archive,
    what_path_is,
)
from xelm_cli.common.units import parse_byte_size

Progress = Callable[[int], None]

MAX_MANIFEST_SIZE = 16 << 20
CHUNK = 1 << 20
# zstd output is identical for every worker count >= 1 (though not for 0, the single-threaded
# mode), so using all cores keeps archives byte-reproducible across machines.
ZSTD_THREADS = -1
# Room for the tar blocks that are not file content: each member's header, including pax or GNU
# long-name records written by other tar tools, and its padding; then the end-of-archive blocks
# and record padding; then one read-ahead buffer of the tar reader.
_MEMBER_OVERHEAD = 8 << 10
_TRAILER_OVERHEAD = (64 << 10) + CHUNK

_REPACK = "refusing the archive: pack it again from a bundle that passes `xelm bundle verify`"
_TRAILING_DATA = (
    "trailing data after the archive ({}); refusing the archive: unpack the file as "
    "`xelm bundle pack` wrote it"
)

_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.DIRTYPE: "a directory",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}
# Errors the tar and zstd readers raise on malformed input: hostile headers reach int(), bytes
# decoding and indexing inside tarfile, so built-in exceptions mean "corrupt" here too.
_READ_ERRORS = (
    tarfile.TarError,
    zstandard.ZstdError,
    EOFError,
    OSError,
    ValueError,
    LookupError,
    OverflowError,
)


def default_archive_name(bundle: Bundle) -> str:
    """``<bundle-name>.xelm.tar.zst``, reduced to characters that are safe in a file name."""
    name = bundle.name or bundle.path.resolve().name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return (stem or "bundle") + ARCHIVE_SUFFIX


# ---------------------------------------------------------------------------------------------
# Packing


def pack_bundle(
    bundle_dir: str | Path,
    out: Path,
    *,
    overwrite: bool = False,
    level: int = 3,
    progress: Progress | None = None,
) -> Path:
    """Write the bundle at ``bundle_dir`` as one reproducible archive at ``out``.

    Every file is hashed as it is packed and a digest that does not match the manifest aborts
    (IntegrityError) with nothing written, so a corrupted bundle is never packed and the bundle
    is read once; so does a false fingerprint (IntegrityError) or a manifest that breaks the
    spec's rules (FormatError): what ``xelm bundle verify`` rejects is not packed.
    ``progress(n)`` receives the bytes of bundle files read (Bundle.size in all).
    Raises UsageError for a bad level or an existing ``out`` without ``overwrite``; with it,
    for anything at ``out`` but a bundle archive (a folder, other files, a zstd file that is no
    bundle archive: never replaced).
    """
    if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise UsageError(
            f"compression level {level} is not between 1 and {zstandard.MAX_COMPRESSION_LEVEL}"
        )
    bundle = Bundle.open(bundle_dir, verify=False)  # layout and sizes; digests while packing
    _refuse_broken_rules(bundle)
    target, source = resolved_output(out), bundle.path.resolve()
    refuse_inside_bundle(out, "an archive")  # this bundle or any other
    if _overlap(target, source):
        raise UsageError(
            f"{out}: the archive would replace the bundle {bundle.path} (or a folder holding "
            "it); write it somewhere else"
        )
    _refuse_other_file(out)
    check_replaceable(  # an archive replaces only an archive: never a folder, nor other files
        out,
        overwrite=overwrite,
        inputs=[bundle.path],
        own=lambda path: not path.is_symlink() and is_bundle_archive(path),
        kind="an archive",
        folder=False,
        what="an archive",
    )
    manifest_raw = (bundle.path / MANIFEST_NAME).read_bytes()
    if sha256_bytes(manifest_raw) != bundle.digest:
        raise IntegrityError(f"{bundle.path}: {MANIFEST_NAME} changed while packing; try again")
    if len(manifest_raw) > MAX_MANIFEST_SIZE:  # no unpacker would take it (spec 8)
        raise UsageError(
            f"{bundle.path}: {MANIFEST_NAME} is {len(manifest_raw):,} bytes, more than an "
            f"archive's manifest may hold ({MAX_MANIFEST_SIZE:,}); copy the folder instead"
        )
    compressor = zstandard.ZstdCompressor(level=level, threads=ZSTD_THREADS, write_checksum=True)
    with (
        atomic_file(Path(out), overwrite=overwrite) as tmp,
        open(tmp, "wb") as raw,
        compressor.stream_writer(raw, closefd=False) as stream,
    ):
        _write_tar(stream, bundle, manifest_raw, progress)
        _refuse_false_fingerprints(bundle)  # now that the files matched their digests
    return Path(os.path.abspath(out))


def _refuse_broken_rules(bundle: Bundle) -> None:
    """Refuse a bundle whose manifest breaks the spec's rules (spec 7.2: a pickle file, a
    lineage that does not start with its one ``init`` step, ...)."""
    problems = rule_problems(bundle.manifest.raw)
    if problems:
        raise FormatError(
            f"{bundle.path}: {first_of(problems)}; not packed: run `xelm bundle verify "
            f"{bundle.path}`"
        )


def _refuse_false_fingerprints(bundle: Bundle) -> None:
    problems = bundle.fingerprint_problems()
    if problems:
        raise IntegrityError(
            f"{bundle.path}: {first_of(problems)}; not packed: run `xelm bundle verify "
            f"{bundle.path}`"
        )


def _refuse_other_file(out: Path) -> None:
    """Refuse an existing file at ``out`` that is no bundle archive (a compressed corpus, a
    manifest), saying what it is: ``--force`` never replaces it, so no hint to pass it."""
    target = resolved_output(out)
    if target.is_symlink() or not target.is_file() or is_bundle_archive(target):
        return  # check_replaceable refuses links and folders
    try:
        zstd = has_magic(target, ZSTD_MAGIC)
    except OSError:
        zstd = False
    what = what_path_is(target) or ("zstd data" if zstd else "a file")
    raise UsageError(
        f"{out} is {what}, not a bundle archive; --force replaces only an archive: write the "
        "archive somewhere else, or remove that file first"
    )


def _write_tar(
    stream: IO[bytes], bundle: Bundle, manifest_raw: bytes, progress: Progress | None
) -> None:
    offset = _write_member(stream, MANIFEST_NAME, len(manifest_raw), io.BytesIO(manifest_raw))
    for name, entry in sorted(bundle.manifest.files.items()):
        problem = _name_problem(name)
        if problem:
            raise ArchiveError(
                f"{bundle.path}: file {_show(name)} {problem}; it cannot be archived"
            )
        offset += _pack_file(stream, bundle.path, name, entry, progress)
    # End of archive: two zero blocks, then zeros up to a whole record, as tar(1) writes it.
    end = offset + 2 * tarfile.BLOCKSIZE
    end += -end % tarfile.RECORDSIZE
    stream.write(tarfile.NUL * (end - offset))


def _pack_file(
    stream: IO[bytes], root: Path, name: str, entry: FileEntry, progress: Progress | None
) -> int:
    with open(root / name, "rb") as f:
        source = _HashingReader(f, progress)
        written = _write_member(stream, name, entry.size, source)
        grew = bool(f.read(1))
    if grew:
        raise IntegrityError(f"{root}: {name}: file grew while packing; try again")
    if source.digest != entry.sha256:
        raise IntegrityError(
            f"{root}: {name}: sha256 does not match the manifest "
            f"(content changed); run `xelm bundle verify {root}`"
        )
    return written


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = tarfile.REGTYPE
    info.mode = 0o444
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_member(stream: IO[bytes], name: str, size: int, source: Any) -> int:
    """Write one member (header, content, padding); returns the bytes written."""
    header = _member_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    stream.write(header)
    left = size
    while left and (chunk := source.read(min(CHUNK, left))):
        stream.write(chunk)
        left -= len(chunk)
    if left:
        raise IntegrityError(f"{name}: file shrank while packing; try again")
    padding = -size % tarfile.BLOCKSIZE
    stream.write(tarfile.NUL * padding)
    return len(header) + size + padding


class _HashingReader:
    """A file read through sha256 (and a progress callback)."""

    def __init__(self, f: BinaryIO, progress: Progress | None):
        self.f, self.progress = f, progress
        self.hash = hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        if self.progress and data:
            self.progress(len(data))
        return data

    @property
    def digest(self) -> str:
        return PREFIX + self.hash.hexdigest()


# ---------------------------------------------------------------------------------------------
# Unpacking


def unpack_bundle(
    archive: Path,
    out: Path,
    *,
    overwrite: bool = False,
    max_bytes: int | str = 1 << 40,
    progress: Progress | None = None,
) -> Bundle:
    """Extract an archive into a new bundle directory ``out`` and return the opened bundle.

    Raises ArchiveError (one line naming the member) for anything unsafe or malformed: a member
    that is not a regular file, an unsafe or unlisted or duplicate name, a size or sha256 that
    differs from the manifest, ``xelm.json`` not first or over 16 MiB, more than ``max_bytes`` in
    all, a truncated or corrupt stream, anything but zero bytes after the end of the tar stream,
    a manifest that breaks the spec's rules (spec 7.2, before anything is extracted), files
    whose fingerprints are not the manifest's; FormatError for a manifest of an unknown version
    or that breaks the schema; UsageError for a missing archive or an ``out`` that bundle
    writers may not write (store.check_output: an existing one without ``overwrite``; with it,
    anything but a bundle or an empty folder). On any error nothing is left at ``out``.
    ``progress(n)`` receives the compressed bytes read (the archive's file size in all).
    """
    archive = Path(archive)
    if isinstance(max_bytes, str):  # "1T", as --max-size takes it
        max_bytes = parse_byte_size(max_bytes, "--max-size")
    if max_bytes < 1:
        raise UsageError(f"--max-size must be positive, not {max_bytes} bytes")
    check_archive(archive)
    if _overlap(resolved_output(out), archive.resolve()):
        raise UsageError(
            f"{out}: unpacking there would replace the archive {archive} it reads; unpack it "
            "somewhere else"
        )
    check_output(out, overwrite=overwrite, inputs=[archive])
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed by the ExitStack below
    except OSError as exc:
        raise UsageError(f"cannot read archive {archive}: {exc.strerror or exc}") from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(raw)
        source = _ProgressReader(raw, progress) if progress else raw
        decompressed = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source), read_across_frames=True
        )
        reader = _LimitedReader(stack.enter_context(decompressed), str(archive))
        extractor: _Extractor | None = None

        def seal(tmp: Path) -> None:  # the manifest last, once every other file is on disk
            check_output(out, overwrite=overwrite, inputs=[archive])
            assert extractor is not None and extractor.manifest_raw is not None
            write_last(tmp, MANIFEST_NAME, extractor.manifest_raw)

        tmp = stack.enter_context(sealed_directory(Path(out), overwrite=overwrite, last=seal))
        extractor = _Extractor(reader, tmp, str(archive), max_bytes)
        manifest = extractor.run()
        bundle = _open_unpacked(tmp, manifest, extractor.manifest_raw, str(archive))
    return dataclasses.replace(bundle, path=Path(out))


def check_archive(archive: Path) -> None:
    """Refuse, in one line and before anything is read past its first bytes, an ``archive``
    that is missing, a folder (a bundle folder is usable as it is) or a file that does not
    start as zstd data does (another kind of file: an allocation, a plain tar)."""
    made = f"`xelm bundle pack BUNDLE` makes a {ARCHIVE_SUFFIX} archive"
    if not archive.exists():
        raise UsageError(f"archive not found: {archive}")
    if archive.is_dir():
        if (archive / MANIFEST_NAME).is_file():
            raise UsageError(
                f"{archive} is a bundle folder, not an archive: use it as it is (copy it to "
                f"move it; `xelm bundle verify {archive}` checks it), or pack it with "
                f"`xelm bundle pack {archive}`"
            )
        raise UsageError(f"{archive} is a folder, not a {ARCHIVE_SUFFIX} archive; {made}")
    if not archive.is_file():
        raise UsageError(f"{archive} is not a plain file; {made}")
    try:
        with open(archive, "rb") as f:
            start = f.read(len(ZSTD_MAGIC))
    except OSError as exc:
        raise UsageError(f"cannot read archive {archive}: {exc.strerror or exc}") from None
    if not start:
        raise ArchiveError(f"{archive} is empty, not a {ARCHIVE_SUFFIX} archive; {made}")
    if start != ZSTD_MAGIC:
        raise ArchiveError(
            f"{archive} is not a {ARCHIVE_SUFFIX} archive (it does not start as zstd data does: "
            f"another kind of file, or a corrupt archive); {made}"
        )


def _overlap(output: Path, kept: Path) -> bool:
    """Whether writing ``output`` (a file or folder it replaces) would replace ``kept``."""
    return output == kept or output in kept.parents


def _open_unpacked(tmp: Path, manifest: Manifest, raw: bytes | None, label: str) -> Bundle:
    """The core's own checks (sizes, listing) and the fingerprints, before the manifest is
    written and the folder renamed. Digests were checked while extracting, so files are not
    hashed again.
    """
    assert raw is not None
    bundle = Bundle(tmp, manifest, sha256_bytes(raw))
    try:
        bundle.check_files(hash_files=False)
    except XelmError as exc:
        detail = str(exc).removeprefix(f"{tmp}: ").split("; run `")[0]
        raise ArchiveError(f"{label}: the unpacked bundle does not verify: {detail}") from None
    problems = bundle.fingerprint_problems()
    if problems:
        raise ArchiveError(
            f"{label}: the unpacked bundle does not verify: {first_of(problems)}; {_REPACK}"
        )
    return bundle


class _ProgressReader:
    def __init__(self, f: BinaryIO, progress: Progress):
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress(len(data))
        return data


class _LimitedReader:
    """Decompressed bytes, refused past ``limit``: the bound on what a bomb can expand to."""

    def __init__(self, f: Any, label: str):
        self.f, self.label = f, label
        self.limit = MAX_MANIFEST_SIZE + _MEMBER_OVERHEAD + _TRAILER_OVERHEAD
        self.count = 0
        self.past_limit = (
            "archive expands beyond the sizes its manifest declares (corrupt, or a "
            "decompression bomb)"
        )

    def read(self, n: int = -1) -> bytes:
        with _archive_errors(self.label):
            data: bytes = self.f.read(n if n >= 0 else CHUNK)
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(f"{self.label}: {self.past_limit}")
        return data


@contextlib.contextmanager
def _archive_errors(label: str, where: str = "") -> Iterator[None]:
    try:
        yield
    except XelmError:
        raise
    except _READ_ERRORS as exc:
        where = f" {where}" if where else ""
        reason = exception_line(exc, 200)
        if isinstance(exc, tarfile.ReadError) and str(exc) == "empty file":
            reason = "nothing decompresses from it"  # tarfile's words for a stream of no bytes
        raise ArchiveError(f"{label}: corrupt or truncated archive{where} ({reason})") from None


def _name_problem(name: str) -> str | None:
    """Why ``name`` may not be a member (spec: flat names only), or None."""
    if name.startswith("/"):
        return "has an absolute path"
    control = any(c < " " or c == "\x7f" for c in name)  # NUL, a newline, ...
    if not name or name == "." or control or any(part in name for part in ("/", "\\", "..")):
        return "is not a plain file name (empty, or has '/', '\\', '..' or a control character)"
    return None


def _show(name: str) -> str:
    """A member name for a one-line message: quoted, escaped, shortened."""
    shown = repr(name)
    return shown if len(shown) <= 80 else shown[:77] + "..."


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile takes a header block that fails its checksum or is cut short, after the first
    member, for the end of the archive; here it is corrupt data, so that only zero blocks (or
    the end of the stream) end the member list and nothing else passes for the end."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            if buf.count(0) == len(buf):  # none, or zeros (perhaps cut short): the end
                raise
            raise tarfile.ReadError(f"{exc}: not a tar header") from None


class _Extractor:
    """One pass over the tar stream, checking every member before writing it."""

    def __init__(self, reader: _LimitedReader, dest: Path, label: str, max_bytes: int):
        self.reader, self.dest, self.label, self.max_bytes = reader, dest, label, max_bytes
        self.seen: set[str] = set()
        self.manifest_raw: bytes | None = None  # written last, by unpack_bundle

    def fail(self, message: str) -> ArchiveError:
        return ArchiveError(f"{self.label}: {message}")

    def run(self) -> Manifest:
        """Extract every member but ``xelm.json``, which is checked and kept in
        ``manifest_raw``; returns the manifest."""
        with _archive_errors(self.label):
            stream = cast(IO[bytes], self.reader)
            tar = tarfile.open(  # noqa: SIM115
                fileobj=stream, mode="r|", bufsize=CHUNK, tarinfo=_StrictTarInfo
            )
        with tar:  # closing a stream-mode reader leaves self.reader open
            manifest = self.extract_manifest(tar)
            while (member := self.next_member(tar)) is not None:
                entry = self.check_member(member, manifest)
                self.extract_file(tar, member, entry)
            self.refuse_missing(manifest)
            self.refuse_trailing_data(tar)
        return manifest

    def refuse_missing(self, manifest: Manifest) -> None:
        missing = sorted(set(manifest.files) - self.seen)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise self.fail(
                f"archive ends before member {_show(missing[0])}{more}: "
                f"truncated, corrupt or incomplete"
            )

    def next_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo | None:
        with _archive_errors(self.label):
            return tar.next()

    def check_safe(self, member: tarfile.TarInfo) -> None:
        shown = _show(member.name)
        problem = _name_problem(member.name)
        if problem:
            raise self.fail(f"member {shown} {problem}; refusing the archive")
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = _TYPE_NAMES.get(member.type, f"of tar type {member.type!r}")
            raise self.fail(f"member {shown} is {kind}; archives may hold only regular files")
        if member.name in self.seen:
            raise self.fail(f"member {shown} appears twice; refusing the archive")

    def extract_manifest(self, tar: tarfile.TarFile) -> Manifest:
        first = self.next_member(tar)
        if first is None:
            raise self.fail("empty archive; not an xelm bundle archive")
        self.check_safe(first)
        if first.name != MANIFEST_NAME:
            raise self.fail(
                f"first member is {_show(first.name)}, not {MANIFEST_NAME}; "
                f"not an xelm bundle archive"
            )
        if not 0 <= first.size <= MAX_MANIFEST_SIZE:
            raise self.fail(
                f"member {MANIFEST_NAME} is {first.size} bytes, over the "
                f"{MAX_MANIFEST_SIZE >> 20} MiB limit"
            )
        raw = self.read_member(tar, first)
        manifest = self.parse_manifest(raw)
        declared = len(raw) + sum(entry.size for entry in manifest.files.values())
        if declared > self.max_bytes:
            raise self.fail(
                f"bundle holds {declared} bytes, over the limit of {self.max_bytes} bytes: "
                "pass a larger --max-size to unpack it"
            )
        # Member sizes must equal the manifest's and names may not repeat, so from here on the
        # stream can hold no more than the declared total plus tar's own blocks.
        self.reader.limit = (
            self.reader.count
            + declared
            + _MEMBER_OVERHEAD * len(manifest.files)
            + _TRAILER_OVERHEAD
        )
        self.manifest_raw = raw
        self.seen.add(MANIFEST_NAME)
        return manifest

    def read_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        return b"".join(self.member_chunks(tar, member))

    def parse_manifest(self, raw: bytes) -> Manifest:
        what = f"{self.label} ({MANIFEST_NAME})"
        data = parse_json_object(raw, what, unique_keys=True)
        check_format_version(data, what)
        manifest = Manifest.from_dict(data, what)
        if manifest.edited:
            raise self.fail(
                f"{MANIFEST_NAME} was edited after it was written "
                f"(content_digest differs); refusing the archive"
            )
        problems = rule_problems(data)
        if problems:
            raise self.fail(
                f"the bundle in it does not verify: {MANIFEST_NAME}: {first_of(problems)}; "
                f"{_REPACK}"
            )
        return manifest

    def check_member(self, member: tarfile.TarInfo, manifest: Manifest) -> FileEntry:
        self.check_safe(member)
        shown = _show(member.name)
        entry = manifest.files.get(member.name)
        if entry is None:
            raise self.fail(f"member {shown} is not listed in {MANIFEST_NAME}")
        if member.size != entry.size:
            raise self.fail(
                f"member {shown} is {member.size} bytes, the manifest says {entry.size}"
            )
        return entry

    def member_chunks(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
        """The member's content in chunks; never more than the size its header declares."""
        where = f"in member {_show(member.name)}"
        with _archive_errors(self.label, where):
            source = tar.extractfile(member)
        assert source is not None  # a regular file, checked before
        left = member.size
        while left:
            with _archive_errors(self.label, where):
                chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise self.fail(f"archive is truncated {where}")
            left -= len(chunk)
            yield chunk

    def extract_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: FileEntry) -> None:
        digest = self.write(member.name, self.member_chunks(tar, member))
        self.seen.add(member.name)
        if digest != entry.sha256:
            raise self.fail(
                f"member {_show(member.name)}: sha256 does not match the manifest "
                f"(corrupt or tampered)"
            )

    def write(self, name: str, chunks: Iterator[bytes] | list[bytes]) -> str:
        """Write a new file from chunks, hashing as it goes; returns its digest."""
        h = hashlib.sha256()
        try:
            f = open(self.dest / name, "xb")  # noqa: SIM115 - closed just below
        except FileExistsError:  # names that differ only in case, on a case-insensitive disk
            raise self.fail(f"member {_show(name)} collides with another file here") from None
        with f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
            os.fchmod(f.fileno(), 0o444)  # bundles are immutable by convention
        return PREFIX + h.hexdigest()

    def refuse_trailing_data(self, tar: tarfile.TarFile) -> None:
        """Read to the end of the stream (so zstd checks its frame checksums), through the tar
        reader's stream, which holds what it read ahead: past the end-of-archive block only zero
        bytes (tar's padding to a whole record) may follow, as ``xelm bundle pack`` writes."""
        self.reader.past_limit = _TRAILING_DATA.format("more zero bytes than tar pads with")
        rest = cast(IO[bytes], tar.fileobj)
        while chunk := rest.read(CHUNK):
            if chunk.count(0) != len(chunk):
                raise self.fail(_TRAILING_DATA.format("other data appended to it"))
