"""A training block against the positions a model has: rotary, ALiBi and sinusoidal positions
run past the ones the config declares (into positions the model never saw); a learned position
table cannot, so a block longer than it is refused before any work (by `xelm train` and
`xelm plan`)."""

import json
from pathlib import Path

from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import UsageError

# rows a fairseq-style position table (OPT, BART, BioGPT) keeps before position 0
POSITION_OFFSET = 2


def declared_positions(bundle: Path) -> int | None:
    """The positions the model's config declares (``max_position_embeddings``, GPT-2's
    ``n_positions``), if any."""
    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    return positions if isinstance(positions, int) else None


def past_positions_line(block_size: int, positions: int | None, way_out: str) -> str | None:
    """A note when ``block_size`` is longer than the ``positions`` a model declares, else None:
    rotary, ALiBi and sinusoidal positions run past them into positions the model never saw (a
    learned position table is refused: ``require_block_fits``). ``way_out``: the flag that
    shortens the block, ``{}`` standing for the length."""
    if positions is None or block_size <= positions:
        return None
    return (
        f"xelm: warning: --block-size {block_size:,} is longer than the {positions:,} positions "
        f"the model declares (max_position_embeddings): training runs past them; pass "
        f"{way_out.format(positions)} (or less) unless you mean to"
    )


def require_block_fits(block_size: int, bundle: Path) -> None:
    """A block longer than a learned position table (GPT-2's ``wpe``, OPT's
    ``embed_positions``) would index past it inside the model (on CUDA a device-side assert
    that kills the process): refused in one line."""
    positions = declared_positions(bundle)
    if positions is None or block_size <= positions or not learned_positions(bundle, positions):
        return
    raise UsageError(
        f"--block-size {block_size:,} is longer than the {positions:,} positions of this "
        f"model's learned position table: pass --block-size {positions} or less"
    )


def learned_positions(bundle: Path, positions: int) -> bool:
    """Whether the model holds a learned position table: an embedding besides the token
    embedding with a row per position (GPT-2, GPT-Neo; OPT's, BART's and BioGPT's have
    ``POSITION_OFFSET`` more), found in the model built from its config on the meta device (no
    weights read, no memory taken). Rotary, ALiBi and sinusoidal positions (Llama, Qwen,
    GPT-NeoX, BLOOM, XGLM) hold none; Gemma 3n's per-layer token tables are no position table."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Bundle.read(bundle).load_config())
    tokens = model.get_input_embeddings()
    return any(
        isinstance(module, torch.nn.Embedding)
        and module is not tokens
        and positions <= module.num_embeddings <= positions + POSITION_OFFSET
        for module in model.modules()
    )
