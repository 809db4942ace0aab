"""What a new user meets across commands: one line naming the way out, the same flag for the
same thing."""

from pathlib import Path

import pytest

from xelm_cli.cli import run


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_json_file_is_called_empty(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, seed_bundle: Path, content: str
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(content)
    commands = [
        (["train-all", str(empty), "--dry-run"], f"plan {empty}"),
        (
            ["bundle", "branch", str(seed_bundle), "--allocation", str(empty), "--expert", "0",
             "-o", str(tmp_path / "e0")],
            f"allocation {empty}",
        ),
    ]  # fmt: skip
    for args, where in commands:
        code, _, err = cli(capsys, *args)
        assert (code, err) == (
            3,
            f"xelm: error: {where} is empty (an interrupted write?): write it again with the "
            "xelm command that made it\n",
        ), args
