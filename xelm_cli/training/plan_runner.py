"""Running a plan's runs (``xelm train-all``): one after another, or several at once.

X-ELM's runs are independent (only ``average`` and ``moe`` wait for the experts: a run's
``after``), so a machine with several GPUs trains several at a time: ``devices`` are shared out
in groups of ``nproc_per_node`` (a run's ``xelm train`` sees its group as
``CUDA_VISIBLE_DEVICES``; with more than one device a group trains under torchrun), and
``parallel`` runs that many at once without pinning (a CPU machine). A run whose output (its
last command's) exists is skipped, once ``check_outputs`` has refused a trained one that its
`xelm train` did not write; a killed one resumes from its checkpoints. Running several at
once, the runs with the most tokens start first (the dense baseline before the experts), each run
writes its commands' output to ``ROOT/logs/NAME.log`` (ROOT: the directory that holds every
run's output), a failed run does not stop the others, and the runs that wait for it are not run.
Every command runs in the plan's ``directory`` (where ``xelm plan`` ran, so that its relative
paths mean what they meant there), or in the current one for a plan without it.
"""

import difflib
import heapq
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any

from xelm_cli.bundle.manifest import schema_problems, spec_schema
from xelm_cli.bundle.store import Bundle, is_bundle
from xelm_cli.cluster.allocation import read_allocation
from xelm_cli.common.errors import FormatError, UsageError, XelmError
from xelm_cli.common.jsonio import read_json_object, short_repr
from xelm_cli.common.progress import count_progress, stderr_console
from xelm_cli.common.units import token_count
from xelm_cli.plugin.contracts import checkpoint_dir
from xelm_cli.training.checkpoints import list_checkpoints

PLAN_FORMAT = "xelm-train-plan"
RUN_OF_TRAIN_ALL = "XELM_RUN_OF_TRAIN_ALL"
"""Set in the environment of the commands train-all runs: stopped, they say that train-all
resumes them, not the way back of the command itself (``--resume``, which train-all adds)."""
PLAN_FORMAT_VERSION = 1


@dataclass
class RunOutcome:
    """What became of one run: ``done``, ``skipped`` (finished before), ``failed``,
    ``interrupted`` (train-all was stopped while it ran) or ``not run`` (a run it waits for
    failed)."""

    name: str
    status: str
    code: int = 0
    started: float | None = None  # time.time() of its first command
    ended: float | None = None
    devices: str | None = None  # CUDA_VISIBLE_DEVICES it ran with
    log: Path | None = None
    output: Path | None = None  # the bundle it writes (absolute)

    def as_dict(self) -> dict[str, Any]:
        """What ``xelm train-all --json`` prints of it."""
        record = asdict(self)
        for path in ("log", "output"):
            record[path] = str(record[path]) if record[path] else None
        return record


def say_on_stderr(line: str) -> None:
    stderr_console.print(line, markup=False, highlight=False)


def read_plan(path: Path) -> dict[str, Any]:
    """The plan at ``path``, refused in one line unless it is one this xelm runs: its format
    and version, then spec/train-plan-v1.schema.json (the members train-all needs, their
    types) and no misspelt member (``misspelt_member``)."""
    if path.is_dir():
        raise UsageError(
            f"{path} is a directory, not a plan: give the file `xelm plan ... --json > "
            "plan.json` wrote"
        )
    plan = read_json_object(path, "plan", unique_keys=True) if path.is_file() else None
    if plan is None:
        raise UsageError(f"no plan at {path}: write one with `xelm plan ... --json > {path}`")
    return check_plan(plan, path)


def check_plan(plan: dict[str, Any], file: Path | None = None) -> dict[str, Any]:
    """``plan`` (read from ``file``, or given whole), refused in one line unless this xelm
    runs it."""
    where = str(file) if file else "the plan"
    if plan.get("format") != PLAN_FORMAT:
        raise FormatError(f"{where} is not a plan written by `xelm plan --json`")
    version = plan.get("format_version", 1)  # plans of xelm before the field are version 1
    if type(version) is not int or version != PLAN_FORMAT_VERSION:  # not true, not 1.0
        raise FormatError(
            f"{where}: plan format version {short_repr(version)} is not supported by this "
            f"xelm (reads {PLAN_FORMAT_VERSION}); upgrade xelm to run it, or make the plan "
            "again with this one"
        )
    schema = plan_schema()
    remake = f"make the plan again with `xelm plan ... --json > {file or 'plan.json'}`"
    if misspelt := misspelt_member(plan, schema):
        raise FormatError(f"{where}: plan {misspelt}; {remake}")
    if problems := schema_problems(plan, schema, what="plan"):
        raise FormatError(f"{where}: {problems[0]}; {remake}")
    for run in plan["runs"]:
        if problem := output_problem(run, plan.get("directory")):
            raise FormatError(f"{where}: plan run {short_repr(run['name'])}: {problem}; {remake}")
    return plan


def output_problem(run: dict[str, Any], directory: Any) -> str | None:
    """What makes ``run``'s outputs ambiguous (or None), said after ``run NAME:``: a command
    whose ``-o`` has no path after it, or that gives ``-o`` twice (the runner takes the path
    after the first, the command the last), or an ``output`` other than the path of its last
    command's ``-o``: the runner finds a run done by that path, and reports ``output``. Paths
    are compared as the runner takes them, in the plan's ``directory`` (absolute; the current
    one for a plan without it)."""
    for index, command in enumerate(run["commands"]):
        at = command.index("-o")  # (every command has one: the schema)
        path = command[at + 1] if at + 1 < len(command) else ""
        if not path or (path.startswith("-") and path != "-"):
            return f"command {index} (xelm {command[1]}) has no path after -o"
        if "-o" in command[at + 2 :]:
            return f"command {index} (xelm {command[1]}) gives -o twice"
    base = directory if isinstance(directory, str) and os.path.isabs(directory) else os.getcwd()
    output, written = run["output"], output_of(run["commands"][-1])
    if os.path.normpath(os.path.join(base, output)) != os.path.normpath(
        os.path.join(base, written)
    ):
        return (
            f"output {short_repr(output)} is not the path its last command writes "
            f"(-o {short_repr(written)})"
        )
    return None


def plan_schema() -> dict[str, Any]:
    return spec_schema("train-plan-v1.schema.json")


def misspelt_member(plan: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """An unknown member of the plan or of one of its runs that is close to a known member
    it lacks (``runz``, ``tokenz``), as ``where: ...`` (or None): readers ignore members they
    do not know (newer xelm may add some), but a misspelt one would be ignored silently."""
    runs = plan.get("runs")
    objects = [("(top level)", plan, schema)]
    if isinstance(runs, list):  # (else refused by the schema)
        run_schema = schema["$defs"]["run"]
        objects += [(f"runs/{i}", run, run_schema) for i, run in enumerate(runs)
                    if isinstance(run, dict)]  # fmt: skip
    for where, members, of in objects:
        absent = [name for name in of["properties"] if name not in members]
        for name in members:
            close = difflib.get_close_matches(name, absent, n=1, cutoff=0.75)
            if name not in of["properties"] and close:
                return f"{where}: unknown member {name!r} (did you mean {close[0]!r}?)"
    return None


def plan_directory(plan: dict[str, Any]) -> Path | None:
    """The directory ``xelm plan`` ran in (its ``directory``), where the plan's commands run
    and its relative paths lie; None for a plan without one (an older or hand-written plan):
    the current directory."""
    recorded = plan.get("directory")
    if recorded is None:
        return None
    if not (isinstance(recorded, str) and os.path.isabs(recorded) and os.path.isdir(recorded)):
        raise UsageError(
            f"the plan's directory {recorded!r} (where `xelm plan` ran) is not on this "
            "machine; make the plan again here: `xelm plan ... --json > plan.json` in the "
            "folder its paths are relative to"
        )
    return Path(recorded)


def within(directory: Path | None, path: str) -> Path:
    """A path of the plan as the plan's commands see it (``directory``: ``plan_directory``)."""
    return directory / path if directory else Path(path)


def output_of(command: list[str]) -> str:
    return command[command.index("-o") + 1]  # (every command of a plan has -o: its schema)


def pending(command: list[str], directory: Path | None = None) -> list[str] | None:
    """The command to run now in ``directory`` (with --resume after a kill), or None when its
    output exists."""
    output = within(directory, output_of(command))
    if is_bundle(output):
        return None
    if command[1] == "train" and list_checkpoints(checkpoint_dir(output)):
        return [*command, "--resume"]
    return command


def run_pending(
    run: dict[str, Any], directory: Path | None = None
) -> Iterator[tuple[list[str], list[str] | None]]:
    """Each command of ``run`` with what to run of it now (``pending``, asked as the loop
    reaches it): nothing once the run's output, its last command's, exists: the run is done,
    even where the outputs before it (its branch) were removed."""
    done = is_bundle(within(directory, output_of(run["commands"][-1])))
    for command in run["commands"]:
        yield command, None if done else pending(command, directory)


def plan_dry_run(
    plan_file: str | Path, *, only: int | None = None, nproc_per_node: int = 1
) -> list[dict[str, Any]]:
    """What `xelm train-all --dry-run` shows, running nothing: per run of the plan (``only``:
    that one), ``{"name", "commands": [{"command", "done"}]}``, each command as it would be
    typed now (``shown_command``: under torchrun with ``nproc_per_node`` > 1; a killed
    `xelm train` with ``--resume``), ``done`` where its output exists (it would be skipped)."""
    plan = read_plan(Path(plan_file))
    check_ranks(plan, nproc_per_node)
    runs, directory = chosen_runs(plan, only), plan_directory(plan)
    check_outputs(runs, directory)
    return [
        {
            "name": run["name"],
            "commands": [
                {
                    "command": command if todo is None else shown_command(todo, nproc_per_node),
                    "done": todo is None,
                }
                for command, todo in run_pending(run, directory)
            ],
        }
        for run in runs
    ]


def check_outputs(runs: Sequence[dict[str, Any]], directory: Path | None) -> None:
    """Refuse in one line, before any run starts, a bundle at the output of a run's `xelm
    train` that is not what that command writes (``not_trained_by``): train-all would take it
    for the finished run and skip it."""
    for run in runs:
        for index, command in enumerate(run["commands"]):
            output = within(directory, output_of(command))
            if command[1] != "train" or not is_bundle(output):
                continue
            problem = not_trained_by(run["commands"][: index + 1], Bundle.read(output), directory)
            if problem:
                raise UsageError(
                    f"{output} holds a bundle that run {run['name']} of this plan did not train "
                    f"({problem}): remove it and run train-all again, or make the plan with "
                    "another -o"
                )


def not_trained_by(commands: list[list[str]], bundle: Bundle, directory: Path | None) -> str | None:
    """How ``bundle`` differs from what the last of ``commands`` (`xelm train`, after those
    that make its input) writes, or None: it has no training record, its training asked for
    other tokens, an input bundle of the commands (one still there) is not among its
    lineage's parents, or it is not the expert of the allocation a command branched for."""
    record = bundle.manifest.training
    if not record:
        return "it has no training record"
    tokens = flag_value(commands[-1], "--tokens")
    asked = (record.get("options") or {}).get("tokens", record.get("tokens"))
    if tokens is not None and asked != token_count(tokens):
        return f"it was trained on {short_repr(asked)} tokens, not {tokens}"
    parents = {parent["digest"] for step in bundle.manifest.lineage for parent in step["parents"]}
    for command in commands:
        start = 2 if command[1] == "train" else 3  # after `xelm train`, `xelm bundle VERB`
        for given in takewhile(lambda arg: not arg.startswith("-"), command[start:]):
            source = within(directory, given)
            if is_bundle(source) and Bundle.read(source).digest not in parents:
                return f"it was not made from {given}"
        allocation, expert = flag_value(command, "--allocation"), flag_value(command, "--expert")
        if allocation and expert and within(directory, allocation).exists():
            held = bundle.manifest.allocation or {}
            digest = read_allocation(within(directory, allocation)).digest
            if (held.get("digest"), held.get("expert")) != (digest, int(expert)):
                return f"it is not expert {expert} of {allocation}"
    return None


def flag_value(command: list[str], flag: str) -> str | None:
    """The value after ``flag`` in ``command``; None without one (the command refuses it)."""
    at = command.index(flag) if flag in command else len(command)
    return command[at + 1] if at + 1 < len(command) else None


def shown_command(command: list[str], nproc_per_node: int) -> list[str]:
    """``command`` as a user would type it: ``xelm ...``, or ``torchrun ... -m xelm_cli train``."""
    if nproc_per_node > 1 and command[1] == "train":
        return under_torchrun(command, nproc_per_node)
    return command


def under_torchrun(command: list[str], nproc_per_node: int, nodes: int = 1) -> list[str]:
    """``xelm ...`` launched by torchrun: ``--standalone`` on one node; on several, the
    rendezvous flags are the cluster's and are left out."""
    where = ["--standalone"] if nodes == 1 else ["--nnodes", str(nodes)]
    return ["torchrun", *where, "--nproc-per-node", str(nproc_per_node), "-m", "xelm_cli",
            *command[1:]]  # fmt: skip


def process_argv(shown: list[str]) -> list[str]:
    """The argv that runs a shown command with this interpreter (its xelm, its torchrun)."""
    if shown[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *shown[1:]]
    return [sys.executable, "-m", "xelm_cli", *shown[1:]]


def device_groups(devices: str | None, nproc_per_node: int, parallel: int) -> list[str | None]:
    """One slot per run that may train at once: a group of ``nproc_per_node`` of ``devices``
    (``"0,1,2,3"``), or ``parallel`` slots that pin nothing."""
    if nproc_per_node < 1 or parallel < 1:
        raise UsageError("--nproc-per-node and --parallel must be at least 1")
    if devices is None:
        return [None] * parallel
    if parallel != 1:
        raise UsageError(
            "give --devices or --parallel, not both: with --devices, as many runs train at "
            "once as there are groups of --nproc-per-node devices"
        )
    ids = [d.strip() for d in devices.split(",") if d.strip()]
    named = next((d for d in ids if not (d.isascii() and d.isdigit())), None)
    if named is not None:
        raise UsageError(
            f"--devices {devices!r}: {named!r} is not a device number; give non-negative "
            "integers (e.g. --devices 0,1,2,3)"
        )
    ids = [str(int(d)) for d in ids]  # 00 is device 0
    if not ids or len(ids) % nproc_per_node or len(set(ids)) != len(ids):
        groups = f", a multiple of --nproc-per-node {nproc_per_node}" if nproc_per_node > 1 else ""
        raise UsageError(
            f"--devices {devices!r}: give distinct device numbers{groups} (e.g. --devices 0,1,2,3)"
        )
    return [",".join(ids[i : i + nproc_per_node]) for i in range(0, len(ids), nproc_per_node)]


def logs_directory(plan: dict[str, Any], directory: Path | None) -> Path:
    """``ROOT/logs``, ROOT the directory every run's output lies under (relative outputs:
    under ``directory``, ``plan_directory``)."""
    outputs = [os.path.abspath(within(directory, run["output"])) for run in plan["runs"]]
    root = os.path.commonpath(outputs)
    return Path(root if len(outputs) > 1 else os.path.dirname(root)) / "logs"


def longest_first(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The order in which runs start when several are ready: the most tokens first (the dense
    baseline: B tokens, an expert B/k), so that the last to finish are short ones and the
    devices are not left waiting on one."""
    return sorted(runs, key=lambda run: -int(run.get("tokens") or 0))


def side_by_side_length(
    runs: Sequence[dict[str, Any]], at_a_time: int, length: Callable[[dict[str, Any]], float]
) -> float | None:
    """How long :class:`PlanRunner` takes over ``runs``, ``at_a_time`` of them at once, when
    each run lasts ``length(run)``: as the runner does, whenever a slot is free it starts the
    first run, in ``longest_first`` order, whose ``after`` runs have ended. None when a cycle of
    ``after`` leaves runs that can never start."""
    planned = {run["name"] for run in runs}
    waiting, ended = longest_first(runs), set()
    running: list[tuple[float, str]] = []  # (end, name), a heap
    now = 0.0
    while waiting or running:
        ready = next(
            (r for r in waiting if all(a in ended for a in r.get("after", []) if a in planned)),
            None,
        )
        if ready is not None and len(running) < at_a_time:
            waiting.remove(ready)
            heapq.heappush(running, (now + length(ready), ready["name"]))
        elif running:
            now, name = heapq.heappop(running)
            ended.add(name)
        else:
            return None
    return now


def command_environment() -> dict[str, str]:
    """The environment of the commands train-all runs: this one, marked (``RUN_OF_TRAIN_ALL``)."""
    return dict(os.environ) | {RUN_OF_TRAIN_ALL: "1"}


class PlanRunner:
    """Runs ``runs`` of ``plan`` in ``slots`` (``device_groups``); ``say`` hears one line per
    event (a run started, finished, failed, was skipped), ``advance(1)`` is called as each run
    ends one way or another."""

    def __init__(
        self,
        plan: dict[str, Any],
        runs: Sequence[dict[str, Any]],
        slots: list[str | None],
        nproc_per_node: int = 1,
        say: Callable[[str], None] = say_on_stderr,
        advance: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.runs, self.slots, self.nproc = list(runs), slots, nproc_per_node
        self.planned = {run["name"] for run in self.runs}  # an `after` outside them is ignored
        self.say, self.advance = say, advance
        self.directory = plan_directory(plan)
        self.logs = logs_directory(plan, self.directory)
        self.threads = max(1, (os.cpu_count() or 1) // len(slots))  # CPU threads of each run
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._stopping = False  # set by Ctrl-C: no command starts any more

    def run(self) -> list[RunOutcome]:
        outcomes: dict[str, RunOutcome] = {}
        waiting = longest_first(self.runs)
        free = list(self.slots)
        running: dict[Future[tuple[RunOutcome, int]], str | None] = {}
        with ThreadPoolExecutor(max_workers=len(self.slots)) as pool:
            try:
                while waiting or running:
                    run = self._next(waiting, outcomes, bool(free))
                    if run is not None:
                        waiting.remove(run)
                        self._start(run, outcomes, free, running, pool)
                    elif running:
                        finished, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in finished:
                            free.append(running.pop(future))
                            self._settle(outcomes, self._reported(*future.result()))
                    else:  # a cycle of `after`: none of the rest can ever start
                        for run in waiting:
                            self._settle(outcomes, self._outcome(run, "not run"))
                        break
            except KeyboardInterrupt:
                self._stop_all()
                for future in running:
                    self._settle(outcomes, self._interrupted(future.result()[0]))
                raise
        return [outcomes[run["name"]] for run in self.runs]

    def _start(
        self,
        run: dict[str, Any],
        outcomes: dict[str, RunOutcome],
        free: list[str | None],
        running: dict[Future[tuple[RunOutcome, int]], str | None],
        pool: ThreadPoolExecutor,
    ) -> None:
        """Settle ``run`` (not run, skipped) or start it on the first free slot."""
        if self._ready(run, outcomes) is False:
            self._settle(outcomes, self._outcome(run, "not run"))
            self.say(f"not run: {run['name']} (a run it waits for failed)")
        elif self._finished(run):
            self._settle(outcomes, self._outcome(run, "skipped"))
            self.say(f"skip (done): {run['name']}")
        else:
            slot = free.pop(0)
            where = f"devices {slot}" if slot else f"{self.threads} CPU threads"
            self.say(f"start: {run['name']} ({where}; log {self._log(run)})")
            running[pool.submit(self._run_one, run, slot)] = slot

    def _next(
        self, waiting: list[dict[str, Any]], outcomes: dict[str, RunOutcome], free: bool
    ) -> dict[str, Any] | None:
        """The first waiting run that can be settled now: the runs before it have ended, and
        a device is ``free`` unless it is to be skipped or not run."""
        for run in waiting:
            ready = self._ready(run, outcomes)
            if ready is False or (ready and (free or self._finished(run))):
                return run
        return None

    def _outcome(self, run: dict[str, Any], status: str, **details: Any) -> RunOutcome:
        output = Path(os.path.abspath(within(self.directory, run["output"])))
        return RunOutcome(run["name"], status, output=output, **details)

    def _settle(self, outcomes: dict[str, RunOutcome], outcome: RunOutcome) -> None:
        outcomes[outcome.name] = outcome
        self.advance(1)

    def _finished(self, run: dict[str, Any]) -> bool:
        return all(todo is None for _, todo in run_pending(run, self.directory))

    def _ready(self, run: dict[str, Any], outcomes: dict[str, RunOutcome]) -> bool | None:
        """True when every run ``run`` waits for (of those planned here) is done, False when
        one failed or was not run, None while one is still to finish."""
        before = [name for name in run.get("after", []) if name in self.planned]
        if any(outcomes[n].status in ("failed", "not run") for n in before if n in outcomes):
            return False
        return True if all(name in outcomes for name in before) else None

    def _run_one(self, run: dict[str, Any], slot: str | None) -> tuple[RunOutcome, int]:
        """Run ``run``'s commands in turn, their output appended to its log; what became of
        it, and where this attempt's output starts in the log."""
        name, log = run["name"], self._log(run)
        self.logs.mkdir(parents=True, exist_ok=True)
        outcome = self._outcome(run, "done", started=time.time(), devices=slot, log=log)
        env = self._environment(slot)
        with open(log, "ab") as sink:
            offset = sink.tell()
            pinned = (
                f"{k}={env[k]}" for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS") if k in env
            )
            sink.write(f"# {time.strftime('%F %T')} {name}: {' '.join(pinned)}\n".encode())
            for _, todo in run_pending(run, self.directory):
                if todo is None:
                    continue
                shown = shown_command(todo, self.nproc)
                sink.write(f"$ {shlex.join(shown)}\n".encode())
                sink.flush()
                outcome.code = self._call(process_argv(shown), env, sink)
                if outcome.code:
                    outcome.status = "failed"
                    break
        outcome.ended = time.time()
        return outcome, offset

    def _reported(self, outcome: RunOutcome, offset: int) -> RunOutcome:
        """``outcome`` of a run that ended, said in one line: done, or failed with the reason
        its log gives (from ``offset``, where this attempt's output starts)."""
        took = (outcome.ended or 0) - (outcome.started or 0)
        if outcome.status == "failed" and outcome.log is not None:
            reason = failure_reason(outcome.log, offset)
            self.say(f"FAILED: {outcome.name} (exit {outcome.code} after {took:.0f} s): {reason}")
        else:
            self.say(f"done: {outcome.name} in {took:.0f} s")
        return outcome

    def _interrupted(self, outcome: RunOutcome) -> RunOutcome:
        """``outcome`` of a run in flight when train-all was stopped: ``interrupted`` (unless
        it was done), said and recorded in its log."""
        if outcome.status == "done":
            return self._reported(outcome, 0)
        outcome.status = "interrupted"
        if outcome.log is not None:
            with open(outcome.log, "a") as log:
                log.write(f"# {time.strftime('%F %T')} {outcome.name}: interrupted: train-all "
                          "was stopped (a re-run resumes it)\n")  # fmt: skip
        self.say(f"interrupted: {outcome.name} (a re-run resumes it)")
        return outcome

    def _log(self, run: dict[str, Any]) -> Path:
        return self.logs / f"{run['name']}.log"

    def _environment(self, slot: str | None) -> dict[str, str]:
        """The run's devices, and its share of the CPU cores (unless OMP_NUM_THREADS is set)."""
        env = command_environment()
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        return env

    def _call(self, argv: list[str], env: dict[str, str], sink: Any) -> int:
        """Run ``argv`` to its end (its exit code), unless train-all is stopping: -SIGTERM,
        as if it had been stopped."""
        with self._lock:
            if self._stopping:
                return -signal.SIGTERM
            process = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=self.directory
            )
            self._live.add(process)
        try:
            return process.wait()
        finally:
            with self._lock:
                self._live.discard(process)

    def _stop_all(self) -> None:
        """Ctrl-C: the runs in flight stop (a killed training resumes when run again)."""
        with self._lock:
            self._stopping = True
            live = list(self._live)
        for process in live:
            process.terminate()
        for process in live:
            process.wait()


def failure_reason(log: Path, offset: int = 0) -> str:
    """Why a run failed, from its log after ``offset``: the last ``xelm: error:`` line, else
    the last line."""
    with open(log, "rb") as file:
        file.seek(offset)
        text = file.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("xelm: error:")]
    return (errors or lines or ["(no output)"])[-1]


def raise_failures(outcomes: Sequence[RunOutcome]) -> None:
    """One error line naming the failed runs (with their logs) and those not run, if any."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return
    named = ", ".join(f"{o.name} (exit {o.code}; log {o.log})" for o in failed)
    skipped = [o.name for o in outcomes if o.status == "not run"]
    tail = f"; not run: {', '.join(skipped)}" if skipped else ""
    raise XelmError(
        f"{len(failed)} of {len(outcomes)} runs failed: {named}{tail}; "
        "fix the cause and run the same command again (finished runs are skipped)"
    )


def run_plan(
    plan: str | Path | dict[str, Any],
    *,
    only: int | None = None,
    parallel: int = 1,
    devices: str | None = None,
    nproc_per_node: int = 1,
    say: Callable[[str], None] = say_on_stderr,
) -> list[RunOutcome]:
    """Run the plan's runs (all, or run ``only``) with ``parallel`` at once or one per group of
    ``devices`` (``xelm train-all``), in the plan's ``directory``, each run's output in
    ``ROOT/logs/NAME.log``, with a bar of the runs ended; what became of each. Failed runs do
    not stop the others (``raise_failures`` reports them). ``plan``: a plan file, or the
    plan itself (what ``make_plan`` returns)."""
    slots = device_groups(devices, nproc_per_node, parallel)
    plan = check_plan(plan) if isinstance(plan, dict) else read_plan(Path(plan))
    check_ranks(plan, nproc_per_node)
    runs = chosen_runs(plan, only)
    check_outputs(runs, plan_directory(plan))
    with count_progress("train-all", len(runs), "runs") as advance:
        return PlanRunner(plan, runs, slots, nproc_per_node, say, advance).run()


def check_ranks(plan: dict[str, Any], nproc_per_node: int) -> None:
    """Refuse, before a run starts, ``nproc_per_node`` ranks a run for a plan made for another
    number (``xelm plan --nproc-per-node``): its runs' --global-batch and --batch-size, and its
    memory estimate, are those ranks'; on others a run would fail once its branch is made."""
    planned = (plan.get("estimate") or {}).get("ranks")
    if isinstance(planned, int) and planned != nproc_per_node:
        raise UsageError(
            f"the plan was made for {planned} rank{'s' if planned > 1 else ''} a run, not "
            f"--nproc-per-node {nproc_per_node}: its batches and memory estimate are theirs; make "
            f"it again with `xelm plan ... --nproc-per-node {nproc_per_node}`, or run it with "
            f"--nproc-per-node {planned}"
        )


def chosen_runs(plan: dict[str, Any], only: int | None) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = plan["runs"]
    if only is None:
        return runs
    if not 0 <= only < len(runs):
        raise UsageError(f"--only {only}: the plan has runs 0..{len(runs) - 1}")
    return [runs[only]]
