"""The public API and its specification cannot drift: spec/plugin-api.md section 1 lists exactly
``xelm_cli.api.__all__``, and the façade only re-exports (it defines nothing of its own)."""

import ast
import re
from pathlib import Path

import xelm_cli.api as api

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec" / "plugin-api.md"


def spec_table_names() -> set[str]:
    text = SPEC.read_text()
    section = text[text.index("## 1. The public API") : text.index("## 2.")]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for code in re.findall(r"`([^`]+)`", first_cell):
            if code.startswith("."):  # a method named beside its class
                continue
            names.add(re.split(r"[(\[ ]", code, maxsplit=1)[0].split(".")[0])
    return names


def test_spec_section_1_lists_exactly_the_public_api() -> None:
    listed = spec_table_names()
    exported = set(api.__all__)
    assert sorted(exported - listed) == [], "exported but not in spec/plugin-api.md section 1"
    assert sorted(listed - exported) == [], "in spec/plugin-api.md section 1 but not exported"


def test_every_exported_name_exists_and_the_facade_defines_nothing() -> None:
    assert all(hasattr(api, name) for name in api.__all__)
    tree = ast.parse(Path(api.__file__).read_text())
    defined = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        or (
            isinstance(node, ast.Assign)
            and not any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        )
    ]
    assert defined == []
