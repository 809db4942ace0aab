"""Parameter averaging: one bundle whose weights are the experts' weighted mean.

The weights come from the user, from an ensemble file's calibrated prior, or from one
language's row of the allocation (its expert, or its documents' shares over TF-IDF clusters).
Experts must share architecture, tokenizer and seed, which is checked on their manifests before
any tensor is read. The average streams tensor by tensor (tensor_stream): memory holds one
accumulator and one input tensor, not k models, so it works on models larger than memory.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xelm_cli.bundle.fingerprint import is_weight_file
from xelm_cli.bundle.lineage import lineage_steps
from xelm_cli.bundle.store import Bundle, Progress, check_output, check_role, write_bundle
from xelm_cli.bundle.tensor_stream import TensorSource, write_sharded
from xelm_cli.cluster.allocation import Allocation, as_allocation
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.common.jsonio import read_json_object
from xelm_cli.ensemble.members import expand_paths
from xelm_cli.lang.codes import normalize_language


def expert_paths(experts: str | Path | Sequence[str | Path]) -> list[Path]:
    """Bundle directories as a Python caller names them: one path or quoted glob, or a list
    of them; globs are expanded as the commands expand them (their bundles only)."""
    given = [experts] if isinstance(experts, str | Path | Bundle) else experts
    return expand_paths([os.fspath(path) for path in given])


def seed_of(bundle: Bundle) -> dict[str, str]:
    """The ``{id, digest}`` of the first bundle of this bundle's line (its lineage root)."""
    steps = lineage_steps(bundle)  # refused in one line when step 1 is a second init
    return dict(steps[1]["parents"][0]) if len(steps) > 1 else bundle.ref


def _model_type(bundle: Bundle) -> str:
    config = read_json_object(bundle.path / "config.json", f"{bundle.path}/config.json")
    return str(config.get("model_type", "?"))


def _architecture_difference(a: Bundle, b: Bundle) -> str:
    """What differs between two architectures, from configs and safetensors headers only."""
    type_a, type_b = _model_type(a), _model_type(b)
    if type_a != type_b:
        return f"model_type {type_a!r} vs {type_b!r}"
    tensors_a, tensors_b = TensorSource(a.path).tensors, TensorSource(b.path).tensors
    for name in sorted(set(tensors_a) | set(tensors_b)):
        if name not in tensors_b:
            return f"tensor {name} only in {a.path}"
        if name not in tensors_a:
            return f"tensor {name} only in {b.path}"
        if tensors_a[name].shape != tensors_b[name].shape:
            return (
                f"{name} has shape {list(tensors_a[name].shape)} vs {list(tensors_b[name].shape)}"
            )
    return "the recorded fingerprints differ"


def check_mergeable(bundles: Sequence[Bundle], what: str = "merged") -> None:
    """Refuse experts that cannot be combined parameter by parameter, naming the difference:
    distinct bundles with one architecture, one tokenizer and one seed (manifests only)."""
    if len(bundles) < 2:
        raise UsageError(f"only {len(bundles)} bundle given: at least two experts can be {what}")
    first = bundles[0]
    seen: dict[str, Bundle] = {}
    for bundle in bundles:
        if bundle.id in seen:
            raise UsageError(
                f"{seen[bundle.id].path} and {bundle.path} are the same bundle; list each once"
            )
        seen[bundle.id] = bundle
        prints, first_prints = bundle.manifest.fingerprints, first.manifest.fingerprints
        if prints["architecture"] != first_prints["architecture"]:
            raise UsageError(
                f"{first.path} and {bundle.path} have different architectures "
                f"({_architecture_difference(first, bundle)}); only experts of one architecture "
                f"can be {what}"
            )
        if prints["tokenizer"] != first_prints["tokenizer"]:
            raise UsageError(
                f"{first.path} and {bundle.path} have different tokenizers; only experts "
                f"branched from one seed can be {what}"
            )
        if seed_of(bundle)["digest"] != seed_of(first)["digest"]:
            raise UsageError(
                f"{first.path} and {bundle.path} descend from different seeds "
                f"({seed_of(first)['id'][:12]} vs {seed_of(bundle)['id'][:12]}); only experts "
                f"branched from one seed can be {what}"
            )


# ---------------------------------------------------------------------------- weights


def normalised(weights: Sequence[float], source: str) -> list[float]:
    values = [float(w) for w in weights]
    if any(not w >= 0 or w == float("inf") for w in values):
        raise UsageError(f"{source}: weights must be finite and non-negative, got {values}")
    total = sum(values)
    if total <= 0:
        raise UsageError(f"{source}: the weights are all zero")
    return [w / total for w in values]


def parse_weights(text: str, bundles: Sequence[Bundle]) -> list[float]:
    """``0.5,0.3,0.2`` (in the experts' order) or ``NAME=0.5,NAME=0.5`` (by bundle name,
    directory or id; experts not named get 0); normalised to sum 1."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    named = any("=" in p for p in parts)
    try:
        if not named:
            if len(parts) != len(bundles):
                raise UsageError(
                    f"--weights has {len(parts)} values for {len(bundles)} experts; give one per "
                    "expert in order, or NAME=WEIGHT pairs"
                )
            return normalised([float(p) for p in parts], "--weights")
        weights = [0.0] * len(bundles)
        for part in parts:
            key, _, value = part.partition("=")
            matches = [
                i
                for i, b in enumerate(bundles)
                if key.strip() in (b.name, b.path.name, str(b.path), b.id)
            ]
            if len(matches) != 1:
                names = ", ".join(b.name for b in bundles)
                raise UsageError(
                    f"--weights: {key!r} names {len(matches)} of the experts ({names})"
                )
            weights[matches[0]] = float(value)
        return normalised(weights, "--weights")
    except ValueError:
        raise UsageError(f"--weights must be numbers, e.g. 0.5,0.3,0.2; got {text!r}") from None


def prior_weights(ensemble_file: Path, bundles: Sequence[Bundle]) -> list[float]:
    """The calibrated prior an ensemble file records (``xelm ensemble create --router
    posterior --calibration DATA``), one value per expert, matched by bundle digest."""
    if not Path(ensemble_file).is_file():  # a path the user typed: usage, not a broken format
        raise UsageError(f"ensemble file not found: {ensemble_file}")
    data = read_json_object(ensemble_file, "ensemble file")
    if data.get("format") != "xelm-ensemble":
        raise FormatError(f"{ensemble_file}: not an xelm ensemble file")
    try:
        digests = [str(m["digest"]) for m in data["members"]]
        prior = (data["router"].get("options") or {}).get("prior")
    except (KeyError, TypeError, AttributeError):
        raise FormatError(f"{ensemble_file}: malformed ensemble file") from None
    if not isinstance(prior, list) or len(prior) != len(digests):
        raise UsageError(
            f"{ensemble_file} records no calibrated prior; make one with `xelm ensemble create "
            "EXPERTS --router posterior --calibration DATA -o ens.json`"
        )
    weights = []
    for bundle in bundles:
        if bundle.digest not in digests:
            raise UsageError(f"{bundle.path} is not a member of the ensemble {ensemble_file}")
        weights.append(prior[digests.index(bundle.digest)])
    return normalised(weights, f"{ensemble_file} prior")


def language_weights(
    language: str, allocation: Allocation, bundles: Sequence[Bundle]
) -> list[float]:
    """One language's router weights over the experts: its share of documents per expert when
    the allocation records them (TF-IDF), else 1 for the expert that holds it (typology)."""
    expert_of: dict[int, int] = {}
    for i, bundle in enumerate(bundles):
        ref = bundle.manifest.allocation
        if not ref or ref.get("digest") != allocation.digest:
            raise UsageError(
                f"{bundle.path} is not an expert of the allocation {allocation.path}; "
                "weights by language need the experts of one allocation"
            )
        expert = int(ref["expert"])
        if expert in expert_of:  # a branch beside the expert trained from it, say
            raise UsageError(
                f"{bundles[expert_of[expert]].path} and {bundle.path} are both expert {expert} of "
                f"{allocation.path}: weights by language need one bundle an expert"
            )
        expert_of[expert] = i
    shares = allocation.language_shares
    if shares is not None and language in shares:
        row = shares[language]
    elif (holder := allocation.expert_of(language)) is not None:
        row = [1.0 if e == holder else 0.0 for e in range(allocation.k)]
    else:
        raise UsageError(
            f"{language!r} is not in the allocation {allocation.path} "
            f"(languages: {', '.join(allocation.languages)})"
        )
    missing = [e for e, w in enumerate(row) if w > 0 and e not in expert_of]
    if missing:
        raise UsageError(
            f"{language!r} has weight on expert {missing[0]} of {allocation.path}, which is not "
            "among the bundles given; pass every expert of the allocation"
        )
    by_bundle = [0.0] * len(bundles)
    for expert, i in expert_of.items():
        by_bundle[i] = row[expert] if expert < len(row) else 0.0
    return normalised(by_bundle, f"weights of {language!r}")


def merge_weights(
    bundles: Sequence[Bundle],
    *,
    weights: Sequence[float] | str | None = None,
    prior: str | Path | None = None,
    language: str | None = None,
    allocation: Allocation | str | Path | None = None,
) -> list[float]:
    """The weights one of the sources gives, normalised (uniform when none is given):
    ``weights`` (numbers in the experts' order, or text as ``--weights`` takes it), ``prior``
    (an ensemble file) or ``language`` with ``allocation`` (its row of the allocation)."""
    given = [
        name
        for name, v in (("--weights", weights), ("--prior", prior), ("--language", language))
        if v
    ]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} both set the weights; pass one of them")
    if (language is None) != (allocation is None):
        raise UsageError("--lang LANG and --allocation FILE go together")
    if isinstance(weights, str):
        return parse_weights(weights, bundles)
    if weights:
        if len(weights) != len(bundles):
            raise UsageError(f"{len(weights)} weights for {len(bundles)} experts")
        return normalised(weights, "weights")
    if prior:
        return prior_weights(Path(prior), bundles)
    if language is not None and allocation is not None:
        return language_weights(language, as_allocation(allocation), bundles)
    return [1.0 / len(bundles)] * len(bundles)


# ---------------------------------------------------------------------------- averaging

WIDENED_CHUNK = 1 << 22  # elements of an input widened at a time (16 MiB in float32)


def _add_scaled(total: Any, tensor: Any, weight: float) -> None:
    """``total += tensor.to(total.dtype) * weight`` (the same roundings) a chunk at a time, without
    that expression's two temporaries of the whole tensor in the wide dtype."""
    flat_total, flat = total.view(-1), tensor.reshape(-1)
    for start in range(0, flat.numel(), WIDENED_CHUNK):
        piece = slice(start, start + WIDENED_CHUNK)
        flat_total[piece].add_(flat[piece].to(total.dtype) * weight)


def average_tensor(sources: Sequence[TensorSource], weights: Sequence[float], name: str) -> Any:
    """sum_e w_e T_e in float32 (float64 for float64 tensors), cast back to the first expert's
    dtype; tensors that are not floating point must be equal and are copied. Memory: the wide
    accumulator, one input and the result (measured: 3.5 times a bf16 tensor)."""
    import torch

    first = sources[0].get(name)
    if not first.is_floating_point():
        for source in sources[1:]:
            if not torch.equal(source.get(name), first):
                raise UsageError(
                    f"{name} is an integer tensor that differs between {sources[0].directory} "
                    f"and {source.directory}; it cannot be averaged"
                )
        return first
    dtype = first.dtype
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    total = first.to(wide)  # first itself when already wide: it is ours to change
    del first
    total.mul_(weights[0])
    for source, weight in zip(sources[1:], weights[1:], strict=True):
        if weight:
            tensor = source.get(name)
            if tensor.shape != total.shape:  # equal sizes would otherwise average flattened
                raise UsageError(
                    f"{name} is {tuple(total.shape)} in {sources[0].directory} but "
                    f"{tuple(tensor.shape)} in {source.directory}; it cannot be averaged"
                )
            _add_scaled(total, tensor, weight)
    return total.to(dtype)


def merge_average(
    paths: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    weights: Sequence[float] | str | None = None,
    prior: str | Path | None = None,
    language: str | None = None,
    allocation: Allocation | str | Path | None = None,
    role: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """Write ``out``: the experts' weighted parameter average, a bundle whose last lineage step
    is ``merge`` (method ``average``) naming every parent and its weight. The first expert
    gives the config, tokenizer, dtypes and shard layout.

    Args:
        paths: the experts' bundle directories, or quoted globs (``"experts/*"``).
        out: the new bundle's directory.
        weights: one weight per expert (scaled to sum 1), or text as ``--weights`` takes it
            (``0.5,0.3,0.2`` or ``NAME=W`` pairs).
        prior: an ensemble file whose calibrated posterior prior gives the weights.
        language: with ``allocation`` (an :class:`Allocation` or its file), the weights are
            that language's row of the allocation and the result is an expert for it.
        role: the result's role; default ``expert`` with ``language``, else ``dense`` (for
            all the experts' languages).
        overwrite: replace an existing ``out``.
        progress: called with the number of bytes hashed or written.

    At most one of ``weights``, ``prior`` and ``language`` is given; none averages uniformly.
    """
    if role is not None:
        check_role(role)
    language = normalize_language(language) if language else None
    experts = expert_paths(paths)
    files = [f for f in (prior, allocation) if isinstance(f, str | Path)]
    check_output(out, overwrite=overwrite, inputs=[*experts, *files])  # before any is read
    bundles = [Bundle.read(path) for path in experts]
    check_mergeable(bundles)
    chosen = merge_weights(
        bundles, weights=weights, prior=prior, language=language, allocation=allocation
    )
    for bundle in bundles:  # every digest checked before any tensor is used
        bundle.check_files(progress=progress)
    sources = [TensorSource(b.path) for b in bundles]
    step: dict[str, Any] = {
        "relation": "merge",
        "method": "average",
        "parents": [b.ref for b in bundles],
        "weights": chosen,
    }
    if language:
        step["language"] = language
    every = list(dict.fromkeys(x for b in bundles for x in b.languages))
    with write_bundle(
        out,
        role=role or ("expert" if language else "dense"),
        languages=[language] if language else every,
        parent=bundles[0],
        step=step,
        overwrite=overwrite,
        progress=progress,
    ) as writer:
        writer.remove(is_weight_file)
        written = write_sharded(  # the first expert's files and index
            writer.directory,
            sources[0].tensors,
            lambda name: average_tensor(sources, chosen, name),
            progress,
            index=sources[0].index is not None,
        )
        writer.record_written(written)
    assert writer.result is not None
    return writer.result
