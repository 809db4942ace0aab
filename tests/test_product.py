"""The product-of-experts combination rule against a brute-force computation on tiny models."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from xelm_cli.api import ChoiceRequest, Document, UsageError
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.ensemble.ensemble_file import EnsembleSpec
from xelm_cli.ensemble.mixing import product_weights
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel

WEIGHTS = [0.2, 0.3, 0.5]


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> list[Bundle]:
    root = tmp_path_factory.mktemp("product")
    return [
        init_from_config("tiny", tokenizer_dir, root / f"e{i}", languages=[lang], seed=i + 1)
        for i, lang in enumerate(("en", "tr", "ar"))
    ]


def documents() -> list[Document]:
    docs = []
    for lang in ("en", "tr", "ar"):
        path = SHARED_DATA / "eval" / "flores200-devtest" / f"{lang}.txt"
        docs += [Document(line, lang) for line in path.read_text().splitlines()[:2]]
    return docs


def brute_product(experts: list[Bundle], ids: list[int], c: list[float]) -> list[float]:
    """Token by token, with loops: w from the previous token's likelihood times c, then the
    renormalised weighted geometric mean of the full distributions."""
    distributions = []
    for bundle in experts:
        with torch.no_grad():
            logits = bundle.load_model().eval()(torch.tensor([ids])).logits[0].double()
        distributions.append(torch.log_softmax(logits, -1))
    out = []
    for t in range(1, len(ids)):
        if t == 1:
            w = list(c)
        else:
            likes = [c[e] * math.exp(distributions[e][t - 2, ids[t - 1]]) for e in range(3)]
            w = [like / sum(likes) for like in likes]
        combined = sum(w[e] * distributions[e][t - 1] for e in range(3))
        assert isinstance(combined, torch.Tensor)
        out.append(float(combined[ids[t]] - torch.logsumexp(combined, -1)))
    return out


def test_product_rule_equals_brute_force(experts: list[Bundle]) -> None:
    docs = documents()
    ensemble = EnsembleModel(experts, build_router("fixed", {"weights": WEIGHTS}), "product")
    got = ensemble.score_documents(docs)
    tokenizer = experts[0].load_tokenizer()
    for doc, logprobs in zip(docs, got, strict=True):
        ids = [ensemble.bos, *tokenizer(doc.text, add_special_tokens=False).input_ids]
        np.testing.assert_allclose(logprobs, brute_product(experts, ids, WEIGHTS), atol=1e-9)
    # neither the mixture nor logit averaging with the same cluster weights
    for rule in ("mixture", "logits"):
        other = EnsembleModel(experts, build_router("fixed", {"weights": WEIGHTS}), rule)
        assert not np.allclose(other.score_documents(docs[:1])[0], got[0], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_product_rule_runs_on_a_gpu_as_on_the_cpu(experts: list[Bundle]) -> None:
    """On CUDA the rule's float64 arithmetic stays on the device; the experts compute in bf16
    there (tests/test_ensemble.py's tolerance)."""
    docs = documents()
    want, got = (
        EnsembleModel(experts, build_router("fixed", {"weights": WEIGHTS}), "product",
                      device=device).score_documents(docs)
        for device in ("cpu", "cuda")
    )  # fmt: skip
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-2)


def test_product_weights_follow_the_previous_token() -> None:
    logprobs = np.log(np.array([[0.5, 0.1, 0.2], [0.25, 0.4, 0.2]]))
    w = product_weights(logprobs, np.array([0.5, 0.5]))
    np.testing.assert_allclose(w[:, 0], [0.5, 0.5])
    np.testing.assert_allclose(w[:, 1], [2 / 3, 1 / 3])
    np.testing.assert_allclose(w[:, 2], [0.2, 0.8])
    # a previous token one expert gave probability 0 weighs it 0; both: the cluster weights
    with np.errstate(divide="ignore"):
        zeros = np.log(np.array([[0.0, 0.0, 0.3], [0.5, 0.0, 0.2]]))
    w = product_weights(zeros, np.array([0.75, 0.25]))
    np.testing.assert_allclose(w, [[0.75, 0.0, 0.75], [0.25, 1.0, 0.25]])


def test_one_hot_cluster_weights_give_the_single_expert(experts: list[Bundle]) -> None:
    docs = documents()[:2]
    product = EnsembleModel(experts, build_router("fixed", {"weights": [0, 1, 0]}), "product")
    single = EnsembleModel([experts[1]], build_router("uniform"))
    for a, b in zip(product.score_documents(docs), single.score_documents(docs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_choices_are_the_choice_tokens_of_full_sequences(experts: list[Bundle]) -> None:
    ensemble = EnsembleModel(experts, build_router("fixed", {"weights": WEIGHTS}), "product")
    request = ChoiceRequest("The cat sat on the", (" mat.", " roof of the house."), "en")
    got = ensemble.score_choices([request])[0]
    context = [ensemble.bos, *ensemble.encode(request.context)]
    for choice, logprobs in zip(request.choices, got, strict=True):
        tokens = ensemble.encode(choice)
        expected = brute_product(experts, [*context, *tokens], WEIGHTS)[-len(tokens) :]
        np.testing.assert_allclose(logprobs, expected, atol=1e-9)


def test_product_needs_weights_known_in_advance(experts: list[Bundle]) -> None:
    with pytest.raises(UsageError, match="the product rule needs weights known before"):
        EnsembleModel(experts, build_router("posterior"), "product")
    spec = EnsembleSpec(experts, "uniform", {}, "product")
    assert spec.to_dict()["combine"] == "product"
    with pytest.raises(UsageError, match="choose mixture, logits, product"):
        EnsembleSpec(experts, "uniform", {}, "geometric")


@pytest.mark.parametrize("lengths", [(16, 16), (16, 24)])
def test_long_documents_run_window_by_window(
    experts: list[Bundle], lengths: tuple[int, int]
) -> None:
    """Two copies of one expert: their product is that expert, window by window as scoring
    windows it, whether the copies share a context length (their windows run side by side)
    or not (each windows the document with its own)."""
    from xelm_cli.ensemble.product import product_logprobs
    from xelm_cli.ensemble.scoring import LoadedModel, score_sequences

    copies = []
    for length in lengths:
        model = LoadedModel.load(experts[0], torch.device("cpu"))
        model.max_length = length
        copies.append(model)
    tokenizer = experts[0].load_tokenizer()
    text = " ".join(d.text for d in documents()[:2])
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]
    assert len(ids) > 3 * max(lengths)
    with torch.inference_mode():
        got = product_logprobs(copies, [0.4, 0.6], ids)
        (alone,) = score_sequences(copies[:1], [1.0], [ids])
    if lengths[0] == lengths[1]:
        np.testing.assert_allclose(got, alone, atol=1e-6)
    else:  # the first window, where both see the same tokens, agrees
        np.testing.assert_allclose(got[: lengths[0] - 1], alone[: lengths[0] - 1], atol=1e-6)
        assert np.isfinite(got).all() and len(got) == len(ids) - 1
