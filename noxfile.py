"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`."""

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
INSTALL = ["-c", "constraints.txt", "-e", ".[dev]"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("python", "-m", "pytest", *session.posargs)  # bin/lang2vec.py shadows lang2vec


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("mypy")


@nox.session
def benchmarks(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("python", "benchmarks/bundle_io.py", *session.posargs)
