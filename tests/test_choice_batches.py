"""A request with more choices than ``batch_tokens`` holds runs its choices in pieces, each
forward within the budget, and scores exactly as all its choices at once (was one forward of
every choice, however many: out of memory on a big task)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_choice_batching import POSITIONS, VOCAB, _loaded

from xelm_cli.api import ChoiceRequest, Document
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.ensemble import choices
from xelm_cli.ensemble.choices import score_choice_sets
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.ensemble.scoring import LoadedModel

# the families whose caches differ: a sliding window beside a full layer (gemma3), learned
# positions (gpt2), whole logits from the forward (granite), keys and values (llama), and none
# to repeat, each row running context and choice whole (mamba)
PIECED = ["gemma3", "gpt2", "granite", "llama", "mamba"]


def _request(context: int, choices: list[int], seed: int = 3) -> tuple[list[int], list[list[int]]]:
    rng = np.random.default_rng(seed)

    def tokens(n: int) -> list[int]:
        return [int(t) for t in rng.integers(3, VOCAB, n)]

    return [1, *tokens(context - 1)], [tokens(m) for m in choices]


def _count(model: Any, seen: list[int]) -> Any:
    """Record in ``seen`` the key and value positions of each forward of ``model``'s body (which
    its own forward runs too): rows x (cached positions + the rows' own)."""

    def hook(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        cache: Any = kwargs.get("past_key_values", kwargs.get("cache"))
        cached = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        seen.append(int(ids.shape[0]) * (int(cached) + int(ids.shape[1])))

    return model.base_model.register_forward_pre_hook(hook, with_kwargs=True)


@contextmanager
def forwards(model: Any) -> Iterator[list[int]]:
    """The key and value positions of each forward of ``model`` run inside the block."""
    seen: list[int] = []
    handle = _count(model, seen)
    try:
        yield seen
    finally:
        handle.remove()


def _counting_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every expert loaded afresh from here on, the key and value positions of each of its
    forwards recorded in the list returned (:func:`_count`)."""
    seen: list[int] = []
    load = LoadedModel.load

    def counted(bundle: Bundle, device: Any, dtype: Any = None) -> LoadedModel:
        model = load(bundle, device, dtype)
        _count(model.model, seen)
        return model

    monkeypatch.setattr(LoadedModel, "load", staticmethod(counted))
    monkeypatch.setattr(LoadedModel, "swap", lambda self, bundle: None)
    return seen


def _assert_equal(got: list[Any], want: list[Any], atol: float = 1e-6) -> None:
    assert len(got) == len(want)
    for (got_context, got_choices), (want_context, want_choices) in zip(got, want, strict=True):
        np.testing.assert_allclose(got_context, want_context, rtol=0, atol=atol)
        assert len(got_choices) == len(want_choices)
        for got_choice, want_choice in zip(got_choices, want_choices, strict=True):
            np.testing.assert_allclose(got_choice, want_choice, rtol=0, atol=atol)


@pytest.mark.parametrize("family", PIECED)
def test_one_requests_many_choices_run_in_pieces_within_the_budget(family: str) -> None:
    loaded = _loaded(family)
    lengths = [1 + (i * 7) % 4 for i in range(60)]  # 60 choices of 1 to 4 tokens
    requests = [_request(20, lengths)]
    whole = score_choice_sets([loaded], [1.0], requests, batch_tokens=1 << 20)
    budget = 200  # a context of 20 and 7 choices of up to 4 tokens: 20 + 7 x 24 = 188
    with forwards(loaded.model) as seen:
        got = score_choice_sets([loaded], [1.0], requests, batch_tokens=budget)
    assert max(seen) <= budget
    assert len(seen) >= 60 * 20 // budget  # split, not one forward of all 60 rows
    _assert_equal(got, whole)


def test_an_ensembles_logit_average_runs_in_pieces_and_scores_as_all_at_once() -> None:
    models = [_loaded("llama", seed=1), _loaded("gpt2", seed=2)]
    requests = [_request(30, [2, 1, 3] * 15, seed=5), _request(9, [4] * 45, seed=6)]
    whole = score_choice_sets(models, [0.7, 0.3], requests, batch_tokens=1 << 20)
    budget = 150
    with forwards(models[0].model) as first, forwards(models[1].model) as second:
        got = score_choice_sets(models, [0.7, 0.3], requests, batch_tokens=budget)
    assert max(first + second) <= budget
    assert len(first) == len(second) > 2 * 2  # each model: 2 contexts, then several pieces each
    _assert_equal(got, whole)


def test_every_piece_continues_the_context_cut_for_the_requests_longest_choice() -> None:
    """The pieces without the longest choice (40 tokens) still see the context cut to the
    positions it leaves, not to what their own choices would leave."""
    loaded = _loaded("llama")
    requests = [_request(30, [*[1] * 20, 40, *[2] * 20], seed=9)]
    whole = score_choice_sets([loaded], [1.0], requests, batch_tokens=1 << 20)
    with forwards(loaded.model) as seen:
        got = score_choice_sets([loaded], [1.0], requests, batch_tokens=100)
    assert max(seen) <= 100 and len(seen) > 3
    assert len(got[0][0]) == POSITIONS - 40 - 1  # the BOS and the newest context tokens
    _assert_equal(got, whole)
    pieces = choices._choice_pieces([choices._fitted(*requests[0], POSITIONS)], 100)
    assert [c for piece in pieces for c in piece] == list(range(41))
    assert len(pieces) > 2 and sum(20 in piece for piece in pieces) == 1


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> list[Bundle]:
    root = tmp_path_factory.mktemp("experts")
    return [
        init_from_config("tiny", tokenizer_dir, root / f"e{i}", languages=langs, seed=i + 1)
        for i, langs in enumerate((["en"], ["tr"]))
    ]


def test_a_posterior_ensembles_many_choices_stay_within_the_budget(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two experts under the posterior router (each scores the choices alone, then they are
    mixed): each expert's forwards within ``batch_tokens``, the mixture as with a huge budget."""
    request = ChoiceRequest(
        "The list of numbers goes on and on:",
        tuple(f" number {n} of the list, {n * 7}" for n in range(120)),
        "en",
    )
    whole = EnsembleModel(experts, build_router("posterior"), batch_tokens=1 << 20)
    want = whole.score_choices([request])[0]
    seen = _counting_loads(monkeypatch)
    budget = 400
    model = EnsembleModel(experts, build_router("posterior"), batch_tokens=budget, resident=False)
    got = model.score_choices([request])[0]
    assert seen and max(seen) <= budget
    assert len(seen) > 2 * 3  # both experts ran their choices in several pieces
    assert len(got) == len(want) == 120
    for got_choice, want_choice in zip(got, want, strict=True):
        np.testing.assert_allclose(got_choice, want_choice, rtol=0, atol=1e-6)


def test_a_cpus_choice_batches_hold_8192_positions_within_the_caches_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Keys and values of a position, by hand: llama 2 layers x 1 key-value head x 8 dims x 2
    (keys, values) x 4 bytes = 128; gpt2 2 layers x 2 heads x 8 dims x 2 x 4 = 256. The budget
    is 8,192 positions unless their cache would pass CHOICE_CACHE_BYTES, never under running
    text's 2,048; the widest model of an ensemble decides."""
    llama, gpt2 = _loaded("llama"), _loaded("gpt2")
    assert choices._cache_bytes_per_position(llama) == 128
    assert choices._cache_bytes_per_position(gpt2) == 256
    assert choices.default_choice_batch_tokens([llama]) == 8192
    monkeypatch.setattr(choices, "CHOICE_CACHE_BYTES", 128 * 3000)
    assert choices.default_choice_batch_tokens([llama]) == 3000
    assert choices.default_choice_batch_tokens([llama, gpt2]) == 2048  # 1,500, raised
    monkeypatch.setattr(choices, "CHOICE_CACHE_BYTES", 256 * 5000)
    assert choices.default_choice_batch_tokens([llama, gpt2]) == 5000


def test_an_ensembles_default_budgets_are_the_cpus_for_choices_and_for_running_text(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``batch_tokens`` an ensemble's choice forwards go past running text's 2,048
    positions (several long contexts and their repeated caches together, each of which alone
    is over 2,048 with its choices) and stay within 8,192, scoring as with a huge budget; its
    running text stays within 2,048 padded tokens."""
    requests = [
        ChoiceRequest(
            "The list of numbers goes on and on: " + " ".join(str(n + i) for n in range(150)),
            tuple(f" and {n}" for n in range(7)),
            "en",
        )
        for i in range(6)
    ]
    want = EnsembleModel(experts, build_router("language"), batch_tokens=1 << 20).score_choices(
        requests
    )
    seen = _counting_loads(monkeypatch)
    model = EnsembleModel(experts, build_router("language"), device="cpu", resident=False)
    got = model.score_choices(requests)
    assert 2048 < max(seen) <= 8192
    for got_request, want_request in zip(got, want, strict=True):
        for got_choice, want_choice in zip(got_request, want_request, strict=True):
            np.testing.assert_allclose(got_choice, want_choice, rtol=0, atol=1e-6)
    seen.clear()
    model.score_documents([Document(request.context * 4, "en") for request in requests])
    assert seen and max(seen) <= 2048
