"""Evaluation data from the Hub, through local Hub-layout stand-ins (``XELM_HUB_MIRROR``):
FLORES+ and SIB-200's FLORES text for perplexity, SIB-200, XCOPA and XNLI for in-context
tasks; the gated FLORES+ without a token falls back to SIB-200 and says so."""

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import xelm
from hub_eval_fixtures import (
    belebele_like,
    belebele_rows,
    fetch_mirror,
    flores_plus_like,
    synthetic_texts,
    write_rows,
    xcopa_like,
    xnli_like,
    xstorycloze_like,
)
from hub_fixtures import write_readme
from xelm_eval.icl import IclEvaluator
from xelm_eval.perplexity import PerplexityEvaluator
from xelm_eval.tasks import SIB200_CATEGORIES, open_task

from xelm_cli.api import EvalRequest, UsageError
from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.cli import run
from xelm_cli.data.evalsets import FLORES_PLUS, flores_code, language_of_config
from xelm_cli.data.fetch import fetch

LANGS = ("en", "tr", "ar", "ru")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = fetch_mirror(tmp_path_factory.mktemp("hub"), [*LANGS, "zh"], documents=14)
    xcopa_like(root / "cambridgeltl" / "xcopa", ["tr", "sw"])
    xnli_like(root / "facebook" / "xnli", ["en", "ru"])
    xstorycloze_like(root / "juletxara" / "xstory_cloze", ["ru"])
    belebele_like(root / "facebook" / "belebele", ["ar", "tr"])
    return root


@pytest.fixture(autouse=True)
def _offline(mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub ids read the stand-ins; no token, no network."""
    monkeypatch.setenv("XELM_HUB_MIRROR", str(mirror))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


def test_flores_codes_of_the_papers_languages_and_back() -> None:
    assert [flores_code(c) for c in ("ar", "zh", "sw", "az", "he", "ko", "en")] == [
        "arb_Arab", "zho_Hans", "swh_Latn", "azj_Latn", "heb_Hebr", "kor_Hang", "eng_Latn",
    ]  # fmt: skip
    assert flores_code("it") == "ita_Latn"  # outside the table: ISO 639-3 and likely script
    assert FLORES_PLUS.config_for("zh") == "cmn_Hans"
    assert language_of_config("arb_Arab") == "ar"
    assert language_of_config("sw") == "sw"
    assert language_of_config("all_languages") is None
    # macrolanguages outside the paper's 20: FLORES-200 names their individual language
    for code, flores in (
        ("fa", "pes_Arab"), ("ms", "zsm_Latn"), ("no", "nob_Latn"),
        ("tl", "tgl_Latn"), ("prs", "prs_Arab"),  # not CLDR's fil, fa-AF
    ):  # fmt: skip
        assert flores_code(code) == flores and language_of_config(flores) == code


def test_sib200_text_for_perplexity_by_id_and_by_local_copy(mirror: Path) -> None:
    by_id = PerplexityEvaluator(EvalRequest(data="Davlan/sib200", languages=("en", "ar")))
    # test (5 rows), validation (2), train (7): 14 sentences per language, test first
    assert [d.language for d in by_id.documents] == ["en"] * 14 + ["ar"] * 14
    test_rows = (mirror / "Davlan/sib200/data/eng_Latn/test.tsv").read_text().splitlines()[1:]
    assert [d.text for d in by_id.documents[:5]] == [row.split("\t")[2] for row in test_rows]
    local = PerplexityEvaluator(
        EvalRequest(data=str(mirror / "Davlan" / "sib200"), languages=("en", "ar"), limit=3)
    )
    assert local.documents == by_id.documents[:3] + by_id.documents[14:17]


def test_flores_plus_devtest_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {"zh": ["第一句。", "第二句。"], "tr": ["Bir.", "İki.", "Üç."]}
    flores_plus_like(tmp_path / "openlanguagedata" / "flores_plus", texts)
    monkeypatch.setenv("XELM_HUB_MIRROR", str(tmp_path))
    evaluator = PerplexityEvaluator(
        EvalRequest(data="openlanguagedata/flores_plus", languages=("zh", "tr"))
    )
    assert [d.text for d in evaluator.documents] == [*texts["zh"], *texts["tr"]]
    assert evaluator.source == {
        "dataset": "openlanguagedata/flores_plus",
        "title": "FLORES+ devtest",
        "splits": ("devtest",),
    }


def test_gated_flores_plus_without_a_token_falls_back_to_sib200(
    capsys: pytest.CaptureFixture[str],
) -> None:
    evaluator = PerplexityEvaluator(
        EvalRequest(data="openlanguagedata/flores_plus", languages=("tr",), limit=4)
    )
    sib200 = PerplexityEvaluator(EvalRequest(data="Davlan/sib200", languages=("tr",), limit=4))
    assert evaluator.documents == sib200.documents
    assert evaluator.source["dataset"] == "Davlan/sib200"
    err = capsys.readouterr().err
    assert err.startswith("xelm: note: openlanguagedata/flores_plus is gated")
    assert "HF_TOKEN" in err and err.count("\n") == 1
    refused = _one_line_error(
        lambda: PerplexityEvaluator(
            EvalRequest(
                data="openlanguagedata/flores_plus", languages=("tr",), options={"split": ["dev"]}
            )
        )
    )
    assert "gated and no Hugging Face token is set, so --eval-arg split= cannot apply" in refused


def _one_line_error(make: Callable[[], object]) -> str:
    with pytest.raises(UsageError) as caught:
        make()
    message = str(caught.value)
    assert "\n" not in message and "--lang-map" not in message
    return message


def test_perplexity_names_a_missing_configuration_split_or_column_and_the_choices() -> None:
    def perplexity(languages: tuple[str, ...], **options: str) -> object:
        return PerplexityEvaluator(
            EvalRequest(data="Davlan/sib200", languages=languages, options=options)
        )

    assert _one_line_error(lambda: perplexity(("en", "de"))) == (
        "Davlan/sib200 has no configuration 'deu_Latn' for language de (it has en (eng_Latn), "
        "tr (tur_Latn), ar (arb_Arab), ru (rus_Cyrl), zh (zho_Hans)); choose the languages "
        "with --langs, or the configuration with --eval-arg config=TEMPLATE (and a language's "
        "own code in it with --eval-arg lang_map=he=iw,...)"
    )
    assert _one_line_error(lambda: perplexity(("en",), split="dev")) == (
        "Davlan/sib200 [eng_Latn/dev]: no split 'dev' (it has train, validation, test); "
        "choose them with --eval-arg split=NAME[,NAME...]"
    )
    assert _one_line_error(lambda: perplexity(("en",), text_column="sentence")) == (
        "Davlan/sib200 [eng_Latn/test] has no column 'sentence' (its columns: index_id, "
        "category, text); choose it with --eval-arg text_column=NAME"
    )
    with pytest.raises(UsageError, match="name the languages to evaluate with --langs"):
        PerplexityEvaluator(EvalRequest(data="Davlan/sib200"))
    with pytest.raises(
        UsageError,
        match=r"evaluator 'perplexity' has no option 'colour' \(its options: config, split, "
        r"text_column, lang_map\)",
    ):
        perplexity(("en",), colour="red")


def test_perplexity_on_mc4_maps_xelms_codes_to_the_datasets(mirror: Path) -> None:
    """allenai/c4 names English's multilingual part en-multi (its en is another corpus) and
    Hebrew iw: --eval-arg lang_map puts the dataset's code in config={lang}, and without it the
    missing configuration is refused naming the option."""

    def perplexity(**options: object) -> PerplexityEvaluator:
        request = EvalRequest(
            data="allenai/c4",
            languages=("en", "tr"),
            limit=3,
            options={"config": "{lang}", "split": ["validation"], **options},
        )
        return PerplexityEvaluator(request)  # fmt: skip

    mapped = perplexity(lang_map="en=en-multi")
    english = [d.text for d in mapped.documents if d.language == "en"]
    direct = PerplexityEvaluator(EvalRequest(
        data="allenai/c4", languages=("en",), limit=3,
        options={"config": "en-multi", "split": ["validation"]},
    ))  # fmt: skip
    assert english == [d.text for d in direct.documents] and len(english) == 3
    assert [d.language for d in mapped.documents] == ["en"] * 3 + ["tr"] * 3
    refused = _one_line_error(lambda: perplexity())
    assert refused.startswith("allenai/c4 has no configuration 'en' for language en (it has ")
    assert refused.endswith("(and a language's own code in it with --eval-arg lang_map=he=iw,...)")
    assert _one_line_error(lambda: perplexity(lang_map="en")) == (
        "--eval-arg lang_map= takes LANG=CODE pairs such as he=iw, not 'en'"
    )
    # one configuration for two languages would score English text as Russian
    assert _one_line_error(lambda: perplexity(config="en-multi")) == (
        "--eval-arg config=en-multi names one configuration for every language (en, tr): give a "
        "template with {lang} or {flores} in it, or evaluate one language at a time"
    )
    # a template without {lang} (SIB-200's FLORES codes) has nowhere to put the codes
    no_slot = EvalRequest(data="Davlan/sib200", languages=("en",), options={"lang_map": "en=x"})
    assert _one_line_error(lambda: PerplexityEvaluator(no_slot)) == (
        "--eval-arg lang_map= puts a dataset's codes in a configuration's {lang}; "
        "Davlan/sib200's is '{flores}': give --eval-arg config=... with {lang} too"
    )


def _webtext_like(root: Path, languages: tuple[str, ...]) -> Path:
    """Laid out like a web-text dataset on the Hub: a FLORES-named configuration per language,
    parquet files of ``content`` and ``id``, train and test splits."""
    configs = {}
    for language in languages:
        config = flores_code(language)
        rows = [{"content": t, "id": i} for i, t in enumerate(synthetic_texts(language, 600))]
        for split, part in (("train", rows[:100]), ("test", rows[100:])):
            write_rows(root / "data" / config / f"{split}-00000-of-00001.parquet", part)
        configs[config] = {s: f"data/{config}/{s}-*.parquet" for s in ("train", "test")}
    write_readme(root, configs, "webtext stand-in")
    return root


def test_perplexity_on_a_dataset_of_several_configurations_names_the_config_option(
    tmp_path: Path,
) -> None:
    webtext = _webtext_like(tmp_path / "myorg" / "webtext", ("en", "de"))
    # was: datasets' multi-line "Config name is missing ..." passed through
    assert _one_line_error(
        lambda: PerplexityEvaluator(EvalRequest(data=str(webtext), languages=("en",)))
    ) == (
        f"{webtext} has no configuration 'en' for language en (it has en (eng_Latn), "
        "de (deu_Latn)); choose the languages with --langs, or the configuration with "
        "--eval-arg config={flores} (and a language's own code in it with --eval-arg "
        "lang_map=he=iw,...)"
    )
    chosen = PerplexityEvaluator(
        EvalRequest(
            data=str(webtext),
            languages=("de",),
            options={"config": "{flores}", "split": ["test"], "text_column": "content"},
        )
    )
    assert [d.text for d in chosen.documents] == synthetic_texts("de", 600)[100:]


def test_perplexity_on_a_dataset_without_a_test_split_reads_its_validation_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dataset xelm does not know with train and validation splits: its held-out text is
    read (said on stderr and in the results' source), never the train split unasked; one with
    train alone is refused naming its splits and --eval-arg split=."""
    root = tmp_path / "myorg" / "web"
    texts = synthetic_texts("tr", 40)
    for language in ("tr", "en"):
        for split, part in (("train", texts[:30]), ("validation", texts[30:])):
            write_rows(root / "data" / language / f"{split}.jsonl", [{"text": t} for t in part])
    splits = ("train", "validation")
    write_readme(
        root, {lang: {s: f"data/{lang}/{s}.jsonl" for s in splits} for lang in ("tr", "en")}
    )
    found = PerplexityEvaluator(EvalRequest(data=str(root), languages=("tr",)))
    assert [d.text for d in found.documents] == texts[30:]
    note = (
        f"{root} has no test split: reading its validation split "
        "(--eval-arg split=NAME chooses another)"
    )
    assert capsys.readouterr().err == f"xelm: note: {note}\n"
    assert found.source["note"] == note and found.source["splits"] == ("validation",)
    # the split every language has: en has test too, tr only validation
    write_rows(root / "data" / "en" / "test.jsonl", [{"text": t} for t in texts[:5]])
    write_readme(
        root,
        {
            "tr": {s: f"data/tr/{s}.jsonl" for s in splits},
            "en": {s: f"data/en/{s}.jsonl" for s in (*splits, "test")},
        },
    )
    both = PerplexityEvaluator(EvalRequest(data=str(root), languages=("en", "tr")))
    assert both.source["splits"] == ("validation",) and len(both.documents) == 20
    asked = PerplexityEvaluator(
        EvalRequest(data=str(root), languages=("tr",), options={"split": ["train"]})
    )
    assert [d.text for d in asked.documents] == texts[:30]
    only_train = tmp_path / "myorg" / "train-only"
    for language in ("tr", "en"):
        write_rows(only_train / "data" / f"{language}.jsonl", [{"text": t} for t in texts])
    write_readme(only_train, {lang: {"train": f"data/{lang}.jsonl"} for lang in ("tr", "en")})
    refused = _one_line_error(
        lambda: PerplexityEvaluator(EvalRequest(data=str(only_train), languages=("tr",)))
    )
    assert refused.endswith(
        "no split 'test' (it has train); choose them with --eval-arg split=NAME[,NAME...]"
    )


def test_a_missing_text_column_on_parquet_exits_2_every_time(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    # was: exit 134 ("terminate called without an active exception") in about one run of
    # three on a busy machine: pyarrow tore the abandoned parquet scan down on its own thread
    # while the interpreter finalized. Runs side by side keep the machine busy.
    webtext = _webtext_like(tmp_path / "myorg" / "webtext", ("en",))
    expert = tmp_path / "expert"
    init_from_config("tiny", tokenizer_dir, expert, languages=["en"])
    args = ["ensemble", "eval", expert, "--data", webtext, "--eval-arg", "config={flores}",
            "--eval-arg", "split=test", "--langs", "en", "--limit", "5"]  # fmt: skip
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: xelm(*args, sites=[], timeout=300), range(6)))
    assert [run.returncode for run in runs] == [2] * 6, [run.stderr for run in runs]
    assert runs[0].stderr == (
        f"xelm: error: {webtext} [eng_Latn/test] has no column 'text' (its columns: content, "
        "id); choose it with --eval-arg text_column=NAME\n"
    )


def test_an_icl_task_names_a_missing_configuration_split_or_column_and_the_choices(
    tmp_path: Path,
) -> None:
    def icl(data: str | Path, languages: tuple[str, ...]) -> object:
        request = EvalRequest(data=str(data), languages=languages, task="xcopa", shots=1)
        return IclEvaluator(request)

    assert _one_line_error(lambda: icl("cambridgeltl/xcopa", ("tr", "de"))) == (
        "cambridgeltl/xcopa has no configuration 'de' for language de (it has tr, sw); "
        "choose the languages with --langs"
    )
    no_validation = xcopa_like(tmp_path / "a" / "xcopa", ["tr"])
    (no_validation / "tr" / "validation.parquet").unlink()
    write_readme(no_validation, {"tr": {"test": "tr/test.parquet"}}, "xcopa without validation")
    assert _one_line_error(lambda: icl(no_validation, ("tr",))) == (
        f"{no_validation} [tr/validation]: no split 'validation' (it has test); XCOPA reads "
        "splits test, validation: pass a copy of the dataset that has them"
    )
    no_choice = xcopa_like(tmp_path / "b" / "xcopa", ["tr"])
    for split in ("test", "validation"):
        path = no_choice / "tr" / f"{split}.parquet"
        pq.write_table(pq.read_table(path).drop_columns(["choice2"]), path)
    assert _one_line_error(lambda: icl(no_choice, ("tr",))) == (
        f"{no_choice} [tr/test] has no column 'choice2' (its columns: premise, choice1, "
        "question, label, idx); XCOPA reads columns premise, choice1, choice2, question, "
        "label: pass a copy of the dataset that has them"
    )


def test_an_icl_task_on_a_hub_id_without_languages_lists_the_configurations_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datasets

    listings: list[str] = []
    real = datasets.get_dataset_config_names

    def counted(path: str, **kwargs: object) -> list[str]:
        listings.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(datasets, "get_dataset_config_names", counted)
    default = IclEvaluator(EvalRequest(data="cambridgeltl/xcopa", task="xcopa", shots=1))
    assert len(listings) == 1
    assert default.languages == ["sw", "tr"]
    chosen = IclEvaluator(
        EvalRequest(data="cambridgeltl/xcopa", languages=("sw", "tr"), task="xcopa", shots=1)
    )
    assert len(listings) == 2
    assert default.data == chosen.data
    assert len(default.data["tr"].examples) == 6 and len(default.data["tr"].demos) == 4


def test_sib200_task_from_the_hub_equals_the_fetched_files(mirror: Path, tmp_path: Path) -> None:
    hub = open_task("sib200", "Davlan/sib200")
    assert hub.languages() == sorted([*LANGS, "zh"])
    fetched = tmp_path / "data"
    fetch(fetched, ["ar", "zh"], size=1000, valid_documents=2)
    files = open_task("sib200", fetched / "tasks" / "sib200")
    for lang in ("ar", "zh"):
        from_hub = hub.load(lang, "paper")
        from_files = files.load(lang, "paper")
        assert from_hub.examples == from_files.examples and len(from_hub.examples) == 5
        assert from_hub.demos == from_files.demos and len(from_hub.demos) == 7
    first = hub.load("ar", "paper").examples[0]
    assert first.choices == tuple(f" {c}" for c in SIB200_CATEGORIES)
    assert first.label == 9 % 7  # the stand-in's first test row is row 9 of 14


def test_xcopa_and_xnli_from_the_hub(mirror: Path) -> None:
    xcopa = open_task("xcopa", "cambridgeltl/xcopa")
    assert xcopa.languages() == ["sw", "tr"]
    data = xcopa.load("tr", "harness")
    assert len(data.examples) == 6 and len(data.demos) == 4
    rows = pq.read_table(mirror / "cambridgeltl" / "xcopa" / "tr" / "test.parquet").to_pylist()
    premise = rows[0]["premise"].rstrip(".")
    assert data.examples[0].context == f"{premise} çünkü"  # cause, the harness's Turkish word
    assert [p.label for p in data.examples] == [r["label"] for r in rows]
    xnli = open_task("xnli", "facebook/xnli").load("ru", "harness")
    assert [p.label for p in xnli.examples] == [0, 1, 2, 0, 1, 2]
    assert xnli.examples[0].context.endswith(", правильно? ")
    with pytest.raises(UsageError, match="no configuration 'de'"):
        open_task("xcopa", "cambridgeltl/xcopa").load("de", "paper")


def test_icl_and_perplexity_end_to_end_on_hub_ids(
    seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "icl.json"
    args = ["ensemble", "eval", str(seed_bundle), "--task", "xcopa", "--data",
            "cambridgeltl/xcopa", "--langs", "tr", "--shots", "1", "-o", str(out)]  # fmt: skip
    assert run(args) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    accuracy = result["systems"][0]["metrics"]["languages"]
    assert set(accuracy) == {"tr"} and accuracy["tr"]["examples"] == 6
    out = tmp_path / "ppl.json"
    args = ["ensemble", "eval", str(seed_bundle), "--data", "Davlan/sib200", "--langs", "en,ar",
            "--limit", "3", "-o", str(out)]  # fmt: skip
    assert run(args) == 0, capsys.readouterr().err
    metrics = json.loads(out.read_text())["systems"][0]["metrics"]
    assert metrics["languages"]["en"]["documents"] == 3
    assert metrics["source"]["dataset"] == "Davlan/sib200"


def test_an_icl_task_on_a_hub_id_evaluates_the_languages_the_ensemble_covers(
    seed_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experts = [tmp_path / "en-de", tmp_path / "tr-sw"]
    for expert, languages in zip(experts, (["en", "de"], ["tr", "sw"]), strict=True):
        branch(seed_bundle, expert, languages=languages)
    out = tmp_path / "sib200.json"
    args = ["ensemble", "eval", *map(str, experts), "--router", "language", "--task", "sib200",
            "--data", "Davlan/sib200", "--limit", "2", "-o", str(out)]  # fmt: skip
    assert run(args) == 0, capsys.readouterr().err
    lines = capsys.readouterr().err.strip().splitlines()
    untrained = [line for line in lines if "not been trained since" in line]  # branches of the seed
    assert [line for line in lines if line not in untrained] == [
        "xelm: note: sib200 on Davlan/sib200: evaluating the ensemble's languages en, tr; "
        "skipped de, sw (no configuration in the dataset)"
    ]  # the stand-in has en, tr, ar, ru and zh
    result = json.loads(out.read_text())
    assert result["request"]["languages"] == ["en", "tr"]
    assert list(result["systems"][0]["metrics"]["languages"]) == ["en", "tr"]
    out.unlink()
    args[4:6] = ["--router", "uniform"]
    assert run([*args, "--langs", "ar"]) == 0, capsys.readouterr().err  # --langs overrides
    assert "evaluating the ensemble's languages" not in capsys.readouterr().err
    assert list(json.loads(out.read_text())["request"]["languages"]) == ["ar"]
    args = ["ensemble", "eval", str(experts[1]), "--router", "language", "--task", "xnli",
            "--data", "facebook/xnli"]  # fmt: skip
    assert run(args) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "facebook/xnli has none of the ensemble's languages (tr, sw); choose some it has with "
            "--langs (en, ru)"
        )
    )


def test_xstorycloze_from_the_hub(mirror: Path) -> None:
    data = open_task("xstorycloze", "juletxara/xstory_cloze").load("ru", "paper")
    rows = pq.read_table(mirror / "juletxara" / "xstory_cloze" / "ru" / "eval.parquet").to_pylist()
    assert len(data.examples) == 5 and len(data.demos) == 3
    first = rows[0]
    assert data.examples[0].context == " ".join(first[f"input_sentence_{k}"] for k in range(1, 5))
    assert data.examples[0].choices == (
        " " + first["sentence_quiz1"],
        " " + first["sentence_quiz2"],
    )
    assert [p.label for p in data.examples] == [r["answer_right_ending"] - 1 for r in rows]


def test_belebele_from_the_release_files_and_from_the_hub(tmp_path: Path) -> None:
    write_rows(tmp_path / "Belebele" / "arb_Arab.jsonl", belebele_rows("ar", 6))
    files = open_task("belebele", tmp_path)
    assert files.languages() == ["ar"]
    data = files.load("ar", "harness")
    hub = open_task("belebele", "facebook/belebele")
    assert hub.languages() == ["ar", "tr"]
    assert hub.load("ar", "harness").examples == data.examples
    row = belebele_rows("ar", 1)[0]
    assert data.examples[0].context == (
        f"P: {row['flores_passage']}\nQ: {row['question']}\nA: {row['mc_answer1']}\n"
        f"B: {row['mc_answer2']}\nC: {row['mc_answer3']}\nD: {row['mc_answer4']}\nAnswer:"
    )
    assert data.examples[0].choices == (" A", " B", " C", " D")
    assert [p.label for p in data.examples] == [0, 1, 2, 3, 0, 1]
    assert data.exclude_self and data.pool_size == 5  # one split: never its own demonstration
