"""The ``train`` verb: train a bundle with a registered trainer, from Python or ``xelm train``.

``xelm_cli.api.train`` re-exports it::

    from xelm_cli.api import train
    expert = train("branches/e0", data="shards/", tokens="20M", output="experts/e0", lr=3e-4)
"""

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from xelm_cli.bundle.store import Bundle, check_output
from xelm_cli.cluster.assigning import assigns_documents
from xelm_cli.common.atomic import output_lock
from xelm_cli.common.errors import PluginError, UsageError, XelmError
from xelm_cli.common.units import token_count
from xelm_cli.data.shards import Shards
from xelm_cli.lang.codes import language_codes
from xelm_cli.plugin.contracts import Trainer, TrainRequest
from xelm_cli.plugin.host import get_registry
from xelm_cli.plugin.options import parse_options
from xelm_cli.plugin.registry import bugs_reported

DEFAULT_TRAINER = "causal-lm"
TRAIN_ARG = "--train-arg"


def train(
    bundle: str | Path,
    *,
    data: str | Path,
    tokens: int | str,
    output: str | Path,
    trainer: str = DEFAULT_TRAINER,
    languages: Sequence[str] | str = (),
    valid: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    **options: Any,
) -> Bundle:
    """Train ``bundle`` on the token shards ``data`` for ``tokens`` tokens (an int or text such as
    ``"20M"``) and write the result as a new bundle at ``output``; returns it.

    ``trainer`` is a registered trainer's name (``xelm plugins list``; ``DIST:NAME`` selects one
    of two same-named registrations); ``options`` are its declared options (``xelm plugins show
    NAME``), as Python values or text, checked against its declaration with one-line errors.
    ``languages``: the languages to train on (default: the bundle's). ``resume`` continues from
    the newest checkpoint (and starts the run when there is none yet); ``overwrite`` replaces an
    existing output. ``command`` is what the training record calls the run (default: this call).
    Under torchrun every rank calls this; rank 0 alone holds the output lock and writes.
    """
    registration = get_registry().get("trainer", trainer)
    cls = registration.obj
    label = f"trainer {registration.name!r}"
    checked = trainer_options(cls, options, label=label)
    count = token_count(tokens)
    languages = expert_languages(Path(bundle), Path(data), language_codes(languages) or ())
    request = TrainRequest(
        bundle=Path(bundle),
        data=Path(data),
        output=Path(output),
        tokens=count,
        languages=languages,
        options=checked,
        valid=Path(valid) if valid is not None else None,
        resume=resume,
        overwrite=overwrite,
        command=command or _call_text(bundle, data, count, output, registration.name, checked),
        provenance=registration.provenance,
    )
    writer = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 writes
    if writer:  # before hours of training, and before a lock file lands beside the output
        inputs = [bundle, data, *([valid] if valid is not None else [])]
        check_output(output, overwrite=overwrite, inputs=inputs)
    with (
        output_lock(request.output) if writer else nullcontext(),  # one run per output
        bugs_reported(registration, "while training"),  # a third party's bug: exit 6
    ):
        trained = cls().train(request)
    if not isinstance(trained, Bundle):
        raise PluginError(
            f"{registration.object_label()} train() returned {type(trained).__name__}, not the "
            "Bundle it wrote (a trainer returns writer.result after `with write_bundle("
            "request.output, ...) as writer`, spec/plugin-api.md 7.2); this is a bug in the trainer"
        )
    if Path(trained.path).resolve() != request.output.resolve():
        raise PluginError(
            f"{registration.object_label()} train() returned the bundle at {trained.path}, not "
            f"the requested output {request.output} (write_bundle(request.output, ...)); this "
            "is a bug in the trainer"
        )
    return trained


def expert_languages(bundle: Path, data: Path, languages: tuple[str, ...]) -> tuple[str, ...]:
    """The languages to train ``bundle`` on: ``languages`` when given, else ``()`` (its own),
    or, for an expert on the shards of its own documents, every language the shards hold (all
    the documents the allocation sent it: some of languages beside its own, none of one of
    its own, maybe). Refuses an expert on another expert's documents, or an expert of an
    allocation that assigns documents (TF-IDF) on every document of its languages
    (``Shards.require_expert``). A bundle or shards that cannot be read are left to the
    trainer, which refuses them after its own options."""
    try:
        manifest = Bundle.read(bundle).manifest
        reference = manifest.allocation
        if reference is None:  # no expert: any shards will do
            return languages
        shards = Shards.open(data)
    except XelmError:  # not a bundle, not shards: the trainer says so, after its options
        return languages
    try:
        documents = assigns_documents(reference)
    except UsageError as exc:
        raise UsageError(
            f"{bundle} is an expert of {reference.get('path')}, by a clusterer xelm cannot load "
            f"to tell whether it assigns documents: {exc}; install its plugin"
        ) from None
    shards.require_expert(reference, str(bundle), assigns_documents=documents)
    if languages or shards.expert is None:
        return languages
    held = tuple(shards.languages)
    return () if set(held) == set(manifest.languages) else held


def trainer_options(cls: type[Trainer], values: Mapping[str, Any], *, label: str) -> dict[str, Any]:
    """``values`` checked against ``cls``'s declared options and converted (only those given:
    the trainer fills in its defaults); a one-line error names ``label`` and its options."""
    return parse_options(cls, dict(values), label=label, via=TRAIN_ARG)


def _call_text(
    bundle: Any, data: Any, tokens: int, output: Any, trainer: str, options: Mapping[str, Any]
) -> str:
    """How the training record names a Python call: ``train('b', data='d', ...)``."""
    words = [
        repr(str(bundle)),
        f"data={str(data)!r}",
        f"tokens={tokens}",
        f"output={str(output)!r}",
    ]
    words += [f"trainer={trainer!r}"] + [f"{key}={value!r}" for key, value in options.items()]
    return f"xelm_cli.api.train({', '.join(words)})"
