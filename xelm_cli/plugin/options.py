"""Declared options: one dataclass per plugin says each option's type, default and help.

Everything else is derived from that declaration: converting ``KEY=VALUE`` text (``--router-arg``,
``--train-arg``, ``--cluster-arg``, ``--eval-arg``) or JSON values (ensemble files, Python calls),
the one-line errors for a bad value, the flags and ``--help`` text of commands, and
``xelm plugins show``. Normative text: spec/plugin-api.md section 5.1.

A plugin class declares ``Options``, a dataclass whose fields are built with :func:`option`::

    @dataclass(frozen=True)
    class Options:
        temperature: float = option(0.1, help="Softmax temperature.", minimum=0)
        top_k: int | None = option(None, help="Keep the K largest weights per document.")

A router without ``Options`` is described by its ``__init__`` signature (names, annotations,
defaults; no help), so routers written against plugin API 1.0 keep working unchanged.
"""

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from xelm_cli.common.errors import PluginError, UsageError, exception_line

REQUIRED: Any = MISSING
"""The default of an option the user must give."""

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


_CONTRACTS = "xelm_cli.plugin.contracts"  # the base classes; they cannot be imported here


@dataclass(frozen=True)
class NoOptions:
    """The declaration of a plugin that takes no options."""


def option(
    default: Any = REQUIRED,
    *,
    help: str,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
) -> Any:
    """A declared option: a dataclass field carrying its help and checks.

    ``choices``: the allowed values; ``minimum``: the smallest allowed number; ``flag``: the
    command-line flag when it is not ``--NAME-WITH-DASHES``; ``parse``: how text becomes a value
    when the type alone does not say (e.g. ``parse_token_count`` for ``4M``); ``cli=False``: an
    option set by xelm, never by the user (not a flag, refused as ``KEY=VALUE``).
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "flag": flag,
        "parse": parse,
        "cli": cli,
    }
    if isinstance(default, list | dict | set):
        frozen = default
        return field(default_factory=lambda: type(frozen)(frozen), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionSpec:
    """One declared option, as xelm reads it from the declaration."""

    name: str
    annotation: Any
    default: Any = REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    flag: str | None = None
    parse: Callable[[str], Any] | None = None
    cli: bool = True

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def type_name(self) -> str:
        """How the type reads in help and errors: ``int``, ``list of float``, ``str or none``."""
        if self.choices:
            listed = "one of " + ", ".join(str(c) for c in self.choices)
            return f"list, each {listed}" if _is_collection(self.annotation) else listed
        return _type_name(self.annotation)

    @property
    def is_flag(self) -> bool:
        """A plain boolean: ``--NAME`` on the command line, ``--no-NAME`` to turn it off."""
        return _strip_optional(self.annotation)[0] is bool

    @property
    def negative_flag(self) -> str:
        """The flag that turns a boolean option off: ``--no-NAME``."""
        return "--no-" + self.flag_name.removeprefix("--")

    def describe(self) -> dict[str, Any]:
        """What ``xelm plugins show --json`` prints for this option."""
        return {
            "name": self.name,
            "type": self.type_name,
            "default": None if self.required else _jsonable(self.default),
            "required": self.required,
            "help": self.help,
            "flag": self.flag_name if self.cli else None,
        }


def options_class(owner: Any) -> type | None:
    """The declaration of ``owner``: itself if it is a dataclass type, else its ``Options``."""
    if isinstance(owner, type) and dataclasses.is_dataclass(owner) and not _is_plugin(owner):
        return owner
    declared = getattr(owner, "Options", None)
    if isinstance(declared, type) and dataclasses.is_dataclass(declared):
        if declared is NoOptions and _own_init(owner) and not _sets_options(owner):
            return None  # an API 1.0 router: its constructor declares its options
        return declared
    return None


def declares_options(owner: Any) -> bool:
    """Whether a plugin class declares its options (plugin API 1.1): an ``Options`` of its own,
    ``NoOptions`` included (it declares none). A class that sets no ``Options`` is of plugin API
    1.0: an evaluator reads ``EvalRequest.options`` by itself; a router's constructor is its
    declaration (``declared_options``)."""
    return getattr(owner, "Options", NoOptions) is not NoOptions or _sets_options(owner)


def _sets_options(owner: Any) -> bool:
    """Whether ``owner`` or a class it derives from, other than xelm's base classes (whose
    ``Options`` is the ``NoOptions`` default), sets ``Options``."""
    return isinstance(owner, type) and any(
        "Options" in vars(cls) and cls.__module__ != _CONTRACTS for cls in owner.__mro__
    )


def _own_init(owner: Any) -> bool:
    """A router class with its own constructor: API 1.0 routers take their options as its
    keyword arguments. (Trainers, clusterers and evaluators are built by xelm with a request,
    so their constructors are no declaration.)"""
    is_router = hasattr(owner, "route") or hasattr(owner, "route_tokens")
    return isinstance(owner, type) and is_router and _constructor(owner) is not object.__init__


def _constructor(cls: type) -> Any:
    # getattr, because mypy calls ``cls.__init__`` on a class unsound
    return getattr(cls, "__init__")  # noqa: B009


def _is_plugin(cls: type) -> bool:
    # a router may itself be a dataclass; its declaration is still its ``Options``
    return any(hasattr(cls, attr) for attr in ("route", "route_tokens", "train", "fit", "evaluate"))


def declared_options(owner: Any) -> tuple[OptionSpec, ...]:
    """The options ``owner`` (a plugin class or an options dataclass) declares, in order.

    A declaration that cannot be read (an annotation that names nothing, a default factory that
    raises) is its plugin's bug: a one-line :class:`PluginError` naming ``owner``."""
    try:
        return _declared_options(owner)
    except Exception as exc:
        name = getattr(owner, "name", None)
        named = f"{name!r} " if isinstance(name, str) else ""
        where = f"{getattr(owner, '__module__', '?')}:{getattr(owner, '__qualname__', owner)}"
        raise PluginError(
            f"the options declaration of {named}({where}) cannot be read: "
            f"{exception_line(exc, with_type=True)}; this is a bug in its plugin"
        ) from exc


def _declared_options(owner: Any) -> tuple[OptionSpec, ...]:
    declaration = options_class(owner)
    if declaration is not None:
        hints = typing.get_type_hints(declaration, include_extras=True)
        specs = []
        for item in dataclasses.fields(declaration):
            if not item.init:
                continue
            meta = item.metadata
            if item.default is not MISSING:
                default = item.default
            elif item.default_factory is not MISSING:
                default = item.default_factory()
            else:
                default = REQUIRED
            specs.append(
                OptionSpec(
                    item.name,
                    hints.get(item.name, Any),
                    default,
                    meta.get("help", ""),
                    meta.get("choices"),
                    meta.get("minimum"),
                    meta.get("flag"),
                    meta.get("parse"),
                    meta.get("cli", True),
                )
            )
        for spec in specs:  # a default its own type refuses would reach the plugin unchecked
            if spec.default is not REQUIRED and spec.default is not None:
                try:
                    convert(spec, spec.default, label="its default")
                except UsageError:
                    raise ValueError(
                        f"option {spec.name!r} defaults to {spec.default!r}, which is no "
                        f"{spec.type_name}"
                    ) from None
        return tuple(specs)
    if _own_init(owner):
        return _from_signature(owner)
    return ()


def _from_signature(cls: type) -> tuple[OptionSpec, ...]:
    try:
        hints = typing.get_type_hints(_constructor(cls))
    except Exception:  # unresolvable annotations: treat them as untyped
        hints = {}
    specs = []
    for parameter in list(inspect.signature(_constructor(cls)).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = REQUIRED if parameter.default is parameter.empty else parameter.default
        specs.append(OptionSpec(parameter.name, hints.get(parameter.name, Any), default))
    return tuple(specs)


def parse_pairs(pairs: Sequence[str], via: str) -> dict[str, str]:
    """``KEY=VALUE`` texts as a dict of texts (a one-line error for anything else, and for a
    key given twice: which one was meant is not ours to guess)."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{via} must look like KEY=VALUE, got {pair!r}")
        name = key.strip().replace("-", "_")
        if name in values:
            raise UsageError(
                f"{via} gives {name!r} twice ({name}={values[name]}, {name}={value}); give it once"
            )
        values[name] = value
    return values


def with_flags(
    pairs: Mapping[str, Any], flagged: Mapping[str, Any], owner: Any, via: str
) -> dict[str, Any]:
    """Options from ``via`` pairs and from the flags of ``owner``'s declaration together; an
    option given both ways is refused in one line naming both."""
    both = sorted(set(pairs) & set(flagged))
    if both:
        name = both[0]
        spec = next((s for s in declared_options(owner) if s.name == name), None)
        if spec is not None and spec.is_flag:  # --minimal or --no-minimal, as typed
            flag = _as_flag(spec, flagged[name])
        else:
            flag = f"{spec.flag_name if spec else name} {flagged[name]}"
        raise UsageError(
            f"option {name!r} is given twice ({flag} and {via} {name}={pairs[name]}); give it once"
        )
    return {**pairs, **flagged}


def parse_options(
    owner: Any, values: Mapping[str, Any], *, label: str, via: str = "KEY=VALUE"
) -> dict[str, Any]:
    """Check ``values`` against the declaration of ``owner`` and convert them.

    Text values (from the command line) are converted by the declared type; other values (JSON,
    Python) are checked against it. Returns only the given options, converted; missing required
    options, unknown names and bad values raise a one-line :class:`UsageError` that names
    ``label`` (``router 'fixed'``) and how to pass the option (``via``, e.g. ``--router-arg``).
    """
    specs = {spec.name: spec for spec in declared_options(owner)}
    settable = {name: spec for name, spec in specs.items() if spec.cli}
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        spec = settable.get(key)
        if spec is None:
            known = ", ".join(settable) if settable else None
            listing = f"its options: {known}" if known else "it takes no options"
            raise UsageError(f"{label} has no option {key!r} ({listing})")
        parsed[key] = convert(spec, raw, label=label)
    for spec in settable.values():
        if spec.required and spec.name not in parsed:
            what = f" ({spec.help})" if spec.help else ""
            raise UsageError(
                f"{label} needs option {spec.name!r}{what}; pass {via} {spec.name}=VALUE"
            )
    return parsed


def build_options(owner: Any, values: Mapping[str, Any], *, label: str, via: str = "") -> Any:
    """An instance of ``owner``'s declaration (defaults filled in) from ``values``."""
    declaration = options_class(owner)
    if declaration is None:
        raise TypeError(f"{owner!r} declares no options dataclass")
    return declaration(**parse_options(owner, values, label=label, via=via or "KEY=VALUE"))


def options_record(options: Any) -> dict[str, Any]:
    """An options instance as JSON-ready data (paths as text), for manifests and results."""
    return {k: _jsonable(v) for k, v in dataclasses.asdict(options).items()}


# ---------------------------------------------------------------------------- conversion


def convert(spec: OptionSpec, raw: Any, *, label: str) -> Any:
    """``raw`` (text or a JSON value) as a value of the declared type; one-line error otherwise."""

    def bad(reason: str = "") -> UsageError:
        shown = raw if isinstance(raw, str) else json.dumps(_jsonable(raw))
        return UsageError(
            f"{label}: option {spec.name!r} expects {spec.type_name}, not {shown!r}{reason}"
        )

    if isinstance(raw, str) and spec.parse is not None and raw.strip().lower() not in _NONE:
        try:
            value = spec.parse(raw)
        except (ValueError, UsageError) as exc:
            raise bad(f" ({exc})") from None
    else:
        try:
            value = _coerce(spec.annotation, raw)
        except (ValueError, TypeError):
            raise bad() from None
    # a collection's choices and minimum apply to each of its items
    many = _is_collection(spec.annotation) and isinstance(value, list | tuple | set | frozenset)
    what = f"each item of option {spec.name!r}" if many else f"option {spec.name!r}"
    for item in value if many else [value]:
        if spec.choices is not None and item is not None and item not in spec.choices:
            choices = ", ".join(str(c) for c in spec.choices)
            shown = item if many else raw
            raise UsageError(f"{label}: {what} must be one of {choices}, not {shown!r}")
        if (
            spec.minimum is not None
            and isinstance(item, int | float)
            and not isinstance(item, bool)
            and not item >= spec.minimum
        ):
            raise UsageError(f"{label}: {what} must be at least {spec.minimum:g}, not {item}")
    return value


_COLLECTIONS = (list, tuple, set, frozenset, Sequence)


def _is_collection(annotation: Any) -> bool:
    """Whether the type (without ``| None``) is a list, tuple, set or sequence of values."""
    inner, _ = _strip_optional(annotation)
    return get_origin(inner) in _COLLECTIONS or inner in _COLLECTIONS


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``| None``, whether None is allowed)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(members) < len(get_args(annotation))
        if len(members) == 1:
            return members[0], optional
        return Union[tuple(members)], optional  # noqa: UP007
    return annotation, annotation is None or annotation is type(None)


def _coerce(annotation: Any, raw: Any) -> Any:
    inner, optional = _strip_optional(annotation)
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE and inner is not str):
        if optional or inner is Any:
            return None
        raise ValueError("None is not allowed")
    if inner is Any or inner is inspect.Parameter.empty:
        return _json_or_text(raw) if isinstance(raw, str) else raw
    origin = get_origin(inner)
    if origin is Literal:
        allowed = get_args(inner)
        for choice in allowed:
            if raw == choice or (isinstance(raw, str) and str(choice) == raw):
                return choice
        raise ValueError(raw)
    if origin in (Union, types.UnionType):
        for member in get_args(inner):
            try:
                return _coerce(member, raw)
            except (ValueError, TypeError):
                continue
        raise ValueError(raw)
    if _is_collection(inner):
        items = _as_list(raw)
        kind, args = origin or inner, get_args(inner)
        if kind is tuple and args and Ellipsis not in args:  # tuple[int, str]: one type a place
            if len(items) != len(args):
                raise ValueError(raw)
            return tuple(_coerce(arg, item) for arg, item in zip(args, items, strict=True))
        converted = [_coerce(args[0] if args else Any, item) for item in items]
        return kind(converted) if kind in (tuple, set, frozenset) else converted
    if origin is dict or inner is dict:
        mapping = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(mapping, dict):
            raise ValueError(raw)
        key_type, value_type = get_args(inner) or (Any, Any)
        return {_coerce(key_type, k): _coerce(value_type, v) for k, v in mapping.items()}
    if inner is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(raw)
    if inner is int:
        if isinstance(raw, bool):
            raise ValueError(raw)
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            return int(raw.strip())
        raise ValueError(raw)
    if inner is float:
        if isinstance(raw, bool):
            raise ValueError(raw)
        if isinstance(raw, int | float):
            return float(raw)
        if isinstance(raw, str):
            return float(raw.strip())
        raise ValueError(raw)
    if inner is str:
        if isinstance(raw, str):
            return raw
        raise ValueError(raw)
    if inner is Path or (isinstance(inner, type) and issubclass(inner, Path)):
        if isinstance(raw, str | Path):
            return Path(raw)
        raise ValueError(raw)
    if isinstance(inner, type) and isinstance(raw, inner):
        return raw
    raise TypeError(f"cannot convert to {inner!r}")


def _as_list(raw: Any) -> list[Any]:
    if isinstance(raw, list | tuple | set | frozenset):
        return list(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            value = json.loads(text)
            if isinstance(value, list):
                return value
            raise ValueError(raw)
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ValueError(raw)


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _type_name(annotation: Any) -> str:
    inner, optional = _strip_optional(annotation)
    if inner is Any or inner is inspect.Parameter.empty:
        name = "a JSON value or text"
    elif get_origin(inner) is Literal:
        name = "one of " + ", ".join(str(a) for a in get_args(inner))
    elif get_origin(inner) in (Union, types.UnionType):
        name = " or ".join(_type_name(a) for a in get_args(inner))
    elif _is_collection(inner):
        args = [a for a in get_args(inner) if a is not Ellipsis]
        if get_origin(inner) is tuple and len(args) == len(get_args(inner)) > 1:
            name = f"list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        else:
            name = f"list of {_type_name(args[0])}" if args else "list"
    elif get_origin(inner) is dict or inner is dict:
        args = list(get_args(inner))
        name = f"JSON object of {_type_name(args[1])}" if args else "JSON object"
    elif inner is Path:
        name = "path"
    elif isinstance(inner, type):
        name = inner.__name__
    else:
        name = str(inner)
    return f"{name} or none" if optional and inner is not Any else name


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)  # in one order, every time
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------- command-line flags


def typer_parameters(
    owner: Any,
    *,
    skip: Sequence[str] = (),
    taken: Iterable[str] = (),
    refuse: Callable[[str, str], None] | None = None,
) -> list[inspect.Parameter]:
    """Keyword-only parameters, one flag per settable option of ``owner``, for a Typer command.

    Each defaults to None, so the command passes on only what the user gave (and the plugin's
    own default applies otherwise); its help states the declared default. A boolean is a plain
    flag, ``--NAME``, and its ``--no-NAME`` a hidden one that :func:`given` reads as
    NAME=False (shown, it would take a column of its own that squeezes ``--help`` past 80
    columns); other values arrive as text and go through :func:`parse_options`.

    ``skip``: option names that get no flag; ``taken``: the command's own flags (see
    :func:`command_flags`; ``--help`` is always taken). An option whose flag is malformed or
    already taken, by the command or an earlier option (a boolean's ``--no-NAME`` included),
    gets none and stays reachable as ``KEY=VALUE``: ``refuse(name, why)`` is told.
    """
    import typer  # the CLI's dependency; plugins that only declare options never need it

    used = dict.fromkeys(["--help", *taken], "the command's own flag")
    parameters = []
    for spec in declared_options(owner):
        if not spec.cli or spec.name in skip:
            continue
        why = _flag_problem(spec, used)
        if why is not None:
            if refuse is not None:
                refuse(spec.name, why)
            continue
        if spec.is_flag:
            info = typer.Option(spec.flag_name, help=_help_text(spec), show_default=False)
            negative = typer.Option(spec.negative_flag, hidden=True)
            parameters.append(_keyword(spec.name, Annotated[bool | None, info]))
            parameters.append(_keyword(_NEGATED + spec.name, Annotated[bool | None, negative]))
        else:
            info = typer.Option(
                spec.flag_name, help=_help_text(spec), metavar=_metavar(spec), show_default=False
            )
            parameters.append(_keyword(spec.name, Annotated[str | None, info]))
    return parameters


_NEGATED = "no__"
"""The name prefix of a boolean's hidden ``--no-NAME`` parameter."""

_FLAG = re.compile(r"--\w[\w-]*")


def _flag_problem(spec: OptionSpec, used: dict[str, str]) -> str | None:
    """Why ``spec`` can have no flag, or None (and its flags are added to ``used``, each
    flag -> whose it is)."""
    if not _FLAG.fullmatch(spec.flag_name):
        return f"{spec.flag_name!r} is no flag: flags are --NAME, of letters, digits, - and _"
    flags = [spec.flag_name, spec.negative_flag] if spec.is_flag else [spec.flag_name]
    clash = next((flag for flag in flags if flag in used), None)
    if clash is not None:
        return f"{clash} is {used[clash]}"
    used.update(dict.fromkeys(flags, f"the flag of option {spec.name!r}"))
    return None


def command_flags(function: Callable[..., Any]) -> set[str]:
    """The flags Typer gives the parameters of ``function``, a command: those its
    ``typer.Option`` names, else ``--NAME-WITH-DASHES`` (with ``--no-NAME`` for a boolean)."""
    from typer.models import ArgumentInfo, OptionInfo
    from typer.utils import get_params_from_function

    flags: set[str] = set()
    for name, meta in get_params_from_function(function).items():
        info = meta.default
        if isinstance(info, ArgumentInfo) or info is inspect.Parameter.empty:
            continue  # an argument
        if isinstance(info, OptionInfo) and info.param_decls:
            flags.update(flag for decl in info.param_decls for flag in decl.split("/"))
        else:
            flag = "--" + name.replace("_", "-")
            flags.update([flag, "--no-" + flag[2:]] if meta.annotation is bool else [flag])
    return flags


def _keyword(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def _help_text(spec: OptionSpec) -> str:
    """The declared help and, in brackets, the choices and the default, and for a boolean that
    is not off by default the flag that turns it off (a plain flag, off unless given, gets no
    brackets)."""
    if spec.is_flag and spec.default is False:
        return spec.help
    notes = [spec.type_name] if spec.choices else []
    notes.append("required" if spec.required else f"default: {as_text(spec.default)}")
    if spec.is_flag:
        notes.append(f"{spec.negative_flag} turns it off")
    # rich markup would swallow a bare "[default: none]": the bracket is escaped
    return f"{spec.help} \\[{'; '.join(notes)}]".strip()


def with_parameters(
    function: Callable[..., Any], extra: Sequence[inspect.Parameter]
) -> Callable[..., Any]:
    """``function`` as a Typer command whose signature also has ``extra`` (keyword-only)
    parameters; it receives them all as keyword arguments (``**options`` in ``function``)."""
    signature = inspect.signature(function)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]

    def command(**kwargs: Any) -> Any:
        return function(**kwargs)

    command.__name__ = function.__name__
    command.__qualname__ = function.__qualname__
    command.__doc__ = function.__doc__
    command.__module__ = function.__module__
    parameters = own + list(extra)
    command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


def given(values: Mapping[str, Any], owner: Any) -> dict[str, Any]:
    """The options of ``owner`` among a command's keyword arguments (its flags from
    :func:`typer_parameters`) that the user gave; a boolean's ``--no-NAME`` as NAME=False."""
    options = {}
    for spec in declared_options(owner):
        value = values.get(spec.name)
        if values.get(_NEGATED + spec.name):
            if value:
                raise UsageError(
                    f"{spec.flag_name} and {spec.negative_flag} contradict each other: "
                    "give one of them"
                )
            value = False
        if value is not None:
            options[spec.name] = value
    return options


PAIRS_METAVAR = "KEY=VALUE"
"""The metavar of ``--router-arg``, ``--eval-arg``, ``--cluster-arg``, ``--train-arg``: what to
type, where Typer would show ``<list[str]>``."""


def _metavar(spec: OptionSpec) -> str:
    """The value's kind, as Typer shows a typed flag's (``<int>``); choices are listed in the
    help: as the metavar they would take a wide column."""
    inner, _ = _strip_optional(spec.annotation)
    if inner in (int, float):
        return f"<{inner.__name__}>"
    if inner is Path:
        return "<path>"
    if _is_collection(inner):
        return "<list>"
    return "<str>"


def as_flags(owner: Any, values: Mapping[str, Any]) -> list[str]:
    """The command-line flags that set ``values`` (options of ``owner`` by name) as its
    command reads them: ``--FLAG=VALUE``, or ``--FLAG``/``--no-FLAG`` for a boolean; None for
    an option whose default is None is left out (``--FLAG=none`` would read as the text 'none'
    for a ``str``); a name that is not one of its flags is refused."""
    specs = {spec.name: spec for spec in declared_options(owner)}
    flags = []
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None or not spec.cli:
            owner_name = getattr(owner, "name", None) or getattr(owner, "__name__", "")
            raise UsageError(f"{name!r} is not an option with a flag of {owner_name!r}")
        if value is not None or spec.default is not None:
            flags.append(_as_flag(spec, value))
    return flags


def _as_flag(spec: OptionSpec, value: Any) -> str:
    """The flag that sets ``spec`` to ``value``: ``--FLAG=VALUE``, ``--FLAG`` or ``--no-FLAG``."""
    if spec.is_flag:
        return spec.flag_name if value else spec.negative_flag
    return f"{spec.flag_name}={as_text(value)}"


def as_text(value: Any) -> str:
    """How a user types ``value`` after ``KEY=`` (and how help shows a default)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple | set | frozenset | dict):
        return json.dumps(_jsonable(value))
    return str(value)
