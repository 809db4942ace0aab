"""One measurement of a benchmark run in a fresh process of its own (so that its peaks, caches
and compiled kernels do not mix with another's), and the JSON it prints on its last line."""

import json
import subprocess
from typing import Any

STDERR_TAIL = 3000  # characters of a failed process's stderr in its error


class WorkerFailed(subprocess.CalledProcessError):
    """A measuring process that exited non-zero; its message ends with its stderr's tail."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '')[-STDERR_TAIL:]}"


def printed_json(argv: list[str], **run: Any) -> Any:
    """The JSON value that the process ``argv`` prints on the last line of its stdout (the
    lines before it are its own); ``run`` goes to ``subprocess.run`` (``cwd``, ``env``)."""
    done = subprocess.run(argv, capture_output=True, text=True, **run)
    if done.returncode:
        raise WorkerFailed(done.returncode, argv, done.stdout, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])
