"""Routers of an ensemble: the registered class, its options checked by its declaration, built."""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xelm_cli.common.errors import UsageError
from xelm_cli.plugin.contracts import ExpertInfo, PreRouter, Router
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import declared_options, parse_options
from xelm_cli.plugin.registry import bugs_reported


def router_class(name: str) -> type[Router]:
    """The class registered as router ``name`` (or ``DIST:NAME``); one-line error if none."""
    router: type[Router] = get_registry().get("router", name).obj
    return router


def check_router_options(
    name: str,
    options: Mapping[str, Any] | None,
    *,
    where: str | None = None,
    via: str = "--router-arg",
    resolve_paths: bool = False,
) -> dict[str, Any]:
    """``options`` checked against router ``name``'s declaration (spec/plugin-api.md 5.1) and
    converted: text (``--router-arg`` values) by the declared type, JSON values (an ensemble
    file, a Python call) checked against it. The result is JSON-ready (paths as text), as an
    ensemble file records it; ``resolve_paths`` makes path options absolute, so that the file
    does not depend on the working directory. ``where`` names the file the options come from."""
    label = f"router {name!r}" + (f" in {where}" if where else "")
    parsed = parse_options(router_class(name), dict(options or {}), label=label, via=via)
    return {key: _recordable(value, resolve_paths) for key, value in parsed.items()}


def _recordable(value: Any, resolve_paths: bool) -> Any:
    if isinstance(value, Path):
        return str(value.resolve() if resolve_paths else value)
    if isinstance(value, tuple | list):
        return [_recordable(v, resolve_paths) for v in value]
    if isinstance(value, dict):
        return {str(k): _recordable(v, resolve_paths) for k, v in value.items()}
    return value


def build_router(name: str, options: Mapping[str, Any] | None = None) -> Router:
    """Router ``name`` built as ``RouterClass(**options)``, the options first checked and
    converted by its declaration (a one-line :class:`UsageError` naming the option).

    Anything else a third party's declaration or constructor raises that is not a
    :class:`XelmError` is a bug in the router: a :class:`PluginError` naming the router and its
    plugin (xelm's own routers' bugs are internal errors, as :func:`bugs_reported` says).
    """
    registration = get_registry().get("router", name)
    with bugs_reported(registration, "while being built"):
        values = parse_options(
            registration.obj, dict(options or {}), label=f"router {name!r}", via="--router-arg"
        )
        router: Router = registration.obj(**values)
    return router


@contextmanager
def routing(router: Router, doing: str = "while routing") -> Iterator[str | None]:
    """Call ``router``'s routing (or, ``doing`` says, its calibration): what a third party's
    raises other than a :class:`XelmError` is a one-line :class:`PluginError` naming the router
    and its plugin (exit 6), not an internal error of xelm (nor of the evaluator scoring).
    Yields that plugin's name, for the weight checks to name (None for xelm's own routers and
    for classes no plugin registered)."""
    registration = get_registry().registration_of("router", type(router))
    if registration is None:
        yield None
        return
    with bugs_reported(registration, doing):
        yield None if registration.first_party else registration.plugin


def check_router_experts(router: Router, experts: Sequence[ExpertInfo]) -> None:
    """``router.check_experts(experts)`` (spec/plugin-api.md 6.5): an option that does not fit
    the ensemble's experts (a posterior prior of another length) refused when the ensemble is
    built, before any expert runs; a third party's bug in it is a one-line PluginError."""
    with routing(router, "while checking the ensemble's experts"):
        router.check_experts(experts)


def build_fallback(router: Router, experts: Sequence[ExpertInfo]) -> Router | None:
    """The fallback router of pre-router ``router`` (None without one), built once as
    spec/plugin-api.md 6.5 says, without options, and checked against ``experts``, before any
    expert runs; one that cannot serve refused in one line naming those that can."""
    if not isinstance(router, PreRouter) or not router.fallback:
        return None
    fallback = _built_without_options(router, router.fallback)
    if isinstance(fallback, PreRouter) and fallback.fallback:
        raise UsageError(
            _unfit_fallback(router, f"it has a fallback of its own ({fallback.fallback!r})")
        )
    # the router hands the fallback the languages no expert covers: it must route them
    if router.routes_uncovered_languages and not fallback.routes_uncovered_languages:
        raise UsageError(
            _unfit_fallback(router, "so built, it does not route the languages no expert covers")
        )
    check_router_experts(fallback, experts)
    return fallback


def _built_without_options(router: PreRouter, name: str) -> Router:
    needed = _required_options(router_class(name))
    if needed:
        raise UsageError(_unfit_fallback(router, f"it needs {', '.join(needed)}"))
    try:
        return build_router(name)
    except UsageError as exc:
        raise UsageError(_unfit_fallback(router, f"so built, it refuses: {exc}")) from None


def fallback_routers() -> list[str]:
    """The installed routers that can be a fallback, as their classes declare: none of their
    options required, they route every language and name no fallback of their own."""
    return sorted(
        {
            registration.name
            for registration in get_registry().all_of("router")
            if registration.obj.routes_uncovered_languages is True
            and not getattr(registration.obj, "fallback", None)
            and not _required_options(registration.obj)
        }
    )


def _required_options(router: type[Router]) -> list[str]:
    return [spec.name for spec in declared_options(router) if spec.required]


def _unfit_fallback(router: PreRouter, why: str) -> str:
    return (
        f"router {router.name!r} cannot fall back to {router.fallback!r}: a fallback is built "
        f"without options, and {why}; choose one that can: "
        f"{', '.join(fallback_routers()) or 'none is installed'}"
    )
