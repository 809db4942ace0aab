"""Run the xelm CLI and SIGKILL it at its N-th write to the disk (used by tests/test_crash.py).

    python tests/killpoint.py N -- <xelm arguments...>

An audit hook (``sys.addaudithook``) counts the file-system events that modify the disk
(``open`` for writing, appending or creating, ``os.rename`` / ``os.replace``, ``os.link``,
``os.symlink``, ``os.remove`` / ``os.unlink``, ``os.rmdir``, ``os.mkdir``, ``os.chmod``,
``os.chown``, ``os.truncate``, ``os.utime``, ``shutil.rmtree``, ...: see the CPython audit
events table) whose path lies under the directory ``$XELM_KILL_UNDER``. Audit hooks run
before the operation, so at the N-th such event the process kills itself with SIGKILL before
that write happens: no handler, ``finally`` or ``atexit`` runs, as when the machine loses power
or the OOM killer strikes. N=0 only counts: at exit the harness writes
``{"events": T, "first_event_at": ..., "last_event_at": ...}`` (``time.time()`` values) to
``$XELM_KILL_COUNT_FILE``. ``$XELM_KILL_LOG`` names a file that gets one line per counted event
(event, path), to see where a kill point lies. ``$XELM_TEST_CHECKPOINT_SECONDS``, when set, replaces
``xelm_cli.data.prepare_work.CHECKPOINT_SECONDS`` (``data prepare``'s timed checkpoints), so
that the number of writes does not depend on how fast the run goes.

Writes made inside Rust or C extensions (safetensors, tokenizers, numpy's ``tofile`` on an open
file) raise no audit events; kills at random times cover those.
"""

import json
import os
import signal
import sys
import time
from typing import Any

# event -> (indexes of the path arguments, index of each one's dir_fd argument or None)
WRITE_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "open": ((0, None),),  # (path, mode, flags): counted when flags ask for a write
    "os.rename": ((0, 2), (1, 3)),  # os.replace raises os.rename too
    "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),),  # (src, dst, dir_fd): src is only the link's text
    "os.remove": ((0, 1),),  # os.unlink raises os.remove
    "os.rmdir": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.truncate": ((0, None),),  # also os.ftruncate, with a descriptor
    "os.utime": ((0, 3),),
    "os.chflags": ((0, None),),
    "os.lchflags": ((0, None),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "shutil.rmtree": ((0, 1),),
    "shutil.copyfile": ((1, None),),
    "shutil.copytree": ((1, None),),
    "shutil.move": ((0, None), (1, None)),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _descriptor_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _absolute(path: Any, dir_fd: Any) -> str | None:
    if isinstance(path, int):  # a descriptor (os.ftruncate, os.fchmod, open(fd))
        return _descriptor_path(path)
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if not os.path.isabs(path) and isinstance(dir_fd, int) and dir_fd >= 0:
        base = _descriptor_path(dir_fd)  # shutil.rmtree unlinks names relative to a dir_fd
        if base is None:
            return None
        path = os.path.join(base, path)
    return os.path.abspath(path)


class KillPoint:
    def __init__(self, kill_at: int, under: str) -> None:
        self.kill_at = kill_at
        self.roots = {os.path.abspath(under), os.path.realpath(under)}
        self.count = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.busy = False  # the hook's own calls raise events too
        log = os.environ.get("XELM_KILL_LOG")
        self.log = open(log, "a", encoding="utf-8") if log else None  # noqa: SIM115

    def _under(self, path: str | None) -> bool:
        return path is not None and any(
            path == root or path.startswith(root + os.sep) for root in self.roots
        )

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        where = WRITE_EVENTS.get(event)
        if where is None or self.busy:
            return
        if event == "open":
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            if not flags & WRITE_FLAGS:
                return
        self.busy = True
        try:
            paths = [
                _absolute(args[i], args[fd] if fd is not None and fd < len(args) else None)
                for i, fd in where
                if i < len(args)
            ]
            if not any(self._under(p) for p in paths):
                return
            self.count += 1
            self.last_at = time.time()
            self.first_at = self.first_at or self.last_at
            if self.log:
                self.log.write(f"{self.count}\t{event}\t{' -> '.join(map(str, paths))}\n")
                self.log.flush()
            if self.count == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            self.busy = False

    def report(self, path: str) -> None:
        self.busy = True
        summary = {"events": self.count, "first_event_at": self.first_at}
        summary["last_event_at"] = self.last_at
        with open(path, "w", encoding="utf-8") as f:
            json.dump(summary, f)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: python tests/killpoint.py N -- XELM_ARGS...\n")
        return 2
    under = os.environ.get("XELM_KILL_UNDER")
    if not under:
        sys.stderr.write("killpoint: set XELM_KILL_UNDER to the directory to watch\n")
        return 2
    checkpoint_seconds = os.environ.get("XELM_TEST_CHECKPOINT_SECONDS")
    if checkpoint_seconds is not None:
        from xelm_cli.data import prepare_work

        prepare_work.CHECKPOINT_SECONDS = float(checkpoint_seconds)
    point = KillPoint(int(argv[0]), under)
    sys.addaudithook(point.hook)

    from xelm_cli.cli import run

    sys.argv = ["xelm", *argv[2:]]  # what the command sees (train records its command line)
    code = run(argv[2:])
    count_file = os.environ.get("XELM_KILL_COUNT_FILE")
    if count_file:
        point.report(count_file)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
