"""SIGTERM stops a command the way Ctrl-C does.

``timeout``, a batch scheduler at a job's time limit or preemption (SLURM sends SIGTERM, then
SIGKILL after a grace period), ``docker stop`` and ``xelm train-all`` stopping its runs all send
SIGTERM. Python's default for it ends the process at once, leaving output locks and partial
directories behind and the runs of a train-all running on. Raised as KeyboardInterrupt in the
main thread instead, it takes the paths Ctrl-C takes: partial output removed, a training's
checkpoints kept, a train-all's runs stopped, and one line that says how to continue.
"""

import signal
from types import FrameType

_received: list[signal.Signals] = []


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt (once: a second one while the command
    cleans up is ignored, so it cannot cut the clean-up short). Main thread only."""
    signal.signal(signal.SIGTERM, _stop)


def received() -> signal.Signals | None:
    """The signal that stopped this process's command, if one did (None for Ctrl-C)."""
    return _received[-1] if _received else None


def _stop(signum: int, frame: FrameType | None) -> None:
    _received.append(signal.Signals(signum))
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt
