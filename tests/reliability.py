"""Shared by the crash, corruption, fuzz, disk-full and concurrency tests.

Two environment variables turn the bounded CI runs into the long ones (``nox -s reliability``):

- ``XELM_RELIABILITY_SCALE`` (default 1) multiplies the number of kill seeds and fuzz cases.
- ``XELM_RELIABILITY_LOG`` names a JSON-lines file; every injected fault appends one record
  ``{"area", "fault", "outcome"}`` there, which ``benchmarks/reliability.py`` tabulates into
  ``benchmarks/reliability.md``. Without it, ``record`` does nothing.
"""

import fcntl
import json
import os
from pathlib import Path

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("XELM_RELIABILITY_SCALE", "1")))
LOG_ENV = "XELM_RELIABILITY_LOG"


def scaled(n: int) -> int:
    return n * SCALE


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz test: ``examples`` cases in CI, ``SCALE`` times more long."""
    return settings(
        max_examples=scaled(examples),
        deadline=None,
        derandomize=SCALE == 1,  # CI runs the same cases every time; long runs explore
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )


def record(area: str, fault: str, outcome: str) -> None:
    """Log one injected fault and what came of it (appends under a lock: tests may run in
    several processes)."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = json.dumps({"area": area, "fault": fault, "outcome": outcome}) + "\n"
    with open(Path(path), "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
