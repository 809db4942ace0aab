"""The public API and its specification cannot drift: spec/plugin-api.md section 1 lists exactly
``xelm_cli.api.__all__``, and the façade only re-exports (it defines nothing of its own)."""

import ast
import inspect
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


def spec_signatures() -> list[tuple[str, str]]:
    """Every ``name(parameters)`` written in section 1's first column (``(...)`` elides)."""
    text = SPEC.read_text()
    section = text[text.index("## 1. The public API") : text.index("## 2.")]
    calls = []
    for line in section.splitlines():
        if line.startswith("| `"):
            for code in re.findall(r"`([^`]+)`", line.split("|")[1]):
                if match := re.fullmatch(r"([A-Za-z_]\w*)\((.*)\)", code):
                    calls.append((match[1], match[2]))
    return calls


def written(parameters: str) -> list[tuple[str, inspect._ParameterKind, object]]:
    """Parameters as the spec writes them: name, kind and default (``REQUIRED`` and ``<stderr>``
    stand for a default the reader cannot write; they and names stay as text)."""
    function = ast.parse(f"def f({parameters.replace('<stderr>', 'STDERR')}): ...").body[0]
    assert isinstance(function, ast.FunctionDef)
    arguments = function.args
    kinds = inspect.Parameter
    listed: list[tuple[str, inspect._ParameterKind, ast.expr | None]] = []
    positional = arguments.posonlyargs + arguments.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
    defaults += arguments.defaults
    for arg, default in zip(positional, defaults, strict=True):
        listed.append((arg.arg, kinds.POSITIONAL_OR_KEYWORD, default))
    if arguments.vararg:
        listed.append((arguments.vararg.arg, kinds.VAR_POSITIONAL, None))
    for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        listed.append((arg.arg, kinds.KEYWORD_ONLY, default))
    if arguments.kwarg:
        listed.append((arguments.kwarg.arg, kinds.VAR_KEYWORD, None))
    return [(name, kind, literal(default)) for name, kind, default in listed]


def literal(node: ast.expr | None) -> object:
    if node is None:
        return inspect.Parameter.empty
    try:
        return eval(compile(ast.Expression(node), "<spec>", "eval"), {})  # 2**40, "a", (), None
    except NameError:
        return ast.unparse(node)


def test_spec_section_1_writes_each_signature_as_the_code_has_it() -> None:
    """Names, order, keyword-only markers and literal defaults: a third party calling
    ``distance_matrix(languages=...)`` from the table must not meet a TypeError."""
    checked = 0
    for name, parameters in spec_signatures():
        if parameters == "...":
            continue
        real = inspect.signature(getattr(api, name)).parameters.values()
        code = [(p.name, p.kind, p.default) for p in real]
        spec = written(parameters)
        assert [(n, k) for n, k, _ in spec] == [(n, k) for n, k, _ in code], name
        for (parameter, _, wrote), (_, _, default) in zip(spec, code, strict=True):
            if not isinstance(wrote, str) or isinstance(default, str):
                assert wrote == default, f"{name}({parameter}=...)"
        checked += 1
    assert checked > 50
