"""The ``xelm`` command: one Typer app, a module per command group.

Domain errors (:class:`xelm_cli.common.errors.XelmError`) become one line on stderr and their exit
code; any other exception too, unless ``XELM_DEBUG=1`` asks for the traceback.
"""

import errno
import os
import re
import sys
from typing import Any

import typer

from xelm_cli import __version__
from xelm_cli.bundle import cli as bundle
from xelm_cli.cli import stopping
from xelm_cli.cli.help_text import reflow_commands
from xelm_cli.cluster import cli as cluster
from xelm_cli.common.atomic import shown_as_output
from xelm_cli.common.errors import UsageError, XelmError, exception_line
from xelm_cli.data import cli as data
from xelm_cli.data.sources import finish_arrow_work
from xelm_cli.demo import cli as demo
from xelm_cli.ensemble import cli as ensemble
from xelm_cli.lang import cli as lang
from xelm_cli.plugin import cli as plugins
from xelm_cli.training import cli as train
from xelm_cli.training.plan_runner import RUN_OF_TRAIN_ALL

DEBUG_ENV = "XELM_DEBUG"
INTERNAL_ERROR_EXIT = 70

app = typer.Typer(
    name="xelm",
    help="Cross-lingual expert language models: branch experts from a seed LM, train each on "
    "related languages, ensemble them.\n\n"
    "Example: xelm bundle init --config tiny --tokenizer tok/ -o seed/",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)
app.add_typer(bundle.app, name="bundle")
app.add_typer(data.app, name="data")
app.add_typer(lang.app, name="lang")
app.add_typer(cluster.app, name="cluster")
app.add_typer(ensemble.app, name="ensemble")
app.add_typer(plugins.app, name="plugins")
app.command("train")(train.train)
app.command("plan")(train.plan)
app.command("train-all")(train.train_all)
app.command("demo")(demo.demo)
app.command("report")(demo.report)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xelm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """xelm: cross-lingual expert language models."""


def _flags_without_type(command: Any, parent: Any = None) -> None:
    """A flag takes no value, so its help shows none (Typer would show ``<bool>``, in a column
    that squeezes the flag names at 80 columns); in place, for ``command`` and all under it,
    ``-h/--help`` included (click makes it once per command, in a context that inherits the
    root's help option names)."""
    context = command.context_class(command, parent=parent, **(command.context_settings or {}))
    help_option = command.get_help_option(context)
    for param in [*command.params, *([help_option] if help_option else [])]:
        if isinstance(param, typer.core.TyperOption) and param.is_flag:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_without_type(sub, context)


# Rust libraries (safetensors, tokenizers) report OS errors inside their own exception types.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


# a full disk, a quota, a file-size limit: nothing is half-written, so the way out is space
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_MAKE_ROOM = (
    "; free space where the output goes (or write it elsewhere), then run the command again"
)


def _make_room(argv: list[str]) -> str:
    return _MAKE_ROOM + (" with --resume" if "train" in argv[:1] else "")


def _os_error(exc: OSError, argv: list[str]) -> str:
    path = exc.filename2 or exc.filename  # a copy names its source first, its target second
    reason = str(exc.strerror or exc)
    if path:
        reason = f"{reason}: {shown_as_output(os.fsdecode(path))}"
    return reason + (_make_room(argv) if exc.errno in _NO_ROOM else "")


def _fail(message: str, code: int, *, every_rank: bool = False) -> int:
    """Say ``message`` as xelm's one error line and return ``code``; under torchrun only local
    rank 0 says it, unless the error is one of this rank's own (``every_rank``)."""
    if every_rank or not _other_rank():
        sys.stderr.write(f"xelm: error: {message}\n")
    return code


def _other_rank() -> bool:
    """Under torchrun, a rank other than its machine's first: the refusals every rank makes
    alike (usage, xelm's checks), an interruption and the loss of a peer are said by local
    rank 0 alone (spec/training.md section 8); the others exit with the same code."""
    world, local = os.environ.get("WORLD_SIZE", "1"), os.environ.get("LOCAL_RANK", "0")
    return world not in ("", "1") and local not in ("", "0")


# A collective that lost its peer (gloo, NCCL): the rank that stopped first said why
_PEER_LOST = re.compile(
    r"connection (closed|reset) by peer|remote process exited|communicator was aborted", re.I
)


def _interrupted(argv: list[str]) -> int:
    """Ctrl-C or SIGTERM (``stopping``): the way back (every command leaves nothing
    half-written; a training run keeps its checkpoints). Exit 130, or 128 + the signal."""
    signalled = stopping.received()
    what, code = (
        (f"terminated ({signalled.name})", 128 + signalled) if signalled else ("interrupted", 130)
    )
    if os.environ.get(RUN_OF_TRAIN_ALL):
        return _fail(f"{what}: run train-all again to continue this run", code)
    if "train" in argv[:1]:
        return _fail(f"{what}: run the same command with --resume to continue", code)
    return _fail(f"{what} (nothing half-written is left): run the same command again", code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (what ``main`` exits with; handy in tests)."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    arguments = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # ours are on stderr already
    try:
        plugins.add_plugin_commands(app, arguments)
        cluster.add_clusterer_commands()
        train.add_trainer_flags()
        # Not standalone: usage errors come back here, to be one line like every other error.
        # What comes back is an exit code (typer.Exit, --help) or a command's None.
        command = typer.main.get_command(app)
        reflow_commands(command)
        _flags_without_type(command)
        code = command(args=argv, prog_name="xelm", standalone_mode=False)
        if code == 130:  # Typer's answer to KeyboardInterrupt
            return _interrupted(arguments)
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except typer.TyperException as exc:  # Typer's usage errors: bad options, missing arguments
        if type(exc).__name__ == "NoArgsIsHelpError":
            return 2  # the help is printed already
        context = getattr(exc, "ctx", None)
        where = f" (see '{context.command_path} -h')" if context is not None else ""
        return _fail(f"{exc.format_message()}{where}", exc.exit_code)
    except typer.Abort:
        return _interrupted(arguments)
    except XelmError as exc:
        if debug:
            raise
        # usage is alike on every rank (the same command line); a damaged file may be one's own
        return _fail(str(exc), exc.exit_code, every_rank=not isinstance(exc, UsageError))
    except KeyboardInterrupt:
        return _interrupted(arguments)
    except OSError as exc:  # disk full, permissions, ...: the OS's words, and the file
        if debug:
            raise
        return _fail(_os_error(exc, arguments), 1, every_rank=True)
    except Exception as exc:
        if debug:
            raise
        os_error = _RUST_OS_ERROR.search(str(exc))
        if os_error:  # e.g. a full disk while safetensors writes weights
            number = int(os_error.group(1))
            reason = f"{os.strerror(number)} (while {type(exc).__name__} was writing or reading)"
            reason += _make_room(arguments) if number in _NO_ROOM else ""
            return _fail(reason, 1, every_rank=True)
        detail = exception_line(exc, with_type=True)
        if _PEER_LOST.search(str(exc)):
            return _fail(
                f"another rank stopped first (its own line, or torchrun's report, says why): "
                f"{detail}",
                1,
            )
        return _fail(
            f"internal error: {detail} (set {DEBUG_ENV}=1 for the traceback)",
            INTERNAL_ERROR_EXIT,
            every_rank=True,
        )


def main() -> None:
    stopping.stop_on_sigterm()
    code = run()
    try:
        finish_arrow_work()
    except KeyboardInterrupt:  # Ctrl-C after the command's work: what it wrote is complete
        code = code or _interrupted(sys.argv[1:])
    sys.exit(code)
