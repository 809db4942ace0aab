"""Choice scoring batched across requests (left-padded contexts, a repeated cache, choices
after it) gives each token the log-probability that scoring context + choice as one whole
sequence gives, for every model family xelm supports; recurrent models run one request at a
time."""

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import transformers as hf

from xelm_cli.ensemble import choices as choice_scoring
from xelm_cli.ensemble.choices import batches_choice_sets, choice_batches, score_choice_sets
from xelm_cli.ensemble.scoring import LoadedModel, score_sequences

VOCAB = 61
POSITIONS = 64
TINY: dict[str, Any] = {"vocab_size": VOCAB, "num_hidden_layers": 2, "num_attention_heads": 2}
LLAMA_LIKE: dict[str, Any] = {**TINY, "hidden_size": 16, "intermediate_size": 32,
              "num_key_value_heads": 1, "max_position_embeddings": POSITIONS}  # fmt: skip

FAMILIES: dict[str, Callable[[], Any]] = {
    "llama": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**LLAMA_LIKE)),
    "qwen2": lambda: hf.Qwen2ForCausalLM(hf.Qwen2Config(**LLAMA_LIKE)),
    "mistral": lambda: hf.MistralForCausalLM(hf.MistralConfig(**LLAMA_LIKE, sliding_window=8)),
    "gemma": lambda: hf.GemmaForCausalLM(hf.GemmaConfig(**LLAMA_LIKE, head_dim=8)),
    "gemma3": lambda: hf.Gemma3ForCausalLM(
        hf.Gemma3TextConfig(
            **LLAMA_LIKE,
            head_dim=8,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention"],
        )
    ),
    # logits scaled after the output layer: not chunked, the forward returns whole logits
    "granite": lambda: hf.GraniteForCausalLM(hf.GraniteConfig(**LLAMA_LIKE, logits_scaling=4.0)),
    "gpt_neox": lambda: hf.GPTNeoXForCausalLM(
        hf.GPTNeoXConfig(
            **TINY, hidden_size=16, intermediate_size=32, max_position_embeddings=POSITIONS
        )
    ),
    "gpt2": lambda: hf.GPT2LMHeadModel(
        hf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=POSITIONS)
    ),
    "xglm": lambda: hf.XGLMForCausalLM(
        hf.XGLMConfig(
            vocab_size=VOCAB,
            d_model=16,
            ffn_dim=32,
            num_layers=2,
            attention_heads=2,
            max_position_embeddings=POSITIONS,
        )
    ),
    "opt": lambda: hf.OPTForCausalLM(
        hf.OPTConfig(
            **TINY,
            hidden_size=16,
            ffn_dim=32,
            word_embed_proj_dim=16,
            max_position_embeddings=POSITIONS,
        )
    ),
    "bloom": lambda: hf.BloomForCausalLM(
        hf.BloomConfig(vocab_size=VOCAB, hidden_size=16, n_layer=2, n_head=2)
    ),
    "bert-decoder": lambda: hf.BertLMHeadModel(
        hf.BertConfig(
            **TINY,
            hidden_size=16,
            intermediate_size=32,
            is_decoder=True,
            max_position_embeddings=POSITIONS,
        )
    ),
    "mpt": lambda: hf.MptForCausalLM(
        hf.MptConfig(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=2, max_seq_len=POSITIONS)
    ),
    "mamba": lambda: hf.MambaForCausalLM(
        hf.MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2)
    ),
}
ONE_AT_A_TIME = {"mamba"}


def _loaded(family: str, seed: int = 0) -> LoadedModel:
    """A tiny random model of ``family``, its weights spread wider than their initialisation so
    that positions and padding visibly move its log-probabilities."""
    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    return LoadedModel(model, torch.device("cpu"), POSITIONS)


def _requests() -> list[tuple[list[int], list[list[int]]]]:
    """Contexts of 1 to 80 tokens (80 is cut to the model's positions), three choices of 1 to 3
    tokens, or two choices."""
    rng = np.random.default_rng(7)

    def tokens(n: int) -> list[int]:
        return [int(t) for t in rng.integers(3, VOCAB, n)]

    lengths = [(12, 3), (3, 3), (40, 3), (80, 3), (1, 3), (25, 3), (11, 2), (30, 2), (12, 3)]
    return [([1, *tokens(n - 1)], [tokens(m) for m in (2, 1, 3)[:k]]) for n, k in lengths]


def _whole_sequences(
    models: list[LoadedModel], coefficients: list[float], requests: list[Any]
) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Each request's log-probabilities from context + choice scored as one sequence, the
    context cut as choice scoring cuts it."""
    expected = []
    for context, choices in requests:
        room = POSITIONS - max(len(c) for c in choices)
        kept = context if len(context) <= room else [context[0], *context[1 - room :]]
        whole = score_sequences(models, coefficients, [[*kept, *c] for c in choices])
        expected.append((whole[0][: len(kept) - 1], [lp[len(kept) - 1 :] for lp in whole]))
    return expected


def _assert_close(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for (got_context, got_choices), (want_context, want_choices) in zip(got, want, strict=True):
        np.testing.assert_allclose(got_context, want_context, rtol=0, atol=1e-5)
        assert len(got_choices) == len(want_choices)
        for got_choice, want_choice in zip(got_choices, want_choices, strict=True):
            np.testing.assert_allclose(got_choice, want_choice, rtol=0, atol=1e-5)


@pytest.fixture
def one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches that may be mostly padding, so that contexts of very different lengths share one."""
    monkeypatch.setattr(choice_scoring, "MAX_PADDING", 1.0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_choices_score_as_whole_sequences(family: str, one_batch: None) -> None:
    loaded = _loaded(family)
    requests = _requests()
    steps: list[int] = []
    got = score_choice_sets([loaded], [1.0], requests, batch_tokens=4096, advance=steps.append)
    _assert_close(got, _whole_sequences([loaded], [1.0], requests))
    assert sum(steps) == len(requests)
    assert batches_choice_sets(loaded) == (family not in ONE_AT_A_TIME)
    # a batch for each count of choices, else one per request
    assert steps == ([1] * len(requests) if family in ONE_AT_A_TIME else [2, 7])


def test_an_ensembles_mixture_is_batched_and_scores_as_whole_sequences(one_batch: None) -> None:
    models = [_loaded("llama", seed=1), _loaded("gpt2", seed=2), _loaded("bloom", seed=3)]
    coefficients = [0.5, 0.3, 0.2]
    requests = _requests()
    steps: list[int] = []
    got = score_choice_sets(models, coefficients, requests, batch_tokens=4096, advance=steps.append)
    _assert_close(got, _whole_sequences(models, coefficients, requests))
    assert steps == [2, 7]


def test_an_ensemble_with_a_recurrent_model_runs_one_request_at_a_time() -> None:
    models = [_loaded("llama"), _loaded("mamba")]
    requests = _requests()[:4]
    steps: list[int] = []
    got = score_choice_sets(models, [0.6, 0.4], requests, advance=steps.append)
    _assert_close(got, _whole_sequences(models, [0.6, 0.4], requests))
    assert steps == [1, 1, 1, 1]


def test_batches_scored_at_default_padding_and_budget_equal_one_at_a_time() -> None:
    loaded = _loaded("llama")
    requests = _requests() * 3
    batched = score_choice_sets([loaded], [1.0], requests)
    _assert_close(batched, score_choice_sets([loaded], [1.0], requests, batch_tokens=1))


def _fitted(context_length: int, choice_lengths: list[int]) -> Any:
    choices = [[5] * m for m in choice_lengths]
    return choice_scoring._fitted([1] * context_length, choices, POSITIONS)


def test_batches_share_a_count_of_choices_and_stay_within_budget_and_padding() -> None:
    requests = [_fitted(10, [1, 1]), _fitted(3, [1, 1]), _fitted(10, [2, 1]),
                _fitted(9, [1, 1]), _fitted(10, [1, 1, 1])]  # fmt: skip
    # two contexts of 10 with two choices of up to 2 tokens: 2 x 10 + 4 x (10 + 2) = 68
    assert choice_batches(requests, 68, POSITIONS) == [[0, 2], [3], [1], [4]]
    # 3 x 10 + 6 x 12 = 102; the context of 3 would make 4 x 10 positions, 30% padding
    assert choice_batches(requests, 102, POSITIONS) == [[0, 2, 3], [1], [4]]
    assert choice_batches(requests, 1, POSITIONS) == [[0], [2], [3], [1], [4]]
    # a context of 10 and a choice of 2 need 12 positions
    assert choice_batches(requests, 102, 11) == [[0], [2], [3], [1], [4]]


@pytest.mark.parametrize("family", ["gpt2", "opt", "bert-decoder", "mpt"])
def test_a_batch_never_pads_rows_past_the_models_positions(family: str) -> None:
    """Each context is cut for its own longest choice; in a batch the widest context and the
    widest choice must still fit, or learned positions (and MPT's ALiBi) run out."""
    loaded = _loaded(family)
    requests = [
        ([1, *[7] * 79], [[5], [6]]),
        ([1, *[8] * 59], [[5] * 5, [6] * 5]),
        ([1, *[9] * 100], [[5, 6], [7]]),
        ([1, *[4] * 120], [[5] * 4, [6] * 3]),
    ]
    got = score_choice_sets([loaded], [1.0], requests, batch_tokens=4096)
    _assert_close(got, score_choice_sets([loaded], [1.0], requests, batch_tokens=1))


def test_a_context_is_cut_to_the_positions_its_longest_choice_leaves() -> None:
    request = choice_scoring._fitted(list(range(1, 71)), [[5], [5, 6, 7]], POSITIONS)
    assert request.context == [1, *range(11, 71)]  # BOS and the newest 60 tokens: 61 + 3 = 64


def test_one_token_choices_after_a_bos_alone_share_a_batch(one_batch: None) -> None:
    loaded = _loaded("gpt2")
    requests = [([1], [[5], [6]]), ([1, 7, 8, 9], [[9], [10]])]
    steps: list[int] = []
    got = score_choice_sets([loaded], [1.0], requests, advance=steps.append)
    _assert_close(got, _whole_sequences([loaded], [1.0], requests))
    assert steps == [2]
    assert got[0][0].shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("batch_tokens", [4096, 40], ids=["batched", "in-pieces"])
def test_choices_score_on_a_gpu_as_on_the_cpu(batch_tokens: int, one_batch: None) -> None:
    """The GPU's path (pinned uploads, one copy to the host a batch, a batch in flight) gives
    the CPU's numbers, batched and with a request's choices in pieces; float32 on both."""
    cuda = torch.device("cuda")
    cpu = [_loaded("llama", seed=1), _loaded("gpt2", seed=2)]
    gpu = [_loaded("llama", seed=1), _loaded("gpt2", seed=2)]
    gpu = [LoadedModel(loaded.model.to(cuda), cuda, POSITIONS) for loaded in gpu]
    requests = _requests() * 2
    want = score_choice_sets(cpu, [0.4, 0.6], requests, batch_tokens=batch_tokens)
    got = score_choice_sets(gpu, [0.4, 0.6], requests, batch_tokens=batch_tokens)
    for (got_context, got_choices), (want_context, want_choices) in zip(got, want, strict=True):
        np.testing.assert_allclose(got_context, want_context, rtol=0, atol=1e-4)
        for got_choice, want_choice in zip(got_choices, want_choices, strict=True):
            np.testing.assert_allclose(got_choice, want_choice, rtol=0, atol=1e-4)
