"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s reliability`,
`nox -s oldest` (the tests on the oldest transformers and datasets pyproject admits)."""

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
INSTALL = ["-c", "constraints.txt", "-e", ".[dev]"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("python", "-m", "pytest", *session.posargs)  # bin/lang2vec.py shadows lang2vec


# The oldest releases pyproject admits of the libraries whose APIs xelm uses most (torch stays at
# constraints.txt's, the only wheel that installs without CUDA packages).
OLDEST = ["transformers==5.4.0", "datasets==5.1.0"]


@nox.session
def oldest(session: nox.Session) -> None:
    """The tests against the oldest transformers and datasets the declared ranges admit."""
    session.install(*INSTALL, *OLDEST)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Style, then the architecture: no import cycle in xelm_cli (pylint's cyclic-import) and
    the contracts in pyproject's [tool.importlinter] (nothing inside xelm imports xelm_cli.api)."""
    session.install(*INSTALL)
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")
    session.run("pylint", "--disable=all", "--enable=cyclic-import", "xelm_cli")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("mypy")


@nox.session
def benchmarks(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("python", "benchmarks/bundle_io.py", *session.posargs)


@nox.session
def reliability(session: nox.Session) -> None:
    """Long crash, corruption, fuzz, disk-full, concurrency runs -> benchmarks/reliability.md.

    Ten times the CI cases by default; more with `nox -s reliability -- --scale 50`.
    """
    session.install(*INSTALL)
    args = session.posargs or ["--scale", "10"]
    session.run("python", "benchmarks/reliability.py", *args)
