"""Log-probabilities are computed from logits chunk by chunk of positions; the chunk is larger
on a GPU, and no chunking changes a number."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from xelm_cli.ensemble import scoring
from xelm_cli.ensemble.scoring import LoadedModel, chunk_rows, score_sequences

VOCAB = 50


def test_a_gpu_takes_larger_chunks_than_a_cpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # (no GPU needed: no tensor made)
    assert chunk_rows(32_000, cpu) == 131  # 2^22 logits
    assert chunk_rows(32_000, cuda) == 2_097  # 2^26
    assert chunk_rows(256_008, cuda) == 262
    assert chunk_rows(256_008, cpu) == chunk_rows(1 << 30, cuda) == 128  # never fewer rows


def _model(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=64)  # fmt: skip
    return LoadedModel(LlamaForCausalLM(config).eval(), torch.device("cpu"), 64)


def test_chunks_of_a_few_rows_give_the_log_softmax_of_the_weighted_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models, coefficients = [_model(0), _model(1)], [0.25, 0.75]
    sequences = [[1, *range(5, 5 + n)] for n in (11, 9, 4)]
    whole = score_sequences(models, coefficients, sequences)
    monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", 3 * VOCAB)  # chunks of 3 positions
    monkeypatch.setattr(scoring, "MIN_CHUNK_ROWS", 1)
    assert chunk_rows(VOCAB, torch.device("cpu")) == 3
    chunked = score_sequences(models, coefficients, sequences)
    for sequence, got, unchunked in zip(sequences, chunked, whole, strict=True):
        ids = torch.tensor([sequence])
        with torch.no_grad():
            logits = sum(c * m.model(ids).logits[0, :-1].double()
                         for c, m in zip(coefficients, models, strict=True))  # fmt: skip
        assert isinstance(logits, torch.Tensor)
        expected = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)
        np.testing.assert_allclose(got, unchunked, atol=1e-6)
