"""Seed bundles: from a Hugging Face model, or a named Llama-style config initialised at random."""

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xelm_cli.bundle.framing import Framing, bos_eos, from_tokenizer, overridden
from xelm_cli.bundle.store import (
    Bundle,
    Progress,
    load_causal_lm,
    loading_problem,
    probe_ids,
    write_bundle,
)
from xelm_cli.common.errors import UsageError, exception_line
from xelm_cli.common.hub import hub_unreachable
from xelm_cli.lang.codes import language_codes

PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
NEEDED = "xelm needs a decoder-only causal LM (GPT-2, Llama, XGLM, ...)"

# Llama-style decoders small enough to pre-train from scratch on a laptop (tiny) or one GPU
# (small); the vocabulary comes from the tokenizer.
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
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
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise UsageError(f"tokenizer directory not found: {path}")
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
    """The pickled weights file of a local model directory that has no safetensors: the shard
    index when there is one (it names the shards), else ``pytorch_model.bin``; None otherwise."""
    path = Path(model_id)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    return next((name for name in PICKLED_WEIGHTS[::-1] if (path / name).is_file()), None)


def _refuse_non_causal_lm(
    model_id: str, revision: str | None, trust_remote_code: bool, cached: bool
) -> None:
    """Refuse, from its config, a checkpoint that is not a decoder-only causal LM: an
    encoder-decoder (BART: as a causal LM transformers would load its decoder alone, without
    the encoder it was trained with; T5), or a model type with no causal-LM class."""
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


def _load_hf_model(
    model_id: str,
    revision: str | None,
    trust_remote_code: bool,
    pickled: str | None,
    cached: bool,
) -> Any:
    """The model, refused when the checkpoint's weights do not fit its causal-LM class
    (transformers would fill in the missing ones at random and drop the others)."""
    model, info = load_causal_lm(
        model_id,
        revision=revision,
        use_safetensors=pickled is None,
        weights_only=True,  # for pickles: torch's loader that runs no code from the file
        dtype="auto",
        trust_remote_code=trust_remote_code,
        local_files_only=cached,
    )
    problem = loading_problem(info)
    if problem:
        raise UsageError(
            f"cannot use {model_id!r} as a seed: its weights do not fit "
            f"{type(model).__name__}: {problem}; {NEEDED} with all its weights"
        )
    return model


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

    Weights are read from safetensors and written back in the dtype they were stored in.
    A model that ships only pickled weights (``pytorch_model.bin``) is refused unless
    ``convert_pickle``: then they are read once with torch's ``weights_only`` loader (which
    runs no code from the file) and the bundle holds safetensors; the init step records it.
    Documents are framed as the model's tokenizer frames text (xelm_cli.bundle.framing), unless
    ``doc_start``/``doc_end`` name other tokens.
    """
    from transformers import AutoTokenizer

    model_id = str(model_id)

    local = Path(model_id).is_dir()
    pickled = pickled_only(model_id)
    if pickled and not convert_pickle:
        raise UsageError(
            f"{model_id} has only pickled weights ({pickled}); pass --convert-pickle "
            "to convert them once to safetensors with torch's weights_only loader"
        )
    cached = not local and _cached_only(model_id, revision)
    try:
        _refuse_non_causal_lm(model_id, revision, trust_remote_code, cached)
        try:
            model = _load_hf_model(model_id, revision, trust_remote_code, pickled, cached)
        except OSError:
            if local or not convert_pickle:
                raise
            pickled = PICKLED_WEIGHTS[0]  # a Hub model without safetensors: pickles, on request
            model = _load_hf_model(model_id, revision, trust_remote_code, pickled, cached)
        tokenizer = AutoTokenizer.from_pretrained(
            model_id,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=cached,
        )
    except pickle.UnpicklingError as exc:
        found = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        why = found[0].split(". ")[0] if found else exception_line(exc)
        raise UsageError(
            f"cannot load model {model_id!r}: its pickled weights hold more than tensors "
            f"({why}); torch's weights_only loader refuses them and xelm never runs such code"
        ) from None
    except (OSError, ValueError) as exc:
        reason = exception_line(exc)
        hint = "" if local else " (is it a local directory, or is the Hub reachable?)"
        if not local and ".bin" in reason and not convert_pickle:
            hint = " (pickled weights only? pass --convert-pickle)"
        raise UsageError(f"cannot load model {model_id!r}: {reason}{hint}") from None
    if _sees_later_tokens(model):
        raise UsageError(
            f"cannot use {model_id!r} as a seed: its predictions change when a later token "
            f"changes (bidirectional attention, as in a masked LM such as BERT); {NEEDED}"
        )
    source: dict[str, Any] = {
        "kind": "hf",
        "model": str(Path(model_id).resolve()) if local else model_id,
        "hub": not local,
        "revision": revision,
    }
    if pickled:
        source["converted"] = {"from": pickled, "loader": "torch.load(weights_only)"}
    framing = overridden(from_tokenizer(tokenizer), tokenizer, doc_start, doc_end)
    return _write_seed(
        Path(out), model, tokenizer, source, language_codes(languages) or (), overwrite,
        progress, framing,
    )  # fmt: skip
