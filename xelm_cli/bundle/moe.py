"""Experts into one Mixture-of-Experts model (Branch-Train-MiX) that plain transformers loads.

Each expert's feed-forward block becomes MoE expert e of every layer, copied bit for bit; the
other parameters (attention, norms, embeddings, output layer) are the experts' weighted average
or the seed's. Llama and Mistral experts become ``MixtralForCausalLM``, Qwen2 and Qwen3 experts
``Qwen2MoeForCausalLM`` / ``Qwen3MoeForCausalLM``. The tensors are written in the layout
``save_pretrained`` writes (per-expert matrices; transformers fuses them on load), streamed one
at a time like merging. Routers start ``uniform`` (zeros), ``random`` or ``language``: row e of
layer l is the centred, unit-norm mean of what that router sees (the post-attention norm's
output) over held-out text in expert e's languages, run through expert e itself.
"""

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xelm_cli.bundle.fingerprint import is_weight_file
from xelm_cli.bundle.lineage import ancestors
from xelm_cli.bundle.merging import (
    average_tensor,
    check_mergeable,
    expert_paths,
    normalised,
    parse_weights,
)
from xelm_cli.bundle.store import Bundle, Progress, check_output, write_bundle
from xelm_cli.bundle.tensor_stream import (
    TensorInfo,
    TensorSource,
    dtype_code,
    element_size,
    plan_shards,
    write_sharded,
)
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import pretty_json, read_json_object
from xelm_cli.data.tokenizer_loading import document_encoding
from xelm_cli.ensemble.scoring import (
    Segment,
    default_batch_tokens,
    length_batches,
    pick_device,
    right_padded,
    without_cudnn_attention,
)

if TYPE_CHECKING:
    from xelm_cli.cluster.allocation import Allocation

GATES = ("language", "random", "uniform")
DEFAULT_TOP_K = 2
CALIBRATION_LIMIT = 50  # documents per language for --gate language
# tokens of a calibration document run (at most the model's context): a mean over tokens
# needs no long context, and one 128k-token document would need attention memory quadratic in it
CALIBRATION_TOKENS = 2048
_MLP = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$")


@dataclass(frozen=True)
class Family:
    """How one dense architecture maps onto its transformers MoE counterpart."""

    dense: tuple[str, ...]  # model_type values of the experts
    moe_type: str
    architecture: str
    expert_names: dict[str, str]  # dense projection -> name inside experts.E
    expert_prefix: str  # per layer, before the expert index
    router: str  # per layer
    extra_config: dict[str, Any]
    # Qwen2-MoE's always-on expert: one unit wide and all zero, so it adds nothing and, its
    # gradients being zero too, stays so under fine-tuning (a zero-wide one cannot be built
    # without torch warning that initialising it does nothing)
    shared_expert: bool = False

    def expert_tensor(self, layer: int, expert: int, projection: str) -> str:
        name = self.expert_names[projection]
        return f"model.layers.{layer}.{self.expert_prefix}.{expert}.{name}.weight"

    def router_tensor(self, layer: int) -> str:
        return f"model.layers.{layer}.{self.router}.weight"


_QWEN = dict(
    expert_names={"gate": "gate_proj", "up": "up_proj", "down": "down_proj"},
    expert_prefix="mlp.experts",
    router="mlp.gate",
)
FAMILIES = (
    Family(
        ("llama", "mistral"),
        "mixtral",
        "MixtralForCausalLM",
        {"gate": "w1", "up": "w3", "down": "w2"},
        "block_sparse_moe.experts",
        "block_sparse_moe.gate",
        {},
    ),
    Family(
        ("qwen2",),
        "qwen2_moe",
        "Qwen2MoeForCausalLM",
        extra_config={"shared_expert_intermediate_size": 1},
        shared_expert=True,
        **_QWEN,  # type: ignore[arg-type]
    ),
    Family(("qwen3",), "qwen3_moe", "Qwen3MoeForCausalLM", extra_config={}, **_QWEN),  # type: ignore[arg-type]
)
# dense config attributes an MoE config takes over as they are
_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "tie_word_embeddings",
    "rope_parameters",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "attention_dropout",
    "attention_bias",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def family_of(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.dense:
            return family
    supported = ", ".join(f"{'/'.join(f.dense)} -> {f.architecture}" for f in FAMILIES)
    raise UsageError(
        f"cannot build an MoE model from {model_type!r} experts; supported: {supported}"
    )


def require_no_bias(dense: Any, family: Family) -> None:
    """Refuse experts (of transformers config ``dense``) with bias terms ``family``'s MoE
    architecture lacks."""
    if getattr(dense, "mlp_bias", False) or (
        family.moe_type == "mixtral" and getattr(dense, "attention_bias", False)
    ):
        raise UsageError(
            f"{family.architecture} has no bias terms but these {dense.model_type} experts do"
        )


def moe_config(dense: Any, family: Family, k: int, top_k: int) -> Any:
    """The MoE config: the dense one's shared fields, expert size = the dense MLP's."""
    from transformers import AutoConfig

    require_no_bias(dense, family)
    fields = {name: getattr(dense, name) for name in _CONFIG_FIELDS if hasattr(dense, name)}
    if family.moe_type == "mixtral":
        fields.pop("attention_bias", None)
        moe = {"num_local_experts": k, "intermediate_size": dense.intermediate_size}
    else:
        moe = {
            "num_experts": k,
            "moe_intermediate_size": dense.intermediate_size,
            "intermediate_size": dense.intermediate_size,
            "norm_topk_prob": True,  # top-1 gives the chosen expert weight 1, as Mixtral does
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
        }
    config = AutoConfig.for_model(
        family.moe_type,
        **fields,
        **moe,
        **family.extra_config,
        num_experts_per_tok=top_k,
        output_router_logits=False,
    )
    config.architectures = [family.architecture]
    return config


def _moe_layout(
    family: Family, source: TensorSource, k: int, config: Any
) -> tuple[dict[str, TensorInfo], dict[str, tuple[int, str]]]:
    """The MoE's tensors (dtype and shape) and, for expert tensors, (expert, dense name)."""
    layout: dict[str, TensorInfo] = {}
    from_expert: dict[str, tuple[int, str]] = {}
    layers = set()
    for name, info in source.tensors.items():
        match = _MLP.match(name)
        if match is None:
            layout[name] = TensorInfo("", info.dtype, info.shape)
            continue
        layer, projection = int(match[1]), match[2]
        layers.add(layer)
        for expert in range(k):
            moe_name = family.expert_tensor(layer, expert, projection)
            layout[moe_name] = TensorInfo("", info.dtype, info.shape)
            from_expert[moe_name] = (expert, name)
    if layers != set(range(config.num_hidden_layers)):
        raise UsageError(
            f"{source.directory}: expected mlp.gate_proj/up_proj/down_proj in every layer"
        )
    dtype = source.tensors["model.embed_tokens.weight"].dtype
    hidden = config.hidden_size
    for layer in sorted(layers):
        layout[family.router_tensor(layer)] = TensorInfo("", dtype, (k, hidden))
        if family.shared_expert:
            base = f"model.layers.{layer}.mlp.shared_expert"
            layout[f"{base}.gate_proj.weight"] = TensorInfo("", dtype, (1, hidden))
            layout[f"{base}.up_proj.weight"] = TensorInfo("", dtype, (1, hidden))
            layout[f"{base}.down_proj.weight"] = TensorInfo("", dtype, (hidden, 1))
            layout[f"{base}_gate.weight"] = TensorInfo("", dtype, (1, hidden))
    return layout, from_expert


def _calibration_batches(
    tokenizer: Any, documents: Sequence[Any], cut: int, batch_tokens: int, prefix: int
) -> list[list[Segment]]:
    """The documents' tokens after the ``prefix`` token (as the model sees a document in
    training and scoring), each cut at ``cut``, in length-sorted batches of at most
    ``batch_tokens`` padded tokens (``Segment.sequence``: the document's index)."""
    ids = document_encoding(tokenizer, [document.text for document in documents]).ids
    segments = [Segment(i, 0, [prefix, *tokens][:cut], 0) for i, tokens in enumerate(ids) if tokens]
    return length_batches(segments, batch_tokens)


def _mean_router_inputs(
    bundle: Bundle,
    documents: Sequence[Any],
    layers: int,
    device: Any,
    progress: Progress | None = None,
) -> Any:
    """(layers, hidden), float64 on the CPU: the mean over the documents' tokens (each
    document cut at ``CALIBRATION_TOKENS`` or the model's context, whichever is shorter) of
    each layer's post-attention norm output, the model in its stored dtype on ``device``,
    the documents in length-sorted, right-padded batches as scoring batches them there
    (padding is not counted). ``progress`` is told the bytes of text each batch ran."""
    import torch

    model = bundle.load_model(verify=False).to(device).eval()
    cut = min(model.config.max_position_embeddings, CALIBRATION_TOKENS)
    tokenizer = bundle.load_tokenizer(verify=False)
    batches = _calibration_batches(
        tokenizer, documents, cut, default_batch_tokens(device), bundle.framing(tokenizer).prefix
    )
    # float64 sums stay where the norm outputs are, except on MPS, which has no float64
    sums_device = torch.device("cpu") if device.type == "mps" else device
    sums = torch.zeros(layers, model.config.hidden_size, dtype=torch.float64, device=sums_device)
    real: list[Any] = []  # the running batch's mask of real (unpadded) positions

    def keep(layer: int) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            sums[layer] += output[real[0]].to(sums_device).double().sum(dim=0)

        return hook

    norms = [block.post_attention_layernorm for block in model.model.layers]
    handles = [norm.register_forward_hook(keep(i)) for i, norm in enumerate(norms)]
    count = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                ids, mask = (tensor.to(device) for tensor in right_padded(batch))
                real[:] = [mask.bool()]
                with without_cudnn_attention():  # new shapes each batch
                    model.model(input_ids=ids, attention_mask=mask)  # the body: no logits needed
                count += sum(len(segment.tokens) for segment in batch)
                if progress is not None:
                    progress(sum(len(documents[s.sequence].text.encode()) for s in batch))
    finally:
        for handle in handles:
            handle.remove()
    if not count:
        raise UsageError(f"no calibration text in {bundle.languages} for {bundle.path}")
    return (sums / count).cpu()


def language_gates(
    bundles: Sequence[Bundle],
    calibration: str | Path,
    layers: int,
    limit: int,
    device: Any,
    progress: Progress | None = None,
    allocation: "Allocation | None" = None,
) -> Any:
    """(layers, k, hidden) router rows from each expert's own hidden states on held-out text
    (``calibration_documents``, on ``device``): per layer, the mean router input, centred over
    experts, unit norm."""
    import torch

    means = [
        _mean_router_inputs(bundle, documents, layers, device, progress)
        for bundle, documents in zip(
            bundles, calibration_documents(bundles, calibration, limit, allocation), strict=True
        )
    ]
    stacked = torch.stack(means, dim=1)  # (layers, k, hidden)
    centred = stacked - stacked.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def calibration_documents(
    bundles: Sequence[Bundle], calibration: str | Path, limit: int, allocation: "Allocation | None"
) -> list[list[Any]]:
    """Each expert's calibration documents: up to ``limit`` per language of its languages; with
    ``allocation`` (the one the experts were branched from), the first ``limit`` per language
    of all their languages, each expert keeping those the allocation's assigner sends to its
    cluster, as ``xelm data prepare --allocation`` sent it its training documents."""
    from xelm_cli.data.corpus import read_documents

    if allocation is None:
        return [read_documents(calibration, languages=b.languages, limit=limit) for b in bundles]
    from xelm_cli.cluster.assigning import assigned_experts, expert_documents

    cluster = expert_documents(allocation, 0)
    indices = [_expert_index(bundle, cluster.allocation) for bundle in bundles]
    languages = list(dict.fromkeys(x for b in bundles for x in b.languages))
    documents = read_documents(calibration, languages=languages, limit=limit)
    assigned = assigned_experts(
        cluster.assigner, [d.text for d in documents], [d.language for d in documents]
    )
    chosen = []
    for bundle, index in zip(bundles, indices, strict=True):
        own = [
            document
            for document, expert in zip(documents, assigned.tolist(), strict=True)
            if expert == index and document.language in bundle.languages
        ]
        if not own:
            raise UsageError(
                f"none of the {len(documents)} calibration documents goes to expert {index} "
                f"({bundle.name}) of {allocation.path}: raise --calibration-limit (now {limit} per "
                "language)"
            )
        chosen.append(own)
    return chosen


def _expert_index(bundle: Bundle, allocation: "Allocation") -> int:
    """Which expert of ``allocation`` ``bundle`` is, by its manifest's allocation reference;
    a bundle of no allocation, or of another, is refused."""
    reference = bundle.manifest.allocation or {}
    if reference.get("digest") != allocation.digest:
        held = "another allocation" if reference else "no allocation"
        raise UsageError(
            f"{bundle.path} is no expert of the allocation {allocation.path} (its manifest names "
            f"{held}): pass the allocation the experts were branched from, or drop --allocation"
        )
    return int(reference["expert"])


def _warn_shared_languages(bundles: Sequence[Bundle]) -> None:
    """Say on stderr when experts hold the same languages (a TF-IDF allocation's, which split
    documents, not languages): the language gate calibrates each on text of its languages, so
    theirs is the same text, and their gate rows differ by their weights alone."""
    held: dict[tuple[str, ...], list[str]] = {}
    for bundle in bundles:
        held.setdefault(tuple(sorted(bundle.languages)), []).append(bundle.name)
    shared = [names for names in held.values() if len(names) > 1]
    if shared:
        names = ", ".join(shared[0])
        sys.stderr.write(
            f"xelm: warning: experts {names} hold the same languages: --gate language "
            "calibrates them on the same text, so it tells them apart by their weights alone, "
            "not by what each was trained on; --allocation (the one they were branched from) "
            "calibrates each on the text its cluster gets\n"
        )


def build_moe(
    paths: str | Path | Sequence[str | Path],
    out: Path,
    *,
    top_k: int = DEFAULT_TOP_K,
    gate: str = "random",
    calibration: str | Path | None = None,
    calibration_limit: int = CALIBRATION_LIMIT,
    weights: Sequence[float] | str | None = None,
    shared_from: Path | None = None,
    seed: int = 0,
    device: str | None = None,
    allocation: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """Write ``out``: a transformers MoE bundle with one expert per bundle of ``paths`` (in
    order; a quoted glob such as ``"experts/*"`` is expanded). Non-expert weights: the
    experts' average (uniform, or ``weights``: numbers in the experts' order, or text as
    ``--weights`` takes it, ``0.7,0.3`` or ``NAME=1``), or those of ``shared_from``, an ancestor of
    every expert (the seed they were branched from). Mismatched experts and unsupported
    architectures are refused from manifests and configs, before any tensor is read.

    ``gate="language"`` runs each expert on ``device`` (None or ``auto``: CUDA if present,
    else the CPU) over up to ``calibration_limit`` documents per language of
    ``calibration``, each cut at ``CALIBRATION_TOKENS`` tokens; with ``allocation`` (the one
    the experts were branched from: a TF-IDF allocation's experts share languages), each
    expert runs those of the documents the allocation sends to its cluster
    (``calibration_documents``). ``progress`` is told the bytes hashed, the bytes of
    calibration text run and the bytes written."""
    import torch

    experts = expert_paths(paths)
    given = (shared_from, calibration, allocation)  # calibration may name a data source
    read = [*experts, *(Path(p) for p in given if p is not None and Path(p).exists())]
    check_output(out, overwrite=overwrite, inputs=read)  # before any input is read
    bundles = [Bundle.read(path) for path in experts]
    check_mergeable(bundles, "joined into one MoE model")
    _check_one_dtype(bundles)
    dense = bundles[0].load_config()
    family = family_of(dense.model_type)
    k = len(bundles)
    if not 1 <= top_k <= k:
        raise UsageError(f"--top-k must be between 1 and the number of experts ({k}), not {top_k}")
    if gate not in GATES:
        raise UsageError(f"unknown --gate {gate!r}; choose {', '.join(GATES)}")
    if calibration_limit < 1:
        raise UsageError(f"--calibration-limit must be at least 1 (got {calibration_limit})")
    if gate == "language" and calibration is None:
        raise UsageError("--gate language needs --calibration DATA (held-out labelled text)")
    alloc = None
    if allocation is not None:
        if gate != "language":
            raise UsageError("--allocation picks the calibration text of --gate language: drop it")
        from xelm_cli.cluster.allocation import read_allocation

        alloc = read_allocation(allocation)
        for bundle in bundles:
            _expert_index(bundle, alloc)
    elif gate == "language":
        _warn_shared_languages(bundles)
    if calibration is not None:
        from xelm_cli.data.corpus import require_source

        require_source(calibration, "--calibration data (held-out labelled text)")
    chosen_device = pick_device(device)
    config = moe_config(dense, family, k, top_k)
    if isinstance(weights, str):
        chosen = parse_weights(weights, bundles)
    else:
        chosen = normalised(weights, "weights") if weights else [1.0 / k] * k
    if len(chosen) != k:
        raise UsageError(f"{len(chosen)} weights for {k} experts")
    seed_bundle = None
    if shared_from is not None:
        if weights:  # the shared weights are the seed's: no average to weigh
            raise UsageError(
                "--weights weigh the experts' average of the shared weights, which --shared-from "
                "replaces by the seed's: give one of them"
            )
        seed_bundle = Bundle.read(shared_from)
        if any(seed_bundle.digest not in ancestors(b) for b in bundles):
            raise UsageError(
                f"{shared_from} is not an ancestor of every expert; pass the seed they were "
                "branched from"
            )
    for bundle in [*bundles, *([seed_bundle] if seed_bundle else [])]:
        bundle.check_files(progress=progress)
    sources = [TensorSource(b.path) for b in bundles]
    shared = TensorSource(seed_bundle.path) if seed_bundle else None
    layout, from_expert = _moe_layout(family, sources[0], k, config)

    if gate == "language":
        assert calibration is not None
        rows = language_gates(
            bundles,
            calibration,
            config.num_hidden_layers,
            calibration_limit,
            chosen_device,
            progress,
            alloc,
        )
    elif gate == "random":
        generator = torch.Generator().manual_seed(seed)
        shape = (config.num_hidden_layers, k, config.hidden_size)
        rows = torch.randn(shape, generator=generator) * config.initializer_range
    else:
        rows = torch.zeros(config.num_hidden_layers, k, config.hidden_size)
    routers = {family.router_tensor(i): i for i in range(config.num_hidden_layers)}

    def produce(name: str) -> Any:
        info = layout[name]
        if name in from_expert:
            expert, dense_name = from_expert[name]
            return sources[expert].get(dense_name).to(_dtype(info.dtype))
        if name in routers:
            return rows[routers[name]].to(_dtype(info.dtype)).contiguous()
        if name.startswith("model.layers.") and ".mlp.shared_expert" in name:
            return torch.zeros(info.shape, dtype=_dtype(info.dtype))
        if shared is not None:
            return shared.get(name).to(_dtype(info.dtype))
        return average_tensor(sources, chosen, name)

    step: dict[str, Any] = {
        "relation": "merge",
        "method": "moe",
        "parents": [b.ref for b in bundles],
        "top_k": top_k,
        "gate": gate,
    }
    if alloc is not None:
        step["gate_allocation"] = alloc.digest
    if seed_bundle is not None:
        step["shared_from"] = seed_bundle.ref
    else:
        step["weights"] = chosen
    languages = list(dict.fromkeys(x for b in bundles for x in b.languages))
    with write_bundle(
        out,
        role="dense",
        languages=languages,
        parent=bundles[0],
        step=step,
        overwrite=overwrite,
        progress=progress,
    ) as writer:
        writer.remove(lambda n: is_weight_file(n) or n == "config.json")
        config.save_pretrained(writer.directory)
        size = element_size(layout[family.router_tensor(0)].dtype)
        if (config.hidden_size * size) % 16 or (dense.intermediate_size * size) % 16:
            # transformers' default MoE kernel (grouped_mm) needs rows of 16-byte multiples;
            # the key is read on load (transformers does not write it back when re-saving)
            _set_config(writer.directory, experts_implementation="eager")
        writer.record_written(
            write_sharded(writer.directory, plan_shards(layout), produce, progress)
        )
    assert writer.result is not None
    return writer.result


def _set_config(directory: Path, **values: Any) -> None:
    path = directory / "config.json"
    config = read_json_object(path, "model config")
    path.write_bytes(pretty_json({**config, **values}))


def _check_one_dtype(bundles: Sequence[Bundle]) -> None:
    """Refuse experts stored in different dtypes: the MoE holds their MLPs bit for bit, in one
    dtype (spec/bundle-v1.md 3.2.2), which would round the wider ones."""
    dtypes = {bundle.name: bundle.weights_dtype() for bundle in bundles}
    if len(set(dtypes.values())) > 1:
        shown = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise UsageError(
            f"the experts are stored in different dtypes ({shown}): an MoE keeps their MLPs "
            "bit for bit in one dtype; train them to one (xelm train --save-dtype)"
        )


def _dtype(code: str) -> Any:
    import torch

    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        if dtype_code(dtype) == code:
            return dtype
    raise UsageError(f"cannot build an MoE model from {code} weights")
