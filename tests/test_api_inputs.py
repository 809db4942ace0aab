"""The Python API as a script uses it: what one call returns goes into the next as it is (a
Bundle, shards, a preparation's result, a trained tokenizer, an allocation), paths come as
text or Path, languages as a list or as the commands' "en,tr", and a bad input is a one-line
xelm error, not a library's exception (found by an audit of xelm_cli.api)."""

import json
from pathlib import Path

import pytest
from conftest import sample_texts

from xelm_cli import api as xelm

ROOT = Path(__file__).resolve().parents[1]


def test_what_one_call_returns_goes_into_the_next(tmp_path: Path, seed_bundle: Path) -> None:
    """Each call below refused the object the one before it returned (TypeError), or took
    a Bundle for a glob pattern (merge_average, build_moe)."""
    seed = xelm.Bundle.open(seed_bundle)
    english = xelm.branch(seed, tmp_path / "en", languages=["en"])
    turkish = xelm.branch(seed, tmp_path / "tr", languages=["tr"])
    prepared = xelm.prepare(_corpus(tmp_path), seed, tmp_path / "shards", languages="en,tr")
    trained = xelm.train(english, data=prepared, tokens=128, output=tmp_path / "trained",
                         block_size=32, batch_size=2)  # fmt: skip
    again = xelm.train(turkish, data=prepared.shards, tokens=128, output=tmp_path / "again",
                       block_size=32, batch_size=2)  # fmt: skip
    assert trained.languages == ["en"] and again.languages == ["tr"]
    with pytest.raises(xelm.UsageError, match=r"^ensemble file not found: "):  # a FormatError
        xelm.merge_average([trained, again], tmp_path / "m", prior=tmp_path / "nowhere.json")
    merged = xelm.merge_average([trained, again], tmp_path / "merged")
    moe = xelm.build_moe([trained, again], tmp_path / "moe", gate="random")
    assert xelm.Bundle.read(merged.path).manifest.role == "dense"
    assert moe.path.is_dir() and xelm.verify_bundle(trained) == []
    archive = xelm.pack_bundle(trained, tmp_path / "trained.xelm.tar.zst")
    unpacked = xelm.unpack_bundle(archive, tmp_path / "unpacked", max_bytes="1G")  # as --max-size
    assert unpacked.digest == trained.digest
    tokenizer = xelm.train_tokenizer_on_corpus(
        _corpus(tmp_path), tmp_path / "tok", vocab_size=300, chars_per_language=2000
    )
    assert xelm.init_from_config("tiny", tokenizer, tmp_path / "seed2", languages="en").path


def test_paths_as_text_and_languages_as_the_commands_write_them(
    tmp_path: Path, seed_bundle: Path
) -> None:
    results = xelm.read_results(str(ROOT / "docs" / "demo-small" / "results.json"))
    assert results["preset"]["name"] == "small"
    assert xelm.list_checkpoints(str(tmp_path)) == []
    corpus = _corpus(tmp_path)
    documents = xelm.read_documents(corpus, languages="en,tr", limit=2)  # was read as e, n
    assert sorted(d.language for d in documents) == ["en", "en", "tr", "tr"]
    distances = xelm.distance_matrix("en,tr")
    assert distances.shape == (2, 2) and distances[0, 1] == distances[1, 0] > 0
    graph = xelm.lineage_graph([seed_bundle, str(seed_bundle)])  # directories, not Bundles
    assert xelm.Bundle.read(seed_bundle).digest in graph
    allocation = tmp_path / "alloc.json"
    xelm.write_allocation(allocation, clusterer="typology", experts=[["en"], ["tr"]])
    assert xelm.allocation_summary(allocation)["k"] == 2
    written = xelm.write_plots(str(allocation), str(tmp_path / "plots"))
    assert [path.name for path in written] == ["heatmap.png"]


def test_sizes_and_arguments_as_the_commands_take_them(
    tmp_path: Path, seed_bundle: Path, train_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_plan's memory as --memory's text ("80GB") and train_args as a list (they were a
    TypeError and an AttributeError); fetch_data's size as --size's text."""
    monkeypatch.chdir(tmp_path)
    allocation = tmp_path / "alloc.json"
    xelm.write_allocation(allocation, clusterer="typology", experts=[["en"], ["tr"]])
    plans = [
        xelm.make_plan(
            "80K",
            allocation,
            seed_bundle,
            train_shards,
            "runs",
            memory=memory,
            train_args=train_args,
        )
        for memory, train_args in (
            (80_000_000_000, "--block-size 64 --device cpu"),
            ("80GB", ["--block-size", "64", "--device", "cpu"]),
        )
    ]
    assert plans[0] == plans[1] and plans[0]["estimate"]["memory_limit"] == 80_000_000_000
    with pytest.raises(xelm.UsageError, match="--size takes a number of bytes"):
        xelm.fetch_data(tmp_path / "data", languages="en", size="lots")


def test_one_baseline_is_a_bundle_not_a_list_of_characters(
    tmp_path: Path, seed_bundle: Path
) -> None:
    """baselines="seed" was read as the bundles "s", "e", "e", "d"; a Path was refused."""
    flores = tmp_path / "flores"
    flores.mkdir()
    (flores / "en.txt").write_text("Hello world.\nA second line.\n")
    for baseline in (str(seed_bundle), seed_bundle, xelm.Bundle.open(seed_bundle)):
        results = xelm.evaluate([seed_bundle], data=flores, languages="en", baselines=baseline)
        assert [s["name"] for s in results["systems"]][-1] == f"baseline:{seed_bundle.name}"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: xelm.demo_plan("smoke", devices=-3), "--devices must be at least 1"),
        (lambda t: xelm.write_report({}, t / "report"), "write_report takes a demo's results"),
        (
            lambda t: xelm.unpack_bundle(t / "a.xelm.tar.zst", t / "u", max_bytes=-1),
            "--max-size must be positive",
        ),
        (lambda t: xelm.plan_dry_run(str(t / "plan.json")), "no plan at"),
    ],
)
def test_bad_inputs_are_one_line_usage_errors(tmp_path: Path, call, message: str) -> None:
    """Each was a bare AssertionError, KeyError, AttributeError or a FormatError."""
    with pytest.raises(xelm.UsageError, match=message) as refused:
        call(tmp_path)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "report").exists()


def _corpus(tmp_path: Path) -> Path:
    texts = sample_texts()
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for language, half in (("en", texts[: len(texts) // 2]), ("tr", texts[len(texts) // 2 :])):
        lines = [json.dumps({"text": text, "lang": language}) for text in half]
        (corpus / f"{language}.jsonl").write_text("\n".join(lines) + "\n")
    return corpus
