"""``xelm demo`` and ``xelm report``."""

from pathlib import Path
from typing import Annotated

import typer

from xelm_cli.common.cli_options import ForceOpt, JsonOpt, print_json
from xelm_cli.common.jsonio import read_json_object
from xelm_cli.common.progress import stderr_console
from xelm_cli.demo.presets import PRESET_HELP


def demo(
    preset: Annotated[str, typer.Option("--preset", help=f"{PRESET_HELP}.")] = "small",
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Sample data: corpus/, eval/, tasks/ (default: a re-run's recorded data; "
            "else ../shared/data if it holds the preset's text, else xelm's cache, fetched "
            "from the Hub if incomplete).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Run directory (default: demo-run; a re-run with the same preset and data "
            "resumes it).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: CUDA if present).")
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="GPUs to train on, e.g. 0,1,2,3: the seed on all at once (torchrun), then "
            "the other runs side by side, one per GPU (default: one after another on --device).",
        ),
    ] = None,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Print the preset's training runs and tokens (for a started run directory, "
            "the time the rest of its training takes at its measured speed; with --devices, "
            "the time of its training side by side); run nothing.",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object on stdout: the report's files, the run's seconds (all "
            "its steps', earlier invocations included; invocation_seconds: this one's) and "
            "each claim with its verdict (with --plan: the plan); progress stays on stderr.",
        ),
    ] = False,
) -> None:
    """Reproduce X-ELM's findings end to end on the sample data and write a report.

    Trains a tokenizer and a seed, a dense model and X-ELMs at equal compute, evaluates them on
    FLORES-200, adds two languages by HMR (hierarchical multi-round training: branching the
    expert of a related language) and by LAPT (language-adaptive pre-training of the dense
    model), runs SIB-200 in context, and writes OUT/report/report.md with figures. Re-running
    skips finished steps and reads the data the run started with (another --data is refused);
    one run at a time per OUT. Without --data and without ../shared/data holding the preset's
    text it reads xelm's cache, running `xelm data fetch` first if needed.

    Example: xelm demo --preset smoke -o demo-smoke

    Before a long run: xelm demo --preset gpu --plan (after a few steps, with -o RUN, it also
    says how long the remaining training takes at the speed measured so far).
    """
    import time

    from xelm_cli.common.atomic import output_lock
    from xelm_cli.data.fetch import DEFAULT_SIZE
    from xelm_cli.demo import get_preset, run_demo
    from xelm_cli.demo.data import demo_data
    from xelm_cli.demo.folder import check_data_of, resumed_data, started
    from xelm_cli.demo.pipeline import check_run
    from xelm_cli.demo.report import VERDICTS, claim_line

    if plan:
        from xelm_cli.demo.plan import demo_plan, format_plan
        from xelm_cli.training.plan_runner import device_groups

        groups = len(device_groups(devices, 1, 1)) if devices else None
        planned = demo_plan(preset, output, groups)  # a folder only when -o names one
        if as_json:
            print_json(planned.as_dict())
        else:
            typer.echo(format_plan(planned))
        return

    begun = time.perf_counter()
    output = output or Path("demo-run")
    chosen = get_preset(preset)
    with output_lock(output):  # the whole run (run_demo takes it again): one run at a time
        check_run(chosen, output, device)  # before the data, which may be fetched first
        resumed = started(output)
        size = max(DEFAULT_SIZE, chosen.corpus_bytes)
        data = demo_data(data or resumed_data(output), size=size, say=stderr_console.print)
        check_data_of(output, data)  # before run_demo (whose Demo checks it again)
        results, files = run_demo(preset, data, output, device, devices)
    invocation = time.perf_counter() - begun
    this = f" (this invocation {invocation:.0f} s)" if resumed else ""
    stderr_console.print(f"finished in {results['seconds']:.0f} s{this}")
    report_md, results_json, *figures = files
    claims = read_json_object(results_json, "results file")["claims"]
    if as_json:
        verdicts = [{**claim, "verdict": VERDICTS[claim["supported"]]} for claim in claims]
        print_json({"report": str(report_md), "results": str(results_json),
                    "figures": [str(f) for f in figures], "seconds": results["seconds"],
                    "invocation_seconds": round(invocation, 1),
                    "claims": verdicts})  # fmt: skip
        return
    for claim in claims:  # the report's verdicts, one line each
        typer.echo(claim_line(claim))
    typer.echo(f"report: {report_md}")


def report(
    results: Annotated[
        list[Path], typer.Argument(help="results.json files (merged in order).", show_default=False)
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report directory.")],
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Redraw the demo report (report.md, figures) from results files, e.g. of runs on
    several machines.

    Example: xelm report demo-run/report/results.json -o report/
    """
    from xelm_cli.demo import read_results, write_report
    from xelm_cli.demo.report import check_report_output

    check_report_output(output, overwrite=force, inputs=results)  # before they are read
    report_md, results_json, *figures = write_report(read_results(results), output, overwrite=force)
    if as_json:
        print_json({"report": str(report_md), "results": str(results_json),
                    "figures": [str(f) for f in figures]})  # fmt: skip
        return
    typer.echo(f"report: {report_md}")
