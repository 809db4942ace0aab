"""What the plugins registered: each registration and its provenance, the registry that resolves
a name to one of them (spec/plugin-api.md section 3), and the plugins that failed or had a
registration refused.

This module only holds and resolves registrations; :mod:`xelm_cli.plugin.host` loads the plugins
that make them.
"""

import difflib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from xelm_cli.common.errors import PluginError, UsageError, XelmError, exception_line

FIRST_PARTY_DISTRIBUTION = "xelm"

Kind = Literal["clusterer", "trainer", "router", "evaluator", "command"]
KINDS: tuple[Kind, ...] = get_args(Kind)


def normalize_distribution(name: str) -> str:
    """A distribution name as packaging compares them (PEP 503): ``Dist_A`` -> ``dist-a``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Registration:
    """One registered object and where it came from (its plugin, distribution and version).

    ``distribution`` and ``version`` are the installed distribution of the plugin's entry
    point; both are None for a plugin given in-process (``load_registry(extra_plugins=...)``).
    """

    name: str
    kind: Kind
    obj: Any
    plugin: str
    description: str = ""
    distribution: str | None = None
    version: str | None = None

    @property
    def first_party(self) -> bool:
        """Registered by xelm's own distribution (its names are reserved, section 3)."""
        return self.distribution == FIRST_PARTY_DISTRIBUTION

    @property
    def qualified_name(self) -> str:
        """``DIST:NAME`` (``PLUGIN:NAME`` for an in-process plugin): selects this one."""
        return f"{self.distribution or self.plugin}:{self.name}"

    @property
    def provenance(self) -> dict[str, Any]:
        """What results record about the code that produced them (spec/plugin-api.md 5)."""
        return {
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }

    def object_label(self) -> str:
        """``evaluator 'NAME' (plugin 'PLUGIN')``: which object, and whose it is."""
        return f"{self.kind} {self.name!r} (plugin {self.plugin!r})"

    def matches(self, qualifier: str) -> bool:
        """True when ``qualifier`` (of ``QUALIFIER:NAME``) is this plugin or its distribution."""
        if qualifier == self.plugin:
            return True
        return self.distribution is not None and normalize_distribution(
            self.distribution
        ) == normalize_distribution(qualifier)

    def label(self) -> str:
        """``dist-a (plugin a)``, or ``plugin a`` for an in-process plugin."""
        if self.distribution is None:
            return f"plugin {self.plugin}"
        return f"{self.distribution} (plugin {self.plugin})"


_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


def _and_list(items: list[str], last: str = "and") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def _selectors(registrations: list[Registration], among: list[Registration]) -> list[str]:
    """For each of ``registrations``, a qualified name that selects it alone among ``among``
    (every registration of its kind and name): ``DIST:NAME`` where that matches no other (as a
    distribution or as a plugin), else ``PLUGIN:NAME``."""
    selectors = []
    for registration in registrations:
        qualifiers = [q for q in (registration.distribution, registration.plugin) if q]
        alone = [q for q in qualifiers if [r for r in among if r.matches(q)] == [registration]]
        qualifier = alone[0] if alone else registration.plugin
        selectors.append(f"{qualifier}:{registration.name}")
    return selectors


def ambiguity(
    kind: str, name: str, registrations: list[Registration], among: list[Registration]
) -> str:
    """The one line refusing an unqualified ``name`` that several plugins registered
    (``registrations``; ``among``: every registration of that name)."""
    count = _COUNT_WORDS.get(len(registrations), str(len(registrations)))
    labels = _and_list([r.label() for r in registrations])
    choices = _and_list(_selectors(registrations, among), "or")
    return f"{kind} {name!r} is registered by {count} plugins: {labels}; choose one as {choices}"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    registered: dict[Kind, list[str]]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin skipped whole: its import, its registration or one of its hooks failed."""

    plugin: str
    reason: str

    def warning(self) -> str:
        return f"xelm: warning: plugin {self.plugin!r} skipped: {self.reason}"


@dataclass(frozen=True)
class PluginProblem:
    """One registration (or setting) that was refused; the rest of the plugin still loads."""

    plugin: str
    message: str
    kind: Kind | None = None
    name: str | None = None

    def warning(self) -> str:
        return f"xelm: warning: plugin {self.plugin!r}: {self.message}"


@dataclass(frozen=True)
class LeftOut:
    """The installed plugins that ``variable`` (XELM_PLUGINS, set to ``value``) leaves out.

    ``own_registrations`` loads xelm's own among them, only when called (a name was not found):
    to tell which one registers it. Third parties' are not loaded: a plugin may be left out
    because importing it fails or takes long."""

    variable: str
    value: str
    plugins: tuple[str, ...]
    own_registrations: Callable[[], list[Registration]]

    def registering(self, kind: Kind, name: str) -> list[str]:
        """xelm's own left-out plugins that register what ``name`` (or ``DIST:NAME``) selects."""
        qualifier, qualified, base = name.rpartition(":")
        return [
            r.plugin
            for r in self.own_registrations()
            if (r.kind, r.name) == (kind, base) and (not qualified or r.matches(qualifier))
        ]

    def setting(self) -> str:
        return f"{self.variable}={self.value}"


@dataclass
class Registry:
    """What the plugins registered.

    ``entries`` holds every registration in load order, including names that several plugins
    registered. ``clusterers``, ``trainers``, ``routers``, ``evaluators`` and ``commands`` map
    each *unqualified* name to the registration it resolves to (section 3): the only one, or
    xelm's own; a name two third parties registered is absent from them (``get`` refuses it
    naming both, and each is reachable as ``DIST:NAME``).
    """

    clusterers: dict[str, Registration] = field(default_factory=dict)
    trainers: dict[str, Registration] = field(default_factory=dict)
    routers: dict[str, Registration] = field(default_factory=dict)
    evaluators: dict[str, Registration] = field(default_factory=dict)
    commands: dict[str, Registration] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    problems: list[PluginProblem] = field(default_factory=list)
    entries: list[Registration] = field(default_factory=list)
    left_out: LeftOut | None = None

    def of(self, kind: Kind) -> dict[str, Registration]:
        """Unqualified name -> the registration it resolves to (see the class docstring)."""
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        entries: dict[str, Registration] = getattr(self, f"{kind}s")
        return entries

    def all_of(self, kind: Kind, name: str | None = None) -> list[Registration]:
        """Every registration of ``kind`` (named ``name`` when given), in load order."""
        self.of(kind)  # checks the kind
        return [r for r in self.entries if r.kind == kind and (name is None or r.name == name)]

    def get(self, kind: Kind, name: str) -> Registration:
        """The registration that ``name`` or ``DIST:NAME`` / ``PLUGIN:NAME`` selects.

        An unqualified name resolves to its only registration, or to xelm's own when xelm
        registers it; one that several third parties registered is refused. Every refusal is a
        one-line UsageError naming the way out.
        """
        qualifier, sep, base = name.rpartition(":")
        if not sep:
            candidates = self.all_of(kind, name)
            own = [r for r in candidates if r.first_party]
            chosen = own or candidates
            if len(chosen) == 1:
                return chosen[0]
            if chosen:
                raise UsageError(ambiguity(kind, name, chosen, candidates))
            raise UsageError(self._unknown(kind, name, name))
        candidates = self.all_of(kind, base)
        if not candidates:
            raise UsageError(self._unknown(kind, name, base))
        selected = [r for r in candidates if r.matches(qualifier)]
        if len(selected) == 1:
            return selected[0]
        if not selected:
            raise UsageError(
                f"unknown {kind} {name!r}: no plugin or distribution {qualifier!r} registers "
                f"{kind} {base!r} (registered by {_and_list([r.label() for r in candidates])}; "
                f"choose {_and_list(_selectors(candidates, candidates), 'or')})"
            )
        raise UsageError(
            f"{kind} {name!r} matches {len(selected)} plugins of {qualifier!r}: "
            f"{_and_list([r.label() for r in selected])}; choose one as "
            f"{_and_list(_selectors(selected, candidates), 'or')}"
        )

    def registration_of(self, kind: Kind, obj: Any) -> Registration | None:
        """The registration of ``obj`` as a ``kind`` (the first, when one object is registered
        twice); None for an object no plugin registered."""
        return next((r for r in self.all_of(kind) if r.obj is obj), None)

    def provenance_of(self, kind: Kind, obj: Any) -> dict[str, Any] | None:
        """The provenance of the registration of ``obj`` as a ``kind`` (see
        :meth:`registration_of`)."""
        found = self.registration_of(kind, obj)
        return None if found is None else found.provenance

    def knows(self, kind: Kind, name: str) -> bool:
        """Whether ``name`` (or ``DIST:NAME``) is a ``kind`` that :meth:`get` refuses for a
        reason of its own: registered (by several plugins, or by none that the qualifier
        names), left out by XELM_PLUGINS, or refused when its plugin loaded; False for a name
        no plugin has as a ``kind``."""
        base = name.rpartition(":")[2]
        left_out = self.left_out
        return bool(
            self.all_of(kind, base)
            or (left_out and left_out.registering(kind, name))
            or any((p.kind, p.name) == (kind, base) for p in self.problems)
        )

    def _unknown(self, kind: Kind, name: str, base: str) -> str:
        """``name`` (``base`` without its qualifier) is not registered: the names closest to
        it, if any, and every registered one; when XELM_PLUGINS leaves out the plugin of xelm's
        that registers it, that plugin and the ways out."""
        available = self._available(kind)
        left_out = self.left_out
        registering = left_out.registering(kind, name) if left_out else []
        if left_out and registering:
            plugin = registering[0]
            return (
                f"{kind} {name!r} is in plugin {plugin!r}, which {left_out.setting()} does not "
                f"load: add {plugin} to {left_out.variable}, or choose one it loads "
                f"(available: {available})"
            )
        qualifier = name.rpartition(":")[0]
        refused = next(
            (
                p
                for p in self.problems
                if (p.kind, p.name) == (kind, base) and qualifier in ("", p.plugin)
            ),
            None,
        )
        if refused is not None and not self.all_of(kind, base):
            why = refused.message.removeprefix(f"{kind} {base!r} refused: ")
            return (
                f"{kind} {name!r} was refused when plugin {refused.plugin!r} loaded: {why} "
                f"(available: {available})"
            )
        close = difflib.get_close_matches(base, self._names(kind), n=3, cutoff=0.6)
        guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        unloaded = (
            f"; {left_out.setting()} leaves out the installed plugins {', '.join(left_out.plugins)}"
            if left_out and left_out.plugins
            else ""
        )
        return f"unknown {kind} {name!r} ({guess}available: {available}{unloaded})"

    def _names(self, kind: Kind) -> list[str]:
        return sorted({r.name for r in self.all_of(kind)})

    def _available(self, kind: Kind) -> str:
        return ", ".join(self._names(kind)) or "none installed"

    def add_problem(self, problem: PluginProblem) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def warnings(self) -> list[str]:
        return [f.warning() for f in self.failures] + [p.warning() for p in self.problems]

    def as_dict(self) -> dict[str, Any]:
        return {
            "plugins": [asdict(info) for info in self.plugins],
            "failures": [asdict(failure) for failure in self.failures],
            "problems": [asdict(problem) for problem in self.problems],
        }

    def add(self, registration: Registration) -> None:
        """Record ``registration`` and re-resolve its unqualified name."""
        self.entries.append(registration)
        kind, name = registration.kind, registration.name
        candidates = self.all_of(kind, name)
        chosen = [r for r in candidates if r.first_party] or candidates
        resolved = self.of(kind)
        if len(chosen) == 1:
            resolved[name] = chosen[0]
        else:
            resolved.pop(name, None)

    def note_shared_names(self) -> None:
        """One notice per name that several plugins registered (after every plugin loaded)."""
        seen: set[tuple[Kind, str]] = set()
        for registration in self.entries:
            key = (registration.kind, registration.name)
            if key in seen:
                continue
            seen.add(key)
            kind, name = key
            candidates = self.all_of(kind, name)
            if len(candidates) < 2:
                continue
            own = [r for r in candidates if r.first_party]
            if len(own) == 1:
                for other in candidates:
                    if other is not own[0]:
                        self.add_problem(
                            PluginProblem(
                                other.plugin,
                                f"{kind} {name!r} is also xelm's own (plugin "
                                f"{own[0].plugin!r}), which the name {name!r} selects; "
                                f"select this one as {_selectors([other], candidates)[0]}",
                                kind,
                                name,
                            )
                        )
                continue
            chosen = own or candidates
            self.add_problem(
                PluginProblem(
                    chosen[-1].plugin, ambiguity(kind, name, chosen, candidates), kind, name
                )
            )


@contextmanager
def bugs_reported(registration: Registration | None, doing: str) -> Iterator[None]:
    """Run a third-party plugin's code: an exception other than a :class:`XelmError` becomes a
    one-line :class:`PluginError` (exit 6) naming the object and its plugin, not an internal
    error of xelm. ``doing`` says when: ``"while being built"``. xelm's own plugins are left
    alone: their bugs are xelm's internal errors; so is an object no plugin registered
    (``registration`` None: a class a caller passes itself)."""
    try:
        yield
    except XelmError:
        raise
    except Exception as exc:
        if registration is None or registration.first_party:
            raise
        raise PluginError(
            f"{registration.object_label()} failed {doing}: {exception_line(exc, with_type=True)}; "
            f"this is a bug in the {registration.kind} (XELM_DEBUG=1 shows the traceback)"
        ) from exc
