"""Models whose logits cannot be chunked return a whole batch's logits: their batches are
capped so that those stay within ``UNCHUNKED_LOGITS``."""

import numpy as np
import pytest
import torch
from transformers import GraniteConfig, GraniteForCausalLM

from xelm_cli.ensemble import scoring
from xelm_cli.ensemble.scoring import LoadedModel, score_sequences

VOCAB = 50


def test_batches_of_a_model_that_scales_its_logits_stay_under_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=64, logits_scaling=8.0)  # fmt: skip
    model = GraniteForCausalLM(config).eval()
    loaded = LoadedModel(model, torch.device("cpu"), 64)
    sequences = [[1, *range(5, 5 + n)] for n in (9, 9, 9, 9, 5, 5)]
    uncapped = score_sequences([loaded], [1.0], sequences, batch_tokens=2048)
    shapes: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.logits.shape)))
    monkeypatch.setattr(scoring, "UNCHUNKED_LOGITS", 20 * VOCAB)  # batches of <= 20 tokens
    capped = score_sequences([loaded], [1.0], sequences, batch_tokens=2048)
    assert max(rows * width for rows, width, _ in shapes) <= 20
    assert len(shapes) == 3  # 2 x 10 tokens, 2 x 10, 2 x 6
    for got, want in zip(capped, uncapped, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
