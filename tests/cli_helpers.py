"""The xelm command line run in this process, for the tests of several modules."""

import pytest

from xelm_cli.cli import run


def xelm(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``xelm ARGS`` in this process: its exit code, stdout and stderr."""
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
