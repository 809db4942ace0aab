"""Scoring's forwards run without cuDNN's attention (a new execution plan for every batch
shape on Hopper and Blackwell GPUs) and leave PyTorch's backend switches as they found them."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from merge_helpers import SMALL_CONFIG, seed_from_config
from test_moe_gate import calibration_documents
from transformers import LlamaConfig, LlamaForCausalLM

from xelm_cli.bundle.moe import _mean_router_inputs
from xelm_cli.ensemble.choices import score_choice_sets
from xelm_cli.ensemble.scoring import LoadedModel, score_sequences

CPU = torch.device("cpu")


def switches() -> tuple[bool, bool, bool, bool]:
    """(cuDNN, flash, memory-efficient, math) attention: whether each may run."""
    backends = torch.backends.cuda
    return (
        backends.cudnn_sdp_enabled(),
        backends.flash_sdp_enabled(),
        backends.mem_efficient_sdp_enabled(),
        backends.math_sdp_enabled(),
    )


@pytest.fixture
def seen_in_attention() -> Iterator[list[tuple[bool, bool, bool, bool]]]:
    """The switches as each attention layer of a model found them (``watch(model)``), and
    every switch on before the test and checked on after it."""
    assert switches() == (True, True, True, True)
    seen: list[tuple[bool, bool, bool, bool]] = []
    yield seen
    assert switches() == (True, True, True, True)  # restored after each forward


def watch(model: torch.nn.Module, seen: list[tuple[bool, bool, bool, bool]]) -> None:
    for module in model.modules():
        if type(module).__name__.endswith("Attention"):
            module.register_forward_pre_hook(lambda *_: seen.append(switches()))


def tiny_model() -> LoadedModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return LoadedModel(LlamaForCausalLM(config).eval(), CPU, 128, {})


def test_running_text_scores_without_cudnn(seen_in_attention: list) -> None:
    model = tiny_model()
    watch(model.model, seen_in_attention)
    sequences = [[1, *range(2, 2 + n)] for n in (5, 9, 30)]  # padded in one batch
    scores = score_sequences([model], [1.0], sequences)
    assert [len(s) for s in scores] == [5, 9, 30] and seen_in_attention
    # the scoring's batch, and the check that the logits are the output layer's (once a model)
    assert set(seen_in_attention) == {(False, True, True, True)}


def test_choices_score_without_cudnn(seen_in_attention: list) -> None:
    model = tiny_model()
    watch(model.model, seen_in_attention)
    requests = [([1, 5, 6, 7], [[8], [9, 10]]), ([1, 5], [[11, 12], [13]])]
    results = score_choice_sets([model], [1.0], requests)
    assert [len(choice) for _, choices in results for choice in choices] == [1, 2, 2, 1]
    assert seen_in_attention
    assert set(seen_in_attention) == {(False, True, True, True)}


def test_moe_gate_text_runs_without_cudnn(
    seen_in_attention: list, tmp_path: Path, tokenizer_dir: Path
) -> None:
    seed = seed_from_config("llama", tokenizer_dir, tmp_path / "seed", ["en"], **SMALL_CONFIG)
    loads = seed.load_model

    def watched(*args: object, **kwargs: object) -> torch.nn.Module:
        model = loads(*args, **kwargs)
        watch(model, seen_in_attention)
        return model

    seed.load_model = watched  # type: ignore[method-assign]
    means = _mean_router_inputs(seed, calibration_documents(), 2, CPU)
    assert means.shape == (2, SMALL_CONFIG["hidden_size"])
    assert seen_in_attention and set(seen_in_attention) == {(False, True, True, True)}
