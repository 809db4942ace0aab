"""Experts for the merging tests: branches of one seed whose weights really differ."""

from collections.abc import Sequence
from pathlib import Path

import torch

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.store import Bundle, write_bundle

# The dimensions of a tiny model for ``seed_from_config`` (any architecture that takes them).
SMALL_CONFIG = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
)


def perturbed_expert(
    parent: Path,
    out: Path,
    *,
    seed: int,
    languages: list[str],
    only: str = "",
    scale: float = 0.05,
    dtype: torch.dtype | None = None,
    allocation: dict[str, object] | None = None,
    max_shard_size: str | None = None,
) -> Bundle:
    """A bundle whose step is ``train`` from ``parent``, with Gaussian noise added to every
    parameter whose name contains ``only`` (all of them when empty), saved in ``dtype`` and
    sharded at ``max_shard_size`` when given."""
    source = Bundle.open(parent)
    model = source.load_model()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if only in name:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * scale)
    if dtype is not None:
        model = model.to(dtype)
    step = {"relation": "train", "parents": [source.ref]}
    with write_bundle(
        out,
        role="expert",
        languages=languages,
        parent=source,
        step=step,
        inherit_weights=False,
        allocation=allocation,
    ) as writer:
        if max_shard_size:
            model.save_pretrained(writer.directory, max_shard_size=max_shard_size)
        else:
            writer.save_model(model)
    assert writer.result is not None
    return writer.result


def mlp_experts(
    seed: Path, root: Path, languages: Sequence[str], only: str = "mlp"
) -> list[Bundle]:
    """One branch of ``seed`` per language, each with noise on its MLP weights (or, with
    only="", on all of them), so that the experts differ where an MoE keeps them apart."""
    made = []
    for i, lang in enumerate(languages):
        branched = branch(seed, root / f"b-{lang}", languages=[lang])
        made.append(
            perturbed_expert(
                branched.path, root / lang, seed=i, languages=[lang], only=only, scale=0.2
            )
        )
    return made


def seed_from_config(
    model_type: str, tokenizer_dir: Path, out: Path, languages: list[str], **config: object
) -> Bundle:
    """A tiny randomly initialised seed of any transformers architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = {"vocab_size": len(tokenizer), **config}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))
    step = {"relation": "init", "parents": [], "source": {"kind": "config", "name": model_type}}
    with write_bundle(out, role="seed", languages=languages, step=step) as writer:
        writer.save_model(model)
        writer.save_tokenizer(tokenizer)
    assert writer.result is not None
    return writer.result
