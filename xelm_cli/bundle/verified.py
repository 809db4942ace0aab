"""Remembered verifications: a bundle whose files were hashed is not re-hashed on every load.

After a bundle's files matched their manifest's digests, each file's stat signature (device,
inode, size, modification and change times in nanoseconds) is stored under the bundle's digest
and path. A later load whose files all still have the stored signatures skips hashing. Any
rewrite, replacement, chmod or link changes the signature (the change time cannot be set from
user space), so such a file is hashed again; only a writer's own hard link to a file that was
still as remembered right before it is carried over (``relinked``). Bit rot below the file
system does not change a signature: ``xelm bundle verify`` always hashes everything.

A file modified within a second of being hashed could keep its timestamps, so such "racy"
files are not remembered (git handles its index the same way). The cache lives in
``$XELM_CACHE_DIR/verified`` (default ``~/.cache/xelm/verified``); ``XELM_VERIFY_CACHE=0``
turns it off. Writes are atomic and failures to write are ignored: the cache only saves time.
"""

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from xelm_cli.common.atomic import write_bytes_atomic
from xelm_cli.common.errors import XelmError

CACHE_ENV = "XELM_CACHE_DIR"
SWITCH_ENV = "XELM_VERIFY_CACHE"
RACY_NS = 1_000_000_000
MAX_ENTRY_BYTES = 1 << 20

Signature = tuple[int, int, int, int, int]
Relink = tuple[Signature, Signature]  # a file's signature right before a new hard link, and after


def signature(info: os.stat_result) -> Signature:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1") not in ("0", "false", "no", "off")


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit) / "verified"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xelm" / "verified"


def _entry(bundle_digest: str, bundle_path: Path) -> Path:
    key = f"{bundle_digest}\0{os.path.realpath(bundle_path)}".encode()
    return cache_root() / (hashlib.sha256(key).hexdigest()[:40] + ".json")


def remembered(bundle_digest: str, bundle_path: Path) -> dict[str, Signature]:
    """Signatures of the files verified last time (empty when none, or the cache is off)."""
    if not enabled():
        return {}
    try:
        path = _entry(bundle_digest, bundle_path)
        if path.stat().st_size > MAX_ENTRY_BYTES:
            return {}
        data = json.loads(path.read_bytes())
        return {
            name: (sig[0], sig[1], sig[2], sig[3], sig[4])
            for name, sig in data["files"].items()
            if isinstance(sig, list) and len(sig) == 5 and all(type(v) is int for v in sig)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return {}  # absent or unreadable: hash again


def remember(
    bundle_digest: str,
    bundle_path: Path,
    files: dict[str, Signature],
    hashed_since_ns: int,
    before: dict[str, Signature],
) -> None:
    """Store the signatures of files that matched their digests, leaving out racy ones (those
    not in ``before``, what ``remembered`` gave before the hashing, whose timestamps are too
    close to the hashing)."""
    if not enabled():
        return
    settled = hashed_since_ns - RACY_NS
    keep = {
        name: sig
        for name, sig in files.items()
        if before.get(name) == sig or max(sig[3], sig[4]) < settled
    }
    if keep != before:
        _store(bundle_digest, bundle_path, keep)


def relinked(bundle_digest: str, bundle_path: Path, links: dict[str, Relink]) -> None:
    """After hard-linking a verified bundle's files (branching), keep them remembered.

    ``links`` holds the signatures of each file this process linked, taken right before and
    right after the link. A link moves only the change time, so a file whose signature right
    before it was the remembered one is remembered with its signature right after it. Nothing
    else is carried over: a file rewritten in place with its size and modification time kept
    (at any time during a training run) moved its change time too, and is hashed again.
    """
    old = remembered(bundle_digest, bundle_path)
    new = dict(old)
    for name, (before, after) in links.items():
        if old.get(name) == before and after[:4] == before[:4]:
            new[name] = after
    if new != old:
        _store(bundle_digest, bundle_path, new)


def _store(bundle_digest: str, bundle_path: Path, files: dict[str, Signature]) -> None:
    if not enabled():
        return
    entry = {"bundle": str(os.path.realpath(bundle_path)), "digest": bundle_digest, "files": files}
    with contextlib.suppress(OSError, XelmError):
        path = _entry(bundle_digest, bundle_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps(entry, sort_keys=True).encode())


def now_ns() -> int:
    return time.time_ns()
