"""The plugin host: load the ``xelm`` entry points with pluggy and add their commands to the CLI.

Normative text: spec/plugin-api.md. Plugins import only :mod:`xelm_cli.api`; the contracts
are :mod:`xelm_cli.plugin.contracts`; what the plugins registered is held in a
:class:`~xelm_cli.plugin.registry.Registry`.

Each hook is called once per plugin with a ``register`` callable bound to that plugin, so every
registration is attributed to the plugin that made it, and a plugin that fails is dropped whole
without losing the others.
"""

import functools
import inspect
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

import pluggy
import typer

from xelm_cli.common.errors import exception_line
from xelm_cli.plugin import contracts as api
from xelm_cli.plugin.registry import (
    FIRST_PARTY_DISTRIBUTION,
    KINDS,
    Kind,
    LeftOut,
    PluginFailure,
    PluginInfo,
    PluginProblem,
    Registration,
    Registry,
)

PROJECT = "xelm"
ENTRY_POINT_GROUP = "xelm"
PLUGINS_ENV = "XELM_PLUGINS"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
BUILTIN_COMMANDS = frozenset(
    {
        "bundle",
        "plugins",
        "data",
        "lang",
        "cluster",
        "train",
        "ensemble",
        "demo",
        "plan",
        "train-all",
        "report",
    }
)
PLUGIN_HELP_PANEL = "Plugin commands"

HOOK_OF_KIND: dict[Kind, str] = {kind: f"register_{kind}s" for kind in KINDS}

hookspec = pluggy.HookspecMarker(PROJECT)


class Register(Protocol):
    """The callable a hook receives: ``register(name, obj, description="")``."""

    def __call__(self, name: str, obj: Any, *, description: str = "") -> None: ...


class XelmHookSpecs:
    """The hooks a plugin may implement, each decorated with ``xelm_cli.api.hookimpl``."""

    @hookspec
    def register_clusterers(self, register: Register) -> None:
        """Register clusterer classes: ``register("typology", TypologyClusterer)``."""

    @hookspec
    def register_trainers(self, register: Register) -> None:
        """Register trainer classes: ``register("causal-lm", CausalLMTrainer)``."""

    @hookspec
    def register_routers(self, register: Register) -> None:
        """Register router classes (subclasses of ``xelm_cli.api.Router``)."""

    @hookspec
    def register_evaluators(self, register: Register) -> None:
        """Register evaluator classes: ``register("perplexity", PerplexityEvaluator)``."""

    @hookspec
    def register_commands(self, register: Register) -> None:
        """Register CLI commands: a ``typer.Typer`` (a command group) or a function."""


@dataclass(frozen=True)
class _Candidate:
    """A plugin about to be loaded: an entry point or an object given in-process."""

    name: str
    load: Callable[[], object]
    distribution: str | None = None
    version: str | None = None


def _failure(exc: BaseException) -> str:
    return exception_line(exc, with_type=True, all_lines=True)


def _first_doc_line(obj: Any) -> str:
    if isinstance(obj, typer.Typer):
        doc = obj.info.help if isinstance(obj.info.help, str) else None
    else:
        # __doc__ of a class is its own, never its base's (unlike inspect.getdoc)
        doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return ""
    return inspect.cleandoc(doc).splitlines()[0]


def _invalid_object(kind: Kind, name: str, obj: Any) -> str | None:
    """Why ``obj`` cannot be registered as a ``kind``, or None when it can."""
    if kind == "command":
        if isinstance(obj, typer.Typer) or (callable(obj) and not isinstance(obj, type)):
            return None
        return f"a command must be a typer.Typer or a function, not {type(obj).__name__}"

    base = {
        "clusterer": api.Clusterer,
        "trainer": api.Trainer,
        "router": api.Router,
        "evaluator": api.Evaluator,
    }.get(kind)
    if base is None:
        return None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        article = "an" if kind == "evaluator" else "a"
        return f"{article} {kind} must be a subclass of xelm_cli.api.{base.__name__}"
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        how = ""
        if kind == "evaluator" and "languages" in obj.__abstractmethods__:
            how = " (define languages as a @property: an attribute set in __init__ is not one)"
        return f"{kind} class {obj.__name__} is abstract: it does not implement {missing}{how}"
    if getattr(obj, "name", None) != name:
        return f"{kind} class attribute name is {getattr(obj, 'name', None)!r}, not {name!r}"
    if kind == "router":
        return _invalid_router(obj)
    if kind == "evaluator":
        return _invalid_evaluator(obj)
    return None


def _invalid_router(obj: type) -> str | None:
    needs_outputs = getattr(obj, "needs_expert_outputs", None)
    if not isinstance(needs_outputs, bool):
        return "router class attribute needs_expert_outputs must be True or False"
    if not needs_outputs and not issubclass(obj, api.PreRouter):
        return "a router with needs_expert_outputs = False must subclass xelm_cli.api.PreRouter"
    if needs_outputs and not issubclass(obj, api.OutputRouter):
        return "a router with needs_expert_outputs = True must subclass xelm_cli.api.OutputRouter"
    if not isinstance(getattr(obj, "routes_uncovered_languages", False), bool):
        return "router class attribute routes_uncovered_languages must be True or False"
    return None


def _invalid_evaluator(obj: type) -> str | None:
    primary = getattr(obj, "primary", None)
    if not isinstance(primary, str) or not primary:
        return (
            f"evaluator class attribute primary is {primary!r}; set it to the name of "
            "the headline metric (a non-empty str)"
        )
    if not isinstance(getattr(obj, "higher_is_better", None), bool):
        return "evaluator class attribute higher_is_better must be True or False"
    return None


# a register() call waiting to be committed: (kind, name, obj, description), as the plugin gave them
_Staged = tuple[Kind, Any, Any, Any]


class _Loader:
    """Builds one Registry: loads each candidate plugin and commits what it registered."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(XelmHookSpecs)

    def load(self, candidate: _Candidate) -> None:
        try:
            plugin = candidate.load()
        except (Exception, SystemExit) as exc:
            self._fail(candidate.name, _failure(exc))
            return
        try:
            refused = self._register(candidate.name, plugin)
        except (Exception, SystemExit) as exc:  # its __eq__, __hash__ or attributes raised
            refused = _failure(exc)
        if refused is not None:
            self._fail(candidate.name, refused)
            return
        self._report_unknown_hooks(candidate.name, plugin)
        staged = self._call_hooks(candidate.name, plugin)
        if staged is None:
            return
        registered: dict[Kind, list[str]] = {kind: [] for kind in KINDS}
        for kind, name, obj, description in staged:
            try:
                committed = self._commit(candidate, kind, name, obj, description)
            except (Exception, SystemExit) as exc:  # the object's attributes raised
                self.registry.add_problem(
                    PluginProblem(
                        candidate.name,
                        f"{kind} {name!r} refused: reading it raised {_failure(exc)}",
                        kind,
                        name if isinstance(name, str) else None,
                    )
                )
                committed = False
            if committed:
                registered[kind].append(name)
        self.registry.plugins.append(
            PluginInfo(candidate.name, candidate.distribution, candidate.version, registered)
        )

    def _register(self, name: str, plugin: object) -> str | None:
        """Register ``plugin`` with pluggy; why it cannot be, or None."""
        if self.pm.get_plugin(name) is not None:
            return "another plugin is already registered under this name"
        try:
            hash(plugin)
        except TypeError:  # pluggy keeps plugins in sets: it would break every later plugin
            return (
                f"the plugin object ({type(plugin).__name__}) is unhashable; make the entry "
                "point a module, or give its class __hash__"
            )
        if self.pm.is_registered(plugin):
            return f"the same object is already registered as plugin {self.pm.get_name(plugin)!r}"
        self.pm.register(plugin, name=name)
        return None

    def _call_hooks(self, plugin_name: str, plugin: object) -> list[_Staged] | None:
        """Call each hook of this plugin alone; None (and a failure) if one raises or exits."""
        staged: list[_Staged] = []
        others = [p for _, p in self.pm.list_name_plugin() if p is not plugin]
        for kind in KINDS:
            register, close = self._stager(kind, staged)
            try:
                hook = self.pm.subset_hook_caller(HOOK_OF_KIND[kind], remove_plugins=others)
                hook(register=register)
            except (Exception, SystemExit) as exc:
                self.pm.unregister(plugin)
                self._fail(
                    plugin_name,
                    f"{HOOK_OF_KIND[kind]} raised {_failure(exc)}",
                )
                return None
            finally:
                close()
        return staged

    def _fail(self, plugin: str, reason: str) -> None:
        self.registry.failures.append(PluginFailure(plugin, reason))

    def _report_unknown_hooks(self, plugin_name: str, plugin: object) -> None:
        callers = self.pm.get_hookcallers(plugin) or []
        if not callers:
            self.registry.add_problem(
                PluginProblem(
                    plugin_name, "implements no xelm hook (is each hook decorated with @hookimpl?)"
                )
            )
        for caller in callers:
            if caller.spec is None:
                known = ", ".join(HOOK_OF_KIND.values())
                self.registry.add_problem(
                    PluginProblem(
                        plugin_name, f"implements unknown hook {caller.name!r} (known: {known})"
                    )
                )

    @staticmethod
    def _stager(kind: Kind, staged: list[_Staged]) -> tuple[Register, Callable[[], None]]:
        """A ``register`` that only records its arguments while the hook runs."""
        is_open = True

        def register(name: str, obj: Any, *, description: str = "") -> None:
            if not is_open:
                raise RuntimeError("register() called after the hook returned; call it inside it")
            staged.append((kind, name, obj, description))

        def close() -> None:
            nonlocal is_open
            is_open = False

        return register, close

    def _commit(
        self, candidate: _Candidate, kind: Kind, name: Any, obj: Any, description: Any
    ) -> bool:
        plugin = candidate.name

        def refuse(message: str) -> bool:
            label = name if isinstance(name, str) else None
            self.registry.add_problem(PluginProblem(plugin, message, kind, label))
            return False

        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            return refuse(
                f"invalid {kind} name {name!r}: names must match {NAME_PATTERN.pattern}; skipped"
            )
        if kind == "command" and name in BUILTIN_COMMANDS:
            return refuse(f"command {name!r} collides with the built-in command {name!r}; skipped")
        why = _invalid_object(kind, name, obj)
        if why is not None:
            return refuse(f"{kind} {name!r} refused: {why}")
        taken = self.registry.all_of(kind, name)
        if any(r.plugin == plugin for r in taken):
            return refuse(
                f"{kind} {name!r} registered twice by plugin {plugin!r}; the second is skipped"
            )
        if kind == "command" and taken:
            # a command is a CLI word: it cannot be qualified, so the first one keeps it
            return refuse(
                f"command {name!r} is already registered by plugin {taken[0].plugin!r}; "
                f"plugin {plugin!r}'s is skipped"
            )
        text = description if isinstance(description, str) and description else ""
        self.registry.add(
            Registration(
                name,
                kind,
                obj,
                plugin,
                text or _first_doc_line(obj),
                candidate.distribution,
                candidate.version,
            )
        )
        return True


def _candidate(ep: metadata.EntryPoint) -> _Candidate:
    dist = ep.dist
    return _Candidate(ep.name, ep.load, dist.name if dist else None, dist.version if dist else None)


def _left_out(value: str, candidates: list[_Candidate]) -> LeftOut:
    """The plugins ``XELM_PLUGINS=value`` leaves out; xelm's own are loaded, apart, only when
    an unknown name asks which one registers it."""
    own = [c for c in candidates if c.distribution == FIRST_PARTY_DISTRIBUTION]

    @functools.cache
    def own_registrations() -> list[Registration]:
        loader = _Loader()
        for candidate in own:
            loader.load(candidate)
        return loader.registry.entries

    plugins = tuple(sorted({c.name for c in candidates}))
    return LeftOut(PLUGINS_ENV, value, plugins, own_registrations)


def _entry_point_candidates(registry: Registry) -> list[_Candidate]:
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    selected = os.environ.get(PLUGINS_ENV)
    if selected is not None:
        wanted = [part.strip() for part in selected.split(",") if part.strip()]
        installed = {ep.name for ep in entry_points}
        for name in wanted:
            if name not in installed:
                choices = ", ".join(sorted(installed)) or "none"
                registry.add_problem(
                    PluginProblem(
                        name,
                        f"{PLUGINS_ENV} names it but no such plugin is installed "
                        f"(installed: {choices})",
                    )
                )
        left_out = [_candidate(ep) for ep in entry_points if ep.name not in wanted]
        registry.left_out = _left_out(selected, left_out)
        entry_points = [ep for ep in entry_points if ep.name in wanted]

    candidates = [_candidate(ep) for ep in entry_points]
    # xelm's own plugins first, then the others by name (the order of `xelm plugins list`)
    return sorted(candidates, key=lambda c: (c.distribution != FIRST_PARTY_DISTRIBUTION, c.name))


def _returning(obj: object) -> Callable[[], object]:
    return lambda: obj


def load_registry(
    extra_plugins: Iterable[tuple[str, object]] = (), *, entry_points: bool = True
) -> Registry:
    """Load a fresh registry: the installed plugins (when ``entry_points``), then ``extra_plugins``.

    ``extra_plugins`` are ``(name, module_or_object)`` pairs registered in-process, after the
    installed ones and in the given order; ``XELM_PLUGINS`` does not filter them.
    """
    loader = _Loader()
    candidates = _entry_point_candidates(loader.registry) if entry_points else []
    candidates += [_Candidate(name, _returning(obj)) for name, obj in extra_plugins]
    for candidate in candidates:
        loader.load(candidate)
    loader.registry.note_shared_names()
    return loader.registry


_registry: Registry | None = None
_warned: set[str] = set()
_printing = False  # add_plugin_commands printed the warnings (not for `xelm plugins list`'s table)
_added_to: "weakref.WeakKeyDictionary[typer.Typer, list[Any]]" = weakref.WeakKeyDictionary()


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_registry()
    return _registry


api.installed_routers = lambda: get_registry().routers.values()


def reset_registry(registry: Registry | None = None) -> None:
    """Forget the cached registry (and the warnings already printed); optionally install one.

    For tests: ``reset_registry(load_registry(extra_plugins=[("mine", module)]))``.
    """
    global _registry, _printing
    _registry = registry
    _printing = False
    _warned.clear()


def print_warnings(registry: Registry) -> None:
    """Print each failure and problem to stderr as one line, once per process."""
    for line in registry.warnings():
        if line not in _warned:
            _warned.add(line)
            sys.stderr.write(line + "\n")


def report_problem(problem: PluginProblem) -> None:
    """Record a problem found after loading (a command built from a registration); printed at
    once where :func:`add_plugin_commands` printed the others."""
    registry = get_registry()
    registry.add_problem(problem)
    if _printing:
        print_warnings(registry)


def was_printed(warning: str) -> bool:
    """Whether ``print_warnings`` already printed this line (so a listing need not repeat it)."""
    return warning in _warned


def _names_in(root: typer.Typer) -> set[str]:
    names: set[str] = set()
    for group in root.registered_groups:
        name = group.name
        if not isinstance(name, str) and group.typer_instance is not None:
            name = group.typer_instance.info.name
        if isinstance(name, str):
            names.add(name)
    for command in root.registered_commands:
        if isinstance(command.name, str):
            names.add(command.name)
        elif command.callback is not None:
            names.add(command.callback.__name__.lower().replace("_", "-"))
    return names


def add_plugin_commands(root: typer.Typer, *, warn: bool = True) -> None:
    """Add every registered command to ``root`` and print the plugin warnings.

    Idempotent: the commands added by an earlier call are replaced, so calling it again (or after
    ``reset_registry``) leaves exactly the current registry's commands.
    """
    global _printing
    registry = get_registry()
    previous = _added_to.get(root, [])
    root.registered_groups[:] = [g for g in root.registered_groups if g not in previous]
    root.registered_commands[:] = [c for c in root.registered_commands if c not in previous]
    taken = _names_in(root)
    added: list[Any] = []
    for registration in registry.commands.values():
        name, obj = registration.name, registration.obj
        if name in taken:
            registry.add_problem(
                PluginProblem(
                    registration.plugin,
                    f"command {name!r} collides with the built-in command {name!r}; skipped",
                    "command",
                    name,
                )
            )
            continue
        # the object's own help (with its example) wins; the description fills in when it has none
        help_text = None if _first_doc_line(obj) else registration.description or None
        if isinstance(obj, typer.Typer):
            if help_text:
                root.add_typer(obj, name=name, help=help_text, rich_help_panel=PLUGIN_HELP_PANEL)
            else:
                root.add_typer(obj, name=name, rich_help_panel=PLUGIN_HELP_PANEL)
            added.append(root.registered_groups[-1])
        else:
            root.command(name, help=help_text, rich_help_panel=PLUGIN_HELP_PANEL)(obj)
            added.append(root.registered_commands[-1])
    _added_to[root] = added
    _printing = warn
    if warn:
        print_warnings(registry)
