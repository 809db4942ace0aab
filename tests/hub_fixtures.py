"""Local stand-ins for Hugging Face Hub dataset repositories.

Each builder writes a directory laid out like a Hub dataset repository: data files per
configuration (JSON lines, gzipped JSON lines or parquet) and a README whose YAML header lists
the configurations. ``datasets.load_dataset(directory, name=..., streaming=True)`` reads it
exactly as it reads a Hub id, so the tests run xelm's Hub code path without a network.
"""

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_readme(root: Path, configs: dict[str, dict[str, str]], title: str = "stand-in") -> None:
    """``configs``: configuration -> {split: data file pattern relative to ``root``}."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    lines += ["---", f"# {title}", ""]
    (root / "README.md").write_text("\n".join(lines))


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Rows as parquet, JSON lines or gzipped JSON lines, by ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if path.name.endswith(".gz"):
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            path.write_text(text, encoding="utf-8")
    return path


def c4_like(
    root: Path,
    texts: dict[str, Sequence[str]],
    *,
    parquet: Sequence[str] = (),
    files_per_language: int = 2,
    validation: int = 3,
) -> Path:
    """A mirror laid out like ``allenai/c4``'s multilingual part: configuration CODE with
    ``multilingual/c4-CODE.tfrecord-NNNNN-of-MMMMM.json.gz`` train files (parquet for the
    codes in ``parquet``) and a validation split of the first ``validation`` texts.
    ``texts`` is keyed by the dataset's codes (``iw`` for Hebrew)."""
    root.mkdir(parents=True, exist_ok=True)
    configs = {}
    for code, documents in texts.items():
        rows = [{"text": t, "timestamp": "2019-04-20T00:00:00Z", "url": "u"} for t in documents]
        folder = root / "multilingual"
        if code in parquet:
            write_rows(folder / f"c4-{code}.train.parquet", rows)
            train = f"multilingual/c4-{code}.train.parquet"
        else:
            n = files_per_language
            for i in range(n):
                part = rows[i * len(rows) // n : (i + 1) * len(rows) // n]
                write_rows(folder / f"c4-{code}.tfrecord-{i:05d}-of-{n:05d}.json.gz", part)
            train = f"multilingual/c4-{code}.tfrecord-*.json.gz"
        write_rows(
            folder / f"c4-{code}-validation.tfrecord-00000-of-00001.json.gz", rows[:validation]
        )
        configs[code] = {
            "train": train,
            "validation": f"multilingual/c4-{code}-validation.tfrecord-*.json.gz",
        }
    write_readme(root, configs, "c4 stand-in")
    return root
