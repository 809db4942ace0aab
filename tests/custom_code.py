"""Code a model directory ships for itself, as Hub models with custom architectures do: tiny
subclasses of Llama's configuration, model and (optionally) tokenizer, named in auto_map."""

import json
from pathlib import Path

CONFIGURATION = """from transformers import LlamaConfig


class TinyCustomConfig(LlamaConfig):
    model_type = {model_type!r}
"""
MODELING = """from transformers import LlamaForCausalLM

from .configuration_tiny_custom import TinyCustomConfig


class TinyCustomModel(LlamaForCausalLM):
    config_class = TinyCustomConfig
"""
TOKENIZATION = """from transformers import LlamaTokenizer


class TinyCustomTokenizer(LlamaTokenizer):
    pass
"""


def add_custom_code(hf: Path, model_type: str, *, tokenizer: bool = False) -> Path:
    """``hf``, a saved Llama, made to load through its own modules beside config.json: its
    configuration and model classes, and with ``tokenizer`` its tokenizer class too.
    ``model_type`` must differ between callers in one process (transformers registers it)."""
    (hf / "configuration_tiny_custom.py").write_text(CONFIGURATION.format(model_type=model_type))
    (hf / "modeling_tiny_custom.py").write_text(MODELING)
    config = json.loads((hf / "config.json").read_text())
    config |= {
        "model_type": model_type,
        "architectures": ["TinyCustomModel"],
        "auto_map": {
            "AutoConfig": "configuration_tiny_custom.TinyCustomConfig",
            "AutoModelForCausalLM": "modeling_tiny_custom.TinyCustomModel",
        },
    }
    (hf / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (hf / "tokenization_tiny_custom.py").write_text(TOKENIZATION)
        settings = json.loads((hf / "tokenizer_config.json").read_text())
        settings |= {
            "tokenizer_class": "TinyCustomTokenizer",
            "auto_map": {"AutoTokenizer": [None, "tokenization_tiny_custom.TinyCustomTokenizer"]},
        }
        (hf / "tokenizer_config.json").write_text(json.dumps(settings))
    return hf
