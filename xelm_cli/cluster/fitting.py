"""``cluster(...)``: fit a registered clusterer from Python and write its allocation.

The same path as ``xelm cluster NAME``: options are checked against the clusterer's declared
``Options`` (spec/plugin-api.md section 5.1), the request is built, ``fit`` writes the
allocation atomically and the allocation read back is returned.
"""

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xelm_cli.cluster.allocation import (
    Allocation,
    check_allocation_output,
    recording_provenance,
)
from xelm_cli.common.errors import PluginError, UsageError
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.lang.codes import normalize_language, parse_language_list
from xelm_cli.plugin.contracts import Clusterer, ClusterRequest
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import declared_options, options_class, parse_options
from xelm_cli.plugin.registry import bugs_reported

READING_PARAMETERS = ("reading", *SourceOptions.parameters().values())
"""The names that say how to read DATA: ``cluster(..., reading=)`` and the parameters of the
reading flags of ``xelm cluster NAME`` (``lang`` for ``--lang``). A clusterer may not declare
an option of these names: its flag would set ``ClusterRequest.reading`` instead."""


def cluster(
    name: str,
    *,
    k: int,
    output: str | Path,
    languages: Sequence[str] | str = (),
    data: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    reading: SourceOptions | None = None,
    **options: Any,
) -> Allocation:
    """Fit clusterer ``name`` and write the allocation at ``output``; return it.

    ``languages``: codes (or one comma-separated text) to allocate, empty for every language in
    ``data``; ``data``: a corpus path, a dataset (Hub id or local copy) or a corpus recipe
    (None for clusterers that need no text, such as ``typology``); ``reading``: how to read
    ``data``, as :func:`xelm_cli.data.prepare.prepare` takes it (``SourceOptions(config="{lang}")``
    reads one configuration per language, e.g. mC4's); ``options``: the clusterer's declared
    options by name, as Python values or as text (``"2000"``), checked like ``--cluster-arg``.
    Bad input is a one-line :class:`UsageError` and nothing is written.

    Example: ``cluster("typology", k=4, output="alloc.json", languages="ar,bg,de,el,en,es,fr,hi")``

    Example: ``cluster("tfidf", k=4, output="alloc/", data="allenai/c4", languages="ar,de,he,hi",
    reading=SourceOptions(config="{lang}", lang_map={"he": "iw"}), max_docs_per_language=10000)``
    """
    clusterer = get_registry().get("clusterer", name).obj
    field_of = {parameter: name for name, parameter in SourceOptions.parameters().items()}
    field_of.update({name: name for name in SourceOptions.flags()})
    declared = {spec.name for spec in declared_options(clusterer)}  # language may be one
    misplaced = sorted(set(options) & set(field_of) - declared)
    if misplaced:
        given = ", ".join(f"{key}=..." for key in misplaced)
        fields = ", ".join(f"{field_of[key]}=..." for key in misplaced)
        raise UsageError(f"{given}: how to read data goes in reading=SourceOptions({fields})")
    request = cluster_request(
        clusterer,
        k=k,
        output=output,
        languages=languages,
        data=data,
        seed=seed,
        overwrite=overwrite,
        options=options,
        reading=reading,
        python=True,
    )
    return fit(clusterer, request)


def cluster_request(
    clusterer: type[Clusterer],
    *,
    k: int,
    output: str | Path,
    languages: Sequence[str] | str = (),
    data: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    options: Mapping[str, Any] | None = None,
    reading: SourceOptions | None = None,
    python: bool = False,
) -> ClusterRequest:
    """The checked request for ``clusterer``: codes normalised, options built from the
    declaration (text or Python values), the output refused when it exists without ``overwrite``,
    ``reading`` (how to read ``data``) refused without ``data`` or for a clusterer that does
    not read DATA with it (``Clusterer.reads_data``); a declaration with an option named like
    a reading flag is refused (``refuse_reading_names``). Refusals name the flags of
    ``xelm cluster NAME``, or with ``python`` the keywords of :func:`cluster`."""
    label = f"clusterer {clusterer.name!r}"
    via = "the keyword argument" if python else "--cluster-arg"
    refuse_reading_names(clusterer)
    if reading == SourceOptions():
        reading = None  # nothing given: what a request of an earlier xelm carried
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        k_name = "k" if python else "-k"
        raise UsageError(f"{k_name} must be a whole number of experts, at least 1, not {k!r}")
    data_name = "data" if python else "DATA"
    if reading is not None and not clusterer.reads_data:
        flags, them = _named(reading, python)
        raise UsageError(f"{label} does not read {data_name} with {flags}: drop {them}")
    if reading is not None and data is None:
        flags, them = _named(reading, python)
        say = "says" if them == "it" else "say"
        raise UsageError(f"{flags} {say} how to read {data_name}: give {data_name}, or drop {them}")
    if isinstance(languages, str):
        codes = tuple(parse_language_list(languages)) if languages.strip() else ()
    else:
        codes = tuple(dict.fromkeys(normalize_language(str(code)) for code in languages))
    output = Path(output)
    check_allocation_output(output, overwrite=overwrite, inputs=[data])
    values = dict(options or {})
    declaration = options_class(clusterer)
    if declaration is not None:
        built: Any = declaration(**parse_options(clusterer, values, label=label, via=via))
    else:  # a constructor-declared clusterer: its options as checked keyword values
        built = parse_options(clusterer, values, label=label, via=via)
    return ClusterRequest(
        output=output,
        k=k,
        languages=codes,
        data=None if data is None else str(data),
        seed=seed,
        overwrite=overwrite,
        options=built,
        reading=reading,
    )


def _named(reading: SourceOptions, python: bool) -> tuple[str, str]:
    """The flags ``reading`` gives, in a line (``--config and --lang-map``), and the pronoun
    for them; with ``python``, the ``reading`` keyword and its fields."""
    if python:
        fields = ", ".join(f"{name}=..." for name in reading.given_flags(fields=True))
        return f"reading=SourceOptions({fields})", "it"
    *first, last = reading.given_flags()
    return (f"{', '.join(first)} and {last}", "them") if first else (last, "it")


def refuse_reading_names(clusterer: type[Clusterer]) -> None:
    """Refuse (``PluginError``) a clusterer that declares an option named like a reading flag
    (``READING_PARAMETERS``): its flag and Python keyword say how to read DATA, so the option
    would be silently lost; only its plugin can rename it."""
    for spec in declared_options(clusterer):
        if spec.name in READING_PARAMETERS:
            raise PluginError(
                f"clusterer {clusterer.name!r} declares option {spec.name!r}, a name xelm keeps "
                f"for reading DATA ({', '.join(READING_PARAMETERS)}); its plugin must rename "
                "the option"
            )


def fit(clusterer: type[Clusterer], request: ClusterRequest) -> Allocation:
    """Run ``clusterer``'s fit on ``request``; the allocation it wrote (recording the
    clusterer's provenance: name, plugin, distribution, version), checked."""
    check_allocation_output(request.output, overwrite=request.overwrite, inputs=[request.data])
    provenance = get_registry().provenance_of("clusterer", clusterer)
    registration = get_registry().registration_of("clusterer", clusterer)
    with recording_provenance(provenance), bugs_reported(registration, "while fitting"):
        allocation = clusterer().fit(request)  # a third party's bug: one line naming it (exit 6)
    plugin = (provenance or {}).get("plugin")
    who = f"clusterer {clusterer.name!r}" + (f" (plugin {plugin!r})" if plugin else "")
    if not isinstance(allocation, Allocation):
        raise PluginError(
            f"{who} fit() returned {type(allocation).__name__}, not the Allocation it wrote "
            "(return write_allocation(request.output, ...))"
        )
    if Path(allocation.path).resolve() != Path(request.output).resolve():
        raise PluginError(
            f"{who} fit() wrote {allocation.path}, not the requested output {request.output} "
            "(write_allocation(request.output, ...)); this is a bug in the clusterer"
        )
    if allocation.k != request.k:
        _remove(Path(allocation.path))  # not an allocation the user asked for: none is left
        experts = f"{allocation.k} expert{'s' if allocation.k != 1 else ''}"
        raise PluginError(
            f"{who} fit() wrote {experts} for -k {request.k}; this is a bug in the clusterer "
            "(or it should refuse -k it cannot meet, with a UsageError)"
        )
    return allocation


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
