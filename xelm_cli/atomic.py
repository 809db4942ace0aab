"""Atomic writes: build in a temporary sibling, then rename into place.

A command that fails or is killed leaves either the previous state or nothing at the target,
never a half-written file or directory. Temporaries are siblings of the target so the final
rename stays on one filesystem.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError

PARTIAL_SUFFIX = ".partial"


def _make_sibling_temp(target: Path, make_dir: bool) -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = f".{target.name}.", PARTIAL_SUFFIX
        if make_dir:
            return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
        os.close(fd)
        return Path(name)
    except OSError as exc:
        raise UsageError(f"cannot write to {parent}: {exc.strerror or exc}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _refuse_existing(target: Path, what: str) -> None:
    if target.exists() or target.is_symlink():
        raise UsageError(f"{what} {target} already exists; choose another path or pass --force")


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``target`` when the block succeeds."""
    target = Path(os.path.abspath(target))
    if not overwrite:
        _refuse_existing(target, "output")
    tmp = _make_sibling_temp(target, make_dir=True)
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
        yield tmp
        if target.exists() and overwrite:
            old = _make_sibling_temp(target.with_name(target.name + ".old"), make_dir=True)
            os.rename(target, old / "x")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _refuse_existing(target, "output")
            os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``target`` when the block succeeds."""
    target = Path(os.path.abspath(target))
    if not overwrite:
        _refuse_existing(target, "output")
    tmp = _make_sibling_temp(target, make_dir=False)
    try:
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; the result should not be
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if not overwrite:
            _refuse_existing(target, "output")
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: Path, data: bytes, *, overwrite: bool = True) -> None:
    with atomic_file(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
