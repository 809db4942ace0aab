"""What a new user meets across commands: one line naming the way out, the same flag for the
same thing."""

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

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


def test_the_global_batch_examples_of_train_help_are_accepted_with_the_defaults() -> None:
    """`--global-batch 1M` was the help's example and was refused: not a multiple of 8192."""
    from xelm_trainer.options import TrainOptions

    field = {f.name: f for f in dataclasses.fields(TrainOptions)}["global_batch_tokens"]
    found = re.search(r"e\.g\. (.+?) \(", field.metadata["help"])
    assert found is not None
    examples = found[1].split(" or ")
    assert len(examples) == 2
    for example in examples:
        options = TrainOptions.from_dict({"global_batch_tokens": example})
        assert options.accumulation * options.micro_batch_tokens == options.batch_tokens


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    yield " ".join(("xelm", *path)), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


SPELLED_OUT = {
    "HMR": r"HMR( form)? \(hierarchical multi-round training",
    "LAPT": r"LAPT \(language-adaptive pre-training",
}


def test_every_help_text_spells_out_hmr_and_lapt_at_first_use() -> None:
    from xelm_cli.cli import app

    used = set()
    for name, command in _commands(typer.main.get_command(app)):
        text = " ".join(
            [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        )
        for word, spelled in SPELLED_OUT.items():
            if word in text:
                used.add(word)
                first = text[text.index(word) :]
                assert re.match(spelled, " ".join(first.split())), (name, first[:80])
    assert used == set(SPELLED_OUT)  # the check ran on help texts that use both


# One flag per concept (canonical first); the older spellings stay accepted as aliases.
FLAGS = {
    "--lang": {"bundle merge": "--language", "bundle branch": None, "ensemble generate": None},
    "--calibration": {"ensemble create": "--calibrate", "bundle moe": None},
    "--calibration-limit": {"ensemble create": "--limit", "bundle moe": None},
}


def test_one_concept_has_one_flag_across_commands() -> None:
    from xelm_cli.cli import app

    commands = dict(_commands(typer.main.get_command(app)))
    for flag, uses in FLAGS.items():
        for name, alias in uses.items():
            declared = [p.opts for p in commands[f"xelm {name}"].params if flag in p.opts]
            assert [opts[0] for opts in declared] == [flag], (name, flag)
            accepted = [opt for p in commands[f"xelm {name}"].params for opt in p.opts]
            assert alias is None or alias in accepted, (name, alias)  # the older spelling


def test_the_other_commands_trainer_flag_is_refused_naming_this_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """train takes --train-arg KEY=VALUE, plan --train-args '--flag value': each refusal of the
    other's spelling suggests its own."""
    for command, given, suggested in (("plan", "--train-arg", "--train-args"),
                                      ("train", "--train-args", "--train-arg")):  # fmt: skip
        code, _, err = cli(capsys, command, given, "lr=1")
        assert code == 2 and err.count("\n") == 1, err
        found = re.search(rf"No such option: {given} \(Possible options: ([^)]*)\)", err)
        assert found is not None and suggested in found[1].split(", "), err
