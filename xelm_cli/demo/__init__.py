"""`xelm demo` (the paper's experiment, small, on the sample data) and its report."""

from pathlib import Path
from typing import Any

from xelm_cli.demo.pipeline import Demo
from xelm_cli.demo.presets import PRESETS, Preset, get_preset
from xelm_cli.demo.report import read_results, write_report

__all__ = ["PRESETS", "Demo", "get_preset", "read_results", "run_demo", "write_report"]


def run_demo(
    preset: str | Preset,
    data: str | Path,
    out: str | Path,
    device: str | None = None,
    devices: str | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Run (or resume) the demo of ``preset`` (its name or itself) into ``out`` (``devices``:
    GPUs to train the seed on at once, then the other runs side by side); the results and the
    report's files."""
    results = Demo(get_preset(preset), Path(data), Path(out), device, devices).run()
    return results, write_report(results, Path(out) / "report", overwrite=True)  # its own
