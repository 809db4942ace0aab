"""The c-BTM router ``tfidf`` (plugins/xelm_tfidf/router.py) on a TF-IDF allocation fitted on
real text."""

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SHARED_DATA
from xelm_tfidf import TfidfRouter
from xelm_tfidf.embedder import TfidfSettings
from xelm_tfidf.fitting import fit_sample
from xelm_tfidf.kmeans import KMeansSettings
from xelm_tfidf.state import TfidfModel, load_model, save_model

from xelm_cli.api import (
    Allocation,
    Document,
    ExpertInfo,
    UsageError,
    check_weights,
    iter_documents,
    read_allocation,
)
from xelm_cli.cli import run
from xelm_cli.demo import pipeline
from xelm_cli.plugin.host import get_registry

VALID = SHARED_DATA / "corpus" / "valid"
LANGS = ("ar", "ru", "zh", "en")
K = 4


def _documents(per_language: int, skip: int = 0, langs=LANGS) -> list[Document]:
    docs = []
    for lang in langs:
        stream = iter_documents(VALID / f"{lang}.jsonl.zst")
        docs += list(itertools.islice(stream, skip, skip + per_language))
    return docs


@pytest.fixture(scope="module")
def allocation(tmp_path_factory: pytest.TempPathFactory) -> Allocation:
    """A k=4 nearest-centroid TF-IDF allocation of 4 x 150 real sentences."""
    result = fit_sample(
        _documents(150),
        kmeans=KMeansSettings(k=K),
        tfidf=TfidfSettings(max_features=20_000, n_components=20),
        max_per_language=None,
        assignment="nearest",
    )
    out = tmp_path_factory.mktemp("tfidf") / "alloc"
    return save_model(out, result.model, shares=result.shares, training={})


@pytest.fixture(scope="module")
def model(allocation: Allocation) -> TfidfModel:
    return load_model(allocation)


@pytest.fixture(scope="module")
def held_out(model: TfidfModel) -> list[Document]:
    """Held-out paragraphs of 4 sentences that share at least one term with the vocabulary
    (single sentences mostly do not, with a vocabulary fitted on 600 sentences)."""
    paragraphs = []
    for lang in LANGS:
        sentences = [d.text for d in _documents(40, skip=300, langs=(lang,))]
        paragraphs += [Document(" ".join(sentences[i : i + 4]), lang) for i in range(0, 40, 4)]
    known = [bool(row.any()) for row in model.embed([d.text for d in paragraphs])]
    assert sum(known) >= 25, known
    return [paragraph for paragraph, ok in zip(paragraphs, known, strict=True) if ok]


def _experts(allocation: Allocation, clusters) -> list[ExpertInfo]:
    return [
        ExpertInfo(
            f"id-{i}",
            f"expert-{i}",
            ("en",),
            allocation={"clusterer": "tfidf", "expert": c, "digest": allocation.digest},
        )
        for i, c in enumerate(clusters)
    ]


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _route(router: TfidfRouter, documents, experts) -> np.ndarray:
    return check_weights(router.route(documents, experts), len(documents), len(experts))


@pytest.mark.parametrize(("distance", "power"), [("squared", 1), ("squared-twice", 2)])
def test_weights_are_the_softmax_of_the_distances(allocation, model, held_out, distance, power):
    router = TfidfRouter(allocation=str(allocation.path), temperature=0.1, distance=distance)
    weights = _route(router, held_out, _experts(allocation, range(K)))
    distances = model.distances([d.text for d in held_out])
    np.testing.assert_allclose(weights, _softmax(-(distances**power) / 0.1), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert weights.dtype == np.float64 and weights.shape == (len(held_out), K)
    assert (weights.max(axis=1) < 1).all()  # T = 0.1 is soft on these texts


def test_top_1_is_the_nearest_centroid(allocation, model, held_out):
    experts = _experts(allocation, range(K))
    weights = _route(TfidfRouter(allocation=allocation.path, top_k=1), held_out, experts)
    assert set(np.unique(weights)) == {0.0, 1.0}
    texts = [d.text for d in held_out]
    np.testing.assert_array_equal(weights.argmax(axis=1), model.distances(texts).argmin(axis=1))
    np.testing.assert_array_equal(weights.argmax(axis=1), model.assign(held_out))  # no offsets
    assert len(set(weights.argmax(axis=1).tolist())) > 1


def test_top_2_keeps_two_weights_renormalised(allocation, model, held_out):
    experts = _experts(allocation, range(K))
    soft = _route(TfidfRouter(allocation=allocation.path), held_out, experts)
    weights = _route(TfidfRouter(allocation=allocation.path, top_k=2), held_out, experts)
    assert ((weights > 0).sum(axis=1) == 2).all()
    best = np.argsort(-soft, axis=1)[:, :2]
    rows = np.arange(len(held_out))[:, None]
    kept = soft[rows, best]
    np.testing.assert_allclose(weights[rows, best], kept / kept.sum(axis=1, keepdims=True))


def test_small_temperature_is_one_hot(allocation, model, held_out):
    router = TfidfRouter(allocation=allocation.path, temperature=1e-6)
    weights = _route(router, held_out, _experts(allocation, range(K)))
    nearest = model.distances([d.text for d in held_out]).argmin(axis=1)
    np.testing.assert_allclose(weights, np.eye(K)[nearest], atol=1e-12)


@pytest.mark.parametrize("top_k", [None, 1])
def test_text_without_known_terms_gets_equal_weights(allocation, model, top_k):
    router = TfidfRouter(allocation=allocation.path, stride=16, top_k=top_k)
    assert router.stride == 16
    texts = ["", "   ", "qqqqzzzz xxyyxx"]
    # The zero embedding is not equally far from the centroids, so this is handled explicitly.
    assert np.ptp(model.distances([""])) > 0
    weights = _route(router, [Document(t) for t in texts], _experts(allocation, range(K)))
    np.testing.assert_allclose(weights, 0.25)


def test_prefixes_as_the_runner_routes_them(allocation, model, held_out):
    """With a stride the runner routes the text before every n-th target token: the empty
    prefix first, then longer ones; every row is valid and the whole text routes as itself."""
    text = held_out[0].text
    prefixes = [Document(text[:end]) for end in (0, 1, len(text) // 2, len(text))]
    router = TfidfRouter(allocation=allocation.path, stride=8)
    weights = _route(router, prefixes, _experts(allocation, range(K)))
    np.testing.assert_allclose(weights[0], 0.25)
    whole = _route(router, [held_out[0]], _experts(allocation, range(K)))
    np.testing.assert_allclose(weights[-1], whole[0])


def test_built_from_command_line_options(allocation, held_out):
    from xelm_cli.ensemble.routing import build_router
    from xelm_cli.plugin.options import parse_pairs

    pairs = [f"allocation={allocation.path}", "top_k=2", "temperature=0.5"]
    router = build_router("tfidf", parse_pairs([*pairs, "experts_in_order=true"], "--router-arg"))
    assert isinstance(router, TfidfRouter)
    assert (router.top_k, router.temperature, router.experts_in_order) == (2, 0.5, True)
    anonymous = [ExpertInfo(f"id-{i}", f"e{i}", ("en",)) for i in range(K)]
    assert ((_route(router, held_out, anonymous) > 0).sum(axis=1) == 2).all()


def test_experts_are_mapped_by_their_allocation_reference(allocation, held_out):
    router = TfidfRouter(allocation=allocation.path)
    ordered = _route(router, held_out, _experts(allocation, range(K)))
    permutation = [2, 0, 3, 1]
    permuted = _route(router, held_out, _experts(allocation, permutation))
    np.testing.assert_allclose(permuted, ordered[:, permutation])


def test_experts_of_one_cluster_share_and_missing_clusters_are_dropped(allocation, held_out):
    router = TfidfRouter(allocation=allocation.path)
    full = _route(router, held_out, _experts(allocation, range(K)))
    weights = _route(router, held_out, _experts(allocation, [1, 3, 1]))
    expected = full[:, [1, 3]] / full[:, [1, 3]].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(weights[:, 0], expected[:, 0] / 2)
    np.testing.assert_allclose(weights[:, 2], expected[:, 0] / 2)
    np.testing.assert_allclose(weights[:, 1], expected[:, 1])


def test_texts_in_languages_no_expert_covers_are_routed(allocation, held_out):
    """Every expert covers en; ar, ru and zh texts are weighed by their terms all the same, so
    ``xelm ensemble eval`` keeps those languages by default (``routes_uncovered_languages``)."""
    router = TfidfRouter(allocation=allocation.path)
    assert router.routes_uncovered_languages
    foreign = [d for d in held_out if d.language != "en"]
    weights = _route(router, foreign, _experts(allocation, range(K)))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert (weights.max(axis=1) > 0.5).mean() > 0.5  # mostly one cluster, not uniform


def test_expert_without_a_reference_is_refused(allocation, held_out):
    router = TfidfRouter(allocation=allocation.path)
    experts = _experts(allocation, range(K))
    experts[2] = ExpertInfo("id-x", "stranger", ("en",), allocation=None)
    with pytest.raises(UsageError) as error:
        router.route(held_out, experts)
    message = str(error.value)
    assert "stranger" in message and "experts_in_order=true" in message and "\n" not in message
    other = {"clusterer": "tfidf", "expert": 0, "digest": "sha256:" + "0" * 64}
    experts[2] = ExpertInfo("id-y", "elsewhere", ("en",), allocation=other)
    with pytest.raises(UsageError, match="elsewhere"):
        router.route(held_out, experts)


def test_experts_in_order(allocation, held_out):
    anonymous = [ExpertInfo(f"id-{i}", f"e{i}", ("en",)) for i in range(K)]
    router = TfidfRouter(allocation=allocation.path, experts_in_order=True)
    reference = _route(
        TfidfRouter(allocation=allocation.path), held_out, _experts(allocation, range(K))
    )
    np.testing.assert_allclose(_route(router, held_out, anonymous), reference)
    with pytest.raises(UsageError, match="ensemble has 3"):
        router.route(held_out, anonymous[:3])


def test_allocation_json_path_and_no_documents(allocation):
    router = TfidfRouter(allocation=str(allocation.path / "allocation.json"))
    assert router.route([], _experts(allocation, range(K))).shape == (0, K)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"distance": "cosine"},
            "router 'tfidf': option 'distance' must be one of squared, squared-twice, not 'cosine'",
        ),
        ({"temperature": 0}, "tfidf router temperature must be positive and finite, got 0.0"),
        ({"temperature": -1.0}, "tfidf router temperature must be positive and finite, got -1.0"),
        (
            {"temperature": float("inf")},
            "tfidf router temperature must be positive and finite, got inf",
        ),
        ({"temperature": "hot"}, "router 'tfidf': option 'temperature' expects float, not 'hot'"),
        ({"top_k": 0}, "router 'tfidf': option 'top_k' must be at least 1, not 0"),
        ({"top_k": 1.5}, "router 'tfidf': option 'top_k' expects int or none, not '1.5'"),
        ({"stride": 0}, "router 'tfidf': option 'stride' must be at least 1, not 0"),
        ({"experts_in_order": "maybe"}, "router 'tfidf': option 'experts_in_order' expects bool"),
        ({"experts_in_order": 1}, "router 'tfidf': option 'experts_in_order' expects bool"),
        (
            {"colour": "red"},
            "router 'tfidf' has no option 'colour' (its options: allocation, temperature, "
            "top_k, stride, distance, experts_in_order, offsets)",
        ),
    ],
)
def test_bad_options_are_refused(allocation, options, message):
    with pytest.raises(UsageError) as caught:
        TfidfRouter(allocation=allocation.path, **options)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_allocation_is_required(allocation):
    with pytest.raises(UsageError) as caught:
        TfidfRouter(temperature=0.5)
    assert str(caught.value).startswith(
        "router 'tfidf' needs option 'allocation' (The TF-IDF allocation"
    )
    assert str(caught.value).endswith("pass --router-arg allocation=VALUE")


def test_other_allocations_are_refused(tmp_path: Path, capsys):
    out = tmp_path / "typology"
    assert run(["cluster", "typology", "--langs", "en,tr", "-k", "2", "-o", str(out)]) == 0
    assert read_allocation(out).clusterer == "typology"
    with pytest.raises(UsageError, match="'typology'") as error:
        TfidfRouter(allocation=str(out))
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="not found"):
        TfidfRouter(allocation=str(tmp_path / "missing"))


def test_registered():
    registration = get_registry().get("router", "tfidf")
    assert registration.obj is TfidfRouter
    assert TfidfRouter.needs_expert_outputs is False


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Allocation:
    """A k=4 balanced TF-IDF allocation (nonzero offsets) of 4 x 150 real sentences."""
    result = fit_sample(
        _documents(150),
        kmeans=KMeansSettings(k=K),
        tfidf=TfidfSettings(max_features=20_000, n_components=20),
        max_per_language=None,
        assignment="balanced",
    )
    out = tmp_path_factory.mktemp("tfidf") / "balanced"
    return save_model(out, result.model, shares=result.shares, training={})


def test_a_balanced_allocation_routes_as_its_training_documents_were_assigned(
    balanced: Allocation, held_out
):
    """Experts of a balanced allocation trained on argmin (D + o): the router's top-1 is that
    expert (with offsets=false, the plain nearest centroid, which the review found differing
    for 15-29% of documents), and its weights are the softmax of -(D + o) / T."""
    model = load_model(balanced)
    assert model.offsets is not None and np.ptp(model.offsets) > 0
    texts = [d.text for d in held_out]
    experts = _experts(balanced, range(K))
    top1 = _route(TfidfRouter(allocation=balanced.path, top_k=1), held_out, experts)
    np.testing.assert_array_equal(top1.argmax(axis=1), model.assign(held_out))
    soft = _route(TfidfRouter(allocation=balanced.path), held_out, experts)
    shifted = model.distances(texts) + model.offsets
    np.testing.assert_allclose(soft, _softmax(-shifted / 0.1), rtol=1e-9, atol=1e-15)
    plain = _route(TfidfRouter(allocation=balanced.path, offsets=False), held_out, experts)
    np.testing.assert_allclose(plain, _softmax(-model.distances(texts) / 0.1), rtol=1e-9)
    np.testing.assert_array_equal(model.distances(texts, offsets=True), shifted)


def test_the_demo_eval_routed_metric_is_the_router_top_1(
    balanced: Allocation, held_out, monkeypatch
):
    """The demo's eval_routed (share of a language's evaluation texts whose highest-weight
    expert under the tfidf router is its main expert) counts the router's top-1, argmin (D + o),
    not the plain nearest centroid, which differs on a balanced allocation."""
    model = load_model(balanced)
    texts = [d.text for d in held_out]
    top1 = _route(
        TfidfRouter(allocation=balanced.path, top_k=1), held_out, _experts(balanced, range(K))
    )
    routed = top1.argmax(axis=1)
    plain = model.distances(texts).argmin(axis=1)
    assert (routed != plain).any()  # where they differ
    langs = [d.language for d in held_out]

    def share(labels, lang: str, cluster: int) -> float:
        mine = [int(c) for c, language in zip(labels, langs, strict=True) if language == lang]
        return round(mine.count(cluster) / len(mine), 4)

    # each language's "main" expert: the router's top-1 of a text the two rules disagree on
    clusters = {}
    for lang in LANGS:
        differing = [
            r
            for r, p, language in zip(routed, plain, langs, strict=True)
            if r != p and language == lang
        ]
        clusters[lang] = int(differing[0]) if differing else int(routed[langs.index(lang)])
    purity = {lang: {"cluster": cluster} for lang, cluster in clusters.items()}
    monkeypatch.setattr(pipeline, "read_documents", lambda *args, **kwargs: held_out)
    demo = SimpleNamespace(data=Path("data"), preset=SimpleNamespace(eval_documents=None))
    pipeline.Demo.add_eval_routing(demo, model, purity)  # type: ignore[arg-type]
    expected = {lang: share(routed, lang, cluster) for lang, cluster in clusters.items()}
    assert {lang: entry["eval_routed"] for lang, entry in purity.items()} == expected
    assert expected != {lang: share(plain, lang, cluster) for lang, cluster in clusters.items()}
