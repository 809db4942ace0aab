"""Seed bundles: from a Hugging Face model, or a named Llama-style config initialised at random."""

from pathlib import Path
from typing import Any

from .bundle import Bundle, Progress, write_bundle
from .errors import UsageError

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
        raise UsageError(
            f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}"
        ) from None


def _write_seed(
    out: Path,
    model: Any,
    tokenizer: Any,
    source: dict[str, Any],
    languages: list[str],
    overwrite: bool,
    progress: Progress | None,
) -> Bundle:
    step = {"relation": "init", "parents": [], "source": source}
    with write_bundle(
        out, role="seed", languages=languages, overwrite=overwrite, step=step, progress=progress
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
    tokenizer_dir: Path,
    out: Path,
    *,
    languages: list[str],
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """A randomly initialised seed bundle with the named architecture and the given tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = _load_tokenizer(tokenizer_dir)
    config = config_for(config_name, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    source = {"kind": "config", "name": config_name, "seed": seed}
    return _write_seed(out, model, tokenizer, source, languages, overwrite, progress)


def init_from_hf(
    model_id: str,
    out: Path,
    *,
    languages: list[str],
    revision: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Bundle:
    """A seed bundle from a local Hugging Face model directory or a Hub id.

    Weights are read from safetensors only (no pickled checkpoints) and written back in the
    dtype they were stored in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(model_id).is_dir()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_id,
            revision=revision,
            use_safetensors=True,
            dtype="auto",
            trust_remote_code=trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            model_id, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        hint = "" if local else " (is it a local directory, or is the Hub reachable?)"
        raise UsageError(
            f"cannot load model {model_id!r}: {str(exc).splitlines()[0]}{hint}"
        ) from None
    source = {
        "kind": "hf",
        "model": str(Path(model_id).resolve()) if local else model_id,
        "hub": not local,
        "revision": revision,
    }
    return _write_seed(out, model, tokenizer, source, languages, overwrite, progress)
