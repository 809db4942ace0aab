"""What made a demo run folder: ``OUT/demo.json``, written before its first step.

A re-run skips every step that has a record, so a folder may only be resumed by the preset
that made it: another preset would reuse the first one's seed and experts. The record holds the
preset's name and settings (a same-named preset changed by another xelm version also trains
other runs), and the data directory (resolved) with ``data_digest``, a digest of the files the
steps after the corpus step read from it (``data.evaluation_files``: FLORES-200, SIB-200,
NTREX-128; the corpus step copies its sample of the training text into the folder). Evaluation,
routing, the MoE's gate, adaptation and in-context steps read that data on every run, so once a
step has finished a folder is resumed on the same data only: without ``--data``, the recorded
one (``resumed_data``); another directory is refused while the recorded one exists, and data
whose evaluation files differ from the recorded digest always (``check_data_of``). Until a step
has finished, another ``--data`` replaces the recorded one.

A folder from before this record (``steps/`` without it) is checked against the preset its
``report/results.json`` names, if it has one, else accepted; a record without ``data_digest``
(from before it) has its data compared by path alone.
"""

import json
from pathlib import Path
from typing import Any

from xelm_cli.common.atomic import write_bytes_atomic
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import pretty_json, read_json_object
from xelm_cli.common.outputs import is_empty_folder, refuse_inside_bundle
from xelm_cli.demo.data import data_digest
from xelm_cli.demo.presets import Preset

RECORD = "demo.json"
UNCHECKED = ("summary",)  # the --preset help phrase: not what the runs train


def preset_settings(preset: Preset) -> dict[str, Any]:
    """The preset's settings as JSON gives them back (tuples as lists), less its help."""
    settings = {k: v for k, v in preset.as_dict().items() if k not in UNCHECKED}
    loaded: dict[str, Any] = json.loads(json.dumps(settings))
    return loaded


def made_by(out: Path) -> dict[str, Any] | None:
    """The record of what made ``out``: its own, else (a folder from before the record) the
    preset its results name; None for a new folder or an old one that names none."""
    record = out / RECORD
    if record.is_file():
        return read_json_object(record, "run record")
    results = out / "report" / "results.json"
    if (out / "steps").is_dir() and results.is_file():
        preset = read_json_object(results, "results file").get("preset")
        if isinstance(preset, dict) and "name" in preset:
            return {"preset": preset["name"]}
    return None


def check_folder(out: Path, preset: Preset) -> None:
    """Refuse, in one line, to resume ``out`` with a preset other than the one that made it,
    and to start a run in a folder that is no demo run: a bundle or a folder inside one, or a
    folder holding other things (the run would write its steps among them)."""
    made = made_by(out)
    if made is None:
        refuse_inside_bundle(out, "the demo's run", into=True)
        if out.is_dir() and not is_empty_folder(out) and not (out / "steps").is_dir():
            raise UsageError(
                f"{out}/ holds other things and is no demo run: pass another -o (a new or "
                "empty folder)"
            )
        return
    if made.get("preset") != preset.name:
        raise UsageError(
            f"{out}/ was made by --preset {made.get('preset')}: pass that preset, or another -o"
        )
    recorded, now = made.get("settings", {}), preset_settings(preset)
    changed = sorted(key for key in recorded.keys() & now.keys() if recorded[key] != now[key])
    if changed:
        raise UsageError(
            f"{out}/ was made by another xelm's preset {preset.name}, with other "
            f"{', '.join(changed)}: pass another -o"
        )


def started(out: Path) -> bool:
    """Whether a step of the run in ``out`` has finished (has its record)."""
    return any((out / "steps").glob("*.json"))


def recorded_data(out: Path) -> Path | None:
    """The data directory ``out``'s record names (None: no record, or one without it)."""
    made = made_by(out)
    data = made.get("data") if made else None
    return Path(data) if isinstance(data, str) else None


def resumed_data(out: Path) -> Path | None:
    """The data a re-run of ``out`` without ``--data`` reads: the recorded directory; None for
    a new folder (or one without a finished step whose recorded data is gone: the default)."""
    recorded = recorded_data(out)
    if recorded is None or recorded.is_dir():
        return recorded
    if not started(out):
        return None
    raise UsageError(
        f"{out}/ was made from the data in {recorded}, which is gone: pass --data DIR with the "
        "same data, or another -o"
    )


def check_data_of(out: Path, data: Path) -> None:
    """Refuse, in one line, to resume ``out`` (a step finished) on other data than it recorded:
    another directory while the recorded one exists, or evaluation files that differ from the
    recorded digest (data changed in place, or moved and not the same)."""
    made = made_by(out)
    if made is None or not isinstance(made.get("data"), str) or not started(out):
        return
    recorded = Path(made["data"])
    if recorded != data.resolve() and recorded.exists():
        raise UsageError(
            f"{out}/ was made from the data in {recorded}, not {data}: pass --data {recorded} "
            "(or leave --data out), or another -o"
        )
    digest = made.get("data_digest")
    if isinstance(digest, str) and digest != data_digest(data):
        raise UsageError(
            f"{data} is not the data {out}/ was made from: its evaluation files (FLORES-200, "
            "SIB-200, NTREX-128) differ from those recorded; pass the same data, or another -o"
        )


def record_folder(out: Path, preset: Preset, data: Path) -> None:
    """Record what makes ``out`` if it has no record yet, or no finished step and a record of
    other data (``check_folder`` and ``check_data_of`` have passed)."""
    record = out / RECORD
    if record.is_file() and started(out):
        return
    made = {"preset": preset.name, "settings": preset_settings(preset),
            "data": str(data.resolve()), "data_digest": data_digest(data)}  # fmt: skip
    if not record.is_file():
        write_bytes_atomic(record, pretty_json(made), overwrite=False)
    elif read_json_object(record, "run record") != made:  # the first run failed before a step
        write_bytes_atomic(record, pretty_json(made))
