"""What made a demo run folder: ``OUT/demo.json``, written before its first step.

A re-run skips every step that has a record, so a folder may only be resumed by the preset
that made it: another preset would reuse the first one's seed and experts. The record holds the
preset's name and settings (a same-named preset changed by another xelm version also trains
other runs) and, for information only, the data directory: the data is read by the corpus
step alone, which copies its sample into the folder, so later steps never see another one.

A folder from before this record (``steps/`` without it) is checked against the preset its
``report/results.json`` names, if it has one, else accepted.
"""

import json
from pathlib import Path
from typing import Any

from xelm_cli.common.atomic import write_bytes_atomic
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import pretty_json, read_json_object
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
    """Refuse, in one line, to resume ``out`` with a preset other than the one that made it."""
    made = made_by(out)
    if made is None:
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


def record_folder(out: Path, preset: Preset, data: Path) -> None:
    """Record what makes ``out`` if it has no record yet (``check_folder`` has passed)."""
    if not (out / RECORD).is_file():
        made = {"preset": preset.name, "settings": preset_settings(preset),
                "data": str(data.resolve())}  # fmt: skip
        write_bytes_atomic(out / RECORD, pretty_json(made), overwrite=False)
