"""Fingerprints that decide whether bundles can be ensembled together.

Architecture: the model type plus every tensor's name and shape, read from the safetensors
headers (dtype is left out: an fp32 and a bf16 copy of one expert are the same architecture).
Tokenizer: the tokenizer's content, independent of JSON formatting and of the
``tokenizer_config.json`` that different transformers versions write differently.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from xelm_cli.common.digest import sha256_bytes
from xelm_cli.common.errors import FormatError, exception_line
from xelm_cli.common.jsonio import canonical_json, read_json_object

# Files whose bytes define a tokenizer's behaviour (besides tokenizer.json).
TOKENIZER_VOCAB_FILES = (
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    *TOKENIZER_VOCAB_FILES,
)


def is_weight_file(name: str) -> bool:
    return name.endswith(".safetensors") or name == "model.safetensors.index.json"


@contextlib.contextmanager
def reading_safetensors(label: str | Path) -> Iterator[None]:
    """Turn what the safetensors reader raises on a malformed file into one FormatError line
    that names the file as ``label``."""
    try:
        yield
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        reason = exception_line(exc, 200)
        raise FormatError(f"{label}: not a readable safetensors file ({reason})") from None


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    with reading_safetensors(path.name), safe_open(str(path), framework="numpy") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


def architecture_fingerprint(directory: Path) -> str:
    config = read_json_object(directory / "config.json", "model config")
    tensors: dict[str, list[int]] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(tensor_shapes(path))
    if not tensors:
        raise FormatError(f"{directory}: no safetensors weights found")
    content = {"model_type": config.get("model_type"), "tensors": tensors}
    return _canonical_digest(content, directory / "config.json")


def tokenizer_fingerprint(directory: Path) -> str:
    content: dict[str, Any] = {}
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.exists():
        data = read_json_object(tokenizer_json, "tokenizer")
        content["tokenizer.json"] = {k: v for k, v in data.items() if k not in ("version",)}
    for name in TOKENIZER_VOCAB_FILES:
        if (directory / name).exists():
            content[name] = sha256_bytes((directory / name).read_bytes())
    if not content:
        raise FormatError(f"{directory}: no tokenizer files (tokenizer.json, vocab or spm model)")
    return _canonical_digest(content, tokenizer_json)


def _canonical_digest(content: Any, source: Path) -> str:
    """sha256 of ``content``'s canonical form, which JSON read from ``source`` may lack."""
    try:
        return sha256_bytes(canonical_json(content))
    except UnicodeEncodeError:  # a lone surrogate (a \ud800 escape) has no UTF-8 form
        raise FormatError(f"{source}: holds a lone surrogate (not valid Unicode)") from None
    except RecursionError:
        raise FormatError(f"{source}: nested too deeply") from None
