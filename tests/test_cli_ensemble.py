"""`xelm ensemble create|eval|generate` as a user runs them."""

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED_DATA, xelm

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.ensemble.generation import generate
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel, single_model

LANGS = ("en", "tr", "ar", "ru")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Three experts (different weights) and a dense baseline, as directories of one pool."""
    root = tmp_path_factory.mktemp("pool")
    for i, langs in enumerate((["en", "tr"], ["ar"], ["ru"])):
        init_from_config("tiny", tokenizer_dir, root / "experts" / f"x{i}", languages=langs, seed=i)
    init_from_config("tiny", tokenizer_dir, root / "dense", languages=list(LANGS), seed=9)
    (root / "experts" / "x0.ckpt").mkdir()  # a training run's checkpoints: a glob skips them
    return root


@pytest.fixture(scope="module")
def evalset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four FLORES-200 devtest sentences per language, in the published one-per-line layout."""
    root = tmp_path_factory.mktemp("flores")
    for lang in LANGS:
        lines = (SHARED_DATA / "eval" / "flores200-devtest" / f"{lang}.txt").read_text()
        (root / f"{lang}.txt").write_text("\n".join(lines.splitlines()[:4]) + "\n")
    return root


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_json_has_every_system_and_metric(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    code, stdout, err = cli(
        capsys, "ensemble", "eval", str(pool / "experts" / "*"), "--data", str(evalset),
        "--each", "--baseline", str(pool / "dense"), "--format", "json", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(stdout)
    assert results == json.loads(out.read_text())
    assert [s["name"] for s in results["systems"]] == [
        "ensemble[language]", "expert:x0", "expert:x1", "expert:x2", "baseline:dense",
    ]  # fmt: skip
    assert results["ensemble"]["router"] == {"name": "language", "options": {}}
    assert results["ensemble"]["combine"] == "mixture"
    assert results["request"]["languages"] == sorted(LANGS)
    ensemble, x0, x1, _x2, dense = results["systems"]
    assert ensemble["executed"]["sequences"] == {"x0": 8, "x1": 4, "x2": 4}
    assert x0["executed"]["sequences"] == {"x0": 8}  # the 8 en/tr documents came from the cache
    assert ensemble["metrics"]["languages"]["ar"] == x1["metrics"]["languages"]["ar"]
    overall = dense["metrics"]["overall"]
    assert overall["documents"] == 16
    assert x0["executed"]["reused"] == {"x0": 8}
    # where the router sent each language: x0 covers en and tr, x1 ar, x2 ru
    one_hot = {"x0": [1.0, 0.0, 0.0], "x1": [0.0, 1.0, 0.0], "x2": [0.0, 0.0, 1.0]}
    expected = {"ar": one_hot["x1"], "en": one_hot["x0"], "ru": one_hot["x2"], "tr": one_hot["x0"]}
    assert ensemble["routing"] == expected
    assert all("routing" not in system for system in (x0, x1, dense))  # one bundle: no routing
    for system in (ensemble, dense):  # throughput: the tokens scored over the scoring time
        assert_scoring_rate(system)
        assert system["executed"]["reused"] == {}
    # each expert alone took some scores from the ensemble: its time does not cover them
    assert [s["tokens_per_second"] for s in results["systems"][1:4]] == [None] * 3
    assert overall["perplexity"] == pytest.approx(np.exp(overall["nll"] / overall["tokens"]))
    assert overall["bits_per_byte"] == pytest.approx(overall["nll"] / np.log(2) / overall["bytes"])
    lines = [line for lang in LANGS for line in (evalset / f"{lang}.txt").read_text().split("\n")]
    assert overall["bytes"] == sum(len(line.encode()) for line in lines)


def assert_scoring_rate(system: dict[str, Any]) -> None:
    """``tokens_per_second`` is the tokens scored over the system's time less its loading."""
    tokens = system["metrics"]["overall"]["tokens"]
    assert 0 < system["load_seconds"] < system["seconds"]
    scoring = system["seconds"] - system["load_seconds"]
    assert system["tokens_per_second"] == pytest.approx(tokens / scoring, rel=1e-3)


def test_eval_table_and_csv(capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path) -> None:
    members = [str(pool / "experts" / f"x{i}") for i in range(3)]
    code, table, err = cli(
        capsys, "ensemble", "eval", *members, "--data", str(evalset), "--router", "posterior",
        "--baseline", str(pool / "dense"), "--langs", "tr,ar",
    )  # fmt: skip
    assert code == 0, err
    assert "perplexity (lower is better)" in table and "router posterior, mixture" in table
    assert "delta vs baseline:dense" in table
    assert "ensemble[posterior]" in table
    rows = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    results_rows, routing_rows = ["tr", "ar", "pooled", "mean", "tokens/s"], ["ar", "tr"]
    assert [row for row in rows if row] == results_rows + routing_rows
    assert "ensemble[posterior]: mean routing weight per language" in table
    code, text, err = cli(
        capsys, "ensemble", "eval", *members, "--data", str(evalset), "--format", "csv",
        "--langs", "ru",
    )  # fmt: skip
    assert code == 0, err
    records = list(csv.DictReader(io.StringIO(text)))
    ppl = [r for r in records if r["metric"] == "perplexity"]
    assert {(r["system"], r["language"]) for r in ppl} == {
        ("ensemble[language]", "overall"), ("ensemble[language]", "ru"),
    }  # fmt: skip
    # --json, as other commands take it: the record --format json prints
    code, text, err = cli(
        capsys, "ensemble", "eval", *members, "--data", str(evalset), "--json", "--langs", "ru"
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(text)["request"]["languages"] == ["ru"]
    code, _, err = cli(
        capsys, "ensemble", "eval", *members, "--data", str(evalset), "--json", "--format", "csv"
    )  # fmt: skip
    assert (code, err) == (2, "xelm: error: --json and --format csv disagree: pass one of them\n")


def test_a_system_whose_scores_were_all_reused_reports_no_throughput(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path
) -> None:
    # on ar the ensemble runs x1 only: x1 alone then finds every score cached and runs nothing
    args = ["ensemble", "eval", str(pool / "experts" / "*"), "--data", str(evalset),
            "--langs", "ar", "--each"]  # fmt: skip
    code, stdout, err = cli(capsys, *args, "--format", "json")
    assert code == 0, err
    ensemble, x0, x1, _x2 = json.loads(stdout)["systems"]
    assert x1["executed"] == {"loads": {}, "sequences": {}, "reused": {"x1": 4}}
    assert x1["tokens_per_second"] is None
    assert x0["executed"] == {"loads": {"x0": 1}, "sequences": {"x0": 4}, "reused": {}}
    for system in (ensemble, x0):
        assert_scoring_rate(system)
    code, table, err = cli(capsys, *args)
    assert code == 0, err
    speeds = next(line for line in table.splitlines() if line.startswith("│ tokens/s"))
    cells = [cell.strip() for cell in speeds.split("│")[2:-1]]
    assert cells[2] == "reused"
    assert all(cell.replace(",", "").isdigit() for cell in cells[:2] + cells[3:])


def test_a_system_that_reused_part_of_its_scores_says_how_much(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path
) -> None:
    """On ar and tr the ensemble runs x1 on ar and x0 on tr: each expert alone reuses half its
    documents and scores the other half, which the table says instead of a rate."""
    args = ["ensemble", "eval", str(pool / "experts" / "*"), "--data", str(evalset),
            "--langs", "ar,tr", "--each"]  # fmt: skip
    code, table, err = cli(capsys, *args)
    assert code == 0, err
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("│ tokens/s"))
    cells, below = ([cell.strip() for cell in lines[i].split("│")[2:-1]] for i in (at, at + 1))
    assert cells[1:3] == ["50%", "50%"] and below[1:3] == ["reused", "reused"]  # one column
    assert cells[0].replace(",", "").isdigit()


def test_the_table_keeps_whole_system_names_at_80_columns(
    capsys: pytest.CaptureFixture[str], tokenizer_dir: Path, evalset: Path, tmp_path: Path
) -> None:
    from rich.console import Console

    from xelm_cli.ensemble.results import render_table

    for i, langs in enumerate((["tr"], ["ar"], ["en", "ru"])):
        name = f"flores-expert-{'-'.join(langs)}-cluster{i}"
        init_from_config("tiny", tokenizer_dir, tmp_path / "experts" / name, languages=langs)
    init_from_config("tiny", tokenizer_dir, tmp_path / "dense-baseline-4lang", languages=["tr"])
    code, stdout, err = cli(
        capsys, "ensemble", "eval", str(tmp_path / "experts" / "*"), "--data", str(evalset),
        "--langs", "tr,ar", "--each", "--baseline", str(tmp_path / "dense-baseline-4lang"),
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(stdout)
    console = Console(width=80, file=io.StringIO())
    console.print(render_table(results))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert max(len(line) for line in lines) <= 80 and "…" not in "".join(lines)
    head = lines[lines.index(next(ln for ln in lines if ln.startswith("┏"))) + 1 :]
    head = head[: next(i for i, ln in enumerate(head) if ln.startswith("┡"))]
    columns = zip(*(ln.split("┃")[1:-1] for ln in head), strict=True)
    headers = ["".join(piece.strip() for piece in column) for column in columns]
    names = [system["name"] for system in results["systems"]]
    assert names == [
        "ensemble[language]", "expert:flores-expert-ar-cluster1",
        "expert:flores-expert-en-ru-cluster2", "expert:flores-expert-tr-cluster0",
        "baseline:dense-baseline-4lang",
    ]  # fmt: skip
    assert headers == ["language", *names, "delta vsbaseline:dense-baseline-4lang"]


def test_numbers_never_wrap_at_80_columns_with_several_baselines() -> None:
    """As ``xelm ensemble eval ... --each --baseline A --baseline B --baseline C | cat``
    prints: no terminal, so 80 columns (was: 1321.745 shown as "1321.74" over "5")."""
    from rich.console import Console

    from xelm_cli.ensemble.results import render_table

    names = ["ensemble[language]", "expert:expert-0", "expert:expert-1", "baseline:dense",
             "baseline:average", "baseline:expert-0"]  # fmt: skip
    kinds = ["ensemble", "expert", "expert", "baseline", "baseline", "baseline"]
    languages = ["en", "de", "ru", "tr"]

    def metrics(offset: float) -> dict[str, Any]:
        scores = {lang: {"perplexity": 1321.745 + offset + i} for i, lang in enumerate(languages)}
        return {"overall": {"perplexity": 1000.5 + offset}, "languages": scores}

    systems: list[dict[str, Any]] = [{"name": name, "kind": kind, "metrics": metrics(100.0 * i)}
               for i, (name, kind) in enumerate(zip(names, kinds, strict=True))]  # fmt: skip
    results = {
        "primary": "perplexity", "higher_is_better": False, "systems": systems,
        "request": {"languages": languages},
        "ensemble": {"router": {"name": "language"}, "combine": "mixture"},
    }  # fmt: skip
    console = Console(width=80, file=io.StringIO(), soft_wrap=True)  # as the command prints
    console.print(render_table(results))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    body = [ln.split("│")[1:-1] for ln in lines if ln.startswith("│")]
    assert [cells[0].strip() for cells in body] == [*languages, "overall"]
    for column, system in enumerate(systems, start=1):
        scopes = system["metrics"]
        expected = [f"{scopes['languages'][lang]['perplexity']:.3f}" for lang in languages]
        expected.append(f"{scopes['overall']['perplexity']:.3f}")
        assert [cells[column].strip() for cells in body] == expected
    assert [cells[-1].strip() for cells in body] == ["-300.000"] * 5  # delta vs baseline:dense
    head = lines[lines.index(next(ln for ln in lines if ln.startswith("┏"))) + 1 :]
    head = head[: next(i for i, ln in enumerate(head) if ln.startswith("┡"))]
    columns = zip(*(ln.split("┃")[1:-1] for ln in head), strict=True)
    headers = ["".join(piece.strip() for piece in column) for column in columns]
    assert headers == ["language", *names, "delta vsbaseline:dense"]


def test_icl_table_shows_the_standard_error_of_the_examples_and_the_runs(
    capsys: pytest.CaptureFixture[str], pool: Path, tmp_path: Path
) -> None:
    data = Path(__file__).parent / "fixtures" / "tasks" / "jsonl"
    out = tmp_path / "results.json"
    code, table, err = cli(
        capsys, "ensemble", "eval", str(pool / "experts" / "x0"), "--task", "jsonl",
        "--data", str(data), "--shots", "1", "--runs", "3", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    title = "accuracy ± standard error of the examples and demonstrations (3 runs) (higher is"
    assert title in " ".join(table.split())
    metrics = json.loads(out.read_text())["systems"][0]["metrics"]
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in table.splitlines()
            if line.startswith("│")}  # fmt: skip
    for language, scope in [*metrics["languages"].items(), ("overall", metrics["overall"])]:
        both = math.sqrt(scope["stderr_examples"] ** 2 + scope["stderr"] ** 2)
        assert scope["stderr_examples"] > 0  # not the ± 0.000 of equal runs alone
        assert rows[language] == f"{scope['accuracy']:.3f} ± {both:.3f}"


def test_several_shots_evaluate_once_for_each(
    capsys: pytest.CaptureFixture[str], pool: Path, tmp_path: Path
) -> None:
    """``--shots 0,1`` (the design's ``--shots 0,8``): a record per count, each what ``--shots
    N`` alone gives; a JSON array in the output file and on stdout, CSV rows led by the count,
    a table each under its count."""
    data = Path(__file__).parent / "fixtures" / "tasks" / "jsonl"
    expert = str(pool / "experts" / "x0")
    common = ["ensemble", "eval", expert, "--task", "jsonl", "--data", str(data), "--runs", "2"]
    out = tmp_path / "results.json"
    code, stdout, err = cli(capsys, *common, "--shots", "0,1", "--json", "-o", str(out))
    assert code == 0, err
    records = json.loads(stdout)
    assert json.loads(out.read_text()) == records
    assert [r["request"]["shots"] for r in records] == [0, 1]
    for record in records:
        code, alone, err = cli(
            capsys, *common, "--shots", str(record["request"]["shots"]), "--json"
        )
        assert code == 0, err
        assert json.loads(alone)["systems"][0]["metrics"] == record["systems"][0]["metrics"]
    code, csv_text, _ = cli(capsys, *common, "--shots", "0,1", "--format", "csv")
    lines = csv_text.splitlines()
    assert lines[0] == "shots,system,kind,language,metric,value"
    assert {line.split(",")[0] for line in lines[1:]} == {"0", "1"}
    code, table, _ = cli(capsys, *common, "--shots", "0,1")
    assert code == 0 and table.index("0-shot") < table.index("1-shot")
    code, _, err = cli(capsys, *common, "--shots", "0,x")
    assert (code, err) == (
        2, "xelm: error: --shots takes whole numbers, comma-separated (8, or 0,8), not '0,x'\n"
    )  # fmt: skip


def test_create_calibrates_and_eval_reproduces_from_the_file(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path, tmp_path: Path
) -> None:
    ens = tmp_path / "ens.json"
    code, _, err = cli(
        capsys, "ensemble", "create", str(pool / "experts" / "*"), "--router", "oracle",
        "--calibrate", str(evalset), "-o", str(ens),
    )  # fmt: skip
    assert code == 0, err
    recorded = json.loads(ens.read_text())
    assert set(recorded["router"]["options"]["table"]) == set(LANGS)
    assert [m["path"] for m in recorded["members"]] == [
        str((pool / "experts" / f"x{i}").resolve()) for i in range(3)
    ]
    code, stdout, err = cli(
        capsys, "ensemble", "eval", str(ens), "--data", str(evalset), "--format", "json"
    )
    assert code == 0, err
    systems = json.loads(stdout)["systems"]
    assert sum(systems[0]["executed"]["sequences"].values()) == 16  # top-1: one run per document
    code, _, err = cli(capsys, "ensemble", "create", str(pool / "experts" / "*"), "-o", str(ens))
    assert (code, err) == (2, f"xelm: error: {ens} exists; pass --force to replace it\n")

    # held-out text of a language no expert covers is left out of the calibration, and said so
    wider = tmp_path / "wider"
    shutil.copytree(evalset, wider)
    lines = (SHARED_DATA / "eval" / "flores200-devtest" / "de.txt").read_text().splitlines()[:4]
    (wider / "de.txt").write_text("\n".join(lines) + "\n")
    code, _, err = cli(
        capsys, "ensemble", "create", str(pool / "experts" / "*"), "--router", "oracle",
        "--calibration", str(wider), "-o", str(ens), "--force",
    )  # fmt: skip
    assert code == 0 and err.startswith(
        f"xelm: note: calibrating on the languages of {wider} that the experts cover (ar, en, "
        "ru, tr); left out de (--langs chooses the languages)\n"
    ), err
    assert set(json.loads(ens.read_text())["router"]["options"]["table"]) == set(LANGS)


def test_create_ensemble_from_python_writes_what_the_command_writes(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path, tmp_path: Path
) -> None:
    from xelm_cli.api import UsageError, create_ensemble

    by_command, by_call = tmp_path / "command.json", tmp_path / "call.json"
    code, _, err = cli(
        capsys, "ensemble", "create", str(pool / "experts" / "*"), "--router", "oracle",
        "--calibration", str(evalset), "--langs", f"{LANGS[0]},{LANGS[1]}",
        "--calibration-limit", "3", "-o", str(by_command),
    )  # fmt: skip
    assert code == 0, err
    spec = create_ensemble(
        str(pool / "experts" / "*"), str(by_call), router="oracle", calibrate=evalset,
        languages=LANGS[:2], limit=3,
    )  # fmt: skip
    assert json.loads(by_call.read_text()) == json.loads(by_command.read_text())
    assert set(spec.router_options["table"]) == set(LANGS[:2])
    code, stdout, err = cli(
        capsys, "ensemble", "create", str(pool / "experts" / "*"), "--router", "oracle",
        "--calibration", str(evalset), "--langs", f"{LANGS[0]},{LANGS[1]}",
        "--calibration-limit", "3", "-o", str(by_command), "--force", "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert json.loads(stdout) == {"path": str(by_command), **json.loads(by_call.read_text())}
    with pytest.raises(UsageError, match="exists; pass --force"):
        create_ensemble(str(pool / "experts" / "*"), by_call)


def test_router_options_are_checked_by_the_declaration_on_the_command_line_and_in_files(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path, tmp_path: Path
) -> None:
    experts = str(pool / "experts" / "*")
    ens = tmp_path / "ens.json"
    code, _, err = cli(
        capsys, "ensemble", "create", experts, "--router", "posterior",
        "--router-arg", "top_k=2", "--router-arg", "prior=1,2,1", "-o", str(ens),
    )  # fmt: skip
    assert code == 0, err
    # recorded converted: an int and a list of floats, not the texts given
    assert json.loads(ens.read_text())["router"] == {
        "name": "posterior",
        "options": {"top_k": 2, "prior": [1.0, 2.0, 1.0]},
    }
    code, _, err = cli(
        capsys, "ensemble", "eval", experts, "--data", str(evalset), "--router", "posterior",
        "--router-arg", "top_k=two",
    )  # fmt: skip
    assert (code, err) == (
        2,
        "xelm: error: router 'posterior': option 'top_k' expects int or none, not 'two'\n",
    )
    # an ensemble file's options are checked when it is read
    edited = json.loads(ens.read_text())
    edited["router"]["options"]["top_k"] = [2]
    ens.write_text(json.dumps(edited))
    code, _, err = cli(capsys, "ensemble", "eval", str(ens), "--data", str(evalset))
    assert (code, err) == (
        2,
        f"xelm: error: router 'posterior' in {ens}: option 'top_k' expects int or none, "
        "not '[2]'\n",
    )
    edited["router"]["options"] = {"top_k": 1, "temperature": 2}
    ens.write_text(json.dumps(edited))
    code, _, err = cli(capsys, "ensemble", "eval", str(ens), "--data", str(evalset))
    assert (code, err) == (
        2,
        f"xelm: error: router 'posterior' in {ens} has no option 'temperature' (its options: "
        "prior, top_k)\n",
    )
    # --router-arg on top of a file's options: converted and checked the same way
    edited["router"]["options"] = {"top_k": 1}
    ens.write_text(json.dumps(edited))
    code, stdout, err = cli(
        capsys, "ensemble", "eval", str(ens), "--data", str(evalset), "--langs", "ar",
        "--router-arg", "top_k=3", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["ensemble"]["router"]["options"] == {"top_k": 3}
    # a field missing from the file is named, with the command that writes the file
    del edited["router"]
    ens.write_text(json.dumps(edited))
    code, _, err = cli(capsys, "ensemble", "eval", str(ens), "--data", str(evalset))
    assert (code, err) == (
        3,
        f"xelm: error: {ens}: ensemble file without the 'router' field; write it again with "
        f"xelm ensemble create MEMBERS --router NAME -o {ens}\n",
    )


def test_bad_inputs_are_one_line(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path, tmp_path: Path
) -> None:
    experts = str(pool / "experts" / "*")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "en.txt").write_text("\n\n")
    cases = [
        (["--data", str(empty)], f"no documents to evaluate in {empty}"),
        (["--data", str(tmp_path / "nope")], f"evaluation data not found: {tmp_path / 'nope'}"),
        (["--data", str(evalset), "--langs", "de"],  # every file's language (was: none)
         f"has no documents in de (it has: {', '.join(sorted(LANGS))})"),
        (["--data", str(evalset), "--router", "nope"], "unknown router 'nope'"),
        (["--data", str(evalset), "--router", "posteror"],
         "unknown router 'posteror' (did you mean 'posterior'? available: fixed, language, "),
        (["--data", str(evalset), "--router-arg", "oops"], "--router-arg must look like KEY=VALUE"),
        (["--data", str(evalset), "--combine", "logits", "--router", "posterior"],
         "logit averaging needs weights known before the experts run"),
        (["--data", str(evalset), "--evaluator", "nope"], "unknown evaluator 'nope'"),
        (["--data", str(evalset), "--limit", "0"], "--limit must be at least 1 (got 0)"),
        (["--data", str(evalset), "--limit=-3"], "--limit must be at least 1 (got -3)"),
        (["--data", str(SHARED_DATA / "tasks" / "sib200"), "--langs", "en"],
         "; to evaluate the sib200 task in context pass --task sib200"),
        (["--data", str(evalset), "--task", "sib200"], "unknown"),
    ]  # fmt: skip
    for args, message in cases[:-1]:
        code, _, err = cli(capsys, "ensemble", "eval", experts, *args)
        assert code == 2 and err.startswith("xelm: error: ") and message in err, (args, err)
        assert err.count("\n") == 1
    code, _, err = cli(  # the older spellings of --calibration and --calibration-limit
        capsys, "ensemble", "create", experts, "--router", "oracle", "--calibrate", str(evalset),
        "--limit", "0", "-o", str(tmp_path / "ens.json"),
    )  # fmt: skip
    assert (code, err) == (2, "xelm: error: --calibration-limit must be at least 1 (got 0)\n")
    # a language no expert covers, named with --langs, without a fallback
    only_ar = str(pool / "experts" / "x1")
    code, _, err = cli(capsys, "ensemble", "eval", only_ar, "--data", str(evalset), "--langs", "en")
    assert (code, err) == (
        2,
        "xelm: error: no expert covers language 'en' (covered: ar): choose a covered language, "
        "add an expert for it, or use --router-arg fallback=typology or fallback=posterior\n",
    )


def test_eval_keeps_by_default_to_the_data_languages_the_experts_cover(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path
) -> None:
    """FLORES has languages no expert covers: without --langs they are left out, in a note."""
    experts = [str(pool / "experts" / "x2"), str(pool / "experts" / "x1")]  # ru, ar
    code, out, err = cli(capsys, "ensemble", "eval", *experts, "--data", str(evalset), "--json")
    assert code == 0, err
    assert json.loads(out)["request"]["languages"] == ["ar", "ru"]
    assert err == (
        f"xelm: note: evaluating the languages of {evalset} that the experts cover (ar, ru); "
        "left out en, tr, which router 'language' does not route: evaluate them with a router "
        "that does (e.g. --router posterior; the language router with --router-arg "
        "fallback=typology)\n"
    )
    code, out, err = cli(
        capsys, "ensemble", "eval", *experts, "--data", str(evalset), "--langs", "ar,tr",
        "--router-arg", "fallback=typology", "--json",
    )  # fmt: skip
    assert code == 0 and err == ""
    assert json.loads(out)["request"]["languages"] == ["ar", "tr"]


def test_eval_keeps_by_default_the_languages_the_router_takes(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path
) -> None:
    """A router that routes any language (Router.routes_uncovered_languages) is evaluated on
    every language of the data, the ones no expert covers scored like the others."""
    experts = [str(pool / "experts" / "x2"), str(pool / "experts" / "x1")]  # ru, ar
    code, out, err = cli(
        capsys, "ensemble", "eval", *experts, "--data", str(evalset), "--router", "posterior",
        "--each", "--limit", "1", "--json",
    )  # fmt: skip
    assert code == 0 and err == ""
    results = json.loads(out)
    assert results["request"]["languages"] == list(sorted(LANGS))
    ensemble, alone_ru, alone_ar = (s["metrics"]["languages"] for s in results["systems"])
    # One document a language: the posterior mixture's probability of the whole document is
    # the prior-weighted sum of the experts' (the product of its token probabilities telescopes)
    for language in ("en", "tr"):
        nlls = np.array([alone_ru[language]["nll"], alone_ar[language]["nll"]])
        expected = np.log(2) - np.logaddexp(*-nlls)
        assert ensemble[language]["nll"] == pytest.approx(expected, rel=1e-9)
        assert ensemble[language]["documents"] == 1
    code, out, err = cli(  # the language router takes them with a fallback, an option
        capsys, "ensemble", "eval", *experts, "--data", str(evalset), "--limit", "1",
        "--router-arg", "fallback=typology", "--json",
    )  # fmt: skip
    assert code == 0 and err == ""
    assert json.loads(out)["request"]["languages"] == list(sorted(LANGS))


def test_different_tokenizers_are_refused(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path, tmp_path: Path
) -> None:
    from conftest import train_tokenizer

    other = init_from_config(
        "tiny", train_tokenizer(tmp_path / "tok", 300), tmp_path / "other", languages=["de"]
    )
    code, _, err = cli(
        capsys, "ensemble", "eval", str(pool / "experts" / "x0"), str(other.path),
        "--data", str(evalset),
    )  # fmt: skip
    assert code == 2 and "have different tokenizers" in err


def test_another_architecture_family_is_refused_naming_baseline_which_scores_it(
    capsys: pytest.CaptureFixture[str],
    pool: Path,
    evalset: Path,
    tmp_path: Path,
    tokenizer_dir: Path,
) -> None:
    from merge_helpers import seed_from_config

    expert = pool / "experts" / "x0"
    small = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=2, head_dim=16)  # fmt: skip
    mistral = seed_from_config("mistral", tokenizer_dir, tmp_path / "mistral", ["en"], **small)
    capsys.readouterr()  # transformers' progress bar while writing it
    data = ["--data", str(evalset), "--langs", "en"]
    code, _, err = cli(capsys, "ensemble", "eval", str(expert), str(mistral.path), *data)
    assert (code, err) == (
        2,
        f"xelm: error: {mistral.path} is a 'mistral' model but {expert} is a 'llama' model; an "
        "ensemble needs one architecture family (to score them side by side: xelm ensemble eval "
        f"{expert} --baseline {mistral.path})\n",
    )
    code, stdout, err = cli(
        capsys, "ensemble", "eval", str(expert), "--baseline", str(mistral.path), *data,
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    assert [s["name"] for s in json.loads(stdout)["systems"]] == [
        "model:x0",
        "baseline:mistral",
    ]


def test_third_party_router_plugin_is_usable_by_name(
    hello_site: Path, pool: Path, evalset: Path, tmp_path: Path
) -> None:
    # x0 and a branch of it both cover en/tr: shared-language splits those documents 50/50
    twin = branch(pool / "experts" / "x0", tmp_path / "twin", languages=["en", "tr"])
    result = xelm(
        "ensemble", "eval", str(pool / "experts" / "x0"), str(twin.path),
        "--router", "shared-language", "--data", str(evalset), "--langs", "en,tr",
        "--format", "json", sites=[hello_site],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    systems = json.loads(result.stdout)["systems"]
    assert systems[0]["name"] == "ensemble[shared-language]"
    assert systems[0]["executed"]["sequences"] == {"x0": 8, "twin": 8}


def test_generation_with_one_expert_is_that_experts_greedy_decoding(pool: Path) -> None:
    members = [Bundle.read(pool / "experts" / f"x{i}") for i in range(3)]
    result = generate(
        members, build_router("language"), "Merhaba", language="tr", max_new_tokens=6,
        temperature=0,
    )  # fmt: skip
    assert result.experts == ["x0"] and len(result.tokens) == 6
    model = members[0].load_model().eval()
    tokenizer = members[0].load_tokenizer()
    ids = [tokenizer.bos_token_id, *tokenizer("Merhaba", add_special_tokens=False).input_ids]
    greedy = model.generate(
        __import__("torch").tensor([ids]), max_new_tokens=6, do_sample=False, min_new_tokens=6
    )[0, len(ids) :].tolist()
    assert result.tokens == greedy
    mixed = generate(members, build_router("posterior"), "Merhaba", max_new_tokens=5, seed=3)
    again = generate(members, build_router("posterior"), "Merhaba", max_new_tokens=5, seed=3)
    assert mixed.tokens == again.tokens and mixed.experts == ["x0", "x1", "x2"]
    assert len(mixed.weights[0]) == 3 and sum(mixed.weights[0]) == pytest.approx(1.0)
    assert mixed.weights[0] != pytest.approx([1 / 3] * 3)  # the prompt already moved the posterior
    assert mixed.weights[1] != pytest.approx(mixed.weights[0])  # and so does each new token


def test_generate_command(capsys: pytest.CaptureFixture[str], pool: Path) -> None:
    code, out, err = cli(
        capsys, "ensemble", "generate", str(pool / "experts" / "*"), "--prompt", "Hello",
        "--lang", "en", "--max-new-tokens", "3", "--temperature", "0", "--json",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["experts"] == ["x0"] and len(record["tokens"]) == 3
    code, _, err = cli(
        capsys, "ensemble", "generate", str(pool / "experts" / "*"), "--prompt", "x",
        "--max-new-tokens", "0",
    )  # fmt: skip
    assert (code, err) == (2, "xelm: error: --max-new-tokens must be at least 1\n")


def hand_argmaxes(
    members: list[Bundle], prompt: str, c: np.ndarray
) -> tuple[dict[str, int], list[float]]:
    """Each rule's most likely next token after ``prompt`` with weights ``c``, from the experts'
    own next-token logits z_e; and the product rule's weights (c_e times the expert's
    probability of the prompt's last token, normalised)."""
    import torch

    tokenizer = members[0].load_tokenizer()
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]
    with torch.no_grad():
        logits = [m.load_model().eval()(torch.tensor([ids])).logits[0].double() for m in members]
    z = np.stack([row[-1].numpy() for row in logits])
    logprobs = np.stack([torch.log_softmax(row, dim=-1).numpy() for row in logits])
    w = c * np.exp(logprobs[:, -2, ids[-1]])
    w /= w.sum()
    argmaxes = {
        "mixture": int(np.argmax(c @ np.exp(logprobs[:, -1]))),
        "logits": int(np.argmax(c @ z)),
        "product": int(np.argmax(w @ logprobs[:, -1])),
    }
    return argmaxes, w.tolist()


def test_generation_follows_the_ensemble_files_combination_rule(
    capsys: pytest.CaptureFixture[str], pool: Path, tmp_path: Path
) -> None:
    experts = [str(pool / "experts" / f"x{i}") for i in range(3)]
    members = [Bundle.read(Path(e)) for e in experts[:2]]
    # prompt and weights chosen so that every two rules disagree on the first token somewhere
    firsts: dict[str, list[int]] = {}
    for c in ((0.6, 0.4), (0.5, 0.5)):
        hand, product_weights = hand_argmaxes(members, "a", np.array(c))
        for rule in ("mixture", "logits", "product"):
            ens = str(tmp_path / f"{rule}-{c[0]}.json")
            code, _, err = cli(
                capsys, "ensemble", "create", *experts, "--router", "fixed",
                "--router-arg", f"weights={c[0]},{c[1]},0", "--combine", rule, "-o", ens,
            )  # fmt: skip
            assert code == 0, err
            code, out, err = cli(
                capsys, "ensemble", "generate", ens, "--prompt", "a", "--max-new-tokens", "1",
                "--temperature", "0", "--json", "--device", "cpu",  # as computed by hand
            )  # fmt: skip
            assert code == 0, err
            record = json.loads(out)
            assert (record["combine"], record["experts"]) == (rule, ["x0", "x1"])
            assert record["tokens"] == [hand[rule]], (rule, c)
            expected = product_weights if rule == "product" else list(c)
            assert record["weights"] == [pytest.approx(expected)]
            firsts.setdefault(rule, []).append(record["tokens"][0])
    assert firsts["mixture"] != firsts["logits"] != firsts["product"] != firsts["mixture"]
    product_file = str(tmp_path / "product-0.5.json")
    code, out, err = cli(
        capsys, "ensemble", "generate", product_file, "--combine", "mixture", "--prompt", "a",
        "--max-new-tokens", "1", "--temperature", "0", "--json", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["tokens"] == [firsts["mixture"][-1]]  # --combine overrides the file's


def test_generation_refuses_a_rule_its_router_cannot_serve(
    capsys: pytest.CaptureFixture[str], pool: Path
) -> None:
    only_ar = str(pool / "experts" / "x1")
    code, _, err = cli(
        capsys, "ensemble", "generate", str(pool / "experts" / "*"), "--router", "posterior",
        "--combine", "logits", "--prompt", "a",
    )  # fmt: skip
    assert (code, err) == (
        2,
        "xelm: error: logit averaging needs weights known before the experts run; router "
        "'posterior' depends on their outputs: use --combine mixture\n",
    )
    code, _, err = cli(
        capsys, "ensemble", "generate", only_ar, "--lang", "en", "--router-arg",
        "fallback=posterior", "--combine", "product", "--prompt", "a",
    )  # fmt: skip
    assert (code, err) == (
        2,
        "xelm: error: the product rule needs weights known before the experts run; router "
        "'language' falls back to 'posterior', which depends on their outputs: use --combine "
        "mixture or a pre-router fallback\n",
    )


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("meta", "device 'meta' is not one xelm runs on; use cpu, cuda or mps"),
        ("mps", "device 'mps' asked for but MPS is not available in this torch; use --device cpu"),
        ("tpu", "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_eval_refuses_a_device_it_cannot_run_on_in_one_line(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path, device: str, expected: str
) -> None:
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this torch sees an MPS device")
    code, _, err = cli(
        capsys, "ensemble", "eval", str(pool / "experts" / "*"), "--data", str(evalset),
        "--device", device,
    )  # fmt: skip
    assert (code, err) == (2, f"xelm: error: {expected}\n")


def test_single_model_and_one_expert_ensemble_agree(pool: Path) -> None:
    bundle = Bundle.read(pool / "dense")
    from xelm_cli.api import Document

    docs = [Document("Hello there.", "en"), Document("Merhaba.", "tr")]
    a = single_model(bundle, "dense").score_documents(docs)
    b = EnsembleModel([bundle], build_router("language")).score_documents(docs)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_loading_the_tokenizer_counts_as_loading(pool: Path) -> None:
    """The first system of a run loads its tokenizer (and transformers' modules with it) while
    it scores: that is loading, left out of its tokens/s as the experts' loads are."""
    model = single_model(Bundle.read(pool / "dense"), "dense")
    assert model.stats.load_seconds == 0
    assert model.tokenizer is not None
    loaded = model.stats.load_seconds
    assert loaded > 0 and model.stats.loads == {}  # no expert loaded
    assert model.tokenizer is not None and model.stats.load_seconds == loaded  # once


def test_one_bundle_is_named_as_a_model_not_an_ensemble(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path
) -> None:
    code, stdout, err = cli(
        capsys, "ensemble", "eval", str(pool / "dense"), "--data", str(evalset), "--langs", "en",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    (system,) = json.loads(stdout)["systems"]
    assert system["name"] == "model:dense"
    assert system["bundles"][0]["name"] == "dense"


def test_a_baseline_given_twice_is_named(
    capsys: pytest.CaptureFixture[str], pool: Path, evalset: Path
) -> None:
    dense = str(pool / "dense")
    code, _, err = cli(
        capsys, "ensemble", "eval", str(pool / "experts" / "x0"), "--data", str(evalset),
        "--baseline", dense, "--baseline", dense + "/",
    )  # fmt: skip
    assert code == 2
    assert err.endswith(
        f"xelm: error: --baseline {dense} is given twice: give each baseline once\n"
    )
