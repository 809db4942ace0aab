"""`xelm demo --preset smoke` end to end: every step runs, every file exists, a re-run resumes.

This checks the machinery, not the science (the smoke preset trains for seconds); the default
preset's findings are in the README.
"""

import json
import shlex
from pathlib import Path

import pytest
from conftest import SHARED_DATA, same_weights

from xelm_cli.cli import run
from xelm_cli.demo.plan import runner_span_tokens
from xelm_cli.demo.presets import NEW_LANGUAGES, PRESETS, TRAIN_LANGUAGES

STEPS = ["corpus", "tokenizer", "shards", "seed", "dense", "typology-k4", "tfidf-k4", "evaluate",
         "average", "moe", "moe-finetune", "adapt", "icl"]  # fmt: skip
MERGED = ["average", "moe", "moe+ft"]  # rows "typology-k4 NAME": one model from the experts
FIGURES = ["perplexity.png", "gain_vs_data.png", "expert_heatmap.png", "typology_tree.png",
           "adaptation.png"]  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    assert run(["demo", "--preset", "smoke", "--data", str(SHARED_DATA), "-o", str(out)]) == 0
    return out


def test_every_step_ran_and_wrote_its_outputs(smoke: Path) -> None:
    assert sorted(p.stem for p in (smoke / "steps").glob("*.json")) == sorted(STEPS)
    bundles = ["seed", "dense", *(f"typology-k4/expert-{i}" for i in range(4))]
    bundles += [f"tfidf-k4/expert-{i}" for i in range(4)]
    bundles += [f"adapt/{m}-{lang}" for m in ("hmr", "lapt") for lang in NEW_LANGUAGES]
    bundles += ["typology-k4/average", "typology-k4/moe", "typology-k4/moe-ft"]
    for bundle in bundles:
        assert run(["bundle", "verify", str(smoke / bundle)]) == 0, bundle
    report = smoke / "report"
    for name in ["report.md", "results.json", *FIGURES]:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    assert (results["format"], results["format_version"]) == ("xelm-demo-results", 1)
    assert results["languages"] == list(TRAIN_LANGUAGES)
    from xelm_cli import __version__

    language = {
        "name": "language",
        "plugin": "routers",
        "distribution": "xelm",
        "version": __version__,
    }
    assert results["provenance"]["routers"]["language"] == language
    assert set(results["provenance"]) == {"clusterers", "trainers", "routers", "evaluators"}
    systems = results["perplexity"]
    for system in ["seed", "dense", "typology-k4 language", "typology-k4 posterior",
                   "tfidf-k4 tfidf", "typology-k4 expert-0"]:  # fmt: skip
        assert set(systems[system]) == {*TRAIN_LANGUAGES, "overall", "mean"}, system
        scores = [systems[system][lang]["perplexity"] for lang in TRAIN_LANGUAGES]
        mean = sum(scores) / len(scores)
        assert systems[system]["mean"]["perplexity"] == pytest.approx(mean), system
        assert systems[system]["mean"]["languages"] == len(TRAIN_LANGUAGES)
    assert set(results["adaptation"]["new"]) == set(NEW_LANGUAGES)
    old = results["adaptation"]["old"]
    assert old["xelm after"] == old["xelm before"]  # HMR never touches the old experts
    assert results["adaptation"]["old_experts"] == {"bundles": 4, "problems": []}
    assert results["preset"]["tfidf_stride"] == 1
    assert set(results["icl"]["xelm"]["languages"]) <= set(TRAIN_LANGUAGES)
    text = (report / "report.md").read_text()
    assert text.count("- **") == len(results["claims"]) >= 4
    assert results["icl"]["runs"] == 1 and ", 1 run (accuracy)" in text and "1 runs" not in text
    corpus = results["corpus"]
    assert corpus["document_bytes"] == 500 and set(corpus["documents"]) >= set(TRAIN_LANGUAGES)
    purity = results["tfidf_clusters"]["purity"]
    assert set(purity) == set(TRAIN_LANGUAGES)
    for lang, p in purity.items():
        assert p["purity"] == max(p["shares"]) and abs(sum(p["shares"]) - 1) < 1e-3, lang
        assert p["documents"] == corpus["documents"][lang], lang
        assert 0 <= p["eval_routed"] <= 1, lang  # FLORES sentences routed to its main expert
    assert "## TF-IDF clusters (tfidf-k4): language purity" in text
    assert "consecutive records of one language and one source" in text
    for figure in FIGURES:
        assert f"]({figure})" in text


def test_tfidf_cluster_sizes_are_the_allocations_assignment_of_the_corpus(smoke: Path) -> None:
    """The step counts each cluster's documents from its experts' shards: they must be what
    the allocation's assigner gives every training document of the corpus."""
    from xelm_cli.api import get_registry, read_allocation
    from xelm_cli.data.corpus import iter_documents

    step = json.loads((smoke / "steps" / "tfidf-k4.json").read_text())["result"]
    allocation = read_allocation(smoke / "tfidf-k4" / "allocation")
    assigner = get_registry().get("clusterer", "tfidf").obj.assigner(allocation)
    corpus = smoke / "corpus"
    documents = [
        d
        for lang in TRAIN_LANGUAGES
        for d in iter_documents(corpus / f"{lang}.jsonl", language=lang)
    ]
    clusters = assigner.assign(documents).tolist()
    assert step["cluster_documents"] == [clusters.count(i) for i in range(4)]
    for lang, entry in step["purity"].items():
        mine = [c for d, c in zip(documents, clusters, strict=True) if d.language == lang]
        assert entry["documents"] == len(mine), lang
        assert entry["shares"] == [round(mine.count(i) / len(mine), 4) for i in range(4)], lang


def test_the_experts_made_one_model_are_evaluated_beside_the_ensemble(smoke: Path) -> None:
    """The main X-ELM's averaged model and its MoE (before and after the fine-tune) are rows of
    the perplexity table, with lineage to every expert, and one sentence each in the report."""
    import math

    from xelm_cli.bundle.store import Bundle

    results = json.loads((smoke / "report" / "results.json").read_text())
    experts = [Bundle.read(smoke / "typology-k4" / f"expert-{i}") for i in range(4)]
    for name in MERGED:
        scores = results["perplexity"][f"typology-k4 {name}"]
        assert set(scores) == {*TRAIN_LANGUAGES, "overall", "mean"}, name
        for lang, score in scores.items():
            assert math.isfinite(score["perplexity"]) and score["perplexity"] > 1, (name, lang)
    merging = results["merging"]
    for name in ("average", "moe"):
        step = Bundle.read(Path(merging[name]["bundle"])).manifest.lineage[-1]
        assert step["relation"] == "merge" and step["method"] == name
        assert [p["digest"] for p in step["parents"]] == [e.digest for e in experts]
    assert merging["moe"]["top_k"] == 2 and merging["moe"]["gate"] == "language"
    assert merging["moe"]["gate_text"] == "ntrex128"  # held out: not the FLORES sentences
    tuned = Bundle.read(smoke / "typology-k4" / "moe-ft")
    assert tuned.manifest.training["tokens"] == merging["moe+ft"]["tokens"] == 8192  # type: ignore[index]
    assert tuned.manifest.lineage[-2]["method"] == "moe"  # trained from the MoE bundle
    first, last = merging["moe+ft"]["aux_loss"]
    assert first > 0 and last > 0 and merging["moe+ft"]["aux_loss_coefficient"] == 0.01
    ensemble = results["perplexity"]["typology-k4 language"]["overall"]["perplexity"]
    text = (smoke / "report" / "report.md").read_text()
    assert "## One model from the experts (typology-k4)" in text
    for label, name in (("Averaged model", "average"), ("MoE before fine-tune", "moe"),
                        ("MoE after fine-tune", "moe+ft")):  # fmt: skip
        overall = results["perplexity"][f"typology-k4 {name}"]["overall"]["perplexity"]
        assert f"- _{label}_ (" in text
        assert f"overall perplexity {overall:.2f} against the ensemble's {ensemble:.2f}" in text
    header = next(line for line in text.splitlines() if line.startswith("| language | seed"))
    for system in ("dense", "typology-k4 language", *(f"typology-k4 {n}" for n in MERGED)):
        assert f"| {system} |" in header, system


def test_the_plans_moe_is_the_size_of_the_built_one(smoke: Path) -> None:
    """The plan counts the MoE fine-tune's tokens at the active parameters of the MoE built from
    the four experts (moe_shapes), whose held parameters are the bundle's."""
    from xelm_cli.bundle.store import Bundle
    from xelm_cli.demo.plan import demo_plan
    from xelm_cli.training.estimates import ModelShape, moe_shapes

    held, active = moe_shapes(ModelShape.of(Bundle.read(smoke / "seed")), 4, 2)
    assert ModelShape.of(Bundle.read(smoke / "typology-k4" / "moe")).parameters == held.parameters
    steps = {step.step: step.parameters for step in demo_plan("smoke", smoke).steps}
    assert steps["moe-finetune"] == active.parameters > steps["seed"]


def test_report_on_a_missing_or_foreign_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope" / "results.json"
    assert run(["report", str(missing), "-o", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == f"xelm: error: results file not found: {missing}\n"
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert run(["report", str(other), "-o", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith(
        f"xelm: error: {other} is not a results file of xelm demo: pass a demo run's "
    )
    partial = tmp_path / "partial.json"  # a run stopped before its ensembles were evaluated
    partial.write_text(json.dumps({"perplexity": {}, "languages": ["en"]}))
    assert run(["report", str(partial), "-o", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (
        "xelm: error: the results files name no main X-ELM (main_xelm: the demo writes it when "
        "it evaluates the typology k = 4 ensemble); add the results file of that run\n"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("members", "code", "problem"),
    [
        ({"format_version": 2}, 3, "demo results format version 2 is not supported by this "
         "xelm (reads 1); upgrade xelm to read it"),
        ({"format": "xelm-results", "format_version": 1}, 2, "is not a results file of xelm "
         "demo: pass a demo run's report/results.json (spec/demo-results.md); `xelm ensemble "
         "eval` results are its own tables"),
    ],
)  # fmt: skip
def test_report_refuses_results_of_another_format_or_version_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    members: dict[str, object],
    code: int,
    problem: str,
) -> None:
    results = tmp_path / "results.json"
    minimal = {"format": "xelm-demo-results", "perplexity": {}, "languages": []}
    results.write_text(json.dumps(minimal | members))
    assert run(["report", str(results), "-o", str(tmp_path / "r")]) == code
    err = capsys.readouterr().err
    assert err.startswith(f"xelm: error: {results}") and err.endswith(f"{problem}\n")
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_report_on_results_from_before_the_merged_rows(smoke: Path, tmp_path: Path) -> None:
    """results.json of an older demo (no averaged or MoE rows, no moe_tokens, no mean over
    languages) still reports, with the mean made from its languages."""
    results = json.loads((smoke / "report" / "results.json").read_text())
    del results["merging"], results["preset"]["moe_tokens"], results["preset"]["moe_aux_loss"]
    del results["format"], results["format_version"]  # read as version 1
    for name in MERGED:
        del results["perplexity"][f"typology-k4 {name}"]
    means = {system: table.pop("mean") for system, table in results["perplexity"].items()}
    for table in results["adaptation"]["old"].values():
        del table["mean"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(results))
    assert run(["report", str(old), "-o", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "One model from the experts" not in text and "Mixture-of-Experts" not in text
    assert "| language | seed | dense | typology-k4 language |" in text
    redrawn = json.loads((tmp_path / "report" / "results.json").read_text())
    assert {system: table["mean"] for system, table in redrawn["perplexity"].items()} == means
    assert "| mean over languages |" in text


def test_rerun_skips_finished_steps_and_report_redraws(
    smoke: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = {p.name: p.read_bytes() for p in (smoke / "steps").iterdir()}
    results = json.loads((smoke / "report" / "results.json").read_text())
    whole = round(sum(results["steps"].values()), 1)  # the run's: every step's seconds
    assert results["seconds"] == whole > 0
    args = ["demo", "--preset", "smoke", "--data", str(SHARED_DATA), "-o", str(smoke), "--json"]
    assert run(args) == 0
    out, err = capsys.readouterr()
    assert err.count("done before") == len(STEPS)
    said = json.loads(out)  # a re-run that trains nothing: still the whole run's seconds
    assert said["seconds"] == whole and said["invocation_seconds"] < whole
    assert f"finished in {whole:.0f} s (this invocation " in err
    assert json.loads((smoke / "report" / "results.json").read_text())["seconds"] == whole
    assert {p.name: p.read_bytes() for p in (smoke / "steps").iterdir()} == records
    redrawn = tmp_path / "again"
    assert run(["report", str(smoke / "report" / "results.json"), "-o", str(redrawn)]) == 0
    assert (redrawn / "report.md").read_text() == (smoke / "report" / "report.md").read_text()


@pytest.mark.parametrize(
    ("bundle", "parent"), [("dense", "seed"), ("typology-k4/moe-ft", "typology-k4/moe")]
)
def test_a_training_record_names_the_xelm_train_command_that_remakes_it(
    smoke: Path, tmp_path: Path, bundle: str, parent: str
) -> None:
    """The record's command (spec/training.md section 1: the exact command line) is the
    `xelm train` line of that run, not `xelm demo`: run with another -o, it trains the same
    weights, bit for bit (section 6)."""
    from xelm_cli.bundle.store import Bundle

    training = Bundle.read(smoke / bundle).manifest.training
    assert training is not None
    args = shlex.split(training["command"])
    assert args[:3] == ["xelm", "train", str(smoke / parent)]
    assert args[args.index("-o") + 1] == str(smoke / bundle)
    args[args.index("-o") + 1] = str(tmp_path / "again")
    assert run(args[1:]) == 0
    assert same_weights(smoke / bundle, tmp_path / "again")


def test_a_folder_made_by_smoke_refuses_another_preset_before_any_work(
    smoke: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its steps would otherwise be reused: small's experts trained from smoke's seed."""
    files = sorted(p.relative_to(smoke) for p in smoke.rglob("*"))
    assert json.loads((smoke / "demo.json").read_text())["preset"] == "smoke"
    args = ["--preset", "small", "-o", str(smoke)]
    refusal = f"{smoke}/ was made by --preset smoke: pass that preset, or another -o"
    assert run(["demo", *args, "--data", str(SHARED_DATA)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(refusal) and len(err.splitlines()) == 1
    assert run(["demo", *args, "--plan"]) == 2
    assert capsys.readouterr().err.strip().endswith(refusal)
    assert sorted(p.relative_to(smoke) for p in smoke.rglob("*")) == files


def test_bad_preset_and_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", str(SHARED_DATA), "-o", str(tmp_path / "x")]
    assert run(["demo", "--preset", "huge", *args]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    nope = tmp_path / "nope"
    assert run(["demo", "--data", str(nope), "-o", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert f"--data {nope} is not a directory: fetch the demo's data there with `xelm data " in err
    # a folder of the data (its corpus) for the data: the parent named
    corpus = SHARED_DATA / "corpus"
    assert run(["demo", "--data", str(corpus), "-o", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"lacks the demo's files, which {SHARED_DATA} holds: pass --data {SHARED_DATA}\n"
    )


def test_plan_lists_each_preset_run_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Smoke trains in batches of 8 x 64 = 512 tokens: seed and dense 32,768 each, four
    typology and four TF-IDF experts of 32,768 / 4, the MoE fine-tune 8,192 and HMR and LAPT
    for two new languages 8,192 each; the seed is the tiny Llama shape at 1,000 tokens."""
    out = tmp_path / "never-run"
    assert run(["demo", "--preset", "smoke", "--plan", "--json", "-o", str(out)]) == 0
    plan = json.loads(capsys.readouterr().out)
    tokens = {step["step"]: (step["runs"], step["tokens"]) for step in plan["steps"]}
    assert tokens == {"seed": (1, 32768), "dense": (1, 32768), "typology-k4": (4, 32768),
                      "tfidf-k4": (4, 32768), "moe-finetune": (1, 8192),
                      "adapt": (4, 32768)}  # fmt: skip
    assert plan["tokens"] == plan["remaining_tokens"] == 172_032
    h, i, layers, vocab = 64, 172, 2, 1000  # NAMED_CONFIGS["tiny"]
    per_layer = 4 * h * h + 3 * h * i + 2 * h  # attention, MLP, two norms
    assert plan["parameters"] == layers * per_layer + 2 * vocab * h + h
    assert plan["tokens_per_second"] is None and plan["remaining_seconds"] is None
    assert not out.exists()  # --plan runs nothing
    assert run(["demo", "--preset", "gpu", "--plan", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "seed of 134,105,856 parameters" in text and "typology-k8       8" in text


def test_plan_on_devices_follows_the_runners_order(capsys: pytest.CaptureFixture[str]) -> None:
    """Smoke on two GPUs, by hand: the seed (32,768 tokens) on both at once (its batch of 8
    blocks halved on each rank), then dense (32,768) beside the four typology experts
    (4 x 8,192), then the nine other runs of 8,192 (TF-IDF experts, the MoE and HMR once the
    typology experts are done, LAPT once dense is) two at a time: five rounds.
    16,384 + 32,768 + 5 x 8,192 = 90,112 instead of 172,032 in turn."""
    assert run(["demo", "--preset", "smoke", "--plan", "--json", "--devices", "0,1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["devices"] == 2 and plan["seed_ranks"] == 2
    assert plan["side_by_side_tokens"] == 90_112
    assert run(["demo", "--preset", "smoke", "--plan", "--devices", "0,1,2,3,4,5,6,7,8"]) == 0
    text = capsys.readouterr().out  # nine GPUs: the seed on 8 (8 divides its batch), dense, LAPT
    assert "On 9 GPUs (--devices), the seed first (on 8 at once" in text
    assert "the time of 45,056 tokens" in text  # 4,096 + 32,768 + 8,192


def test_plan_of_a_started_run_estimates_the_rest_at_its_measured_speed(
    smoke: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each training step's record holds its runs' tokens and training seconds (the bundles'
    records); with only the seed finished, the rest is estimated at the seed's speed."""
    from xelm_cli.bundle.store import Bundle

    seed = Bundle.read(smoke / "seed").manifest.training or {}
    record = json.loads((smoke / "steps" / "seed.json").read_text())
    seconds = round(seed["seconds"], 3)  # on one device: its device seconds are as many
    assert record["training"] == {
        "tokens": seed["tokens"], "seconds": seconds, "device_seconds": seconds
    }  # fmt: skip
    experts = [Bundle.read(smoke / "typology-k4" / f"expert-{i}") for i in range(4)]
    trained = json.loads((smoke / "steps" / "typology-k4.json").read_text())["training"]
    assert trained["tokens"] == sum(e.manifest.training["tokens"] for e in experts) == 32768  # type: ignore[index]
    started = tmp_path / "started"
    (started / "steps").mkdir(parents=True)
    (started / "steps" / "seed.json").write_text(json.dumps(record))
    assert run(["demo", "--preset", "smoke", "--plan", "--json", "-o", str(started)]) == 0
    plan = json.loads(capsys.readouterr().out)
    speed = seed["tokens"] / record["training"]["seconds"]
    assert plan["tokens_per_second"] == pytest.approx(speed)
    assert plan["remaining_tokens"] == 172_032 - 32768
    moe = next(step["parameters"] for step in plan["steps"] if step["step"] == "moe-finetune")
    left = 172_032 - 32768 - 8192 + 8192 * moe / plan["parameters"]  # the MoE's at its size
    assert plan["remaining_seconds"] == pytest.approx(left / speed)
    assert run(["demo", "--preset", "smoke", "--plan", "-o", str(smoke)]) == 0
    assert "All training done, at " in capsys.readouterr().out
    assert (Bundle.read(smoke / "seed").path / "config.json").is_file()
    from xelm_cli.training.estimates import ModelShape

    assert ModelShape.of(Bundle.read(smoke / "seed")).parameters == plan["parameters"]


def test_report_shows_the_training_speed_of_each_training_step(smoke: Path) -> None:
    results = json.loads((smoke / "report" / "results.json").read_text())
    training = results["training"]
    assert set(training) == {"seed", "dense", "typology-k4", "tfidf-k4", "moe-finetune", "adapt"}
    text = (smoke / "report" / "report.md").read_text()
    assert "| step | seconds | training tokens | training tokens/s |" in text
    dense = training["dense"]
    assert f"| dense | {results['steps']['dense']:.2f} | 32,768 | " in text
    assert f"{dense['tokens'] / dense['seconds']:,.0f} |" in text


def test_devices_train_the_dense_model_and_the_experts_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--devices 0,1 (on the CPU the devices only name the slots): the seed on both at once
    (torchrun, DDP on gloo, half its batch on each rank), then every training run two at a
    time, each logged: the dense model and the four typology and four
    TF-IDF experts, LAPT after the dense model, HMR (its branch made first) and the MoE (built
    first) after the typology experts; the steps that follow find them trained and record
    their training as before."""
    from xelm_cli.bundle.store import Bundle

    out = tmp_path / "run"
    args = ["demo", "--preset", "smoke", "--data", str(SHARED_DATA), "-o", str(out)]
    assert run([*args, "--devices", "0,1"]) == 0
    err = capsys.readouterr().err
    assert sorted(p.stem for p in (out / "steps").glob("*.json")) == sorted(
        [*STEPS, "side-by-side"]
    )
    side = json.loads((out / "steps" / "side-by-side.json").read_text())["result"]
    experts = [f"{x}-k4-expert-{i}" for x in ("typology", "tfidf") for i in range(4)]
    later = ["lapt-pl", "lapt-sv", "hmr-pl", "hmr-sv", "moe-finetune"]
    assert side == dict.fromkeys(["dense", *experts, *later], "done")
    assert err.index("start: seed (devices 0,1") < err.index("[ 4] seed: ")
    seed_log = (out / "logs" / "seed.log").read_text()
    assert "$ torchrun --standalone --nproc-per-node 2 -m xelm_cli train " in seed_log
    assert "--batch-size=4 " in seed_log and "--global-batch=512 " in seed_log
    recorded = Bundle.read(out / "seed").manifest.training["command"]  # type: ignore[index]
    assert recorded.startswith("torchrun --standalone --nproc-per-node 2 -m xelm_cli train ")
    seed = json.loads((out / "steps" / "seed.json").read_text())["training"]
    assert seed["device_seconds"] == pytest.approx(2 * seed["seconds"], abs=0.002)
    speed = seed["tokens"] / seed["device_seconds"]  # one run's on one device
    span = runner_span_tokens(PRESETS["smoke"], 2)
    assert (
        f"({speed:,.0f} training tokens/s per device so far; the other runs side by side on "
        f"2 devices: the time of {span:,} tokens, about " in err
    )
    assert "left to train" not in err  # they are all trained by the side-by-side step
    assert err.index("start: dense (devices 0") < err.index("[ 6] dense")
    assert err.index("done: dense") < err.index("start: lapt-pl")
    assert max(err.index(f"done: typology-k4-expert-{i}") for i in range(4)) < min(
        err.index(f"start: {name}") for name in ("hmr-pl", "hmr-sv", "moe-finetune")
    )
    for name in ["dense", *experts, *later]:
        log = (out / "logs" / f"{name}.log").read_text()
        assert "CUDA_VISIBLE_DEVICES=" in log.splitlines()[0] and "$ xelm train " in log
    assert "$ xelm bundle branch --from " in (out / "logs" / "hmr-pl.log").read_text()
    assert "$ xelm bundle moe " in (out / "logs" / "moe-finetune.log").read_text()
    for arm in ("typology-k4", "tfidf-k4"):
        bundles = [Bundle.read(out / arm / f"expert-{i}") for i in range(4)]
        record = json.loads((out / "steps" / f"{arm}.json").read_text())["training"]
        trained = [e.manifest.training for e in bundles]
        assert record["tokens"] == sum(t["tokens"] for t in trained) == 32768  # type: ignore[index]
        assert record["seconds"] == round(sum(t["seconds"] for t in trained), 3)  # type: ignore[index]
    moe = json.loads((out / "steps" / "moe-finetune.json").read_text())
    assert moe["training"]["tokens"] == 8192 and len(moe["result"]["aux_loss"]) == 2
    adapt = json.loads((out / "steps" / "adapt.json").read_text())["training"]
    assert adapt["tokens"] == 4 * 8192
    tfidf = json.loads((out / "steps" / "tfidf-k4.json").read_text())["result"]
    assert sum(tfidf["cluster_documents"]) > 0
    assert all("eval_routed" in entry for entry in tfidf["purity"].values())
    assert run([*args, "--devices", "0,0"]) == 2
    err = capsys.readouterr().err  # the demo has no --nproc-per-node: not named to it
    assert "give distinct device numbers (e.g. --devices 0,1,2,3)" in err
    assert "--nproc-per-node" not in err


def test_an_in_context_claim_near_chance_is_inconclusive(smoke: Path, tmp_path: Path) -> None:
    """Both models near chance, or closer to each other than two standard errors (examples
    and demonstrations drawn): the run cannot tell them apart, so the verdict is neither
    supported nor NOT supported; well above chance and apart the accuracies decide."""
    from xelm_cli.demo.report import claims, write_report

    results = json.loads((smoke / "report" / "results.json").read_text())
    icl = results["icl"]
    chance = icl["dense"]["overall"]["chance"]

    def verdict(xelm: float, dense: float) -> bool | None:
        for system, accuracy in (("xelm", xelm), ("dense", dense)):
            icl[system]["overall"].update(accuracy=accuracy, stderr=0.01)
        return claims(results)[-1]["supported"]

    assert verdict(chance + 0.03, chance) is None
    assert verdict(0.9, 0.6) is True and verdict(0.6, 0.9) is False
    assert verdict(0.62, 0.6) is None  # above chance, but closer than the noise: cannot tell
    assert "the difference +0.020 is within two standard errors" in claims(results)[-1]["evidence"]
    verdict(chance, chance + 0.01)
    text = write_report(results, tmp_path / "report")[0].read_text()
    assert "- **inconclusive**: X-ELM is at least as good as dense in-context" in text


def test_claims_every_language_prefix_routing_and_untouched_experts(
    smoke: Path, tmp_path: Path
) -> None:
    """Claim 1 needs every language (the paper's result) and names lost languages among the
    paper's largest gains; claim 2 says how the TF-IDF X-ELM was routed; claim 4 fails when
    an old expert's files changed on disk, which its cached perplexities cannot show."""
    import shutil

    from xelm_cli.demo.pipeline import hash_again
    from xelm_cli.demo.report import claims

    results = json.loads((smoke / "report" / "results.json").read_text())
    table = results["perplexity"]
    for lang in TRAIN_LANGUAGES:
        table["typology-k4 language"][lang]["perplexity"] = table["dense"][lang]["perplexity"] / 2
    first = claims(results)[0]
    assert first["supported"] is True and first["evidence"] == "lower in 16 of 16 languages"
    table["typology-k4 language"]["ja"]["perplexity"] = table["dense"]["ja"]["perplexity"] * 2
    first = claims(results)[0]
    assert first["supported"] is False
    assert first["evidence"] == (
        "lower in 15 of 16 languages (not in ja); ja is among the paper's five largest gains "
        "(hi, zh, tr, vi, ja)"
    )
    routing = claims(results)[1]["evidence"]
    assert "TF-IDF router on the text before every token, as c-BTM" in routing
    del results["preset"]["tfidf_stride"]  # results of an xelm before the setting
    assert "on each sentence's whole text" in claims(results)[1]["evidence"]

    expert = tmp_path / "expert-0"
    shutil.copytree(smoke / "typology-k4" / "expert-0", expert)
    assert hash_again([expert]) == {"bundles": 1, "problems": []}
    weights = expert / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    record = hash_again([expert])
    assert len(record["problems"]) == 1 and str(expert) in record["problems"][0]
    untouched = next(c for c in claims(results) if c["claim"].startswith("HMR leaves"))
    results["adaptation"]["old_experts"] = record
    changed = next(c for c in claims(results) if c["claim"].startswith("HMR leaves"))
    assert changed["supported"] is False and untouched["supported"] is not False
    assert "an old expert changed on disk" in changed["evidence"]
