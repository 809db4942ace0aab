"""Typology: URIEL codes, features, distances, the balanced single-linkage tree, donors, CLI."""

import importlib.metadata
import json
import math
import re
import sys
from pathlib import Path

import langcodes
import numpy as np
import pytest
from cli_helpers import xelm
from langcodes import LANGUAGE_REPLACEMENTS
from scipy.cluster.hierarchy import is_valid_linkage
from xelm_typology import LanguageAssigner, TypologyClusterer, build_tree

from xelm_cli.api import Document, UsageError, language_info, read_allocation
from xelm_cli.lang.codes import normalize_language, parse_language_list, wanted_form
from xelm_cli.lang.typology import (
    DEFAULT_FEATURE_SET,
    cosine_distances,
    distance_matrix,
    feature_set_name,
    feature_vectors,
    rank_donors,
    uriel_code,
)

TRAINING = ["ar", "bg", "de", "el", "en", "es", "fr", "hi"]
TRAINING += ["ja", "ko", "ru", "sw", "tr", "ur", "vi", "zh"]
# xelm-method.md section 3
EXPECTED = {
    8: ["en es", "de el", "ja ko", "hi ur", "bg ru", "fr ar", "tr zh", "vi sw"],
    4: ["en es bg ru", "ja ko tr zh", "de el fr ar", "hi ur vi sw"],
    2: ["en es bg ru de el fr ar", "ja ko tr zh hi ur vi sw"],
}


def as_sets(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(group) for group in groups}


@pytest.fixture(scope="module")
def training_tree():
    return build_tree(TRAINING, distance_matrix(TRAINING))


# --- codes and features -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lang", "feature_set", "code"),
    [
        ("ar", "syntax_average", "ara"),
        ("ar", "family", "arb"),
        ("zh", "fam", "cmn"),
        ("sw", "fam", "swh"),
        ("az", "fam", "azj"),
        ("az", "syntax", "aze"),
        ("arb", "syntax_average", "arb"),
        ("en-US", "syntax_average", "eng"),
        ("zh-Hant", "syntax_average", "zho"),
        ("deu", "syntax_average", "deu"),
    ],
)
def test_uriel_code(lang: str, feature_set: str, code: str) -> None:
    assert uriel_code(lang, feature_set) == code


def test_unknown_languages_and_feature_sets_are_one_line_usage_errors() -> None:
    with pytest.raises(UsageError, match="lang2vec \\(URIEL\\) does not know language 'sgn'"):
        uriel_code("sgn")
    with pytest.raises(UsageError, match="no syntax_average values for 'azj'"):
        feature_vectors(["azj", "tr"])
    with pytest.raises(UsageError, match="unknown feature set 'nope'"):
        feature_set_name("nope")
    assert feature_set_name("phonology") == "phonology_average"


def test_feature_vectors_minimal_drops_constant_features() -> None:
    full, full_names = feature_vectors(TRAINING, minimal=False)
    minimal, names = feature_vectors(TRAINING)
    assert full.shape == (16, len(full_names)) and minimal.shape == (16, len(names))
    assert set(names) < set(full_names) and all(n.startswith("S_") for n in names)
    for column in range(minimal.shape[1]):
        values = minimal[:, column]
        present = values[~np.isnan(values)]
        constant = present.size == 16 and (np.all(present == 0) or np.all(present == 1))
        assert present.size and not constant


def test_feature_vectors_equal_lang2vec_get_features(monkeypatch: pytest.MonkeyPatch) -> None:
    # the package, not the lang2vec.py script it installs beside the console scripts, which
    # shadows it when .venv/bin/pytest puts that folder first on sys.path
    site = importlib.metadata.distribution("lang2vec").locate_file("")
    monkeypatch.syspath_prepend(str(site))
    for name in ("lang2vec", "lang2vec.lang2vec"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    lang2vec = pytest.importorskip("lang2vec.lang2vec")  # slow import: only here
    for feature_set in ("syntax_average", "syntax_knn"):
        codes = [uriel_code(lang, feature_set) for lang in TRAINING]
        expected = lang2vec.get_features(codes, feature_set, header=True, minimal=True)
        values, names = feature_vectors(TRAINING, feature_set)
        assert names == list(expected["CODE"])
        table = [[math.nan if v == "--" else float(v) for v in expected[c]] for c in codes]
        np.testing.assert_array_equal(values, np.array(table))


# --- distances ----------------------------------------------------------------------------


def test_cosine_distance_over_joint_features_with_own_norms() -> None:
    nan = math.nan
    vectors = np.array(
        [
            [1.0, 0.0, 1.0, nan],
            [1.0, 1.0, nan, 1.0],
            [nan, nan, nan, 0.0],
        ]
    )
    d = cosine_distances(vectors)
    # joint features of rows 0 and 1: columns 0 and 1 -> dot 1; norms sqrt(2) and sqrt(3)
    assert d[0, 1] == pytest.approx(1 - 1 / (math.sqrt(2) * math.sqrt(3)))
    assert d[1, 0] == d[0, 1]
    assert d[0, 2] == 1.0 and d[1, 2] == 1.0  # a zero vector is at distance 1
    assert np.all(np.diag(d) == 0)


def test_distance_matrix_is_symmetric_with_zero_diagonal() -> None:
    d = distance_matrix(TRAINING)
    assert d.shape == (16, 16)
    np.testing.assert_allclose(d, d.T)
    assert np.all(np.diag(d) == 0) and np.all(d >= 0) and np.all(d <= 1)


# --- the tree -----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [8, 4, 2])
def test_training_languages_reproduce_the_reference_groups(training_tree, k: int) -> None:
    expected = [group.split() for group in EXPECTED[k]]
    assert as_sets(training_tree.groups(k)) == as_sets(expected)


def test_levels_are_nested_and_the_linkage_is_valid(training_tree) -> None:
    assert sorted(training_tree.levels) == [1, 2, 4, 8]
    for small, large in [(1, 2), (2, 4), (4, 8)]:
        for group in training_tree.levels[small]:
            parts = [g for g in training_tree.levels[large] if set(g) <= set(group)]
            assert sorted(lang for part in parts for lang in part) == sorted(group)
    linkage = np.array(training_tree.linkage, dtype=np.float64)
    assert linkage.shape == (15, 4)
    assert is_valid_linkage(linkage, throw=True)
    assert linkage[-1, 3] == 16
    assert [len(g) for g in training_tree.groups(16)] == [1] * 16


def test_odd_counts_pass_a_cluster_alone() -> None:
    distances = np.array(
        [[0, 1, 5, 5, 5], [1, 0, 5, 5, 5], [5, 5, 0, 2, 9], [5, 5, 2, 0, 9], [5, 5, 9, 9, 0]],
        dtype=np.float64,
    )
    tree = build_tree(list("abcde"), distances)
    assert tree.levels[3] == [["a", "b"], ["c", "d"], ["e"]]
    # ab-cd and ab-e tie at 5: the pair first in the round's order (ab, cd, e) merges
    assert tree.levels[2] == [["a", "b", "c", "d"], ["e"]]
    assert tree.linkage == [(0, 1, 1.0, 2), (2, 3, 2.0, 2), (5, 6, 5.0, 4), (7, 4, 5.0, 5)]
    assert is_valid_linkage(np.array(tree.linkage, dtype=np.float64))
    with pytest.raises(UsageError, match="no level with k=4"):
        tree.groups(4)


# --- donors -------------------------------------------------------------------------------


@pytest.mark.parametrize(("new", "donor"), [("az", "tr"), ("he", "ar"), ("pl", "ru"), ("sv", "en")])
def test_rank_donors_reproduce_the_reference_donors(new: str, donor: str) -> None:
    ranked = rank_donors(new, TRAINING)
    assert ranked[0][0] == donor
    assert len(ranked) == 16 and [d for _, d in ranked] == sorted(d for _, d in ranked)


def test_rank_donors_leaves_the_language_itself_out() -> None:
    assert [lang for lang, _ in rank_donors("tr", ["tr", "az", "en"])] == ["az", "en"]
    with pytest.raises(UsageError, match="no candidate donors"):
        rank_donors("tr", ["tur"])


def test_a_language_without_family_data_is_refused_under_the_family_set() -> None:
    """URIEL's qu (que) has no family node, so under --features family it was at distance 1
    from every language and its ranking was the input order; its individual languages
    (quy, ...) have one."""
    with pytest.raises(UsageError) as caught:
        rank_donors("qu", "es,en,ay", "family")
    assert str(caught.value) == (
        "lang2vec has no family for 'qu' (URIEL code 'que'), so it would be at distance 1 from "
        "every language: use one of its individual languages, e.g. qub, qud, quf (43 in all)"
    )
    assert [lang for lang, _ in rank_donors("quy", "es,ay", "family")] == ["es", "ay"]
    assert language_info("qu", "family")["known"] == "none"
    assert rank_donors("qu", "es,en")  # the typological sets know it


# --- language codes -----------------------------------------------------------------------


def test_unknown_language_code_suggests_close_codes() -> None:
    with pytest.raises(UsageError, match=r"unknown language code 'turkish'.*did you mean 'tr'"):
        normalize_language("turkish")
    with pytest.raises(UsageError, match="unknown language code 'xx'") as error:
        normalize_language("xx")
    assert "\n" not in str(error.value)


def test_only_iana_deprecations_replace_a_language_code() -> None:
    """langcodes applies CLDR's aliases: tl (Tagalog) became fil, sh (Serbo-Croatian) sr-Latn
    and prs (Dari) fa-AF, so `tl,fil` collapsed into one language and URIEL was asked for fil
    (no syntax values) instead of tgl. BCP 47 keeps them; IANA's deprecations still apply, as
    its registry (shipped with langcodes) says, for every code langcodes would replace."""
    assert parse_language_list("tl,fil,tgl") == ["tl", "fil"]
    assert parse_language_list("sh,hbs,sr") == ["sh", "sr"]
    assert parse_language_list("prs,fa") == ["prs", "fa"]
    assert [normalize_language(c) for c in ("tl-PH", "sh-Cyrl", "tgl_Latn")] == [
        "tl-PH", "sh-Cyrl", "tl",
    ]  # fmt: skip
    assert [uriel_code(c) for c in ("tl", "sh", "prs")] == ["tgl", "hbs", "prs"]
    assert wanted_form("prs-Arab", {"fa"}) == "fa"  # its IANA macrolanguage
    registry = Path(langcodes.__file__).parent / "data" / "language-subtag-registry.txt"
    records = registry.read_text(encoding="utf-8").split("%%")
    fields = [dict(re.findall(r"^([\w-]+): (.*)$", record, re.M)) for record in records]
    languages = {f["Subtag"]: f for f in fields if f.get("Type") == "language"}
    for code in LANGUAGE_REPLACEMENTS.keys() & languages.keys():
        record = languages[code]
        if "Deprecated" not in record:  # no deprecation: kept as given
            assert normalize_language(code) == code, code
        elif "Preferred-Value" in record:
            assert normalize_language(code) == record["Preferred-Value"], code
    deprecated = ["iw", "in", "mo", "ji", "ara", "kor"]  # and ISO 639-3 forms shortened
    assert [normalize_language(code) for code in deprecated] == ["he", "id", "ro", "yi", "ar", "ko"]


def test_a_script_is_dropped_only_when_it_is_the_language_default() -> None:
    """FineWeb-2's arb_Arab is arb (Arabic script is Standard Arabic's default, from its
    macrolanguage's IANA Suppress-Script), as ar-Arab is ar; romanised Hindi (mC4's hi-Latn) is
    no Hindi: it keeps its script, and wanted_form does not file it under hi; und-Latn names
    no language."""
    codes = ["arb_Arab", "swh-Latn", "ar-Arab", "tur_Latn", "hi-Latn", "hi-Deva", "cmn_Hani"]
    assert [normalize_language(c) for c in codes] == [
        "arb", "swh", "ar", "tr", "hi-Latn", "hi", "cmn-Hani",
    ]  # fmt: skip
    assert parse_language_list("arb,arb_Arab,ar") == ["arb", "ar"]
    assert [normalize_language(c) for c in ("zh-Hant", "sr-Latn", "azj_Latn")] == [
        "zh-Hant", "sr-Latn", "azj-Latn",
    ]  # fmt: skip  # languages of several scripts keep theirs
    assert wanted_form("hi-Latn", {"hi"}) == "hi-Latn"
    assert wanted_form("ru-Latn", {"ru", "en"}) == "ru-Latn"
    assert wanted_form("hi-Latn-IN", {"hi", "hi-Latn"}) == "hi-Latn"
    assert wanted_form("hi-Deva", {"hi"}) == "hi"
    assert wanted_form("arb", {"ar"}) == "ar"
    # a language of several scripts (no default) drops only those CLDR writes it in
    assert [wanted_form(c, {"zh", "sr", "az"}) for c in ("zh-Hant", "sr-Latn", "az-Arab")] == [
        "zh", "sr", "az",
    ]  # fmt: skip
    assert wanted_form("zh-Latn", {"zh"}) == "zh-Latn"  # pinyin is no Chinese-script text
    assert wanted_form("cmn-Latn", {"zh", "zh-Latn"}) == "zh-Latn"
    for code in ("und", "und-Latn", "und_Arab", "und-US"):
        with pytest.raises(UsageError, match=f"^unknown language code '{code}': use an ISO"):
            normalize_language(code)


# --- CLI ----------------------------------------------------------------------------------


def test_cluster_typology_writes_an_allocation_that_branch_accepts(
    capsys, tmp_path: Path, seed_bundle: Path
) -> None:
    out = tmp_path / "alloc.json"
    code, stdout, err = xelm(
        capsys, "cluster", "typology", "--langs", "en,tr,ar,ru", "-k", "2", "-o", out, "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    allocation = read_allocation(out)
    assert summary["digest"] == allocation.digest and allocation.clusterer == "typology"
    raw = allocation.raw
    assert raw["features"] == "syntax_average" and raw["minimal"] is True
    assert raw["uriel_codes"] == {"en": "eng", "tr": "tur", "ar": "ara", "ru": "rus"}
    assert raw["distances"]["languages"] == ["en", "tr", "ar", "ru"]
    assert np.array(raw["distances"]["matrix"]).shape == (4, 4)
    assert raw["tree"]["leaves"] == ["en", "tr", "ar", "ru"]
    assert is_valid_linkage(np.array(raw["tree"]["linkage"], dtype=np.float64))
    assert sorted(raw["levels"]) == ["1", "2"] and raw["levels"]["2"] == allocation.experts

    # the same fit again, at any time, writes the same bytes: a bundle's digest still names it
    assert "created_at" not in raw
    again = tmp_path / "again.json"
    code, stdout, err = xelm(
        capsys, "cluster", "typology", "--langs", "en,tr,ar,ru", "-k", "2", "-o", again, "--json"
    )
    assert code == 0, err
    assert again.read_bytes() == out.read_bytes()
    assert read_allocation(again).digest == allocation.digest

    code, stdout, err = xelm(
        capsys, "bundle", "branch", seed_bundle, "--allocation", out, "--expert", "1",
        "-o", tmp_path / "e1", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(json.loads(stdout)["languages"]) == sorted(allocation.experts[1])


def test_cluster_typology_16_languages_table(capsys, tmp_path: Path) -> None:
    out = tmp_path / "alloc.json"
    code, stdout, _ = xelm(
        capsys, "cluster", "typology", "--langs", ",".join(TRAINING), "-k", "4", "-o", out
    )
    assert code == 0 and "en, es, bg, ru" in stdout
    expected = [group.split() for group in EXPECTED[4]]
    assert as_sets(read_allocation(out).experts) == as_sets(expected)
    code, _, err = xelm(capsys, "cluster", "typology", "--langs", "en,tr", "-k", "2", "-o", out)
    assert code == 2 and "already exists" in err
    code, _, err = xelm(
        capsys, "cluster", "typology", "--langs", "en,tr", "-k", "2", "-o", out, "--force"
    )
    assert code == 0 and read_allocation(out).k == 2


@pytest.mark.parametrize(
    ("langs", "k", "message"),
    [
        ("en,tr,ar,ru", "3", r"no level with k=3 groups \(levels: 4, 2, 1\); pick one"),
        (",".join(TRAINING), "32", "-k must be between 1 and the number of languages \\(16\\)"),
        ("en,tr", "3", "-k must be between 1 and the number of languages \\(2\\), got 3"),
        ("en,tr,xx", "2", "unknown language code 'xx': .*did you mean 'xh'"),
        ("en,tr,sgn", "2", "lang2vec \\(URIEL\\) does not know language 'sgn'"),
        ("en,tr,azj", "2", "no syntax_average values for 'azj'"),
        ("en,tr,ar,ru,es", "4", "no level with k=4"),
    ],
)
def test_cluster_typology_bad_input(
    capsys, tmp_path: Path, langs: str, k: str, message: str
) -> None:
    out = tmp_path / "alloc.json"
    code, stdout, err = xelm(capsys, "cluster", "typology", "--langs", langs, "-k", k, "-o", out)
    assert code == 2 and not stdout
    lines = [line for line in err.splitlines() if line.startswith("xelm: error:")]
    assert len(lines) == 1
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_negative_seed_is_refused_for_every_clusterer(capsys, tmp_path: Path) -> None:
    out = tmp_path / "alloc.json"
    args = ["cluster", "typology", "--langs", "en,tr", "-k", "2", "-o", out, "--seed", "-1"]
    code, _, err = xelm(capsys, *args)
    assert (code, err) == (2, "xelm: error: --seed must be 0 or more (got -1)\n")
    assert not out.exists()


def test_every_level_of_a_tree_is_a_k_not_only_powers_of_two(capsys, tmp_path: Path) -> None:
    """Six languages merge 6 -> 3 -> 2 -> 1: k=3 and k=6 are levels (were refused as not
    powers of two, while the refusal of k=4 named 3 as a level)."""
    langs = ["en", "de", "ru", "tr", "ar", "ja"]
    for k in (3, 6):
        out = tmp_path / f"alloc-{k}.json"
        code, _, err = xelm(
            capsys, "cluster", "typology", "--langs", ",".join(langs), "-k", str(k), "-o", out
        )
        assert code == 0, err
        allocation = read_allocation(out)
        expected = allocation.raw["levels"]["3"] if k == 3 else [[lang] for lang in langs]
        assert allocation.k == k and allocation.experts == expected
        assert sorted(lang for group in allocation.experts for lang in group) == sorted(langs)


def test_lang_nearest_json(capsys) -> None:
    code, stdout, err = xelm(capsys, "lang", "nearest", "az", "--among", "ar,tr,ru,en", "--json")
    assert code == 0, err
    rows = json.loads(stdout)
    assert rows[0]["language"] == "tr"
    assert {row["language"]: row["uriel"] for row in rows} == {
        "tr": "tur", "ru": "rus", "ar": "ara", "en": "eng",
    }  # fmt: skip
    assert all(0 <= row["distance"] <= 1 for row in rows)
    code, stdout, _ = xelm(capsys, "lang", "nearest", "az", "--among", "ar,tr,ru,en")
    assert code == 0 and "tr" in stdout and "tur" in stdout
    among = ["ar", "tr", "ru", "en"]
    for flags, minimal in (([], True), (["--no-minimal"], False)):
        code, stdout, err = xelm(capsys, "lang", "nearest", "az", "--among", ",".join(among),
                                 "--json", *flags)  # fmt: skip
        assert code == 0, err
        expected = rank_donors("az", among, DEFAULT_FEATURE_SET, minimal)
        assert [(r["language"], r["distance"]) for r in json.loads(stdout)] == [
            (lang, pytest.approx(distance)) for lang, distance in expected
        ]


def test_lang_info_and_help(capsys) -> None:
    code, stdout, _ = xelm(capsys, "lang", "info", "ar", "--features", "family", "--json")
    assert code == 0
    details = json.loads(stdout)
    assert details == language_info("ar", "fam")  # the command is the Python call
    assert details["uriel"] == "arb"
    assert details["family"] == (
        "Afro-Asiatic > Semitic > West Semitic > Central Semitic > Arabian > Arabic"
    )
    code, stdout, _ = xelm(capsys, "lang", "info", "tl", "--json")
    assert code == 0
    assert {k: json.loads(stdout)[k] for k in ("language", "alpha3", "uriel")} == {
        "language": "tl", "alpha3": "tgl", "uriel": "tgl"  # Tagalog, not CLDR's Filipino (fil)
    }  # fmt: skip
    code, stdout, _ = xelm(capsys, "lang", "info", "ar")
    assert code == 0
    assert "ISO 639-3 code" in stdout and "lang2vec's code for it in this set" in stdout
    assert "family" not in stdout  # only the family set says it
    for command in (["lang", "nearest"], ["lang", "info"], ["cluster", "typology"]):
        code, stdout, _ = xelm(capsys, *command, "--help")
        assert code == 0 and "Example:" in stdout


def test_lang_nearest_bad_input(capsys) -> None:
    code, _, err = xelm(capsys, "lang", "nearest", "az", "--among", "tr", "--features", "nope")
    assert code == 2 and "unknown feature set 'nope'" in err
    code, _, err = xelm(capsys, "lang", "nearest", "zz", "--among", "tr")
    assert code == 2 and "unknown language code 'zz'" in err


# --- assigner and registration ------------------------------------------------------------


def test_assigner_sends_documents_to_their_language_expert(tmp_path: Path, capsys) -> None:
    out = tmp_path / "alloc.json"
    code, _, err = xelm(
        capsys, "cluster", "typology", "--langs", ",".join(TRAINING), "-k", "4", "-o", out
    )
    assert code == 0, err
    allocation = read_allocation(out)
    assigner = TypologyClusterer.assigner(allocation)
    documents = [Document("merhaba", "tr"), Document("hello", "en"), Document("ni hao", "zh")]
    assigned = assigner.assign(documents).tolist()
    assert assigned == [allocation.expert_of("tr"), allocation.expert_of("en"), 1]
    assert assigned[0] == assigned[2]  # tr and zh share an expert at k=4
    with pytest.raises(UsageError, match="no expert covers language\\(s\\) \\(no language\\), pl"):
        assigner.assign([Document("cześć", "pl"), Document("?", None)])


def test_assigner_refuses_another_clusterers_allocation(tmp_path: Path) -> None:
    from xelm_cli.api import write_allocation

    allocation = write_allocation(tmp_path / "a.json", clusterer="tfidf", experts=[["en"]])
    with pytest.raises(UsageError, match="written by clusterer 'tfidf'"):
        TypologyClusterer.assigner(allocation)
    assert LanguageAssigner([["en"], ["tr"]]).assign([Document("x", "tr")]).tolist() == [1]


def test_a_language_under_two_experts_is_refused_by_the_assigner(tmp_path: Path) -> None:
    """Every de document went to expert 0 of [[en, de], [de, fr]], leaving expert 1 none of
    the language it lists; a document-level allocation (tfidf) may list one under several."""
    from xelm_cli.api import write_allocation
    from xelm_cli.cluster.assigning import expert_documents

    path = tmp_path / "d2.json"
    allocation = write_allocation(path, clusterer="typology", experts=[["en", "de"], ["de", "fr"]])
    with pytest.raises(UsageError) as caught:
        expert_documents(allocation, 1)
    assert str(caught.value) == (
        f"language de is listed under experts 0 and 1 of {path}, but a language's documents all "
        "go to one expert: list it under one (or cluster again with xelm cluster typology)"
    )
    tfidf = write_allocation(tmp_path / "t.json", clusterer="tfidf", experts=[["en", "de"], ["de"]])
    assert tfidf.experts == [["en", "de"], ["de"]]


def test_allocations_are_written_and_read_at_paths_given_as_text(tmp_path: Path) -> None:
    from xelm_cli.api import read_allocation, write_allocation

    written = write_allocation(str(tmp_path / "a.json"), clusterer="typology",
                               experts=[["en", "de"], ["tr"]])  # fmt: skip
    read = read_allocation(str(tmp_path / "a.json"))
    assert read.experts == written.experts == [["en", "de"], ["tr"]]


def test_plugins_list_shows_the_typology_clusterer(capsys) -> None:
    code, stdout, _ = xelm(capsys, "plugins", "list", "--json")
    assert code == 0
    plugins = {p["name"]: p for p in json.loads(stdout)["plugins"]}
    assert plugins["typology"]["registered"]["clusterer"] == ["typology"]
    assert plugins["typology"]["distribution"] == "xelm"
