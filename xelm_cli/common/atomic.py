"""Atomic writes: build in a temporary sibling, then rename into place.

A command that fails or is killed leaves the previous state at the target (nothing, or the
version it was replacing), never a half-written file or directory. Temporaries are siblings of
the target so the final rename stays on one filesystem; a directory replaced with ``overwrite``
(or a file replaced by a directory, or a directory by a file) is swapped for the new one in a
single ``renameat2(RENAME_EXCHANGE)`` where Linux allows it
(elsewhere the old one is moved aside first, and put back by the next writer if the process
was killed before the new one took its place).

One writer per target: a writer holds an advisory lock on a sibling ``.NAME.lock`` file while
it builds the target, so a second process writing the same path fails at once with one line
instead of racing it. Holding the lock also proves that any temporary of the target beside it
(``.NAME.XXXXXXXX.partial``, ``.NAME.aside-XXXXXXXX.partial``) belongs to a writer that died,
so it is removed.
"""

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from xelm_cli.common.errors import UsageError

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
_held_locks: dict[Path, int] = {}  # lock file -> depth: re-entrant within one process
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # from <fcntl.h> and <linux/fs.h>
_ASIDE = "x"  # the name of a replaced version inside its .NAME.aside-*.partial directory
_ASIDE_MARK = "aside-"  # tempfile's random characters are never "-" nor ".": see _temporary_name


def _make_sibling_temp(target: Path, make_dir: bool, mark: str = "") -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = f".{target.name}.{mark}", PARTIAL_SUFFIX
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


def _fsync(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _open_locked(lock: Path, target: Path) -> int:
    """A descriptor holding the exclusive lock on ``lock``; UsageError when another has it."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise UsageError(f"cannot write to {lock.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            raise UsageError(
                f"another process is writing {target} (it holds {lock.name}); "
                f"wait for it to finish or choose another output"
            ) from None
        # A holder that just finished unlinks the file: lock the file that is there now.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


def _temporary_name(target_name: str, mark: str = f"(?:{_ASIDE_MARK})?") -> str:
    """A regex for the names ``_make_sibling_temp`` gives the temporaries of a target whose
    name matches the regex ``target_name``: ``.NAME.XXXXXXXX.partial`` and, for a replaced
    version moved aside, ``.NAME.aside-XXXXXXXX.partial``. The 8 random characters from
    tempfile hold no "-" or ".", so no temporary of one target has a name of another's: a
    writer's clean-up never takes a concurrent writer's temporary of another target."""
    return rf"\.{target_name}\.{mark}[A-Za-z0-9_]{{8}}{re.escape(PARTIAL_SUFFIX)}"


_ANY_TEMPORARY = re.compile(rf"/{_temporary_name('([^/]+?)')}(?=/|$)")


def shown_as_output(path: str) -> str:
    """``path`` with each temporary sibling in it shown as the output it becomes."""
    return _ANY_TEMPORARY.sub(r"/\1", path)


def _remove_stale_temporaries(target: Path) -> None:
    """Temporaries of ``target`` left by a writer that was killed (we hold its lock now); a
    previous version it had moved aside (two renames, without an atomic exchange) and not yet
    replaced goes back to ``target``.

    Earlier versions moved a replaced version aside into ``.NAME.old.XXXXXXXX.partial``: the
    name of a temporary of the target ``NAME.old``, whose writer (holding another lock) may be
    running. Nothing tells the two apart, so such a folder is neither restored nor removed
    here; a writer of ``NAME.old`` takes it for one of its own."""
    _restore_moved_aside(target)
    stale = re.compile(_temporary_name(re.escape(target.name)))
    with contextlib.suppress(OSError):
        for child in target.parent.iterdir():
            if stale.fullmatch(child.name):
                _remove(child)


def _remove(path: Path) -> None:
    """Remove ``path``, a directory tree or a file, as far as possible."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _restore_moved_aside(target: Path) -> None:
    if target.exists() or target.is_symlink():
        return
    aside = re.compile(_temporary_name(re.escape(target.name), _ASIDE_MARK))
    with contextlib.suppress(OSError):
        for child in target.parent.iterdir():
            if aside.fullmatch(child.name) and (child / _ASIDE).exists():
                os.rename(child / _ASIDE, target)
                fsync_dir(target.parent)
                return


@contextlib.contextmanager
def output_lock(target: str | Path) -> Iterator[None]:
    """Be the only writer of ``target`` for the block (re-entrant in one process)."""
    target = Path(os.path.abspath(target))
    lock = _lock_path(target)
    if lock in _held_locks:
        _held_locks[lock] += 1
        try:
            yield
        finally:
            _held_locks[lock] -= 1
        return
    created = [d for d in (target.parent, *target.parent.parents) if not d.exists()][::-1]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot write to {target.parent}: it is not a writable directory "
            f"({exc.strerror or exc})"
        ) from None
    fd = _open_locked(lock, target)
    _held_locks[lock] = 1
    try:
        _remove_stale_temporaries(target)
        yield
    finally:
        del _held_locks[lock]
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked, so no one can lock the old file after us
        os.close(fd)
        if not target.exists():  # failed: directories made for it go too, if still empty
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    directory.rmdir()


def refuse_existing(target: Path, what: str = "output") -> None:
    """Refuse an existing ``target`` in one line (a command without ``--force``)."""
    target = Path(os.path.abspath(target))
    if target.exists() or target.is_symlink():
        raise UsageError(f"{what} {target} already exists; choose another path or pass --force")


def resolved_output(path: str | Path) -> Path:
    """``path`` made absolute with its folder's links resolved (``path`` itself may not exist
    yet, and a link there is what a write would replace, not what it points to)."""
    absolute = Path(os.path.abspath(path))
    with contextlib.suppress(OSError):  # a parent that cannot be resolved stays as given
        return absolute.parent.resolve() / absolute.name
    return absolute


def refuse_replacing_workdir(target: str | Path) -> None:
    """Refuse to replace the current directory or a directory above it: the command would
    delete the folder it runs in (``-o . --force``, ``-o .. --force``)."""
    absolute = resolved_output(target)
    try:
        here = Path(os.getcwd())
    except OSError:  # the working directory is gone: nothing to protect
        return
    if absolute == here or absolute in here.parents:
        raise UsageError(
            f"{target} is the current directory or holds it; --force does not replace it: "
            "write the output somewhere else"
        )


def _refuse_replacing(target: Path, overwrite: bool) -> None:
    if not overwrite:
        refuse_existing(target)
    elif target.exists():
        refuse_replacing_workdir(target)


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``target`` when the block succeeds."""
    with sealed_directory(target, overwrite=overwrite) as tmp:
        yield tmp


@contextlib.contextmanager
def sealed_directory(
    target: Path, *, overwrite: bool = False, last: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """:func:`atomic_directory` with a last step: ``last(tmp)`` runs after every file in the
    temporary directory has been flushed to disk, right before the rename, so a file it writes
    there (with :func:`write_last`: a bundle's manifest) appears after all the others; it may
    still refuse (raise), and then nothing is left at ``target``."""
    target = Path(os.path.abspath(target))
    _refuse_replacing(target, overwrite)
    with output_lock(target):
        yield from _build_directory(target, overwrite, last)


def write_last(directory: Path, name: str, data: bytes, mode: int = 0o444) -> None:
    """Write ``directory/name`` whole or not at all: under a temporary name, flushed, then
    renamed to ``name`` (a marker such as a bundle's manifest, whose presence must mean
    that everything else is complete)."""
    tmp = directory / f".{name}{PARTIAL_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the C
    library, kernel or file system cannot, and the caller falls back to two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk: a directory renamed into place
    after a crash then holds what was written, not empty files under complete names."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                _fsync(path)
        fsync_dir(Path(directory))


def _replace(tmp: Path, target: Path) -> None:
    """Put ``tmp`` in place of the existing ``target``, either of them a file or a directory
    (``os.replace`` puts only a file over a file)."""
    if _exchange(tmp, target):  # one step: a kill leaves the old or the new version
        _remove(tmp)  # it holds the old version now
    else:
        # a kill between the renames leaves the old version aside, and the next writer of
        # target puts it back (_restore_moved_aside)
        old = _make_sibling_temp(target, make_dir=True, mark=_ASIDE_MARK)
        os.rename(target, old / _ASIDE)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)


def _build_directory(
    target: Path, overwrite: bool, last: Callable[[Path], None] | None
) -> Iterator[Path]:
    tmp = _make_sibling_temp(target, make_dir=True)
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
        yield tmp
        fsync_tree(tmp)
        _refuse_replacing(target, overwrite)  # again: the target may have come or changed
        if last is not None:
            last(tmp)
        if target.exists() and overwrite:
            _replace(tmp, target)
        else:
            refuse_existing(target)
            os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``target`` when the block succeeds."""
    target = Path(os.path.abspath(target))
    _refuse_replacing(target, overwrite)
    with output_lock(target):
        yield from _build_file(target, overwrite)


def _build_file(target: Path, overwrite: bool) -> Iterator[Path]:
    tmp = _make_sibling_temp(target, make_dir=False)
    try:
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; the result should not be
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _refuse_replacing(target, overwrite)
        if target.is_dir() and not target.is_symlink():  # --force over a directory
            _replace(tmp, target)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(target: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``target`` whole or not at all (:func:`atomic_file`: a temporary file
    beside it, synced, then renamed into place); an existing ``target`` only with
    ``overwrite``."""
    with atomic_file(target, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
