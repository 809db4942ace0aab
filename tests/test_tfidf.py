"""The balanced TF-IDF clusterer plugin (plugins/xelm_tfidf) and `xelm cluster tfidf`."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from xelm_tfidf import TfidfRouter
from xelm_tfidf.analyzer import NUMBER_TOKEN, Analyzer, AnalyzerSettings, char_ngrams
from xelm_tfidf.embedder import TfidfSettings, fit_embedder, fit_pipeline, normalize_rows
from xelm_tfidf.fitting import fit_sample, stop_words_for
from xelm_tfidf.kmeans import (
    LSA_MAX_DOCUMENTS,
    TRANSFERS_MAX_K,
    KMeansSettings,
    assign_auction,
    assign_balanced,
    assign_lsa,
    assignment_offsets,
    equal_capacities,
    fit_balanced_kmeans,
    offset_assignment,
    squared_distances,
)
from xelm_tfidf.state import TfidfModel, expert_languages, load_model, save_model

from xelm_cli.api import (
    Document,
    FormatError,
    IntegrityError,
    group_documents,
    iter_documents,
    read_allocation,
)
from xelm_cli.bundle.branching import branch
from xelm_cli.cli import run
from xelm_cli.ensemble.members import expert_infos

VALID = SHARED_DATA / "corpus" / "valid"
LANGS = ("ar", "ru", "zh", "en")
PER_LANGUAGE = 150
SMALL = TfidfSettings(max_features=20_000, n_components=20)


def _documents(langs=LANGS, per_language=PER_LANGUAGE, skip=0) -> list[Document]:
    docs = []
    for lang in langs:
        stream = iter_documents(VALID / f"{lang}.jsonl.zst")
        docs += list(itertools.islice(stream, skip, skip + per_language))
    return docs


@pytest.fixture(scope="module")
def fitted():
    return fit_sample(_documents(), kmeans=KMeansSettings(k=4), tfidf=SMALL, max_per_language=None)


def test_numbers_become_one_token():
    analyze = Analyzer(AnalyzerSettings())
    assert analyze("In 2024 we sold 3rd-party 1,000 units 5") == [
        "in", "#NUMBER", "we", "sold", "#NUMBER", "party", "#NUMBER", "#NUMBER", "units",
        "#NUMBER",
    ]  # fmt: skip


def test_stop_words_and_lowercase():
    analyze = Analyzer(AnalyzerSettings(stop_words=stop_words_for(["en"])))
    assert analyze("The Cat and THE Dog") == ["cat", "dog"]


def test_cjk_segmentation_makes_character_bigrams():
    analyze = Analyzer(AnalyzerSettings(segment="cjk"))
    assert analyze("我爱北京 ok") == ["我爱", "爱北", "北京", "ok"]
    assert analyze("東京へ行く") == ["東京", "京へ", "へ行", "行く"]
    assert analyze("ภาษาไทย") == ["ภา", "าษ", "ษา", "าไ", "ไท", "ทย"]
    assert analyze("中") == ["中"]
    assert Analyzer(AnalyzerSettings(segment="none"))("我爱北京 ok") == ["我爱北京", "ok"]


def test_combining_marks_stay_inside_words():
    assert Analyzer(AnalyzerSettings())("हिन्दी भाषा") == ["हिन्दी", "भाषा"]


def test_text_without_a_segmented_run_yields_what_the_full_rule_does():
    """The analyzer skips the segmenting regex (a lookahead on every character) for text with
    no Chinese, Japanese or Thai character: the same terms, on every language's sample text
    and on mixed, Thai-mark and digit-led cases."""
    from xelm_tfidf.analyzer import _token_regex

    full = _token_regex(True)

    def reference(text: str) -> list[str]:
        terms: list[str] = []
        for match in full.finditer(text.lower()):
            if match.group(1):
                terms += char_ngrams(match.group(1), 2)
            elif match.group(0)[0].isdecimal():
                terms.append(NUMBER_TOKEN)
            elif len(match.group(0)) >= 2:
                terms.append(match.group(0))
        return terms

    analyze = Analyzer(AnalyzerSettings())
    texts = [d.text for d in _documents(("ar", "ru", "zh", "en", "hi", "ja", "ko", "el"), 40)]
    texts += ["ok 我爱北京 ok", "ภาษาไทย ok", "3rd x 東京2", "ÉCOLE İstanbul", ""]
    assert [analyze(text) for text in texts] == [reference(text) for text in texts]


def test_balanced_assignment_is_optimal_on_a_tiny_case():
    rng = np.random.default_rng(3)
    cost = rng.random((7, 3))
    capacities = equal_capacities(7, 3)
    best = min(
        sum(cost[i, c] for i, c in enumerate(labels))
        for labels in itertools.product(range(3), repeat=7)
        if (np.bincount(labels, minlength=3) == capacities).all()
    )
    for labels in (assign_lsa(cost, capacities), assign_auction(cost, capacities)[0]):
        assert (np.bincount(labels, minlength=3) == capacities).all()
        assert cost[np.arange(7), labels].sum() == pytest.approx(best, abs=1e-3)


@pytest.mark.parametrize("solver", ["lsa", "auction", "transfers"])
def test_batch_assignment_sizes_within_one(solver):
    rng = np.random.default_rng(0)
    cost = rng.random((503, 5)) + np.array([0, 0.5, 0.5, 0.9, 2.0])  # skewed towards cluster 0
    labels, _ = assign_balanced(cost, solver)
    sizes = np.bincount(labels, minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 503


def test_auto_solver_picks_transfers_for_few_clusters_then_by_batch_size():
    """benchmarks/tfidf_solver.md: transfers up to TRANSFERS_MAX_K clusters; beyond, lsa is
    faster up to about LSA_MAX_DOCUMENTS documents a batch, the auction above (only the
    auction returns prices)."""
    rng = np.random.default_rng(4)
    many = TRANSFERS_MAX_K + 1
    for n, k, solver in (
        (LSA_MAX_DOCUMENTS + 1, 4, "transfers"),
        (LSA_MAX_DOCUMENTS, many, "lsa"),
        (LSA_MAX_DOCUMENTS + 1, many, "auction"),
    ):
        cost = rng.random((n, k))
        labels, prices = assign_balanced(cost, "auto")
        expected, _ = assign_balanced(cost, solver)
        assert (prices is None) == (solver != "auction")
        np.testing.assert_array_equal(labels, expected)


def test_auction_matches_the_exact_solver():
    rng = np.random.default_rng(1)
    points = normalize_rows(rng.normal(size=(600, 8)))
    cost = ((points[:, None, :] - points[:4][None]) ** 2).sum(-1)
    capacities = equal_capacities(600, 4)
    exact = cost[np.arange(600), assign_lsa(cost, capacities)].sum()
    auction = cost[np.arange(600), assign_auction(cost, capacities)[0]].sum()
    assert auction == pytest.approx(exact, rel=1e-6)


def test_portable_transform_equals_sklearn():
    train, held_out = _documents(per_language=100), _documents(per_language=30, skip=200)
    texts = [d.text for d in train]
    settings = AnalyzerSettings(stop_words=stop_words_for(LANGS))
    vectorizer, svd, _ = fit_pipeline(texts, settings, SMALL)
    embedder, points = fit_embedder(texts, settings, SMALL)
    np.testing.assert_array_equal(points, embedder.transform(texts))  # bit for bit
    held = [d.text for d in held_out]
    expected = normalize_rows(svd.transform(vectorizer.transform(held)))
    np.testing.assert_allclose(embedder.transform(held), expected, atol=1e-5)
    assert np.abs(embedder.tfidf(held) - vectorizer.transform(held)).max() < 1e-12


def test_the_fits_embeddings_are_its_transform_bit_for_bit_with_sublinear_tf():
    """fit_embedder embeds its texts from the fit's counts (analysed once): the same numbers
    as transform, which the allocation's assigner uses, also with sublinear tf."""
    texts = [d.text for d in _documents(per_language=60)]
    settings = AnalyzerSettings(stop_words=stop_words_for(LANGS))
    embedder, points = fit_embedder(
        texts, settings, TfidfSettings(n_components=8, sublinear_tf=True)
    )
    np.testing.assert_array_equal(points, embedder.transform(texts))


def _paragraphs(sentences_per_document: int = 5, per_language: int = 100) -> list[Document]:
    """Documents of a few consecutive sentences: single sentences share too few terms for
    TF-IDF + SVD to see their language (measured: purity about 0.3, i.e. chance)."""
    docs = []
    for lang in LANGS:
        sentences = _documents([lang], per_language * sentences_per_document)
        for start in range(0, len(sentences), sentences_per_document):
            chunk = sentences[start : start + sentences_per_document]
            docs.append(Document(" ".join(d.text for d in chunk), lang))
    return docs


@pytest.mark.parametrize(
    ("assignment", "lowest"),
    # Measured with seed 0 (chance is about 0.25-0.3): nearest ar 0.69, en 0.84, ru 0.55,
    # zh 0.76 (sizes 94, 90, 89, 127); balanced ar 0.59, en 0.83, ru 0.39, zh 0.76 (sizes
    # 101, 99, 100, 100: equal sizes move some documents off their nearest centroid).
    [("nearest", 0.45), ("balanced", 0.35)],
)
def test_languages_of_different_scripts_mostly_separate(assignment, lowest):
    result = fit_sample(
        _paragraphs(),
        kmeans=KMeansSettings(k=4),
        tfidf=SMALL,
        max_per_language=None,
        assignment=assignment,
    )
    purity = {lang: max(shares) for lang, shares in result.shares.items()}
    assert min(purity.values()) >= lowest, purity
    assert np.mean(list(purity.values())) >= 0.6, purity


def test_fitting_is_deterministic(fitted):
    again = fit_sample(_documents(), kmeans=KMeansSettings(k=4), tfidf=SMALL, max_per_language=None)
    np.testing.assert_array_equal(again.model.centroids, fitted.model.centroids)


def test_clusters_without_capacity_get_nothing_from_the_auction():
    """Fewer documents than clusters (a last batch of N mod batch_size < k documents) leaves
    clusters of capacity 0: the auction gives them none, as the exact solver does (was an
    IndexError)."""
    rng = np.random.default_rng(5)
    cost = rng.random((2, 4))
    capacities = equal_capacities(2, 4)
    labels, prices = assign_auction(cost, capacities)
    np.testing.assert_array_equal(labels, assign_lsa(cost, capacities))
    assert np.isinf(prices[2:]).all() and np.isfinite(prices[:2]).all()
    points = normalize_rows(rng.normal(size=(11, 5)))  # batches of 4, 4 and 3 for k = 4
    auction = fit_balanced_kmeans(points, KMeansSettings(k=4, batch_size=4, solver="auction"))
    exact = fit_balanced_kmeans(points, KMeansSettings(k=4, batch_size=4, solver="lsa"))
    np.testing.assert_allclose(auction, exact)


def test_auction_prices_reproduce_the_balanced_assignment():
    rng = np.random.default_rng(2)
    points = normalize_rows(rng.normal(size=(900, 6)) + np.array([2.0, 0, 0, 0, 0, 0]))
    centroids = points[:5]
    cost = squared_distances(points, centroids)
    labels, _ = assign_auction(cost, equal_capacities(900, 5))
    offsets = assignment_offsets(points, centroids, "balanced")
    assert offsets.min() == 0.0
    by_offsets = offset_assignment(cost, offsets)
    assert (by_offsets != labels).sum() <= 2  # only documents within eps of a tie may differ
    assert np.bincount(by_offsets, minlength=5).max() <= 180 + 2
    nearest = offset_assignment(cost, assignment_offsets(points, centroids, "nearest"))
    np.testing.assert_array_equal(nearest, cost.argmin(axis=1))


def _spread(sizes) -> float:
    sizes = np.asarray(sizes, dtype=float)
    return float(np.abs(sizes - sizes.mean()).max() / sizes.mean())


def test_training_clusters_are_balanced(fitted):
    docs = _documents()
    sizes = np.bincount(fitted.model.assign(docs), minlength=4)
    assert sizes.tolist() == fitted.training["cluster_sizes"]
    assert fitted.training["assignment"] == fitted.model.assignment == "balanced"
    assert _spread(sizes) <= 0.10, sizes


def test_nearest_assignment_is_plain_argmin(fitted):
    nearest = fit_sample(
        _documents(),
        kmeans=KMeansSettings(k=4),
        tfidf=SMALL,
        max_per_language=None,
        assignment="nearest",
    )
    np.testing.assert_array_equal(nearest.model.centroids, fitted.model.centroids)
    texts = [d.text for d in _documents(per_language=40, skip=300)]
    np.testing.assert_array_equal(
        nearest.model.assign_texts(texts), nearest.model.distances(texts).argmin(axis=1)
    )
    train_labels = nearest.model.distances([d.text for d in _documents()]).argmin(axis=1)
    assert np.bincount(train_labels, minlength=4).tolist() == nearest.training["cluster_sizes"]


def test_save_load_assign_round_trip(fitted, tmp_path):
    allocation = save_model(tmp_path / "alloc", fitted.model, shares=fitted.shares, training={})
    loaded = load_model(read_allocation(tmp_path / "alloc"))
    assert loaded.assignment == "balanced" and allocation.raw["tfidf"]["assignment"] == "balanced"
    np.testing.assert_array_equal(loaded.offsets, fitted.model.offsets)
    train = _documents()
    np.testing.assert_array_equal(loaded.assign(train), fitted.model.assign(train))
    docs = _documents(per_language=40, skip=300)
    np.testing.assert_array_equal(loaded.assign(docs), fitted.model.assign(docs))
    texts = [d.text for d in docs]
    np.testing.assert_allclose(loaded.distances(texts), fitted.model.distances(texts))
    assert loaded.distances(texts).shape == (len(docs), 4)
    assert allocation.raw["language_shares"] == fitted.shares
    assert all(allocation.experts)


def test_every_language_is_listed_under_its_largest_share_expert(fitted, tmp_path):
    """sw spread evenly over 12 experts (8% each, under the 10% threshold) is listed under
    expert 0, its largest share (the lowest on ties), so the allocation's languages, which
    prepare --expert all reads, have it (were without it)."""
    one_each = ["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ja", "ko", "ru", "tr"]
    k = len(one_each)
    shares = {lang: [float(i == j) for j in range(k)] for i, lang in enumerate(one_each)}
    shares["sw"] = [round(1 / k, 6)] * k
    shares["zh"] = [0.0] * 5 + [0.55, 0.45] + [0.0] * 5  # over the threshold in two experts
    experts = expert_languages(shares, k)
    assert experts[0] == ["ar", "sw"] and experts[5:7] == [["es", "zh"], ["fr", "zh"]]
    assert experts[1:5] + experts[7:] == [[lang] for lang in one_each[1:5] + one_each[7:]]
    centroids = np.zeros((k, fitted.model.embedder.dimensions))
    model = TfidfModel(fitted.model.embedder, centroids)
    allocation = save_model(tmp_path / "alloc", model, shares=shares, training={})
    assert set(read_allocation(allocation.path).languages) == set(shares)


def _no_pickle(directory: Path) -> None:
    for file in directory.rglob("*"):
        data = file.read_bytes()
        assert not data.startswith(b"\x80"), f"{file} looks like a pickle"
        assert b"numpy.core" not in data and b"sklearn" not in data.replace(b'"sklearn', b"")


def test_cli_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in LANGS:
        text = "\n".join(d.text for d in _documents([lang], 60))
        (corpus / f"{lang}.txt").write_text(text + "\n")
    out = tmp_path / "alloc"
    argv = ["cluster", "tfidf", str(corpus), "-k", "4", "-o", str(out), "--max-features", "5000"]
    assert run([*argv, "--components", "16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["k"] == 4 and summary["documents"] == 240
    assert sorted(summary["cluster_sizes"]) != [0, 0, 0, 240]
    allocation = read_allocation(out)
    assert allocation.clusterer == "tfidf" and allocation.k == 4
    assert sorted(p.name for p in out.iterdir()) == ["allocation.json", "arrays.safetensors"]
    _no_pickle(out)
    assert summary["assignment"] == "balanced" and _spread(summary["cluster_sizes"]) <= 0.10
    assert run([*argv]) == 2  # exists already
    assert "already exists" in capsys.readouterr().err
    nearest = tmp_path / "nearest"
    plain = ["cluster", "tfidf", str(corpus), "-o", str(nearest), "--components", "16"]
    assert run([*plain, "--assignment", "nearest", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["assignment"] == "nearest"
    assert load_model(read_allocation(nearest)).offsets.tolist() == [0.0] * 4
    assert run([*plain[:4], str(tmp_path / "x"), "--assignment", "fair"]) == 2
    assert (
        "option 'assignment' must be one of balanced, nearest, not 'fair'"
        in capsys.readouterr().err
    )
    subset = ["cluster", "tfidf", str(corpus), "-k", "2", "-o", str(tmp_path / "subset")]
    assert run([*subset, "--langs", ",".join(LANGS[:2]), "--components", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 120
    assert set(read_allocation(tmp_path / "subset").languages) <= set(LANGS[:2])


def test_the_same_fit_writes_the_same_allocation(tmp_path, capsys, seed_bundle):
    """No wall-clock time in allocation.json (allocation-v1: the same fit, run again, writes the
    same bytes), so a bundle branched from the first fit is an expert of the second; the
    fit's seconds are in the --json summary."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in LANGS:
        text = "\n".join(d.text for d in _documents([lang], 40))
        (corpus / f"{lang}.txt").write_text(text + "\n")
    fits = []
    for name in ("a1", "a2"):
        argv = ["cluster", "tfidf", str(corpus), "-k", "2", "-o", str(tmp_path / name)]
        assert run([*argv, "--components", "8", "--seed", "1", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert isinstance(summary["seconds"], float) and summary["seconds"] >= 0
        fits.append((summary, read_allocation(tmp_path / name)))
    (s1, a1), (s2, a2) = fits
    assert "seconds" not in a1.raw["tfidf"]["training"]
    assert (tmp_path / "a1" / "allocation.json").read_bytes() == (
        tmp_path / "a2" / "allocation.json"
    ).read_bytes()
    assert a1.digest == a2.digest == s1["digest"] == s2["digest"]
    expert = branch(seed_bundle, tmp_path / "e1", allocation=a1, expert=1)
    router = TfidfRouter(allocation=str(a2.path))
    assert router.clusters_of(expert_infos([expert])) == [1]


def test_ctrl_c_during_a_fit_is_an_interrupt_not_a_usage_error(tmp_path, capsys, monkeypatch):
    import xelm_tfidf.fitting

    from xelm_cli.api import cluster

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xelm_tfidf.fitting, "fit_embedder", interrupted)  # Ctrl-C mid-fit
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("\n".join(d.text for d in _documents(["en"], 20)) + "\n")
    out = tmp_path / "alloc"
    assert run(["cluster", "tfidf", str(corpus), "-k", "2", "-o", str(out)]) == 130
    assert capsys.readouterr().err == (
        "xelm: error: interrupted (nothing half-written is left): run the same command again\n"
    )
    with pytest.raises(KeyboardInterrupt):
        cluster("tfidf", k=2, output=out, data=corpus)
    assert not out.exists() and list(tmp_path.iterdir()) == [corpus]


def test_cli_help_has_an_example(capsys):
    assert run(["cluster", "tfidf", "--help"]) == 0
    assert "Example:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", [], "no corpus files"),
        (
            "one document\ntwo documents here\n",
            ["-k", "5"],
            "xelm: error: -k 5 is more than the 2 documents sampled: lower -k or give more "
            "documents\n",
        ),
        (
            "one document\ntwo documents here\nthree documents\n",
            ["-k", "3", "--max-docs-per-language", "2"],
            "xelm: error: -k 3 is more than the 2 documents sampled: lower -k or raise "
            "--max-docs-per-language\n",
        ),
        ("x\ny\n", ["-k", "1"], "cannot fit"),
        (
            "the and of\nreal words here\nother words there\n",
            ["-k", "2"],
            "xelm: error: cannot fit the TF-IDF embedder: the documents yield 1 distinct term(s); "
            "need at least 2: give more or longer documents, or more languages\n",
        ),
        ("x\ny\n", ["--solver", "lsa", "--batch-size", "50000"], "(20.0 GB at 50,000)"),
    ],
)
def test_cli_bad_input_writes_nothing(tmp_path, capsys, content, extra, message):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if content:
        (corpus / "en.txt").write_text(content)
    out = tmp_path / "alloc"
    assert run(["cluster", "tfidf", str(corpus), "-o", str(out), *extra]) != 0
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [corpus]


def test_unlabelled_documents_are_refused_before_fitting(tmp_path, capsys, monkeypatch):
    """Records without a language (a file not named for one) are refused before the fit, in
    one line naming --lang (were fitted, then refused: "expert 0 has no languages")."""
    import xelm_tfidf.fitting

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"text": d.text}) for d in _documents(["en"], 40)]
    (corpus / "notes.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "alloc"
    argv = ["cluster", "tfidf", str(corpus), "-k", "2", "--components", "4", "-o", str(out)]
    with monkeypatch.context() as patched:
        patched.setattr(xelm_tfidf.fitting, "fit_embedder", None)  # the fit must not start
        assert run(argv) == 2
    assert capsys.readouterr().err == (
        "xelm: error: 40 of the 40 documents sampled have no language: add a 'lang' field to "
        "the records or pass --lang (the language of records without one)\n"
    )
    assert not out.exists() and list(tmp_path.iterdir()) == [corpus]
    assert run([*argv, "--lang", "en"]) == 0
    assert read_allocation(out).languages == ["en"]


def test_duplicates_that_unbalance_the_experts_get_a_warning(tmp_path, capsys):
    """120 copies of one text have one embedding, so the balanced rule sends them all to one
    expert (capacity 80 of the 160 documents): the fit warns, naming the sizes and the way out."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("one and the same text, copied many times\n" * 120)
    (corpus / "ru.txt").write_text("\n".join(d.text for d in _documents(["ru"], 40)) + "\n")
    out = tmp_path / "alloc"
    argv = ["cluster", "tfidf", str(corpus), "-k", "2", "--components", "4", "-o", str(out)]
    assert run([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert sorted(json.loads(captured.out)["cluster_sizes"]) == [40, 120]
    assert [line for line in captured.err.splitlines() if "the experts get" in line] == [
        "xelm: warning: the experts get 40 to 120 of the 160 training documents, not about 80 "
        "each: documents with the same embedding (duplicates, texts with no vocabulary term) "
        "all go to one expert; remove duplicates from the corpus"
    ]


def test_corrupted_arrays_are_refused(fitted, tmp_path):
    save_model(tmp_path / "alloc", fitted.model, shares=fitted.shares, training={})
    arrays = tmp_path / "alloc" / "arrays.safetensors"
    data = bytearray(arrays.read_bytes())
    data[-10] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        load_model(read_allocation(tmp_path / "alloc"))
    assert str(caught.value) == (
        f"{arrays}: sha256 does not match allocation.json (changed or damaged since it was "
        "written): restore the allocation folder from a copy, or run `xelm cluster` again"
    )


def test_an_allocation_named_by_its_json_file_finds_its_arrays(fitted, tmp_path):
    save_model(tmp_path / "alloc", fitted.model, shares=fitted.shares, training={})
    by_file = read_allocation(tmp_path / "alloc" / "allocation.json")
    by_directory = read_allocation(tmp_path / "alloc")
    assert by_file.path == by_directory.path == tmp_path / "alloc"
    arrays = by_file.arrays()
    assert arrays.keys() == by_directory.arrays().keys() and arrays


def test_assigner_refuses_another_clusterers_allocation(tmp_path):
    from xelm_tfidf import TfidfClusterer

    from xelm_cli.api import UsageError, write_allocation

    allocation = write_allocation(tmp_path / "a.json", clusterer="typology", experts=[["en"]])
    with pytest.raises(UsageError, match="typology"):
        TfidfClusterer.assigner(allocation)


def test_group_documents_joins_consecutive_documents_of_one_language():
    """Interleaved languages, target 8 bytes: "ab\ncd" (5) + "\nefgh" reaches 10 >= 8."""
    documents = [Document(t, lang) for t, lang in
                 [("ab", "en"), ("xy", "ru"), ("cd", "en"), ("  ", "en"), ("efgh", "en"),
                  ("z", "ru"), ("ij", "en")]]  # fmt: skip
    assert list(group_documents(documents, 8)) == [
        Document("ab\ncd\nefgh", "en"), Document("xy\nz", "ru"), Document("ij", "en")
    ]  # fmt: skip
    assert [d.text for d in group_documents(documents, 0)] == ["ab", "xy", "cd", "efgh", "z", "ij"]


def _mean_purity(allocation: Path) -> float:
    shares = read_allocation(allocation).raw["language_shares"]
    return sum(max(row) for row in shares.values()) / len(shares)


def test_cli_document_bytes_keeps_each_language_in_its_cluster(tmp_path, capsys):
    """The sample corpus's single sentences of four languages of four scripts spread over the
    four clusters (mean purity 0.31 measured at 100 and 300 documents a language), and a
    warning names their average length and --document-bytes; joined into ~1,500-byte
    documents they fall one language to a cluster (1.00 measured), without a warning."""
    corpus = SHARED_DATA / "corpus" / "train"
    argv = ["cluster", "tfidf", str(corpus), "--langs", "ar,en,ru,zh", "-k", "4",
            "--max-docs-per-language", "100", "--components", "16", "--json"]  # fmt: skip
    assert run([*argv, "-o", str(tmp_path / "records")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["document_bytes"] == 0
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "fitted on 400 documents of " in warnings[0]
    assert warnings[0].endswith("with --document-bytes 1500")
    mean_bytes = int(warnings[0].split(" documents of ")[1].split()[0])
    assert 20 < mean_bytes < 300, warnings[0]
    assert run([*argv, "--document-bytes", "1500", "-o", str(tmp_path / "documents")]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    summary = json.loads(captured.out)
    assert summary["document_bytes"] == 1500 and summary["documents"] == 400
    assert summary["sample"] == "uniform"  # corpus files: over every document
    records, documents = _mean_purity(tmp_path / "records"), _mean_purity(tmp_path / "documents")
    assert records < 0.6 and documents > 0.9, (records, documents)
    training = read_allocation(tmp_path / "documents").raw["tfidf"]["training"]
    assert training["document_bytes"] == 1500
    assert run(["cluster", "tfidf", "--help"]) == 0
    assert "--document-bytes" in capsys.readouterr().out


def test_cli_long_records_fit_without_a_warning(tmp_path, capsys):
    """Records of 20 sentences each (well over 300 bytes) are documents already: no warning."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in LANGS[:2]:
        sentences = [d.text.replace("\n", " ") for d in _documents([lang], 400)]
        records = [" ".join(sentences[i : i + 20]) for i in range(0, len(sentences), 20)]
        (corpus / f"{lang}.txt").write_text("\n".join(records) + "\n")
    out = tmp_path / "alloc"
    argv = ["cluster", "tfidf", str(corpus), "-k", "2", "--components", "8", "-o", str(out)]
    assert run([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["documents"] == 40
    assert "warning" not in captured.err


def test_non_finite_or_repeated_state_is_refused_not_misrouted(fitted, tmp_path):
    """Arrays whose digests match but whose values cannot be right (a NaN centroid sent every
    text to one expert; a vocabulary term twice) are refused when the state loads."""
    import dataclasses

    centroids = fitted.model.centroids.copy()
    centroids[1, 0] = np.nan
    broken = dataclasses.replace(fitted.model, centroids=centroids)
    save_model(tmp_path / "nan", broken, shares=fitted.shares, training={})
    with pytest.raises(FormatError, match=r"non-finite values: \['centroids'\]"):
        load_model(read_allocation(tmp_path / "nan"))
    embedder = fitted.model.embedder
    terms = [embedder.terms[0], *embedder.terms[:-1]]
    repeated = dataclasses.replace(
        fitted.model, embedder=dataclasses.replace(embedder, terms=terms)
    )
    save_model(tmp_path / "twice", repeated, shares=fitted.shares, training={})
    with pytest.raises(FormatError, match="the TF-IDF vocabulary repeats a term"):
        load_model(read_allocation(tmp_path / "twice"))
