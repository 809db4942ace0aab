"""SIGTERM stops a command the way Ctrl-C does.

``timeout``, a batch scheduler at a job's time limit or preemption (SLURM sends SIGTERM, then
SIGKILL after a grace period), ``docker stop`` and ``xelm train-all`` stopping its runs all send
SIGTERM. Python's default for it ends the process at once, leaving output locks and partial
directories behind and the runs of a train-all running on. Raised as KeyboardInterrupt in the
main thread instead, it takes the paths Ctrl-C takes: partial output removed, a training's
checkpoints kept, a train-all's runs stopped, and one line that says how to continue.
"""

import contextlib
import os
import signal
from types import FrameType

_received: list[signal.Signals] = []
_owner: list[int] = []  # the process whose command SIGTERM stops (not one forked from it)
_reset_at_fork: list[bool] = []


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in this process (once: a second one while
    the command cleans up is ignored, so it cannot cut the clean-up short). Main thread only.

    A process forked from it (a multiprocessing pool's worker: lm-eval's bootstrap, say) gets
    SIGTERM's default back: its pool ends it with SIGTERM, and a worker that took the signal
    for an interruption (and ignored the next) kept its parent waiting for ever."""
    _owner[:] = [os.getpid()]
    signal.signal(signal.SIGTERM, _stop)
    if not _reset_at_fork:
        os.register_at_fork(after_in_child=_default_in_child)
        _reset_at_fork.append(True)


def received() -> signal.Signals | None:
    """The signal that stopped this process's command, if one did (None for Ctrl-C)."""
    return _received[-1] if _received else None


def _default_in_child() -> None:
    if signal.getsignal(signal.SIGTERM) is _stop:
        with contextlib.suppress(ValueError):  # not the child's main thread: _stop's check
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(signum: int, frame: FrameType | None) -> None:
    if os.getpid() not in _owner:  # a forked process that kept the handler: end as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received.append(signal.Signals(signum))
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt
