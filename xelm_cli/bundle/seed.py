"""Seed bundles: from a Hugging Face model, or a named Llama-style config initialised at random."""

import json
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xelm_cli.bundle.fingerprint import reading_safetensors
from xelm_cli.bundle.framing import Framing, bos_eos, from_tokenizer, overridden
from xelm_cli.bundle.store import (
    SAFETENSORS_DTYPES,
    Bundle,
    Progress,
    load_causal_lm,
    loading_problem,
    most_elements,
    probe_ids,
    safetensors_floats,
    write_bundle,
)
from xelm_cli.common.errors import UsageError, exception_line
from xelm_cli.common.hub import hub_unreachable
from xelm_cli.common.recognise import what_path_is
from xelm_cli.lang.codes import language_codes

# the weights files transformers looks for, in the order it looks for them; an index names shards
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# files that may hold weights, named when a model has none that transformers reads
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".gguf")
# buffers older transformers classes saved with the weights and the current ones compute
# themselves (GPT-2's and GPT-Neo's attention masked_bias): constants, not weights
LEFTOVER_BUFFERS = ("masked_bias",)
NEEDED = "xelm needs a decoder-only causal LM (GPT-2, Llama, XGLM, ...)"
REMOTE_CODE = (
    "it runs its own Python code (its config's auto_map), which xelm runs only when you pass "
    "--trust-remote-code: the code is then copied into the bundle, and loading its bundles on "
    "this machine runs it"
)

# Llama-style decoders small enough to pre-train from scratch on a laptop (tiny) or one GPU
# (small); the vocabulary comes from the tokenizer.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,  # xelm train's default --block-size (rotary: no weights)
    ),
    "small": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=2048,
    ),
}


def _load_tokenizer(path: Path) -> Any:
    """The tokenizer in ``path`` (a tokenizer directory or a bundle), refused in one line as
    ``xelm data prepare`` refuses it (the same check: the seed's shards are prepared with it)."""
    from transformers import AutoTokenizer

    from xelm_cli.data.tokenizer_loading import load_tokenizer

    load_tokenizer(path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {path}: {exception_line(exc)}") from None


def _write_seed(
    out: Path,
    model: Any,
    tokenizer: Any,
    source: dict[str, Any],
    languages: Sequence[str],
    overwrite: bool,
    progress: Progress | None,
    framing: Framing,
) -> Bundle:
    step = {"relation": "init", "parents": [], "source": source}
    with write_bundle(
        out,
        role="seed",
        languages=list(languages),
        overwrite=overwrite,
        step=step,
        progress=progress,
        framing=framing,
    ) as writer:
        writer.save_model(model)
        writer.save_tokenizer(tokenizer)
    assert writer.result is not None
    return writer.result


def config_for(name: str, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    if name not in NAMED_CONFIGS:
        raise UsageError(f"unknown config {name!r}; choose one of: {', '.join(NAMED_CONFIGS)}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **NAMED_CONFIGS[name],
    )


def init_from_config(
    config_name: str,
    tokenizer_dir: str | Path,
    out: str | Path,
    *,
    languages: Sequence[str] | str,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
    doc_start: str | None = None,
    doc_end: str | None = None,
) -> Bundle:
    """A randomly initialised seed bundle with the named architecture and the given tokenizer,
    framing documents as ``bos doc eos`` (or with the ``doc_start``/``doc_end`` tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = _load_tokenizer(Path(tokenizer_dir))
    config = config_for(config_name, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    source = {"kind": "config", "name": config_name, "seed": seed}
    framing = overridden(bos_eos(tokenizer), tokenizer, doc_start, doc_end)
    return _write_seed(
        Path(out), model, tokenizer, source, language_codes(languages) or (), overwrite,
        progress, framing,
    )  # fmt: skip


def pickled_only(model_id: str) -> str | None:
    """The pickled weights file transformers reads from a local model directory that has no
    safetensors weights it reads (``pytorch_model.bin``, else the shard index
    ``pytorch_model.bin.index.json`` that names the shards); None otherwise. Other
    ``*.safetensors`` (Mistral's consolidated.safetensors, a PEFT adapter) are not its weights."""
    path = Path(model_id)
    if not path.is_dir() or any((path / name).is_file() for name in SAFETENSORS_WEIGHTS):
        return None
    return next((name for name in PICKLED_WEIGHTS if (path / name).is_file()), None)


@dataclass(frozen=True)
class _Weights:
    """The weights a seed is read from: ``name`` is the file transformers reads (a weights file
    or the index that names the shards), ``files`` the weights files themselves."""

    name: str
    files: tuple[Path, ...]

    @property
    def pickled(self) -> bool:
        return self.name in PICKLED_WEIGHTS


class _NotCached(OSError):
    """The Hub cannot be asked whether a model has a file, and the cache does not know."""


def _model_file(model_id: str, name: str, revision: str | None, cached: bool) -> Path | None:
    """The file ``name`` of a local model directory or a Hub model (downloaded into the Hugging
    Face cache, where transformers then finds it), or None when the model has no such file: the
    directory has none, or the Hub answered that it has none. When the Hub cannot be asked
    (``cached``, or HF_HUB_OFFLINE), the cache answers: the file, or the Hub's earlier answer
    that there is no such file, else _NotCached. A Hub that does not answer is an OSError,
    never a missing file."""
    directory = Path(model_id)
    if directory.is_dir():
        return directory / name if (directory / name).is_file() else None
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if cached or constants.HF_HUB_OFFLINE:
        found = try_to_load_from_cache(model_id, name, revision=revision)
        if isinstance(found, str):
            return Path(found)
        if found is None:
            raise _NotCached(f"{model_id}: {name} is not in the Hugging Face cache")
        return None  # the cache remembers the Hub's answer: no such file
    try:
        return Path(hf_hub_download(model_id, name, revision=revision))
    except LocalEntryNotFoundError:  # the Hub did not answer and nothing is cached: an OSError
        raise
    except EntryNotFoundError:  # the Hub answered: no such file
        return None
    except OSError:
        raise
    except Exception as exc:  # a proxy or TLS failure, as one line
        raise OSError(exception_line(exc)) from None


def _find_weights(model_id: str, revision: str | None, cached: bool) -> _Weights | None:
    """The weights transformers would read, looked for in its order (safetensors, then pickles;
    a single file, then an index), with the shards an index names; None when there are none
    of these. Only these names count (other ``*.safetensors`` are not read). Pickles are looked
    for only when the model has no safetensors weights: a local directory without them, a Hub
    that answered so (or whose answer the cache remembers), never a Hub that could not be
    asked."""
    unknown: list[str] = []  # offline, transformers reads what the cache has, in this order
    for name in SAFETENSORS_WEIGHTS + PICKLED_WEIGHTS:
        if name == PICKLED_WEIGHTS[0] and unknown:
            raise OSError(
                f"cannot tell whether {model_id} has safetensors weights: the Hub cannot be "
                f"asked and the Hugging Face cache does not know ({unknown[0]})"
            )
        try:
            found = _model_file(model_id, name, revision, cached)
        except _NotCached:
            unknown.append(name)
            continue
        if found is None:
            continue
        if not name.endswith(".index.json"):
            return _Weights(name, (found,))
        index = json.loads(found.read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        files = [_model_file(model_id, shard, revision, cached) for shard in shards]
        missing = [shard for shard, file in zip(shards, files, strict=True) if file is None]
        if missing:
            raise OSError(f"{model_id}: {name} names {missing[0]}, which it does not have")
        return _Weights(name, tuple(file for file in files if file is not None))
    return None


@dataclass(frozen=True)
class _Stored:
    """A floating tensor of a checkpoint: its dtype (``bfloat16``), elements and file."""

    dtype: str
    elements: int
    file: Path


def _stored_tensors(weights: _Weights) -> dict[str, _Stored]:
    """The floating tensors of the weights by name: from the safetensors headers, or for
    pickles from the tensors torch's ``weights_only`` loader reads (onto the meta device: no
    data)."""
    stored: dict[str, _Stored] = {}
    for file in weights.files:
        found = _pickled_floats(file) if weights.pickled else safetensors_floats(file)
        stored |= {name: _Stored(dtype, n, file) for name, (dtype, n) in found.items()}
    return stored


def _pickled_floats(file: Path) -> dict[str, tuple[str, int]]:
    import torch

    state = torch.load(file, map_location="meta", weights_only=True)
    found = {}
    for name, tensor in state.items() if isinstance(state, dict) else []:
        dtype = str(getattr(tensor, "dtype", "")).removeprefix("torch.")
        if isinstance(tensor, torch.Tensor) and dtype in SAFETENSORS_DTYPES.values():
            found[str(name)] = (dtype, tensor.numel())
    return found


def _most_stored(stored: dict[str, _Stored]) -> str | None:
    """The floating dtype most of the stored elements have; None when none is floating."""
    elements: Counter[str] = Counter()
    for tensor in stored.values():
        elements[tensor.dtype] += tensor.elements
    return most_elements(dict(elements))


def _keep_stored_dtypes(model: Any, stored: dict[str, _Stored], pickled: bool) -> None:
    """Give each tensor of ``model`` loaded in another dtype than the checkpoint stores it in
    (fp32 norms of a bf16 checkpoint, loaded in bf16) its stored tensor, bit for bit. Tensors
    are matched by name, with or without the base model's prefix (``transformer.``); one that
    transformers converts on loading (fused into another tensor) has no such name."""
    state = model.state_dict(keep_vars=True)  # the parameters and buffers themselves
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    differ: dict[str, str] = {}  # checkpoint name -> model name
    for name, kept in stored.items():
        target = next((n for n in _names_in_model(name, prefix) if n in state), None)
        if target is None or state[target].numel() != kept.elements:
            continue
        if str(state[target].dtype).removeprefix("torch.") != kept.dtype:
            differ[name] = target
    for file in sorted({stored[name].file for name in differ}):
        names = [name for name in differ if stored[name].file == file]
        for name, tensor in _read_tensors(file, names, pickled).items():
            state[differ[name]].data = tensor.to(state[differ[name]].device)


def _names_in_model(name: str, prefix: str) -> list[str]:
    """Where a checkpoint's tensor ``name`` may be in the model: as it is, or with the base
    model's prefix added or taken away (as transformers matches them)."""
    if not prefix:
        return [name]
    return [name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]


def _read_tensors(file: Path, names: list[str], pickled: bool) -> dict[str, Any]:
    """The tensors ``names`` of one weights file, as stored."""
    import torch

    if not pickled:
        from safetensors import safe_open

        with reading_safetensors(file), safe_open(str(file), framework="pt") as f:
            return {name: f.get_tensor(name) for name in names}
    try:  # mapped, not read whole: only a few of its tensors are wanted
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (not zip) format cannot be mapped
        state = torch.load(file, map_location="cpu", weights_only=True)
    return {name: state[name].clone() for name in names}


def _dtype_record(stored: dict[str, _Stored], dtype: str | None, config: Any) -> dict[str, Any]:
    """What ``source.dtype`` records (spec 1.2): the dtype most weights are stored in, with the
    config's when it names another, and the tensors of each dtype when there are several;
    empty when there is nothing to record."""
    record: dict[str, Any] = {}
    said = getattr(config, "dtype", None)
    said = str(said).removeprefix("torch.") if said is not None else None
    if dtype is not None and said is not None and said != dtype:
        record["config"] = said  # the bundle keeps the stored one
    tensors = Counter(tensor.dtype for tensor in stored.values())
    if len(tensors) > 1:
        record["tensors"] = dict(sorted(tensors.items()))  # each kept in its own
    return {"stored": dtype, **record} if record else {}


def _refuse_non_causal_lm(
    model_id: str, revision: str | None, trust_remote_code: bool, cached: bool
) -> Any:
    """Refuse, from its config, a checkpoint that is not a decoder-only causal LM: an
    encoder-decoder (BART: as a causal LM transformers would load its decoder alone, without
    the encoder it was trained with; T5), or a model type with no causal-LM class. Returns
    the config."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    config = AutoConfig.from_pretrained(
        model_id, revision=revision, trust_remote_code=trust_remote_code, local_files_only=cached
    )
    if getattr(config, "is_encoder_decoder", False):
        raise UsageError(
            f"cannot use {model_id!r} as a seed: it is an encoder-decoder model "
            f"({config.model_type}); {NEEDED}"
        )
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not remote:
        raise UsageError(
            f"cannot use {model_id!r} as a seed: it is not a causal LM (transformers has no "
            f"causal-LM class for {config.model_type}); {NEEDED}"
        )
    return config


def _load_hf_model(
    model_id: str,
    revision: str | None,
    trust_remote_code: bool,
    pickled: bool,
    cached: bool,
    dtype: str | None,
) -> tuple[Any, list[str]]:
    """The model in ``dtype`` (the one most of its weights are stored in; transformers' ``auto``
    would take the config's ``dtype`` first) and the buffers of the checkpoint it dropped
    (``_leftover_buffers``), refused when the checkpoint's weights do not fit its causal-LM
    class (transformers would fill in the missing ones at random and drop the others)."""
    model, info = load_causal_lm(
        model_id,
        revision=revision,
        use_safetensors=not pickled,
        weights_only=True,  # for pickles: torch's loader that runs no code from the file
        dtype=dtype or "auto",
        trust_remote_code=trust_remote_code,
        local_files_only=cached,
    )
    dropped = _leftover_buffers(model, info.get("unexpected_keys") or ())
    unexpected = [key for key in info.get("unexpected_keys") or () if key not in dropped]
    problem = loading_problem({**info, "unexpected_keys": unexpected})
    if problem:
        raise UsageError(
            f"cannot use {model_id!r} as a seed: its weights do not fit "
            f"{type(model).__name__}: {problem}; {NEEDED} with all its weights"
        )
    return model, dropped


def _leftover_buffers(model: Any, unexpected: Any) -> list[str]:
    """The checkpoint's tensors ``model`` did not take that are buffers its class computes
    itself, not weights: a buffer of the model (non-persistent ones included: GPT-Neo's
    ``attn.attention.bias``), or one that older classes saved (``LEFTOVER_BUFFERS``)."""
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    buffers = {name for name, _ in model.named_buffers()}
    return sorted(
        str(key)
        for key in unexpected
        if str(key).rpartition(".")[2] in LEFTOVER_BUFFERS
        or any(name in buffers for name in _names_in_model(str(key), prefix))
    )


def _sees_later_tokens(model: Any) -> bool:
    """Whether ``model``'s logits at a position change when only a later token changes: its
    attention is not causal (a masked LM such as BERT loads as a causal-LM class with
    bidirectional attention, and ``config.is_decoder`` is false for decoder-only models too)."""
    import torch

    ids = probe_ids(model)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % model.config.vocab_size
    with torch.no_grad():
        before, after = (model(input_ids=x).logits[0, :-1].float() for x in (ids, changed))
    # causal attention leaves them as they were, to the bit on the CPU; a leak in a tiny
    # random model is ~1e-3 of its logits
    return not torch.allclose(before, after, rtol=1e-5, atol=1e-6)


def _cached_only(model_id: str, revision: str | None) -> bool:
    """Whether a Hub model must be read from the local Hugging Face cache alone: the Hub does
    not answer (asked once, quickly) but the model's config is cached. Refused at once when it
    is not, rather than after the Hub client's retries. With HF_HUB_OFFLINE transformers
    reads the cache by itself."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except HFValidationError:
        return False  # not a Hub id either: loading it says so
    why = hub_unreachable()
    if why is None:
        return False
    if not isinstance(cached, str):
        raise UsageError(
            f"cannot reach the Hugging Face Hub for {model_id}: {why} (offline? run the same "
            "command again with network access, or pass a local model directory)"
        )
    return True


def init_from_hf(
    model_id: str | Path,
    out: str | Path,
    *,
    languages: Sequence[str] | str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    doc_start: str | None = None,
    doc_end: str | None = None,
    convert_pickle: bool = False,
) -> Bundle:
    """A seed bundle from a local Hugging Face model directory or a Hub id.

    Weights are read from safetensors and written back in the dtype they were stored in (read
    from the files, not from the config's ``dtype``; the init step records a config that said
    otherwise). A model that ships only pickled weights (``pytorch_model.bin``, or sharded with
    its index) is refused unless ``convert_pickle``: then they are read once with torch's
    ``weights_only`` loader (which runs no code from the file) and the bundle holds
    safetensors; the init step records the file read. A model that runs its own code is
    refused unless ``trust_remote_code``: then the code is copied into the bundle, the init
    step records it and this machine trusts that code (Bundle.trust_code), so its bundles load.
    Documents are framed as the model's tokenizer frames text (xelm_cli.bundle.framing), unless
    ``doc_start``/``doc_end`` name other tokens.
    """
    from transformers import AutoTokenizer

    model_id = _local_model_or_hub_id(str(model_id))

    local = Path(model_id).is_dir()
    pickled = pickled_only(model_id)
    if pickled and not convert_pickle:
        raise UsageError(_pickled_refusal(model_id, pickled))
    cached = not local and _cached_only(model_id, revision)
    try:
        config = _refuse_non_causal_lm(model_id, revision, trust_remote_code, cached)
        weights = _find_weights(model_id, revision, cached)
        if weights is None:
            raise UsageError(_no_weights_refusal(model_id))
        if weights.pickled and not convert_pickle:
            raise UsageError(_pickled_refusal(model_id, weights.name))  # a Hub model
        stored = _stored_tensors(weights)
        dtype = _most_stored(stored)
        model, dropped = _load_hf_model(
            model_id, revision, trust_remote_code, weights.pickled, cached, dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(
            model_id,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=cached,
        )
    except pickle.UnpicklingError as exc:
        # torch names the global in a line of its own, "Unsupported global: GLOBAL ..." or, for
        # a blocked module, "Trying to load unsupported GLOBAL ..."
        found = [
            line.strip() for line in str(exc).splitlines() if "unsupported global" in line.lower()
        ]
        why = found[0].split(". ")[0] if found else exception_line(exc)
        raise UsageError(
            f"cannot load model {model_id!r}: its pickled weights hold more than tensors "
            f"({why}); torch's weights_only loader refuses them and xelm never runs such code"
        ) from None
    except (OSError, ValueError) as exc:
        if not trust_remote_code and "custom code" in str(exc):
            raise UsageError(f"cannot use {model_id!r} as a seed: {REMOTE_CODE}") from None
        hint = "" if local else " (is it a local directory, or is the Hub reachable?)"
        raise UsageError(f"cannot load model {model_id!r}: {exception_line(exc)}{hint}") from None
    _check_tokenizer(model_id, model, tokenizer)
    if _sees_later_tokens(model):
        raise UsageError(
            f"cannot use {model_id!r} as a seed: its predictions change when a later token "
            f"changes (bidirectional attention, as in a masked LM such as BERT); {NEEDED}"
        )
    framing = overridden(from_tokenizer(tokenizer), tokenizer, doc_start, doc_end)
    _keep_stored_dtypes(model, stored, weights.pickled)  # after the probe: one dtype computes
    source: dict[str, Any] = {
        "kind": "hf",
        "model": str(Path(model_id).resolve()) if local else model_id,
        "hub": not local,
        "revision": revision,
    }
    if weights.pickled:
        source["converted"] = {"from": weights.name, "loader": "torch.load(weights_only)"}
    if record := _dtype_record(stored, dtype, config):
        source["dtype"] = record
    if dropped:
        source["dropped"] = dropped  # buffers its class computes itself, not weights
    own_code = _runs_own_code(model, model.config, tokenizer)
    if own_code:
        source["trust_remote_code"] = True
    bundle = _write_seed(
        Path(out), model, tokenizer, source, language_codes(languages) or (), overwrite,
        progress, framing,
    )  # fmt: skip
    if own_code:
        bundle.trust_code()  # the user asked for it: its bundles may run this code, here
    return bundle


def _looks_like_path(model_id: str) -> bool:
    """Whether ``model_id`` can only mean a local path: it exists, starts with ``.``, ``/`` or
    ``~``, ends with a separator, or has more separators than a Hub id's one (``owner/name``)."""
    separators = [os.sep, *([os.altsep] if os.altsep else [])]
    return (
        os.path.lexists(model_id)
        or model_id.startswith((".", "~", *separators))
        or model_id.endswith(tuple(separators))
        or sum(model_id.count(sep) for sep in separators) > 1
        or (os.altsep is not None and os.sep in model_id)  # a Hub id has no backslash
    )


def _local_model_or_hub_id(model_id: str) -> str:
    """``model_id`` checked before anything is loaded: a Hub id as it is; a path (``~``
    expanded) that must be a model directory, refused in one line otherwise (neither a Hub
    validation error nor a missing ``model_type`` key of a folder of other things)."""
    if not _looks_like_path(model_id):
        return model_id
    path = Path(model_id).expanduser()
    way_out = "pass a Hugging Face model directory (with config.json) or a Hub id (owner/name)"
    if not path.exists():
        raise UsageError(f"model directory not found: {model_id}; {way_out}")
    if not path.is_dir():
        raise UsageError(f"{model_id} is a file, not a model directory; {way_out}")
    if not (path / "config.json").is_file():
        what = what_path_is(path)
        held = f"; it is {what}" if what else ""
        raise UsageError(f"{model_id} is not a model directory (no config.json{held}); {way_out}")
    return str(path)


def _pickled_refusal(model_id: str, pickled: str) -> str:
    return (
        f"{model_id} has only pickled weights ({pickled}); pass --convert-pickle "
        "to convert them once to safetensors with torch's weights_only loader"
    )


def _no_weights_refusal(model_id: str) -> str:
    """Why a model with none of the weights files transformers reads cannot be a seed: what
    was looked for, and in a local directory the files that may hold weights in other forms."""
    directory = Path(model_id)
    found = (
        sorted(f.name for f in directory.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
        if directory.is_dir()
        else []
    )
    held = f"it holds {', '.join(found[:5])}" if found else "it holds no weights files"
    return (
        f"cannot use {model_id!r} as a seed: it has none of the weights files transformers reads "
        f"({', '.join(SAFETENSORS_WEIGHTS)}, or with --convert-pickle "
        f"{', '.join(PICKLED_WEIGHTS)}); {held if directory.is_dir() else 'the Hub has none'}; "
        "save the model with transformers' save_pretrained and pass that directory"
    )


def _token_ids(tokenizer: Any) -> int:
    """How many token ids ``tokenizer`` may give: its length, or its largest id + 1 (ids need
    not be dense; added and special tokens included), as ``xelm data prepare`` counts them."""
    ids = [*tokenizer.get_vocab().values(), *tokenizer.all_special_ids]
    return max(len(tokenizer), max((i for i in ids if isinstance(i, int)), default=-1) + 1)


def _check_tokenizer(model_id: str, model: Any, tokenizer: Any) -> None:
    """Refuse a tokenizer ``xelm data prepare`` would refuse (no fast, Rust, version), or one
    that gives ids the model has no input embedding for (another model's tokenizer); a smaller
    one (a padded embedding matrix) is fine."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            f"cannot use {model_id!r} as a seed: its tokenizer ({type(tokenizer).__name__}) has "
            "no fast (Rust) version, which `xelm data prepare` needs; convert it first (save a "
            "tokenizer.json beside it, e.g. with transformers' convert_slow_tokenizer)"
        )
    try:
        rows = int(model.get_input_embeddings().weight.shape[0])
    except (AttributeError, NotImplementedError):
        return  # a model of its own code that does not say: training checks the ids
    ids = _token_ids(tokenizer)
    if ids > rows:
        raise UsageError(
            f"cannot use {model_id!r} as a seed: its tokenizer gives {ids} token ids but the "
            f"model's input embeddings have {rows} rows; use the tokenizer that belongs to this "
            f"model, or resize the embeddings first (resize_token_embeddings({ids}), then "
            "save_pretrained)"
        )


def _runs_own_code(*loaded: Any) -> bool:
    """Whether any of these objects comes from a model's own code (transformers imports it as
    ``transformers_modules.*`` when ``trust_remote_code`` lets it)."""
    return any(type(obj).__module__.split(".")[0] == "transformers_modules" for obj in loaded)
