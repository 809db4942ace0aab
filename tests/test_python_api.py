"""The README's "From Python" block, run exactly as printed: the whole method from Python
(tokenizer, seed, typology clustering, branch, train, ensemble evaluation) on the sample data;
and the Python calls agree with the commands they stand for."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA

from xelm_cli import api
from xelm_cli.cli import run
from xelm_cli.cluster.allocation import read_allocation

README = ROOT / "README.md"


def readme_block() -> str:
    """The first ```python block of the README's "From Python" section."""
    text = README.read_text()
    section = text[text.index("## From Python") :]
    section = section[: section.index("\n## ", 1)]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "README.md: no ```python block under '## From Python'"
    return found.group(1)


def test_the_readme_block_is_short_and_uses_only_the_public_api() -> None:
    code = readme_block()
    assert len([line for line in code.splitlines() if line.strip()]) <= 22
    imports = re.findall(r"^(?:from|import) (\S+)", code, re.M)
    assert set(imports) <= {"pathlib", "xelm_cli"}
    assert "from xelm_cli import api as xelm" in code


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_the_readme_block_runs_the_whole_method(tmp_path: Path) -> None:
    # the block reads ../shared/data relative to where it runs, as from the repository root
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    where = tmp_path / "work"
    where.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XELM_PLUGINS", "XELM_DEBUG")}
    result = subprocess.run(
        [sys.executable, "-c", readme_block()],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    work = where / "xelm-python"
    allocation = read_allocation(work / "alloc.json")
    assert allocation.clusterer == "typology" and allocation.k == 2
    assert sorted(lang for group in allocation.experts for lang in group) == [
        "ar",
        "en",
        "ru",
        "tr",
    ]
    names = ["-".join(group) for group in allocation.experts]
    for name in names:
        manifest = json.loads((work / "experts" / name / "xelm.json").read_text())
        assert manifest["languages"] == allocation.experts[names.index(name)]

    # what it prints: the ensemble, then each expert alone, with its overall perplexity
    lines = result.stdout.splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "ensemble[language]",
        *(f"expert:{name}" for name in names),
    ]
    perplexity = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
    assert all(math.isfinite(value) and value > 1 for value in perplexity.values())
    vocabulary = len(json.loads((work / "tok" / "tokenizer.json").read_text())["model"]["vocab"])
    ensemble = perplexity["ensemble[language]"]
    assert ensemble < vocabulary  # it learnt something: better than a uniform guess
    # each expert only saw its own languages; the language router sends each one its own
    assert all(
        ensemble < value for name, value in perplexity.items() if name != "ensemble[language]"
    )

    results = json.loads((work / "results.json").read_text())
    assert results["format"] == "xelm-results"
    assert [s["name"] for s in results["systems"]] == list(perplexity)
    assert results["request"]["languages"] == ["en", "tr", "ar", "ru"]
    overall = results["systems"][0]["metrics"]["overall"]["perplexity"]
    assert round(overall, 1) == ensemble


def test_generate_text_is_what_ensemble_generate_prints(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, langs in enumerate((["en", "tr"], ["ar"])):
        api.init_from_config(
            "tiny", tokenizer_dir, tmp_path / "experts" / f"x{i}", languages=langs, seed=i
        )
    experts, ensemble = str(tmp_path / "experts" / "*"), str(tmp_path / "ens.json")
    api.create_ensemble(experts, ensemble, router="posterior")
    record = api.generate_text(ensemble, "Merhaba", max_new_tokens=4, seed=3)
    assert run(["ensemble", "generate", ensemble, "--prompt", "Merhaba", "--max-new-tokens", "4",
                "--seed", "3", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == record
    assert record["prompt"] == "Merhaba" and record["experts"] == ["x0", "x1"]
    assert record["combine"] == "mixture"  # the ensemble file's rule
    assert len(record["tokens"]) == len(record["weights"]) == 4
    assert all(sum(weights) == pytest.approx(1.0) for weights in record["weights"])

    greedy = api.generate_text(experts, "Merhaba", language="tur", max_new_tokens=3, temperature=0)
    assert run(["ensemble", "generate", experts, "--lang", "tr", "--prompt", "Merhaba",
                "--max-new-tokens", "3", "--temperature", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out == "Merhaba" + greedy["text"] + "\n"
    assert greedy["experts"] == ["x0"] and greedy["weights"] == [[1.0]] * 3


def test_generate_text_checks_its_arguments_before_opening_the_members() -> None:
    with pytest.raises(api.UsageError, match=r"^--max-new-tokens must be at least 1$"):
        api.generate_text("no/such/experts/*", "x", max_new_tokens=0)


def test_rank_donors_takes_candidates_as_text() -> None:
    ranked = api.rank_donors("az", "en, tur")
    assert ranked == api.rank_donors("az", ["en", "tr"])
    assert [code for code, _ in ranked] == ["tr", "en"]  # Turkish is Azerbaijani's neighbour
