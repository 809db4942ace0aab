"""Reliability report: run the crash, corruption, fuzz, disk-full and concurrency tests with
fault logging on, then tabulate every injected fault and its outcome into markdown.

    python benchmarks/reliability.py [--scale N] [--out benchmarks/reliability.md] [-k EXPR]

Example, the long run (ten times the CI kill points and fuzz cases; takes a while):

    python benchmarks/reliability.py --scale 10 --out benchmarks/reliability.md

The tests (those of RELIABILITY_TESTS that exist) run in one ``python -m pytest`` with
``XELM_RELIABILITY_LOG`` naming a JSON-lines file, to which every injected fault appends
``{"area", "fault", "outcome"}`` (tests/reliability.py), and ``XELM_RELIABILITY_SCALE`` set to
``--scale``. The report gives the machine, the command, the wall time and the pytest result; a
table per area (fault, times injected, outcomes and their counts); and one line per promise,
judged from the outcomes against the vocabulary of good outcomes below (GOOD): any other
outcome means the promise is not met, and it is listed. The exit status is pytest's.
"""

import argparse
import collections
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY_TESTS = [
    "tests/test_crash.py",
    "tests/test_fuzz.py",
    "tests/test_archive.py",
    "tests/test_integrity.py",
    "tests/test_disk_full.py",
    "tests/test_concurrency.py",
    "tests/test_output_lock.py",
]
LOG_ENV, SCALE_ENV = "XELM_RELIABILITY_LOG", "XELM_RELIABILITY_SCALE"
# report order; others follow
AREAS = ["kill", "lock", "corrupt", "hostile", "fuzz", "disk-full", "concurrency"]

# Good outcomes per area, as regular expressions that must match the whole outcome. Everything
# else breaks the promises that cover its area.
_LEFT = r"( \(left [^()]*\))?"  # temporaries a killed writer left (.partial, .lock): allowed
GOOD: dict[str, list[str]] = {
    # tests/test_crash.py: after a SIGKILL the target is absent or verifies, the source is
    # unchanged, and the command run again succeeds (train: to the uninterrupted run's weights)
    "kill": [
        r"(finished before the kill, )?(target absent|target verifies"
        r"|target verifies with identical weights|(resumed|restarted) to identical weights)"
        r", source unchanged" + _LEFT,
    ],
    # tests/test_disk_full.py: one clean error line, nothing at the target, inputs unchanged
    "disk-full": [r"clean one-line error, nothing left at target"],
    # tests/test_concurrency.py: concurrent runs give the results of one run alone
    "concurrency": [r"identical results(, every branch verifies)?(, parent unchanged)?"],
    # tests/test_integrity.py, test_archive.py: the damage is found and refused
    "corrupt": [r"(detected|refused|rejected)\b.*"],
    # tests/test_fuzz.py: hostile input ends in one clean error line, is found by verify, or
    # is accepted because it is valid (the test asserts that what must be refused is)
    "fuzz": [
        r"(detected|refused|rejected)\b.*",
        r"clean one-line \w+",
        r"read, but verify reports a problem",
        r"accepted \(valid\)",
        r"exit \d+, one stderr line",
    ],
    # tests/test_output_lock.py: a second writer of one output is refused, the first finishes
    "lock": [r"refused in one line", r"one wins, the other refused in one line"],
    # tests/test_integrity.py: code inside a bundle never runs
    "hostile": [r"loaded without running its code", r"refused in one line, no code run"],
}
PROMISES = {
    "nothing lost": ["kill", "disk-full", "concurrency"],
    "nothing corrupted": ["kill", "disk-full", "concurrency"],
    "every corruption detected": ["corrupt", "fuzz"],
    "failures are clean": ["disk-full"],  # one error line with the OS's reason, no litter
    "one writer per output": ["lock"],
    "no code runs from a file": ["hostile"],
}
# A bad outcome counts against those promises covering its area that its words speak of, and
# against all of them when it speaks of none.
SPEAKS_OF = {
    "nothing lost": r"source changed|input changed|parent changed|rerun failed|resume failed"
    r"|\blost\b|different weights|exit status 0",
    "nothing corrupted": r"corrupt|does not verify|left at the target|differ|not ok",
    "failures are clean": r"error lines?|traceback|internal error|OS reason|names an input file"
    r"|left beside",
}


@dataclass
class Table:
    """One area's records: outcome counts per fault family and per exact fault."""

    families: dict[str, collections.Counter[str]] = field(default_factory=dict)
    exact: dict[str, collections.Counter[str]] = field(default_factory=dict)

    @property
    def injected(self) -> int:
        return sum(sum(c.values()) for c in self.families.values())


def family(fault: str) -> str:
    """The fault with its numbers replaced by N: kill points and sizes group into one row."""
    return re.sub(r"\d+(\.\d+)?", "N", fault)


def natural(text: str) -> list[tuple[int, str]]:
    """Sort key: numbers by value (write event 4 before write event 18)."""
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", text)]


def read_records(path: Path) -> tuple[dict[str, Table], int]:
    tables: dict[str, Table] = {}
    malformed = 0
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in lines:
        try:
            item = json.loads(line)
            area, fault, outcome = (str(item[k]) for k in ("area", "fault", "outcome"))
        except (ValueError, KeyError, TypeError):
            malformed += 1
            continue
        table = tables.setdefault(area, Table())
        table.families.setdefault(family(fault), collections.Counter())[outcome] += 1
        table.exact.setdefault(fault, collections.Counter())[outcome] += 1
    return tables, malformed


def is_good(area: str, outcome: str) -> bool:
    return any(re.fullmatch(pattern, outcome) for pattern in GOOD.get(area, []))


def broken(promise: str, tables: dict[str, Table]) -> list[tuple[str, str, str, int]]:
    """(area, fault family, outcome, count) of every outcome that breaks ``promise``."""
    found = []
    for area in PROMISES[promise]:
        for fault, outcomes in sorted(tables.get(area, Table()).families.items()):
            for outcome, count in sorted(outcomes.items()):
                if not is_good(area, outcome) and promise in counts_against(area, outcome):
                    found.append((area, fault, outcome, count))
    return found


def counts_against(area: str, outcome: str) -> list[str]:
    """The promises a bad ``outcome`` of ``area`` breaks (see SPEAKS_OF)."""
    covering = [promise for promise, areas in PROMISES.items() if area in areas]
    speaks = [p for p in covering if p in SPEAKS_OF and re.search(SPEAKS_OF[p], outcome, re.I)]
    return speaks or covering


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# --- the run ---------------------------------------------------------------------------------


@dataclass
class PytestResult:
    code: int
    counts: dict[str, int]


def junit_counts(path: Path) -> dict[str, int]:
    counts = collections.Counter({"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
    if not path.exists():
        return dict(counts)
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if "error" in kinds:
            counts["errors"] += 1
        elif "failure" in kinds:
            counts["failed"] += 1
        elif "skipped" in kinds:
            skipped = next(c for c in case if c.tag == "skipped")
            counts["xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"] += 1
        else:
            counts["passed"] += 1
    return dict(counts)


def run_tests(
    files: list[str], log: Path, scale: int, keyword: str | None, work: Path
) -> tuple[list[str], PytestResult]:
    """Run ``files`` in one pytest; returns the command as a user would type it, and the result."""
    junit = work / "junit.xml"
    options = ["-q", "-rfEX", *(["-k", keyword] if keyword else [])]
    env = {**os.environ, LOG_ENV: str(log), SCALE_ENV: str(scale)}
    command = [sys.executable, "-m", "pytest", *files, *options, f"--junitxml={junit}"]
    code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    shown = [f"{SCALE_ENV}={scale}", f"{LOG_ENV}=LOG", "python", "-m", "pytest", *files, *options]
    return shown, PytestResult(code, junit_counts(junit))


# --- the report ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}" if head else "unknown"


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def outcomes_cell(area: str, outcomes: collections.Counter[str]) -> str:
    parts = []
    for outcome, count in sorted(outcomes.items(), key=lambda item: (-item[1], item[0])):
        mark = "" if is_good(area, outcome) or area not in GOOD else "**NOT GOOD** "
        parts.append(f"{mark}{cell(outcome)}: {count}")
    return "<br>".join(parts)


def render(
    tables: dict[str, Table],
    malformed: int,
    *,
    invocation: str,
    command: list[str] | None,
    scale: int | None,
    wall_s: float | None,
    result: PytestResult | None,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    total = sum(t.injected for t in tables.values())
    if result is None:
        tests = "not run by this invocation (records read from a log)"
    elif result.code < 0:
        tests = (
            f"pytest was killed by signal {-result.code} before it finished (out of memory?): "
            "pass and fail counts unknown; the records below are those made until then"
        )
    else:
        shown = {k: n for k, n in result.counts.items() if n or k in ("passed", "failed")}
        counts = ", ".join(f"{n} {kind}" for kind, n in shown.items())
        tests = f"{counts} (exit status {result.code})"
    rows = [
        ("generated", now),
        ("machine", f"{cpu_model()}, {os.cpu_count()} cores, {memory:.0f} GiB memory"),
        ("system", platform.platform()),
        ("Python", platform.python_version()),
        ("torch", version("torch")),
        ("xelm", f"{version('xelm')} (git {git_revision()})"),
        ("command", f"`{invocation}`"),
        ("tests run", f"`{shlex.join(command)}`" if command else "-"),
        ("scale", str(scale) if scale else "-"),
        ("wall time", duration(wall_s) if wall_s is not None else "-"),
        ("tests", tests),
        (
            "faults injected",
            f"{total:,}" + (f", {malformed} malformed records" if malformed else ""),
        ),
    ]
    out = ["# Reliability report", ""]
    out += [
        "Generated by `benchmarks/reliability.py`: every fault the reliability tests inject, how",
        "many times, and what came of it. Do not edit by hand; run the script again.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {cell(value)} |" for key, value in rows),
        "",
        "## Promises",
        "",
    ]
    for promise, areas in PROMISES.items():
        judged = sum(tables[a].injected for a in areas if a in tables)
        bad = broken(promise, tables)
        where = ", ".join(areas)
        if not judged:
            out.append(f"- **{promise}**: not judged, no faults recorded ({where})")
        elif not bad:
            out.append(f"- **{promise}**: met; every one of {plural(judged, 'fault')} ({where})")
        else:
            n_bad = sum(count for *_, count in bad)
            of = plural(judged, "fault")
            out.append(f"- **{promise}**: NOT met; broken by {n_bad:,} of {of} ({where}):")
            out += [
                f"  - {area}: {fault}: {outcome} ({count}x)" for area, fault, outcome, count in bad
            ]
    if result is not None and result.code != 0:
        out.append(f"- **the tests**: pytest exited with status {result.code}; see above")
    out.append("")
    for area in [*(a for a in AREAS if a in tables), *sorted(set(tables) - set(AREAS))]:
        table = tables[area]
        covered = [promise for promise, areas in PROMISES.items() if area in areas]
        about = f"judged for: {', '.join(covered)}" if covered else "no promise covers this area"
        out += [f"## {area}", "", f"{plural(table.injected, 'fault')} injected ({about}).", ""]
        out += ["| fault | times injected | outcomes |", "|---|---:|---|"]
        for fault, outcomes in sorted(table.families.items()):
            out.append(
                f"| {cell(fault)} | {sum(outcomes.values())} | {outcomes_cell(area, outcomes)} |"
            )
        if len(table.exact) > len(table.families):
            out += ["", f"<details><summary>Each of the {len(table.exact)} faults</summary>", ""]
            out += ["| fault | outcomes |", "|---|---|"]
            for fault, outcomes in sorted(table.exact.items(), key=lambda item: natural(item[0])):
                out.append(f"| {cell(fault)} | {outcomes_cell(area, outcomes)} |")
            out += ["", "</details>"]
        out.append("")
    out += [
        "## What counts as good",
        "",
        "Numbers in a fault's text are written N, so that kill points and sizes share a row. An",
        "outcome is good when it matches, whole, one of its area's patterns (Python regular",
        "expressions); any other outcome is listed above, against the promises covering its",
        "area that its words speak of (a changed source, a failed rerun: lost; a corrupt target:",
        "corrupted; a traceback, litter: failures not clean), or against all of them when it",
        "speaks of none.",
        "",
        "| area | promises | good outcomes |",
        "|---|---|---|",
    ]
    for area, patterns in GOOD.items():
        names = ", ".join(p for p, areas in PROMISES.items() if area in areas)
        listed = "<br>".join(f"`{cell(p)}`" for p in patterns)
        out.append(f"| {area} | {names} | {listed} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "reliability.md", help="report path"
    )
    parser.add_argument(
        "--scale", type=int, default=1, help="multiplies kill points and fuzz cases (default 1)"
    )
    parser.add_argument("-k", dest="keyword", help="passed to pytest -k: run some tests only")
    parser.add_argument("--log", type=Path, help="keep the JSON-lines records here")
    parser.add_argument(
        "--from-log", type=Path, help="do not run the tests: tabulate the records of this log"
    )
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    invocation = shlex.join(["python", "benchmarks/reliability.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="xelm-reliability-") as tmp:
        command, result, wall_s = None, None, None
        if args.from_log:
            log = args.from_log
        else:
            log = args.log or Path(tmp) / "records.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("")  # a fresh log: records of this run only
            files = [f for f in RELIABILITY_TESTS if (ROOT / f).exists()]
            started = time.monotonic()
            command, result = run_tests(files, log.resolve(), args.scale, args.keyword, Path(tmp))
            wall_s = time.monotonic() - started
        tables, malformed = read_records(log)
        report = render(
            tables,
            malformed,
            invocation=invocation,
            command=command,
            scale=None if args.from_log else args.scale,
            wall_s=wall_s,
            result=result,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"wrote {args.out}: {sum(t.injected for t in tables.values()):,} faults", file=sys.stderr)
    return result.code if result is not None else 0


if __name__ == "__main__":
    sys.exit(main())
