"""Ensemble execution and routers, pinned against brute-force computations on tiny models."""

import gc
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, train_tokenizer
from xelm_typology import LanguageAssigner

from xelm_cli.api import (
    ChoiceRequest,
    Document,
    ExpertInfo,
    OutputRouter,
    PreRouter,
    ScoredDocument,
    UsageError,
    Weights,
    get_registry,
)
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import IntegrityError, PluginError
from xelm_cli.ensemble import results
from xelm_cli.ensemble.ensemble_file import EnsembleSpec
from xelm_cli.ensemble.evaluate import evaluate
from xelm_cli.ensemble.members import open_members
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel, single_model
from xelm_cli.ensemble.scoring import LoadedModel, score_sequences, windows

EXPERT_LANGUAGES = (["en", "tr"], ["ar"], ["ru"])
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=CUDA)])
def device(request: pytest.FixtureRequest) -> str:
    """Where the ensemble runs; the brute-force references always run in float32 on the CPU."""
    return str(request.param)


def tolerance(device: str) -> float:
    """float32 on the CPU; on CUDA experts run in bf16 (measured on an H100: at most 7.1e-3, in
    the posterior, whose weights sum a whole prefix of log-probabilities)."""
    return 2e-5 if device == "cpu" else 2e-2


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> list[Bundle]:
    root = tmp_path_factory.mktemp("experts")
    return [
        init_from_config("tiny", tokenizer_dir, root / f"e{i}", languages=langs, seed=i + 1)
        for i, langs in enumerate(EXPERT_LANGUAGES)
    ]


def flores(lang: str, n: int) -> list[Document]:
    lines = (SHARED_DATA / "eval" / "flores200-devtest" / f"{lang}.txt").read_text().splitlines()
    return [Document(line, lang) for line in lines[:n]]


DOCS = [*flores("en", 3), *flores("tr", 2), *flores("ar", 2), *flores("ru", 2)]


def brute(bundle: Bundle, docs: Sequence[Document]) -> tuple[list[np.ndarray], list[list[int]]]:
    """Each document's target log-probabilities from one full forward pass and full logits."""
    model = bundle.load_model().eval()
    tokenizer = bundle.load_tokenizer()
    out, sequences = [], []
    for doc in docs:
        ids = [tokenizer.bos_token_id, *tokenizer(doc.text, add_special_tokens=False).input_ids]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logprobs = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])
        out.append(logprobs[:, 0].numpy())
        sequences.append(ids)
    return out, sequences


def test_one_hot_router_equals_the_single_expert_exactly(
    experts: list[Bundle], device: str
) -> None:
    ensemble = EnsembleModel(experts, build_router("fixed", {"weights": [0, 1, 0]}), device=device)
    alone = single_model(experts[1], "e1", device=device)
    for mixed, single in zip(
        ensemble.score_documents(DOCS), alone.score_documents(DOCS), strict=True
    ):
        assert np.array_equal(mixed, single)
    assert dict(ensemble.stats.sequences) == {"e1": len(DOCS)}  # the others never ran


def test_posterior_mixture_equals_brute_force_over_all_experts(
    experts: list[Bundle], device: str
) -> None:
    per_expert = [brute(bundle, DOCS)[0] for bundle in experts]
    prior = np.array([0.5, 0.3, 0.2])
    ensemble = EnsembleModel(
        experts, build_router("posterior", {"prior": prior.tolist()}), device=device
    )
    got = ensemble.score_documents(DOCS)
    for d in range(len(DOCS)):
        expected = []
        for t in range(len(per_expert[0][d])):
            # P(e | x_<t) in log space: the prefix likelihood underflows on long documents
            scores = np.array([np.log(prior[e]) + per_expert[e][d][:t].sum() for e in range(3)])
            weights = np.exp(scores - scores.max())
            weights /= weights.sum()
            expected.append(np.log(sum(weights[e] * np.exp(per_expert[e][d][t]) for e in range(3))))
        np.testing.assert_allclose(got[d], expected, atol=tolerance(device))
    assert dict(ensemble.stats.loads) == {"e0": 1, "e1": 1, "e2": 1}  # streamed: one load each


def test_resident_experts_load_once_and_score_as_streamed(experts: list[Bundle]) -> None:
    streamed = EnsembleModel(experts, build_router("posterior"), device="cpu")
    assert streamed.resident is False  # on a CPU the experts stream unless asked
    resident = EnsembleModel(experts, build_router("posterior"), device="cpu", resident=True)
    first, second = DOCS[:4], DOCS[4:]
    got = resident.score_documents(first) + resident.score_documents(second)
    want = streamed.score_documents(first) + streamed.score_documents(second)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert dict(resident.stats.loads) == {"e0": 1, "e1": 1, "e2": 1}  # kept between calls
    assert dict(streamed.stats.loads) == {"e0": 2, "e1": 2, "e2": 2}  # loaded for each call


@pytest.mark.parametrize("combine", ["mixture", "logits"])
def test_resident_systems_of_one_evaluation_share_one_copy_of_each_bundle(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch, combine: str
) -> None:
    """With --each and a baseline, the ensemble's experts, the experts alone and the baseline
    hold one model per distinct bundle (3, not 2k + 1 = 5 as when each system kept its own);
    residency is asked once, of those 3 bundles, and the numbers are the streamed ones."""
    run: dict[str, Any] = {
        "data": SHARED_DATA / "eval" / "flores200-devtest",
        "router": "fixed",
        "router_options": {"weights": [1, 1]},
        "combine": combine,
        "each": True,
        "baselines": [experts[2]],
        "languages": ["en"],
        "limit": 2,
        "device": "cpu",
    }
    streamed = evaluate(experts[:2], **run)
    asked: list[list[str]] = []
    live: list[weakref.ref[LoadedModel]] = []
    peak = [0]
    load = LoadedModel.load

    def fits(members: Sequence[Bundle], device: Any) -> bool:  # a GPU that holds them all
        asked.append(sorted(bundle.name for bundle in members))
        return True

    def counted_load(bundle: Bundle, device: Any, **options: Any) -> LoadedModel:
        model = load(bundle, device, **options)
        live.append(weakref.ref(model))
        gc.collect()
        peak[0] = max(peak[0], sum(ref() is not None for ref in live))
        return model

    monkeypatch.setattr(results, "fits_on_device", fits)
    monkeypatch.setattr(LoadedModel, "load", counted_load)
    resident = evaluate(experts[:2], **run)
    assert asked == [["e0", "e1", "e2"]]
    assert peak[0] == 3
    assert [s["executed"]["loads"] for s in resident["systems"]] == [
        {"e0": 1, "e1": 1},
        {},
        {},
        {"e2": 1},
    ]
    for a, b in zip(resident["systems"], streamed["systems"], strict=True):
        assert a["metrics"]["overall"]["perplexity"] == pytest.approx(
            b["metrics"]["overall"]["perplexity"], rel=1e-6
        )


def test_streaming_equals_all_experts_in_memory(experts: list[Bundle], device: str) -> None:
    models = [bundle.load_model().eval() for bundle in experts]  # all at once
    _, sequences = brute(experts[0], DOCS)
    ensemble = EnsembleModel(experts, build_router("uniform"), device=device)
    for got, ids in zip(ensemble.score_documents(DOCS), sequences, strict=True):
        with torch.no_grad():
            probs = [torch.softmax(m(torch.tensor([ids])).logits[0].double(), -1) for m in models]
        mixed = torch.log(torch.stack(probs).sum(0) / 3)[:-1].gather(
            1, torch.tensor(ids[1:])[:, None]
        )[:, 0]
        np.testing.assert_allclose(got, mixed.numpy(), atol=tolerance(device))


def test_logit_averaging_equals_log_softmax_of_the_weighted_logits(
    experts: list[Bundle], device: str
) -> None:
    models = [bundle.load_model().eval() for bundle in experts]
    _, sequences = brute(experts[0], DOCS)
    weights = [0.2, 0.3, 0.5]
    ensemble = EnsembleModel(
        experts, build_router("fixed", {"weights": weights}), "logits", device=device
    )
    for got, ids in zip(ensemble.score_documents(DOCS), sequences, strict=True):
        with torch.no_grad():
            logits = sum(
                w * m(torch.tensor([ids])).logits[0].double()
                for w, m in zip(weights, models, strict=True)
            )
        assert isinstance(logits, torch.Tensor)
        expected = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])
        np.testing.assert_allclose(got, expected[:, 0].numpy(), atol=tolerance(device))
    # logit averaging and the mixture are different operations
    mixed = EnsembleModel(
        experts, build_router("fixed", {"weights": weights}), device=device
    ).score_documents(DOCS)
    assert not np.allclose(mixed[0], ensemble.score_documents(DOCS)[0])


def test_language_router_runs_one_expert_per_document(experts: list[Bundle], device: str) -> None:
    ensemble = EnsembleModel(experts, build_router("language"), device=device)
    got = ensemble.score_documents(DOCS)
    assert sum(ensemble.stats.sequences.values()) == len(DOCS)
    assert dict(ensemble.stats.sequences) == {"e0": 5, "e1": 2, "e2": 2}
    assert all(count == 1 for count in ensemble.stats.loads.values())
    expected = brute(experts[1], DOCS[5:7])[0]  # ar documents -> expert e1
    for a, b in zip(got[5:7], expected, strict=True):
        np.testing.assert_allclose(a, b, atol=tolerance(device))


def test_last_token_posterior_follows_the_authors_script(
    experts: list[Bundle], device: str
) -> None:
    per_expert = [brute(bundle, DOCS[:2])[0] for bundle in experts]
    got = EnsembleModel(
        experts, build_router("posterior-last-token"), device=device
    ).score_documents(DOCS[:2])
    for d in range(2):
        for t in range(len(got[d])):
            previous = [per_expert[e][d][t - 1] if t else 0.0 for e in range(3)]
            weights = np.exp(previous) / np.exp(previous).sum()
            expected = np.log(sum(weights[e] * np.exp(per_expert[e][d][t]) for e in range(3)))
            assert got[d][t] == pytest.approx(expected, abs=tolerance(device))


@pytest.mark.parametrize("name", ["posterior", "posterior-last-token"])
def test_a_token_of_probability_zero_leaves_the_posterior_defined(name: str) -> None:
    """An expert that gave a token probability 0 (ln p = -inf) weighs nothing once that token
    is evidence (was NaN: -inf - -inf); where every expert did, the prior weighs them."""
    from xelm_cli.api import ScoredDocument

    with np.errstate(divide="ignore"):
        logprobs = np.log(np.array([[0.5, 0.0, 0.25, 0.5], [0.25, 0.5, 0.0, 0.5]]))
    router = build_router(name, {"prior": [0.75, 0.25]})
    weights = router.route_tokens(ScoredDocument(DOCS[0], logprobs), [])  # type: ignore[attr-defined]
    if name == "posterior":  # P(e) * prod_{i<t} p_e(x_i), the prior once both are 0
        expected = [[0.75, 6 / 7, 0.0, 0.75], [0.25, 1 / 7, 1.0, 0.25]]
    else:  # P(e) * p_e(x_{t-1})
        expected = [[0.75, 6 / 7, 0.0, 1.0], [0.25, 1 / 7, 1.0, 0.0]]
    np.testing.assert_allclose(weights, expected)


def test_posterior_top_k_keeps_k_experts_per_token(experts: list[Bundle]) -> None:
    from xelm_cli.api import ScoredDocument

    router = build_router("posterior", {"top_k": 2})
    logprobs = np.log(np.random.default_rng(0).dirichlet(np.ones(3), size=7).T)
    weights = router.route_tokens(ScoredDocument(DOCS[0], logprobs), [])  # type: ignore[attr-defined]
    assert ((weights[:, 1:] > 0).sum(axis=0) == 2).all()
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)
    # the first token: the uniform prior alone, every expert alike, nothing to rank (the first
    # two by their order, before)
    np.testing.assert_allclose(weights[:, 0], 1 / 3)


def test_a_model_that_scales_its_logits_scores_as_its_own_logits() -> None:
    from transformers import GraniteConfig, GraniteForCausalLM

    from xelm_cli.api import logits_are_output_layer

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=64, logits_scaling=8.0)  # fmt: skip
    model = GraniteForCausalLM(config).eval()
    sequence = [1, 5, 7, 9, 11, 13]
    got = score_sequences([LoadedModel(model, torch.device("cpu"), 64)], [1.0], [sequence])[0]
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0, :-1].double()
    own = torch.log_softmax(logits, -1).gather(1, torch.tensor(sequence[1:])[:, None])[:, 0]
    np.testing.assert_allclose(got, own.numpy(), atol=1e-5)
    assert not logits_are_output_layer(model)
    config.logits_scaling = 1.0
    assert logits_are_output_layer(GraniteForCausalLM(config))


def test_windows_predict_every_token_once_with_context() -> None:
    spans = windows(40, 16, 8)
    predicted = [t for _, end, first in spans for t in range(first, end)]
    assert predicted == list(range(1, 40))
    assert all(end - start <= 16 for start, end, _ in spans)
    assert all(first - start >= 8 for start, _, first in spans[1:])


def test_progress_counts_each_target_token_once(experts: list[Bundle]) -> None:
    model = LoadedModel.load(experts[0], torch.device("cpu"))
    model.max_length = 16
    _, (long, short) = brute(
        experts[0], [Document(" ".join(d.text for d in DOCS[:2]), "en"), DOCS[0]]
    )
    told: list[int] = []
    score_sequences([model], [1.0], [long, short[:10]], batch_tokens=16, advance=told.append)
    assert len(told) == len(windows(len(long), 16, 8)) + 1  # one window a batch
    assert sum(told) == len(long) - 1 + 9  # overlapping windows count their context once


def test_batches_of_windows_and_short_documents_score_as_each_window_alone(
    experts: list[Bundle],
) -> None:
    """Rows of different lengths, and windows that skip the context an earlier window
    predicted, several batches one after another: every target's log-probability is the one
    of its window's own forward pass."""
    model = LoadedModel.load(experts[0], torch.device("cpu"))
    model.max_length = 16
    _, sequences = brute(experts[0], DOCS)
    sequences[1] = sequences[1][:16]  # whole in one window
    expected = []
    for sequence in sequences:
        parts = []
        for start, end, first in windows(len(sequence), 16, 8):
            with torch.no_grad():
                logits = model.model(torch.tensor([sequence[start:end]])).logits[0].double()
            logprobs = torch.log_softmax(logits, -1)[first - start - 1 : end - start - 1]
            parts.append(logprobs.gather(1, torch.tensor(sequence[first:end])[:, None])[:, 0])
        expected.append(torch.cat(parts).numpy())
    assert any(len(s) > 16 for s in sequences) and len(sequences[1]) == 16
    for batch_tokens in (16, 48, 4096):
        got = score_sequences([model], [1.0], sequences, batch_tokens=batch_tokens)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.dtype == np.float64
            np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_calibration_scores_in_the_ensembles_batches(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """score_all_experts batches as score_documents does: one document a batch at
    batch_tokens=1 (told to the progress bar once a batch), the same numbers."""
    import contextlib

    import xelm_cli.ensemble.runner as runner

    told: list[int] = []

    @contextlib.contextmanager
    def recording(label: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
        yield told.append

    monkeypatch.setattr(runner, "count_progress", recording)
    same = [DOCS[0]] * 3  # equal lengths: one batch of the three at the default batch_tokens
    model = EnsembleModel(experts, build_router("uniform"), batch_tokens=1)
    scored = model.score_all_experts(same)
    assert len(told) == 3 * len(experts)
    reference = brute(experts[1], DOCS[:1])[0][0]
    np.testing.assert_allclose(scored[2].logprobs[1], reference, atol=2e-5)


def test_long_documents_are_scored_in_windows(experts: list[Bundle]) -> None:
    model = LoadedModel.load(experts[0], torch.device("cpu"))
    model.max_length = 16
    doc = Document(" ".join(d.text for d in DOCS[:2]), "en")
    full, (ids,) = brute(experts[0], [doc])
    assert len(ids) > 40
    (got,) = score_sequences([model], [1.0], [ids])
    expected = []
    net = experts[0].load_model().eval()
    for start, end, first in windows(len(ids), 16, 8):
        with torch.no_grad():
            logits = net(torch.tensor([ids[start:end]])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        expected += [float(lp[t - start - 1, ids[t]]) for t in range(first, end)]
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert not np.allclose(got, full[0])  # the windows really cut the context


@pytest.mark.parametrize("combine", ["mixture", "logits", "product"])
@pytest.mark.parametrize(
    "request_",
    [
        ChoiceRequest("The capital of France is", (" Paris", " a large city by the sea"), "en"),
        # a context ending in whitespace (the xnli prompt "..., right? "): a byte-level BPE
        # gives the space to the word after it, so it is scored with each choice
        ChoiceRequest("The capital of France is ", ("the city of Paris", "an old town"), "en"),
    ],
    ids=["space-in-choice", "space-ends-context"],
)
def test_choices_reuse_the_context_and_match_full_sequences(
    experts: list[Bundle], device: str, combine: str, request_: ChoiceRequest
) -> None:
    model = EnsembleModel([experts[0]], build_router("uniform"), combine, device=device)
    got = model.score_choices([request_])[0]
    context = request_.context.rstrip()
    for choice, lp in zip(request_.choices, got, strict=True):
        (full,), _ = brute(experts[0], [Document(request_.context + choice, "en")])
        n = len(model.encode(request_.context + choice)) - len(model.encode(context))
        assert len(lp) == n
        np.testing.assert_allclose(lp, full[-n:], atol=tolerance(device))
    if context == request_.context:  # nothing moves: the choice's own tokens, as before
        assert [len(lp) for lp in got] == [len(model.encode(c)) for c in request_.choices]


@pytest.mark.parametrize("router", ["uniform", "posterior"])
def test_experts_of_different_positions_score_choices_together(
    experts: list[Bundle],
    monkeypatch: pytest.MonkeyPatch,
    router: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An expert of fewer positions cuts a long context more than the others: the mixture
    lines their context log-probabilities up on the tokens all of them scored (was a crash
    stacking arrays of different lengths). Under the uniform router each choice token is the
    mean of the experts' probabilities, each expert scoring with its own positions."""
    load = LoadedModel.load

    def short_first(bundle: Bundle, device: Any) -> LoadedModel:
        model = load(bundle, device)
        if bundle.path == experts[0].path:
            model.max_length = 24
        return model

    monkeypatch.setattr(LoadedModel, "load", staticmethod(short_first))
    monkeypatch.setattr(LoadedModel, "swap", lambda self, bundle: None)  # each loads afresh
    request = ChoiceRequest(" ".join(d.text for d in DOCS[:2]), (" Paris", " an old town"), "en")
    pair = experts[:2]
    model = EnsembleModel(pair, build_router(router), resident=False)
    assert len(model.encode(request.context)) > 24  # cut for the first expert only
    got = model.score_choices([request])[0]
    assert "1 of 1 contexts were longer than the model's positions" in capsys.readouterr().err
    alone = [
        EnsembleModel([e], build_router("uniform"), resident=False).score_choices([request])[0]
        for e in pair
    ]
    assert capsys.readouterr().err.count("were longer") == 1  # the first expert's alone
    for c, lp in enumerate(got):
        assert len(lp) == len(alone[0][c]) == len(alone[1][c])
        if router == "uniform":
            expected = np.log((np.exp(alone[0][c]) + np.exp(alone[1][c])) / 2)
            np.testing.assert_allclose(lp, expected, atol=2e-6)


def test_a_document_without_tokens_is_refused_when_scoring_and_calibrating(
    experts: list[Bundle],
) -> None:
    model = EnsembleModel(experts, build_router("uniform"))
    for score in (model.score_documents, model.score_all_experts):
        with pytest.raises(UsageError, match=r"^a document has no tokens to score: ''$"):
            score([DOCS[0], Document("", "en")])


@pytest.mark.parametrize("choices", [(), ("", "the city"), ("the city", "")])
def test_an_empty_choice_is_refused_even_after_a_context_space(
    experts: list[Bundle], choices: tuple[str, ...]
) -> None:
    model = single_model(experts[0], "e0", device="cpu")
    with pytest.raises(UsageError, match="a request has an empty choice"):
        model.score_choices([ChoiceRequest("The capital of France is ", choices, "en")])


class FirstTokenRouter(PreRouter):
    """Expert 0 while the prefix is empty, expert 1 afterwards (tests prefix routing)."""

    name = "first-token"

    def __init__(self, stride: int | None = 1) -> None:
        self.stride = stride

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.array([[1.0, 0.0, 0.0] if not d.text else [0.0, 1.0, 0.0] for d in documents])


def test_prefix_routing_sees_only_the_text_before_each_token(
    experts: list[Bundle], device: str
) -> None:
    got = EnsembleModel(experts, FirstTokenRouter(), device=device).score_documents(DOCS[:2])
    for d in range(2):
        e0 = brute(experts[0], DOCS[d : d + 1])[0][0]
        e1 = brute(experts[1], DOCS[d : d + 1])[0][0]
        assert got[d][0] == pytest.approx(e0[0], abs=tolerance(device))
        np.testing.assert_allclose(got[d][1:], e1[1:], atol=tolerance(device))
    whole = EnsembleModel(experts, FirstTokenRouter(stride=None), device=device).score_documents(
        DOCS[:1]
    )
    np.testing.assert_allclose(whole[0], brute(experts[1], DOCS[:1])[0][0], atol=tolerance(device))


class AlternatingPairs(PreRouter):
    """Experts 0 and 1 for even documents, 1 and 2 for odd ones, each document its own
    weights."""

    name = "alternating-pairs"

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        rows = []
        for i, _ in enumerate(documents):
            share = 0.5 + i / (4 * len(documents))
            rows.append([share, 1 - share, 0.0] if i % 2 == 0 else [0.0, share, 1 - share])
        return np.array(rows)


@pytest.mark.parametrize("combine", ["logits", "product"])
def test_logit_rules_load_each_set_of_experts_once(experts: list[Bundle], combine: str) -> None:
    """Documents weighed by alternating pairs of experts, no two alike: each pair is loaded
    once (was each document's pair afresh), expert 1, in both, kept loaded between them."""
    model = EnsembleModel(experts, AlternatingPairs(), combine, resident=False)
    scored = model.score_documents(DOCS[:6])
    assert len(scored) == 6 and all(np.isfinite(lp).all() for lp in scored)
    assert dict(model.stats.loads) == {"e0": 1, "e1": 1, "e2": 1}  # was 3, 1, 3


class AbstainsOnEmptyPrefix(PreRouter):
    """Expert 1 on every prefix but the empty one, where it abstains (NaN)."""

    name = "abstains-on-empty"
    stride = 1

    def __init__(self, fallback: str | None = "uniform") -> None:
        self.fallback = fallback

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        return np.array([[0.0, 1.0, 0.0] if d.text else [np.nan] * 3 for d in documents])


def test_prefixes_a_stride_router_abstains_on_are_weighed_by_its_fallback(
    experts: list[Bundle],
) -> None:
    got = EnsembleModel(experts, AbstainsOnEmptyPrefix()).score_documents(DOCS[:1])[0]
    each = [brute(expert, DOCS[:1])[0][0] for expert in experts]
    uniform = np.log(np.mean([np.exp(lp[0]) for lp in each]))  # token 0: the empty prefix
    assert got[0] == pytest.approx(uniform, abs=2e-5)
    np.testing.assert_allclose(got[1:], each[1][1:], atol=2e-5)
    with pytest.raises(PluginError, match=r"returned NaN or infinite weights \(prefix 0\)$"):
        EnsembleModel(experts, AbstainsOnEmptyPrefix(None)).score_documents(DOCS[:1])
    with pytest.raises(UsageError) as refused:
        EnsembleModel(experts, AbstainsOnEmptyPrefix("posterior"))
    assert str(refused.value) == (
        "router 'abstains-on-empty' routes prefixes (stride 1) but its fallback 'posterior' "
        "depends on the experts' outputs: give it a pre-router fallback (e.g. fallback=uniform) "
        "or no stride"
    )


class PrefixLengthRouter(PreRouter):
    """Weights from the prefix's length, so every prefix routes differently; records the
    number of prefixes of each call."""

    name = "prefix-length"
    stride = 2

    def __init__(self) -> None:
        self.calls: list[int] = []

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
        self.calls.append(len(documents))
        rows = np.array([[1.0 + len(d.text) % 3, 1.0, 2.0] for d in documents])
        return rows / rows.sum(axis=1, keepdims=True)


def test_prefixes_of_many_documents_are_routed_in_bounded_batches(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch
) -> None:
    import xelm_cli.ensemble.runner as runner

    router = PrefixLengthRouter()
    each = [EnsembleModel(experts, router).score_documents([d])[0] for d in DOCS[:3]]
    assert len(router.calls) == 3
    monkeypatch.setattr(runner, "PREFIX_BATCH", 5)
    router.calls.clear()
    together = EnsembleModel(experts, router).score_documents(DOCS[:3])
    tokens = [len(EnsembleModel(experts, router).encode(d.text)) for d in DOCS[:3]]
    assert sum(router.calls) == sum((t + 1) // 2 for t in tokens)  # one prefix per 2 tokens
    assert max(router.calls) <= 5 and len(router.calls) > 1
    # the same weights; the experts' float32 scores of a document padded in a batch with the
    # others differ from its scores alone by rounding (a few 1e-8 relative)
    for alone, batched in zip(each, together, strict=True):
        np.testing.assert_allclose(batched, alone, rtol=1e-6)


def test_language_router_fallbacks(experts: list[Bundle]) -> None:
    az = Document("Bu gün hava çox gözəldir.", "az")
    with pytest.raises(UsageError, match=r"no expert covers language 'az'.*fallback=typology"):
        EnsembleModel(experts, build_router("language")).score_documents([az])
    typology = EnsembleModel(experts, build_router("language", {"fallback": "typology"}))
    typology.score_documents([az])
    assert dict(typology.stats.sequences) == {"e0": 1}  # az -> tr's expert
    posterior = EnsembleModel(experts, build_router("language", {"fallback": "posterior"}))
    got = posterior.score_documents([az, DOCS[5]])
    assert dict(posterior.stats.sequences) == {"e0": 1, "e1": 2, "e2": 1}
    reference = EnsembleModel(experts, build_router("posterior")).score_documents([az])
    np.testing.assert_allclose(got[0], reference[0])
    unlabelled = Document(az.text, None)  # no language: the fallback router weighs it too
    got = posterior.score_documents([unlabelled])
    np.testing.assert_allclose(got[0], reference[0])


def test_language_router_takes_other_forms_of_a_covered_language(experts: list[Bundle]) -> None:
    """arb (Standard Arabic), ar-EG and tr-Latn go to the ar and tr experts, as prepare reads
    them; fallback=none is no fallback; an unknown fallback router is refused when built."""
    text = DOCS[5].text
    forms = [Document(text, code) for code in ("arb", "ar-EG", "tr-Latn")]
    model = EnsembleModel(experts, build_router("language"))
    got = model.score_documents(forms)
    by_expert = {lang: i for i, langs in enumerate(EXPERT_LANGUAGES) for lang in langs}
    for document, scores in zip(forms, got, strict=True):
        lang = document.language.split("-")[0].replace("arb", "ar")  # type: ignore[union-attr]
        alone = EnsembleModel([experts[by_expert[lang]]], build_router("uniform"))
        np.testing.assert_allclose(scores, alone.score_documents([document])[0])
    none = build_router("language", {"fallback": "none"})
    assert none.fallback is None and not none.routes_uncovered_languages
    routers = ", ".join(sorted({r.name for r in get_registry().all_of("router")}))
    for wrong, guess in (
        ("posterioir", "'posterior' or 'posterior-last-token'"),
        ("typolgy", "'typology'"),
    ):
        with pytest.raises(UsageError) as refused:  # the option named, not as a --router
            build_router("language", {"fallback": wrong})
        assert str(refused.value) == (
            f"unknown --router-arg fallback {wrong!r} of the language router (did you mean "
            f"{guess}? it takes none, typology or a router's name: {routers})"
        )


def test_calibration_fits_the_oracle_table_and_the_posterior_prior(experts: list[Bundle]) -> None:
    runner = EnsembleModel(experts, build_router("uniform"))
    scored = runner.score_all_experts(DOCS)
    oracle = build_router("oracle")
    table = oracle.calibrate(scored, runner.experts)["table"]
    for lang in ("en", "tr", "ar", "ru"):
        nll = -sum(s.logprobs.sum(axis=1) for s in scored if s.document.language == lang)
        assert table[lang] == runner.experts[int(np.argmin(nll))].id
    prior = np.array(build_router("posterior").calibrate(scored, runner.experts)["prior"])
    assert prior.sum() == pytest.approx(1.0) and (prior > 0).all()
    totals = np.stack([s.logprobs.sum(axis=1) for s in scored])

    def likelihood(p: np.ndarray) -> float:
        from xelm_cli.ensemble.mixing import logsumexp

        return float(logsumexp(totals + np.log(p), axis=1).sum())

    assert likelihood(prior) >= likelihood(np.full(3, 1 / 3)) - 1e-9  # EM never loses


def test_a_language_no_expert_covers_is_refused_with_the_ways_out(experts: list[Bundle]) -> None:
    oracle = build_router("oracle", {"table": {"en": experts[0].id, "ar": experts[1].id}})
    with pytest.raises(UsageError) as refused:
        EnsembleModel(experts, oracle).score_documents(flores("ru", 1))
    assert str(refused.value) == (
        "the oracle router was calibrated without language 'ru' (has: ar, en): keep to those "
        "languages or calibrate on data that has it (xelm ensemble create --router oracle "
        "--calibration DEV_DATA)"
    )
    assigner = LanguageAssigner([["en", "tr"], ["ar"]])
    with pytest.raises(UsageError) as refused:
        assigner.assign([Document("Dzień dobry.", "pl"), Document("Hi.", "en")])
    assert str(refused.value) == (
        "no expert covers language(s) pl (covered: en, tr, ar); keep to the covered languages "
        "(--langs en,tr,ar) or re-cluster with it (xelm cluster typology --langs en,tr,ar,pl "
        "-k 2 -o ALLOCATION)"
    )
    with pytest.raises(UsageError) as refused:
        assigner.assign([Document("?", None), Document("Bonjour.", "fr"), Document("Cześć.", "pl")])
    assert str(refused.value).endswith(
        "re-cluster with them (xelm cluster typology --langs en,tr,ar,fr,pl -k 2 -o ALLOCATION) "
        "or give every document its language"
    )


def test_incompatible_members_are_refused(
    experts: list[Bundle], tmp_path: Path, tokenizer_dir: Path
) -> None:
    other_tok = train_tokenizer(tmp_path / "tok", vocab_size=300)
    other = init_from_config("tiny", other_tok, tmp_path / "other", languages=["de"])
    with pytest.raises(UsageError, match="different tokenizers"):
        open_members([experts[0].path, other.path])
    with pytest.raises(UsageError, match="same expert"):
        open_members([experts[0].path, experts[0].path])
    with pytest.raises(UsageError, match="an ensemble member must be a bundle"):
        open_members([tmp_path / "missing"])
    with pytest.raises(UsageError, match="logit averaging needs weights known before"):
        EnsembleModel(experts, build_router("posterior"), "logits")


def test_logit_rules_refuse_experts_of_different_output_sizes(
    tmp_path: Path, experts: list[Bundle]
) -> None:
    """One tokenizer on an embedding table padded to 384: its logits cannot be added to the
    others' 320, so logits and product are refused naming both and the way out; the mixture,
    which takes each expert's probability of the token, runs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xelm_cli.bundle.seed import init_from_hf

    hf_dir = tmp_path / "padded"
    model = AutoModelForCausalLM.from_pretrained(experts[0].path)
    model.resize_token_embeddings(384, mean_resizing=False)
    model.save_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(experts[0].path)
    tokenizer.save_pretrained(hf_dir)
    padded = init_from_hf(
        hf_dir, tmp_path / "seed", languages=["en"], doc_start=tokenizer.bos_token
    )  # framed as init_from_config frames the others
    pair = [experts[1], padded]
    for combine, rule in (("logits", "logit averaging"), ("product", "the product rule")):
        with pytest.raises(UsageError) as refused:
            EnsembleModel(pair, build_router("uniform"), combine)
        assert str(refused.value) == (
            f"{rule} adds the experts' logits, which needs as many from each: {padded.path} "
            f"gives 384 a token, {experts[1].path} 320: use --combine mixture"
        )
    (scored,) = EnsembleModel(pair, build_router("uniform")).score_documents(DOCS[:1])
    assert np.isfinite(scored).all()


@pytest.mark.parametrize("combine", ["logits", "product"])
def test_rules_that_need_one_weight_vector_refuse_prefix_routing_and_output_fallbacks(
    experts: list[Bundle], combine: str
) -> None:
    rule = {"logits": "logit averaging", "product": "the product rule"}[combine]
    with pytest.raises(UsageError) as refused:
        EnsembleModel(experts, FirstTokenRouter(), combine)
    assert str(refused.value) == (
        f"{rule} needs one weight vector per document; router 'first-token' routes prefixes "
        "(stride 1): use --combine mixture or no stride"
    )
    with pytest.raises(UsageError) as refused:
        EnsembleModel(experts, build_router("language", {"fallback": "posterior"}), combine)
    assert str(refused.value) == (
        f"{rule} needs weights known before the experts run; router 'language' falls back to "
        "'posterior', which depends on their outputs: use --combine mixture or a pre-router "
        "fallback"
    )


def test_members_framing_documents_differently_are_refused(
    experts: list[Bundle], tmp_path: Path, tokenizer_dir: Path
) -> None:
    tokenizer = experts[0].load_tokenizer()
    start_is_end = init_from_config(
        "tiny", tokenizer_dir, tmp_path / "framed", languages=["de"], doc_start=tokenizer.eos_token
    )
    framing = start_is_end.framing()
    assert (framing.start, framing.end) == (tokenizer.eos_token_id, tokenizer.eos_token_id)
    with pytest.raises(UsageError) as caught:
        open_members([experts[0].path, start_is_end.path])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert str(caught.value) == (
        f"{start_is_end.path} frames documents with start/end tokens {eos}/{eos} but "
        f"{experts[0].path} with {bos}/{eos}; the experts of an ensemble must frame documents "
        "alike (branch them from one seed, or init seeds with the same --doc-start/--doc-end)"
    )
    assert len(open_members([experts[0].path, experts[1].path])) == 2  # alike: accepted


def test_router_returning_bad_weights_is_named(experts: list[Bundle]) -> None:
    class Broken(FirstTokenRouter):
        def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> Weights:
            return np.full((len(documents), 3), 0.5)

    with pytest.raises(PluginError, match=r"router 'first-token' returned weights summing to 1\.5"):
        EnsembleModel(experts, Broken(stride=None)).score_documents(DOCS[:1])


def test_ensemble_file_records_digests_and_router(experts: list[Bundle], tmp_path: Path) -> None:
    path = tmp_path / "ens.json"
    spec = EnsembleSpec(experts, "posterior", {"prior": [0.2, 0.3, 0.5]}, "mixture")
    spec.write(path)
    again = EnsembleSpec.read(path)
    assert [b.digest for b in again.members] == [b.digest for b in experts]
    assert (again.router, again.router_options) == ("posterior", {"prior": [0.2, 0.3, 0.5]})
    with pytest.raises(UsageError, match="exists"):
        spec.write(path)
    text = path.read_text().replace(experts[1].digest, "sha256:" + "0" * 64)
    path.write_text(text)
    with pytest.raises(IntegrityError, match=r"e1: manifest digest .* differs"):
        EnsembleSpec.read(path)


def test_a_member_changed_since_the_ensemble_file_is_named_before_its_files_are_hashed(
    experts: list[Bundle], tmp_path: Path
) -> None:
    """The ensemble file's recorded digest is compared with the manifest first: a member both
    changed and damaged is reported as changed since the ensemble was created."""
    import shutil

    from conftest import flip_byte

    copies = [tmp_path / f"e{i}" for i in range(2)]
    for bundle, copy in zip(experts, copies, strict=False):
        shutil.copytree(bundle.path, copy)
    path = tmp_path / "ens.json"
    EnsembleSpec([Bundle.read(c) for c in copies], "uniform", {}, "mixture").write(path)
    text = path.read_text().replace(experts[1].digest, "sha256:" + "0" * 64)
    path.write_text(text)
    flip_byte(copies[1] / "model.safetensors")
    with pytest.raises(IntegrityError, match=r"e1: manifest digest .* differs from the"):
        EnsembleSpec.read(path)


def test_calibrating_a_router_that_takes_none_is_refused_before_any_expert_scores(
    experts: list[Bundle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xelm_cli.api import create_ensemble

    def scored(*_: Any) -> None:
        raise AssertionError("the experts scored the calibration data")

    monkeypatch.setattr(EnsembleModel, "score_all_experts", scored)
    corpus = SHARED_DATA / "corpus" / "valid"
    with pytest.raises(UsageError, match=r"router 'language' takes no calibration data; drop"):
        create_ensemble(experts, tmp_path / "ens.json", router="language", calibrate=corpus)
    assert not (tmp_path / "ens.json").exists()


def test_routing_weights_are_tallied_per_language_as_the_router_weighed(
    experts: list[Bundle],
) -> None:
    """``stats.routing``: each document's weights averaged over its tokens, then over the
    language's documents (what results record as a system's ``routing``)."""
    posterior = build_router("posterior")
    model = EnsembleModel(experts, posterior)
    model.score_documents(DOCS)
    scored = EnsembleModel(experts, build_router("uniform")).score_all_experts(DOCS)
    got = model.stats.routing.means()
    assert list(got) == ["ar", "en", "ru", "tr"]
    for language, weights in got.items():
        documents = [s for s in scored if s.document.language == language]
        per_document = [posterior.route_tokens(s, model.experts).mean(axis=1) for s in documents]
        np.testing.assert_allclose(weights, np.mean(per_document, axis=0), atol=1e-4)
    # prefix routing: token 0 (empty prefix) on expert 0, every later token on expert 1
    model = EnsembleModel(experts, FirstTokenRouter())
    model.score_documents(DOCS[:1])
    tokens = len(model.encode(DOCS[0].text))
    first = round(1 / tokens, 4)
    assert model.stats.routing.means() == {"en": [first, round(1 - 1 / tokens, 4), 0.0]}
    # logit averaging on documents and choice requests; a document without a language: "und"
    model = EnsembleModel(experts, build_router("fixed", {"weights": [1, 3, 0]}), "logits")
    model.score_documents([DOCS[0], Document(DOCS[5].text)])
    model.score_choices([ChoiceRequest("The capital of France is", ("Paris", "Rome"), "en")])
    assert model.stats.routing.means() == {"en": [0.25, 0.75, 0.0], "und": [0.25, 0.75, 0.0]}
    # choice requests in a mixture: the language router's one expert; the posterior's weights
    model = EnsembleModel(experts, build_router("language"))
    model.score_choices([ChoiceRequest("Bugün hava", (" güzel", " kötü"), "tr")])
    assert model.stats.routing.means() == {"tr": [1.0, 0.0, 0.0]}
    model = EnsembleModel(experts, posterior)
    model.score_choices([ChoiceRequest("Bugün hava", (" güzel", " kötü"), "tr")])
    assert sum(model.stats.routing.means()["tr"]) == pytest.approx(1.0, abs=1e-3)


class FirstThreeTokensRouter(OutputRouter):
    """Expert 0 for the first three target tokens, expert 1 after (weights by position)."""

    name = "first-three"

    def route_tokens(self, scored: ScoredDocument, experts: Sequence[ExpertInfo]) -> np.ndarray:
        weights = np.zeros(scored.logprobs.shape)
        weights[0, :3], weights[1, 3:] = 1.0, 1.0
        return weights


def test_a_choice_requests_routing_is_that_of_its_scored_choice_tokens(
    experts: list[Bundle],
) -> None:
    """The context is not scored: a request's weights are its choices' tokens' (here all after
    the context's first three tokens: expert 1), not the context's too."""
    model = EnsembleModel(experts, FirstThreeTokensRouter())
    request = ChoiceRequest("The capital of France is a city", (" Paris", " Rome"), "en")
    assert len(model.encode(request.context)) > 3
    model.score_choices([request])
    assert model.stats.routing.means() == {"en": [0.0, 1.0, 0.0]}


def test_the_routing_table_bolds_the_largest_weights_and_none_in_a_tie() -> None:
    from xelm_cli.ensemble.results import render_table

    routing = {"en": [0.5, 0.5], "tr": [0.25, 0.75]}
    system = {"name": "ensemble[uniform]", "kind": "ensemble", "routing": routing,
              "bundles": [{"name": "x0"}, {"name": "x1"}], "metrics": {}}  # fmt: skip
    results = {
        "primary": "perplexity", "higher_is_better": False, "systems": [system],
        "request": {"languages": ["en", "tr"]},
        "ensemble": {"router": {"name": "uniform"}, "combine": "mixture"},
    }  # fmt: skip
    table = render_table(results).renderables[1]
    cells = [list(column.cells) for column in table.columns[1:]]
    bold = [[cell.style == "bold" for cell in column] for column in cells]
    shown = [[cell.plain for cell in column] for column in cells]
    assert shown == [["0.50", "0.25"], ["0.50", "0.75"]]
    assert bold == [[False, False], [False, True]]


def test_bundles_without_a_framing_record_frame_with_their_own_tokenizers(
    tmp_path: Path,
) -> None:
    """Two bundles from before the framing record, one tokenizer.json, but one designates its
    end token as the start too: each frames as its own tokenizer says, so they are refused
    (were accepted, both scored with the first one's start token)."""
    from xelm_cli.bundle.store import write_bundle

    golden = Bundle.open(Path(__file__).parent / "fixtures" / "golden-v1")
    assert golden.manifest.framing is None
    other = tmp_path / "other"
    step = {"relation": "branch", "parents": [golden.ref]}
    with write_bundle(other, role="expert", languages=["en"], step=step, parent=golden) as out:
        tokenizer = golden.load_tokenizer()
        tokenizer.bos_token = tokenizer.eos_token
        out.save_tokenizer(tokenizer)
    relabelled = Bundle.open(other)
    assert relabelled.manifest.framing is None
    assert (
        relabelled.manifest.fingerprints["tokenizer"] == golden.manifest.fingerprints["tokenizer"]
    )
    with pytest.raises(UsageError, match="frames documents with start/end tokens"):
        open_members([golden.path, other])
