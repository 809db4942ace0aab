"""torch.profiler around one call: where its wall time went (the benchmarks' --profile); and
the wait for the device that the benchmarks' timings take (``sync``).

The operators' own CPU time includes the CUDA runtime's calls (kernel launches, copies, and
the waits of ``cudaStreamSynchronize``); wall time beyond it is Python between operators.
"""

import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

ROWS = 12  # operators listed, by own CPU time
Result = TypeVar("Result")


def sync(device_type: str) -> None:
    """Wait until the device has done the work queued on it (a CPU's is done already)."""
    if device_type == "cuda":
        torch.cuda.synchronize()


def profiled(call: Callable[[], Result], device_type: str) -> tuple[Result, dict[str, Any]]:
    """``call()``'s result and a summary of its run under torch.profiler: wall seconds, the
    operators' own CPU and device seconds in all, and the ROWS operators with the most own
    CPU time (name, calls, own CPU ms, own device ms)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        result = call()
        sync(device_type)
        seconds = time.perf_counter() - started
    events = list(profiler.key_averages())
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:ROWS]
    return result, {
        "seconds": seconds,
        "operators_cpu_s": sum(e.self_cpu_time_total for e in events) / 1e6,
        "device_s": sum(_device_us(e) for e in events) / 1e6,
        "top": [
            {
                "name": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_device_ms": _device_us(e) / 1e3,
            }
            for e in top
        ],
    }


def summary(call: Callable[[], object], device_type: str) -> dict[str, Any]:
    """``profiled``'s summary, or ``{"error": ...}`` where the profiler failed (no CUPTI, no
    permission for it): a profile is never worth the measurements made before it."""
    try:
        return profiled(call, device_type)[1]
    except Exception as exc:  # any: it is reported in gpu.md instead
        return {"error": f"{type(exc).__name__}: {exc}"}


def _device_us(event: Any) -> float:
    return float(getattr(event, "self_device_time_total", 0.0))


def markdown(summary: dict[str, Any], what: str) -> list[str]:
    """gpu.md lines for one profiled run."""
    if "error" in summary:
        return ["", f"{what} could not be profiled: {summary['error']}"]
    return [
        "",
        f"{what} under torch.profiler: {summary['seconds']:.2f} s wall, of which the "
        f"operators' own CPU time {summary['operators_cpu_s']:.2f} s (the rest: Python between "
        f"them); their own device time {summary['device_s']:.2f} s. The operators with the most "
        "own CPU time:",
        "",
        "| operator | calls | own CPU ms | own device ms |",
        "|---|---:|---:|---:|",
        *(
            f"| `{op['name']}` | {op['calls']:,} | {op['self_cpu_ms']:,.1f} | "
            f"{op['self_device_ms']:,.1f} |"
            for op in summary["top"]
        ),
    ]
