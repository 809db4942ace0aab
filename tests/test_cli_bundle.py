"""The ``xelm bundle`` commands as a user runs them: outputs, exit codes, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import xelm
from conftest import FIXTURES, SHARED_DATA

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli.help_text import reflow

GOLDEN = FIXTURES / "golden-v1"


def test_init_branch_inspect_verify_lineage(capsys, tmp_path: Path, tokenizer_dir: Path) -> None:
    seed = tmp_path / "seed"
    code, out, err = xelm(
        capsys,
        "bundle",
        "init",
        "--config",
        "tiny",
        "--tokenizer",
        tokenizer_dir,
        "--langs",
        "eng,tur,ara",
        "-o",
        seed,
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["languages"] == ["en", "tr", "ar"]

    code, out, err = xelm(
        capsys, "bundle", "branch", seed, "--langs", "tr", "-o", tmp_path / "pool" / "tr", "--json"
    )
    assert code == 0, err
    code, out, err = xelm(
        capsys,
        "bundle",
        "branch",
        "--from",
        tmp_path / "pool",
        "--donor",
        "tr",
        "--lang",
        "aze",
        "-o",
        tmp_path / "pool" / "az",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["relation"] == "hmr-branch"

    code, out, _ = xelm(capsys, "bundle", "inspect", tmp_path / "pool" / "az", "--json")
    manifest = json.loads(out)["manifest"]
    assert manifest["languages"] == ["az"] and manifest["lineage"][-1]["donor"] == "tr"
    code, out, _ = xelm(capsys, "bundle", "inspect", tmp_path / "pool" / "az")
    donor = Bundle.read(tmp_path / "pool" / "tr")  # named as lineage names it: id and digest
    assert f"hmr-branch from {donor.id[:12]} (digest {donor.digest[7:19]})" in out

    code, out, _ = xelm(
        capsys,
        "bundle",
        "verify",
        seed,
        tmp_path / "pool" / "tr",
        tmp_path / "pool" / "az",
        "--json",
    )
    assert code == 0 and json.loads(out)["ok"] is True

    code, out, _ = xelm(capsys, "bundle", "lineage", seed, tmp_path / "pool", "--json")
    graph = json.loads(out)
    assert {e["relation"] for e in graph["edges"]} == {"branch", "hmr-branch"}
    code, out, _ = xelm(capsys, "bundle", "lineage", seed, tmp_path / "pool")
    assert code == 0 and "hmr-branch" in out and "['az']" in out


def test_verify_failure_exits_nonzero_naming_each_problem(capsys, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(GOLDEN, bad)
    (bad / "model.safetensors").chmod(0o644)
    (bad / "model.safetensors").write_bytes(b"x")
    (bad / "config.json").unlink()
    code, out, err = xelm(capsys, "bundle", "verify", GOLDEN, bad)
    assert code == 4
    assert f"OK   {GOLDEN}" in out
    assert "config.json: missing" in out and "model.safetensors: size 1 bytes" in out
    assert err.strip() == "xelm: error: 1 of 2 bundles failed verification"
    # a folder of bundles is a slip of the user's (exit 2), not a damaged bundle (exit 4)
    code, out, err = xelm(capsys, "bundle", "verify", tmp_path)
    assert (code, out) == (2, "")
    assert err == (
        f"xelm: error: {tmp_path} is a directory of bundles, not a bundle: verify its bundles "
        f"({tmp_path}/*)\n"
    )
    # which, quoted as the other commands take it, verifies the bundles it matches
    code, out, err = xelm(capsys, "bundle", "verify", f"{tmp_path}/*")
    assert (code, err.strip()) == (4, "xelm: error: 1 of 1 bundles failed verification")
    assert f"{bad}: config.json: missing" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bundle", "inspect", "nowhere"], "not a bundle: nowhere does not exist"),
        (["bundle", "init", "-o", "x"], "pass exactly one of --hf MODEL or --config NAME"),
        (
            ["bundle", "init", "--config", "huge", "--tokenizer", str(GOLDEN), "-o", "x"],
            "unknown config 'huge'",
        ),
        (
            ["bundle", "branch", str(GOLDEN), "--langs", "xx", "-o", "x"],
            "unknown language code 'xx'",
        ),
        (["bundle", "branch", "-o", "x"], "pass the PARENT bundle to branch"),
        (
            ["bundle", "branch", "--from", str(FIXTURES), "--donor", "tr", "-o", "x"],
            "the HMR form needs --donor LANG and --lang NEW_LANG",
        ),
        (["bundle", "init", "--hf", "/no/such/model", "-o", "x"], "model directory not found"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    os.chdir(tmp_path)
    code, _, err = xelm(capsys, *args)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("xelm: error: ") and message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lang", "info", "-x", "en"], "No such option: -x (see 'xelm lang info -h')"),
        (["bundle", "verify"], "Missing argument 'bundles'. (see 'xelm bundle verify -h')"),
        (["bundle", "verify", "nowhere/"], "not a bundle: nowhere does not exist"),
        (["bundle", "frobnicate"], "No such command 'frobnicate'. (see 'xelm bundle -h')"),
        (["data", "prepare", "c", "-t", "t", "-o", "o", "--workers", "two"], "'--workers'"),
    ],
)
def test_usage_errors_are_one_line(capsys, args: list[str], message: str) -> None:
    code, _, err = xelm(capsys, *args)
    assert code == 2 and err.startswith("xelm: error: ") and err.count("\n") == 1
    assert message in err, err


def test_a_group_without_a_command_prints_its_help(capsys) -> None:
    code, out, err = xelm(capsys, "bundle")
    assert code == 2 and "Usage: xelm bundle" in out and "branch" in out and err == ""


@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
def test_ctrl_c_or_sigterm_is_one_line_and_exit_128_plus_the_signal(
    tmp_path: Path, stop: signal.Signals, code: int, said: str
) -> None:
    """SIGTERM (timeout, SLURM, docker stop) stops a command as Ctrl-C does, not at once."""
    out = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "xelm_cli", "demo", "--data", str(SHARED_DATA), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not out.exists():  # the command has started its work
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(stop)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert err.endswith(
        f"xelm: error: {said} (nothing half-written is left): run the same command again\n"
    ), err


def test_a_process_forked_from_a_command_ends_on_sigterm_as_by_default() -> None:
    """A multiprocessing pool's workers (lm-eval's bootstrap) are forked from the command and
    ended by their pool with SIGTERM: they kept xelm's handler, took it for an interruption,
    ignored the next, and their parent waited on them for ever (a test run hung so)."""
    script = (
        "import os, signal, sys\n"
        "from xelm_cli.cli import stopping\n"
        "stopping.stop_on_sigterm()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    signal.signal(signal.SIGTERM, stopping._stop)  # kept by a fork the reset missed\n"
        "    signal.pause()\n"
        "    os._exit(3)\n"
        "import time; time.sleep(0.5); os.kill(child, signal.SIGTERM)\n"
        "_, killed = os.waitpid(child, 0)\n"
        "print(os.waitstatus_to_exitcode(status), os.waitstatus_to_exitcode(killed))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.stdout.split() == ["0", str(-signal.SIGTERM)], done.stderr[-2000:]


def test_pack_and_report_print_json_with_json(capsys, tmp_path: Path) -> None:
    """Like unpack, inspect, verify and lineage: the archive and what it holds, as data."""
    code, out, err = xelm(capsys, "bundle", "pack", GOLDEN, "-o", tmp_path / "g.xelm.tar.zst",
                          "--json")  # fmt: skip
    assert code == 0, err
    packed = json.loads(out)
    assert packed["archive"] == str(tmp_path / "g.xelm.tar.zst")
    assert packed["bytes"] == (tmp_path / "g.xelm.tar.zst").stat().st_size
    assert packed["bundle"]["digest"] == Bundle.read(GOLDEN).digest
    demo_results = Path(__file__).resolve().parents[1] / "docs" / "demo-small" / "results.json"
    code, out, err = xelm(capsys, "report", demo_results, "-o", tmp_path / "r", "--json")
    assert code == 0, err
    written = json.loads(out)
    assert written["report"] == str(tmp_path / "r" / "report.md")
    assert all(Path(f).is_file() for f in (written["results"], *written["figures"]))


def test_lineage_of_a_runs_folder_finds_its_bundles_at_every_depth(capsys, tmp_path: Path) -> None:
    """A plan's runs/ holds dense/ beside experts/*/: the whole tree, not dense alone (the
    experts were dropped, one level too deep); a hidden folder (a checkpoint) is left out."""
    from xelm_cli.api import branch

    runs = tmp_path / "runs"
    for out in (runs / "dense", runs / "experts" / "e0", runs / "experts" / ".e1.ckpt" / "x"):
        branch(GOLDEN, out)
    code, out, err = xelm(capsys, "bundle", "lineage", GOLDEN, runs, "--json")
    assert code == 0, err
    names = {node["name"] for node in json.loads(out)["nodes"]}
    assert names == {GOLDEN.name, "dense", "e0"}


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_lineage_of_a_folder_without_bundles_is_refused(
    capsys, tmp_path: Path, as_json: list[str]
) -> None:
    """Not an empty family tree (exit 0, no output): a mistyped or empty folder."""
    empty = tmp_path / "empty"
    (empty / "not-a-bundle").mkdir(parents=True)
    code, out, err = xelm(capsys, "bundle", "lineage", GOLDEN, empty, *as_json)
    assert (code, out) == (2, "")
    assert err == (
        f"xelm: error: no bundles in {empty} nor below it: pass bundle directories, "
        "or the folders that hold them\n"
    )


@pytest.mark.parametrize("name", ["b[v2]", "b[red]x", "b[/x]"])
def test_an_output_path_with_brackets_is_printed_as_it_is(
    capsys, tmp_path: Path, name: str
) -> None:
    """Paths are text, not rich markup: not cut (b), coloured, or a MarkupError after the
    bundle was written (exit 70, and a rerun refused because the output exists)."""
    out = tmp_path / name
    code, stdout, err = xelm(capsys, "bundle", "branch", GOLDEN, "-o", out, "--langs", "en")
    assert (code, err) == (0, ""), err
    assert f"bundle {out} (" in stdout


def test_unwritable_output_is_one_line(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = xelm(capsys, "bundle", "branch", GOLDEN, "-o", blocker / "child")
    assert code == 2 and err.startswith("xelm: error: cannot write to") and err.count("\n") == 1


def test_every_command_help_shows_an_example(capsys) -> None:
    for command in ("init", "inspect", "verify", "lineage", "branch", "pack", "unpack"):
        code, out, _ = xelm(capsys, "bundle", command, "--help")
        assert code == 0 and "Example" in out, command


def test_debug_env_shows_traceback(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "xelm_cli", "bundle", "inspect", str(tmp_path / "none")]
    quiet = subprocess.run(cmd, capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    loud = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "XELM_DEBUG": "1"}
    )
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "UsageError" in loud.stderr


def test_help_prose_is_reflowed_and_examples_keep_their_lines(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = "Examples:\n  xelm a\n  xelm b\n- one\n- two"
    text = f"Summary.\n\nProse that the source\nwrapped early.\n\n{examples}"
    assert reflow(text) == f"Summary.\n\nProse that the source wrapped early.\n\n{examples}"
    monkeypatch.setenv("COLUMNS", "200")  # wide: only the text's own breaks remain
    code, out, _ = xelm(capsys, "bundle", "merge", "--help")
    assert code == 0
    assert "Tensors are streamed one at a time (each file hashed as it is written): memory" in out
    assert "\n   xelm bundle merge experts/* -o averaged/ " in out  # the examples, a line each


def test_ctrl_c_while_arrow_finishes_after_the_command_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step of ``xelm`` (letting Arrow's threads finish) can meet a late Ctrl-C too:
    one line and exit 130, not a traceback."""
    import xelm_cli.cli as cli

    def stopped() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "finish_arrow_work", stopped)
    monkeypatch.setattr(cli.stopping, "stop_on_sigterm", lambda: None)  # not in pytest's process
    monkeypatch.setattr(sys, "argv", ["xelm", "--version"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 130
    assert capsys.readouterr().err == (
        "xelm: error: interrupted (nothing half-written is left): run the same command again\n"
    )


def test_a_folder_of_bundles_given_for_a_bundle_names_its_bundles(
    capsys: pytest.CaptureFixture[str], seed_bundle: Path, tmp_path: Path
) -> None:
    pool = tmp_path / "pool"
    branch(seed_bundle, pool / "e0", languages="en")
    code, _, err = xelm(capsys, "bundle", "merge", pool, "-o", tmp_path / "merged")
    assert code == 2
    said = f"not a bundle: {pool} is a directory of bundles: pass its bundles ({pool}/*)"
    assert err == f"xelm: error: {said}\n"
