"""The chunked (memory-lean) loss against transformers' own loss: values and every gradient."""

from collections.abc import Callable

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, XGLMConfig
from xelm_trainer.lean_loss import linear_cross_entropy, use_lean_loss

from xelm_cli.api import logits_are_output_layer

VOCAB = 97  # not a multiple of the chunk size
CONFIGS = {
    "llama": LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    ),
    "gpt2-tied": GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4),
    "xglm": XGLMConfig(vocab_size=VOCAB, d_model=32, ffn_dim=64, num_layers=2, attention_heads=4),
}  # fmt: skip


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[name], dtype=torch.float32)


def _gradients(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> tuple:
    model.zero_grad()
    torch.manual_seed(3)  # the same dropout masks for both losses
    loss = model(input_ids=batch, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lean_loss_equals_the_plain_loss_and_gradients(name: str) -> None:
    torch.manual_seed(1)
    batch = torch.randint(0, VOCAB, (3, 17))
    labels = batch.clone()
    labels[1, 5:9] = -100  # ignored positions count as in transformers
    model = _model(name)
    assert logits_are_output_layer(model)
    plain_loss, plain_grads = _gradients(model, batch, labels)
    use_lean_loss(model, rows=7)  # 48 predicted tokens: 7 chunks, the last one short
    lean_loss, lean_grads = _gradients(model, batch, labels)
    torch.testing.assert_close(lean_loss, plain_loss, atol=1e-5, rtol=1e-5)
    assert lean_grads.keys() == plain_grads.keys()
    for param in plain_grads:
        torch.testing.assert_close(lean_grads[param], plain_grads[param], atol=1e-5, rtol=1e-5)
    assert model(input_ids=batch).logits.shape == (3, 17, VOCAB)  # no labels: the plain forward


def test_linear_cross_entropy_with_bias_and_scaled_upstream_gradient() -> None:
    torch.manual_seed(2)
    hidden = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(13, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 13, (10,))
    lean = linear_cross_entropy(hidden, weight, targets, bias, rows=3)
    (3 * lean).backward()
    got = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets)
    (3 * plain).backward()
    torch.testing.assert_close(lean, plain)
    for mine, reference in zip(got, (hidden.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(mine, reference)


def _gemma2_softcapped() -> torch.nn.Module:
    from transformers import Gemma2Config

    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def _bert_decoder() -> torch.nn.Module:
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, is_decoder=True,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config)  # a transform before the output Linear


@pytest.mark.parametrize("build", [_gemma2_softcapped, _bert_decoder])
def test_models_whose_logits_are_more_than_the_output_layer_keep_the_plain_loss(
    build: Callable[[], torch.nn.Module],
) -> None:
    model = build().train()
    assert not logits_are_output_layer(model)
    assert model.training  # probed in eval mode, then left as it was


def test_without_grad_only_the_loss_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation runs under torch.no_grad: the same value as the plain loss, and no chunk's
    gradients (counted); with grad, every chunk's."""
    from xelm_trainer import lean_loss

    chunks_with_gradients = 0
    add = lean_loss._Gradients.add

    def counted(*args: object) -> None:
        nonlocal chunks_with_gradients
        chunks_with_gradients += 1
        add(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(lean_loss._Gradients, "add", counted)
    torch.manual_seed(4)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(13, 8, requires_grad=True)
    targets = torch.randint(0, 13, (10,))
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    with torch.no_grad():
        lean = linear_cross_entropy(hidden, weight, targets, rows=3)
    torch.testing.assert_close(lean, plain.detach(), atol=1e-5, rtol=1e-5)
    assert lean.grad_fn is None and chunks_with_gradients == 0
    linear_cross_entropy(hidden.detach(), weight.detach(), targets, rows=3)  # nothing asks
    assert chunks_with_gradients == 0
    linear_cross_entropy(hidden, weight, targets, rows=3).backward()
    assert chunks_with_gradients == 4  # 10 rows, 3 a chunk
