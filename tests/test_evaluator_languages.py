"""``Evaluator.on_languages``: the same evaluation restricted to some of its languages.
xelm's evaluators restrict what they already read (nothing is read again: the data folder is
gone when they restrict) and give exactly what building them on those languages gives; a
third-party evaluator without the override is built again (the contract's default), also by
``xelm ensemble eval`` without --langs, which keeps to the languages the experts cover."""

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from evaluator_helpers import FirstLine, install_evaluator
from xelm_eval.icl import IclEvaluator
from xelm_eval.perplexity import PerplexityEvaluator

from xelm_cli.api import Document, EvalRequest, Evaluator, UsageError
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.ensemble.results import build_evaluator
from xelm_cli.ensemble.runner import single_model
from xelm_cli.plugin.conformance import TinyExperts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FLORES = SHARED / "eval" / "flores200-devtest"
SIB200 = SHARED / "tasks" / "sib200"
LANGUAGES = ("ar", "en", "tr")
RESTRICTED = ("tr", "ar")  # not in the data's order: presented as asked


def copy_languages(source: Path, target: Path) -> Path:
    """``source``'s files or folders of ``LANGUAGES`` (``ar.txt``, ``ar/``) under ``target``."""
    target.mkdir()
    for path in source.iterdir():
        if path.name.split(".")[0] in LANGUAGES:
            copy = shutil.copytree if path.is_dir() else shutil.copy
            copy(path, target / path.name)
    return target


def scored(evaluator: Evaluator, seed_bundle: Path) -> dict[str, Any]:
    """``evaluator`` on the tiny seed bundle, a fresh model each time (no shared score cache)."""
    return evaluator.evaluate(single_model(Bundle.read(seed_bundle), "seed"))


def test_perplexity_restricts_the_documents_it_read(tmp_path: Path, seed_bundle: Path) -> None:
    data = copy_languages(FLORES, tmp_path / "flores")
    whole = PerplexityEvaluator(EvalRequest(str(data), limit=3))
    chosen = PerplexityEvaluator(EvalRequest(str(data), languages=RESTRICTED, limit=3))
    data.rename(tmp_path / "gone")

    restricted = whole.on_languages(RESTRICTED)
    assert restricted.languages == chosen.languages == list(RESTRICTED)
    assert restricted.request == chosen.request
    assert restricted.documents == chosen.documents
    assert [d.language for d in restricted.documents] == ["ar"] * 3 + ["tr"] * 3  # file order
    result = scored(restricted, seed_bundle)
    assert result == scored(chosen, seed_bundle)
    assert list(result["languages"]) == list(RESTRICTED)
    assert whole.languages == list(LANGUAGES) and len(whole.documents) == 9  # left as it was


def test_icl_restricts_the_examples_and_demonstrations_it_read(
    tmp_path: Path, seed_bundle: Path
) -> None:
    data = copy_languages(SIB200, tmp_path / "sib200")
    settings: dict[str, Any] = {"task": "sib200", "limit": 4, "shots": 2, "runs": 2, "seed": 5}
    whole = IclEvaluator(EvalRequest(str(data), **settings))
    chosen = IclEvaluator(EvalRequest(str(data), languages=RESTRICTED, **settings))
    data.rename(tmp_path / "gone")

    restricted = whole.on_languages(RESTRICTED)
    assert restricted.languages == chosen.languages == list(RESTRICTED)
    assert restricted.request == chosen.request
    # Each language draws its demonstrations with its own generator: the same prompts
    assert restricted._prompts() == chosen._prompts()
    result = scored(restricted, seed_bundle)
    assert result == scored(chosen, seed_bundle)
    assert list(result["languages"]) == list(RESTRICTED)
    assert whole.languages == list(LANGUAGES)


def test_restricting_to_a_language_it_lacks_is_one_line(tmp_path: Path) -> None:
    flores = copy_languages(FLORES, tmp_path / "flores")
    perplexity = PerplexityEvaluator(EvalRequest(str(flores), limit=1))
    with pytest.raises(UsageError) as refused:
        perplexity.on_languages(["tr", "de"])
    assert str(refused.value) == (
        f"cannot restrict the evaluation of {flores} to tr, de: choose among ar, en, tr"
    )
    sib200 = copy_languages(SIB200, tmp_path / "sib200")
    icl = IclEvaluator(EvalRequest(str(sib200), task="sib200", limit=1))
    with pytest.raises(UsageError) as refused:
        icl.on_languages([])
    assert str(refused.value) == (
        "cannot restrict the evaluation of sib200 to no language: choose among ar, en, tr"
    )


class FirstLines(FirstLine):
    """The contract test's evaluator, on the languages asked for (every one by default); no
    ``on_languages`` of its own, no ``super().__init__``."""

    name = "first-lines"

    def __init__(self, request: EvalRequest) -> None:
        files = sorted(Path(str(request.data)).glob("*.txt"))
        asked: Sequence[str] = request.languages or [path.stem for path in files]
        self.documents = [
            Document(path.read_text().splitlines()[0], path.stem)
            for path in files
            if path.stem in asked
        ]


@pytest.mark.usefixtures("isolated_registry")
def test_an_evaluator_without_the_override_is_built_again(
    tiny_experts: TinyExperts,
    tmp_path: Path,
) -> None:
    install_evaluator(FirstLines)
    corpus = shutil.copytree(tiny_experts.corpus, tmp_path / "corpus")
    whole = build_evaluator("first-lines", EvalRequest(str(corpus)))
    (corpus / "tr.txt").write_text("a line written later\n")

    restricted = whole.on_languages(["tr"])
    assert type(restricted) is FirstLines
    assert restricted.request == EvalRequest(str(corpus), languages=("tr",))
    assert restricted.documents == [Document("a line written later", "tr")]  # read again
    assert whole.languages == ["en", "es", "tr"]


def en_and_tr_experts(tiny: TinyExperts) -> list[str]:
    """The tiny experts of en and tr: es, in the corpus too, is covered by none."""
    return [str(b.path) for b in tiny.bundles if b.languages[0] in ("en", "tr")]


@pytest.mark.usefixtures("isolated_registry")
def test_eval_without_langs_keeps_a_third_party_evaluator_to_the_covered_languages(
    tiny_experts: TinyExperts,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_evaluator(FirstLines)
    members = en_and_tr_experts(tiny_experts)
    data = ["--data", str(tiny_experts.corpus), "--evaluator", "first-lines", "--format", "json"]
    assert run(["ensemble", "eval", *members, *data]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"xelm: note: evaluating the languages of {tiny_experts.corpus} that the experts cover "
        "(en, tr); left out es, which router 'language' does not route: evaluate them with a "
        "router that does (e.g. --router posterior; the language router with --router-arg "
        "fallback=typology)\n"
    )
    results = json.loads(captured.out)
    assert results["request"]["languages"] == ["en", "tr"]
    assert list(results["systems"][0]["metrics"]["languages"]) == ["en", "tr"]


class RestrictsBadly(FirstLines):
    """Raises in on_languages: a bug in the evaluator."""

    name = "restricts-badly"

    def on_languages(self, languages: Sequence[str]) -> Evaluator:
        raise ValueError("forgot my languages")


@pytest.mark.usefixtures("isolated_registry")
def test_an_exception_while_restricting_is_one_line_naming_the_evaluator(
    tiny_experts: TinyExperts,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_evaluator(RestrictsBadly)
    members = en_and_tr_experts(tiny_experts)
    data = ["--data", str(tiny_experts.corpus), "--evaluator", "restricts-badly"]
    assert run(["ensemble", "eval", *members, *data]) == 6
    assert capsys.readouterr().err.splitlines()[-1] == (
        "xelm: error: evaluator 'restricts-badly' (plugin 'mine') failed while being restricted "
        "to en, tr: ValueError: forgot my languages; this is a bug in the evaluator "
        "(XELM_DEBUG=1 shows the traceback)"
    )
