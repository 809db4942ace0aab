"""Ensemble evaluation as a user meets it, on tiny real experts: an output path that is a
directory, router options sized by k, request fields an evaluator does not read, baselines with
another tokenizer, broken ensemble files, choices under a SentencePiece-style tokenizer, and the
dtype a bundle computes in."""

import json
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import train_tokenizer
from evaluator_helpers import FirstLine, install_evaluator
from merge_helpers import perturbed_expert

from xelm_cli.api import ChoiceRequest, Document, ExpertInfo, OutputRouter, UsageError
from xelm_cli.bundle.seed import init_from_config
from xelm_cli.bundle.store import Bundle
from xelm_cli.cli import run
from xelm_cli.ensemble.create import create_ensemble
from xelm_cli.ensemble.ensemble_file import EnsembleSpec
from xelm_cli.ensemble.evaluate import evaluate, evaluate_per_shots
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel, single_model
from xelm_cli.ensemble.scoring import LoadedModel, score_sequences
from xelm_cli.plugin.conformance import TinyExperts


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def members(experts: TinyExperts) -> list[str]:
    return [str(bundle.path) for bundle in experts.bundles]


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


# ------------------------------------------------------------ -o DIR is refused, even with --force


def test_a_results_file_that_is_a_directory_is_refused_even_with_force(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, tmp_path: Path
) -> None:
    """--force used to replace the directory (and everything under it) with the JSON file."""
    outdir = tmp_path / "outdir"
    (outdir / "sub").mkdir(parents=True)
    (outdir / "a.txt").write_text("mine")
    (outdir / "sub" / "keep.txt").write_text("mine too")
    before = tree(outdir)
    refusal = (
        f"xelm: error: {outdir} is a directory; give a file for the results, such as "
        f"{outdir / 'results.json'}\n"
    )
    data = ["--data", str(tiny_experts.corpus), "-o", str(outdir)]
    for force in ([], ["--force"]):  # no --force suggested: it would not help
        code, out, err = cli(capsys, "ensemble", "eval", *members(tiny_experts), *data, *force)
        assert (code, out, err) == (2, "", refusal)
    tasks = ["--task", "jsonl", "--data", str(tiny_experts.choice_task), "--shots", "0,1"]
    code, _, err = cli(
        capsys, "ensemble", "eval", *members(tiny_experts), *tasks, "-o", str(outdir), "--force"
    )
    assert (code, err) == (2, refusal)
    for call in (
        lambda: evaluate(
            members(tiny_experts), data=tiny_experts.corpus, output=outdir, overwrite=True
        ),
        lambda: evaluate_per_shots(
            members(tiny_experts),
            shots=[0, 1],
            data=tiny_experts.choice_task,
            task="jsonl",
            output=outdir,
            overwrite=True,
        ),
    ):
        with pytest.raises(UsageError, match=r"is a directory; give a file for the results"):
            call()
    assert outdir.is_dir() and tree(outdir) == before
    assert (outdir / "sub" / "keep.txt").read_text() == "mine too"


def test_an_ensemble_file_that_is_a_directory_is_refused_even_with_force(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, tmp_path: Path
) -> None:
    ensdir = tmp_path / "ensdir"
    ensdir.mkdir()
    (ensdir / "a.txt").write_text("mine")
    code, _, err = cli(
        capsys, "ensemble", "create", *members(tiny_experts), "-o", str(ensdir), "--force"
    )
    assert (code, err) == (
        2,
        f"xelm: error: {ensdir} is a directory; give a file for the ensemble, such as "
        f"{ensdir / 'ens.json'}\n",
    )
    with pytest.raises(UsageError, match=r"is a directory; give a file for the ensemble"):
        create_ensemble(members(tiny_experts), ensdir, overwrite=True)
    spec = EnsembleSpec(list(tiny_experts.bundles), "uniform")
    with pytest.raises(UsageError, match=r"is a directory; give a file for the ensemble"):
        spec.write(ensdir, overwrite=True)
    assert tree(ensdir) == ["a.txt"]
    # nor a file inside a bundle (an unlisted file: the bundle would no longer verify)
    inside = tiny_experts.bundles[0].path / "ens.json"
    code, _, err = cli(capsys, "ensemble", "create", *members(tiny_experts), "-o", str(inside))
    assert code == 2 and "would lie inside the bundle" in err and not inside.exists()
    code, _, err = cli(
        capsys, "ensemble", "eval", *members(tiny_experts), "--data", str(tiny_experts.corpus),
        "-o", str(tiny_experts.bundles[1].path / "results.json"),
    )  # fmt: skip
    assert code == 2 and "would lie inside the bundle" in err


def test_force_replaces_earlier_results_and_ensembles_but_not_a_users_file(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, tmp_path: Path
) -> None:
    """--force replaced any file with the results or the ensemble (a user's notes too); like
    every other output now, only an earlier output of its kind."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    data = ["--data", str(tiny_experts.corpus), "--limit", "2"]
    evaluated = ["ensemble", "eval", *members(tiny_experts), *data, "--force", "-o"]
    created = ["ensemble", "create", *members(tiny_experts), "--force", "-o"]
    for args, kind in ((evaluated, "xelm results"), (created, "an ensemble file")):
        code, out, err = cli(capsys, *args, str(notes))
        assert (code, out) == (2, "") and err.startswith(
            f"xelm: error: {notes} is a file, not {kind}; --force replaces only {kind}"
        ), err
    assert notes.read_text() == "mine"
    with pytest.raises(UsageError, match="is a file, not xelm results"):
        evaluate(members(tiny_experts), data=tiny_experts.corpus, output=notes, overwrite=True)
    with pytest.raises(UsageError, match="is a file, not an ensemble file"):
        create_ensemble(members(tiny_experts), notes, overwrite=True)
    assert notes.read_text() == "mine"
    results, ens = tmp_path / "results.json", tmp_path / "ens.json"
    tasks = ["--task", "jsonl", "--data", str(tiny_experts.choice_task), "--shots", "0,1"]
    for args in (
        [*evaluated, str(results)],  # one record, then a list of them (a record a shot count)
        ["ensemble", "eval", *members(tiny_experts), *tasks, "--force", "-o", str(results)],
        [*evaluated, str(results)],
        [*created, str(ens)],
        [*created, str(ens)],
    ):
        assert cli(capsys, *args)[0] == 0
    assert json.loads(results.read_text())["format"] == "xelm-results"
    assert json.loads(ens.read_text())["format"] == "xelm-ensemble"


# ------------------------------------------------- router options sized by k: before any expert


@pytest.mark.parametrize("name", ["posterior", "posterior-last-token"])
def test_a_posterior_prior_of_another_length_is_refused_when_the_ensemble_is_built(
    tiny_experts: TinyExperts, name: str
) -> None:
    """It was refused only in route_tokens, after every expert had scored every document."""
    router = build_router(name, {"prior": [1, 2]})
    with pytest.raises(
        UsageError,
        match=r"^the posterior prior has 2 values but the ensemble has 3 experts: give one per "
        r"expert, in ensemble order \(or estimate it: xelm ensemble create",
    ):
        EnsembleModel(tiny_experts.bundles, router, device="cpu")
    # one per expert: built, and it scores
    fitting = EnsembleModel(
        tiny_experts.bundles, build_router(name, {"prior": [1, 2, 1]}), device="cpu"
    )
    (scores,) = fitting.score_documents(tiny_experts.documents[:1])
    assert np.isfinite(scores).all() and (scores < 0).all()


def test_eval_and_create_refuse_a_misfit_prior_before_any_expert_runs(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, tmp_path: Path
) -> None:
    routing = ["--router", "posterior", "--router-arg", "prior=1,2"]
    code, out, err = cli(
        capsys, "ensemble", "eval", *members(tiny_experts), "--data", str(tiny_experts.corpus),
        *routing,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err.startswith("xelm: error: the posterior prior has 2 values but the ensemble has 3")
    ens = tmp_path / "ens.json"
    code, _, err = cli(
        capsys, "ensemble", "create", *members(tiny_experts), *routing, "-o", str(ens)
    )
    assert code == 2 and "the posterior prior has 2 values" in err
    assert not ens.exists()


class Sized(OutputRouter):
    """A third party's output router with one option per expert, checked by check_experts."""

    name = "sized"
    seen: ClassVar[list[list[str]]] = []

    def __init__(self, weights: tuple[float, ...] = (1.0, 1.0)) -> None:
        self.weights = weights

    def check_experts(self, experts: Any) -> None:
        Sized.seen.append([expert.name for expert in experts])
        if len(self.weights) != len(experts):
            raise UsageError(f"sized has {len(self.weights)} weights for {len(experts)} experts")

    def route_tokens(self, scored: Any, experts: Any) -> Any:
        raise AssertionError("no expert may run: the weights do not fit")


def test_a_routers_check_experts_runs_before_any_expert(tiny_experts: TinyExperts) -> None:
    Sized.seen.clear()
    with pytest.raises(UsageError, match=r"^sized has 2 weights for 3 experts$"):
        EnsembleModel(tiny_experts.bundles, Sized(), device="cpu")
    assert Sized.seen == [[bundle.name for bundle in tiny_experts.bundles]]
    # the base class checks nothing: a router that does not override it is built as before
    experts = [ExpertInfo("a", "a", ("en",))]
    assert build_router("posterior").check_experts(experts) is None


# ------------------------------------------------- request fields the evaluator does not read


@pytest.mark.parametrize(
    ("flags", "flag", "applies"),
    [
        (["--shots", "8", "--runs", "3"], "--shots", r"in-context tasks \(--task, evaluator icl"),
        (["--shots", "0,8"], "--shots", r"in-context tasks \(--task, evaluator icl"),
        (["--shots", "0"], "--shots", r"in-context tasks \(--task, evaluator icl"),
        (["--runs", "3"], "--runs", r"in-context tasks that sample demonstrations \(--task"),
        (["--seed", "3"], "--seed", r"in-context tasks that sample demonstrations \(--task"),
        (["--protocol", "harness"], "--protocol", r"scoring the choices of in-context tasks"),
    ],
)
def test_perplexity_refuses_the_in_context_flags(
    capsys: pytest.CaptureFixture[str],
    tiny_experts: TinyExperts,
    flags: list[str],
    flag: str,
    applies: str,
) -> None:
    """They were accepted, recorded, and (--shots 0,8) ran perplexity once per count."""
    code, out, err = cli(
        capsys, "ensemble", "eval", *members(tiny_experts), "--data", str(tiny_experts.corpus),
        *flags,
    )  # fmt: skip
    assert (code, out) == (2, "")
    pattern = (
        rf"^xelm: error: {flag} applies to {applies}.*; evaluator 'perplexity' does not use it: "
        rf"drop {flag}\n$"
    )
    assert re.match(pattern, err), err
    assert err.count("\n") == 1


def test_perplexity_refuses_a_task(tiny_experts: TinyExperts) -> None:
    """--task with --evaluator perplexity was ignored: the text of --data was scored."""
    with pytest.raises(UsageError, match=r"^--task jsonl is for in-context evaluators") as e:
        evaluate(
            members(tiny_experts), data=tiny_experts.corpus, evaluator="perplexity", task="jsonl"
        )
    assert "drop --task" in str(e.value) and "\n" not in str(e.value)


def test_the_in_context_flags_are_refused_before_the_members_are_read(
    tiny_experts: TinyExperts, tmp_path: Path
) -> None:
    """(Reading members hashes their files: minutes for large experts.)"""
    with pytest.raises(UsageError, match=r"^--shots applies to in-context tasks"):
        evaluate([str(tmp_path / "nowhere")], data=tiny_experts.corpus, shots=4)


def test_the_in_context_flags_are_refused_from_python_and_kept_for_icl(
    tiny_experts: TinyExperts,
) -> None:
    with pytest.raises(UsageError, match=r"^--shots applies to in-context tasks"):
        evaluate(members(tiny_experts), data=tiny_experts.corpus, shots=0)
    with pytest.raises(UsageError, match=r"^--runs applies to"):
        evaluate(members(tiny_experts), data=tiny_experts.corpus, runs=2)
    results = evaluate(
        members(tiny_experts),
        data=tiny_experts.choice_task,
        task="jsonl",
        shots=1,
        runs=2,
        seed=3,
        protocol="harness",
        languages="en",
    )
    request = results["request"]
    assert (request["shots"], request["runs"], request["seed"]) == (1, 2, 3)
    assert request["protocol"] == "harness"


@pytest.mark.usefixtures("isolated_registry")
def test_an_evaluator_that_declares_nothing_accepts_every_field(
    tiny_experts: TinyExperts,
) -> None:
    """Backward compatible: a third party's evaluator without ``uses_*`` is given them all."""
    install_evaluator(FirstLine)
    assert FirstLine.uses_shots is None and FirstLine.uses_protocol is None
    results = evaluate(
        members(tiny_experts),
        data=tiny_experts.corpus,
        evaluator="first-line",
        shots=2,
        runs=2,
        seed=1,
        protocol="harness",
    )
    assert (results["request"]["shots"], results["request"]["runs"]) == (2, 2)
    assert results["request"]["protocol"] is None  # recorded only where it is used


# ------------------------------------------------------------ baselines with another tokenizer


@pytest.fixture(scope="module")
def other_tokenizer_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("other-tokenizer")
    tokenizer = train_tokenizer(root / "tokenizer", vocab_size=280)
    return init_from_config("tiny", tokenizer, root / "other", languages=["en"], seed=5).path


def test_a_baseline_with_another_tokenizer_is_compared_on_accuracy(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, other_tokenizer_baseline: Path
) -> None:
    """Accuracy does not depend on the tokenizer: each system tokenizes the text itself."""
    assert (
        Bundle.read(other_tokenizer_baseline).manifest.fingerprints["tokenizer"]
        != tiny_experts.bundles[0].manifest.fingerprints["tokenizer"]
    )
    code, out, err = cli(
        capsys, "ensemble", "eval", *members(tiny_experts), "--task", "jsonl",
        "--data", str(tiny_experts.choice_task), "--baseline", str(other_tokenizer_baseline),
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(out)
    baseline = results["systems"][-1]
    assert baseline["name"] == "baseline:other"
    assert 0 <= baseline["metrics"]["overall"]["accuracy"] <= 1
    assert set(baseline["metrics"]["languages"]) == {"en", "tr", "es"}


def test_a_baseline_with_another_tokenizer_is_refused_on_perplexity_naming_bits_per_byte(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, other_tokenizer_baseline: Path
) -> None:
    code, out, err = cli(
        capsys, "ensemble", "eval", *members(tiny_experts), "--data", str(tiny_experts.corpus),
        "--baseline", str(other_tokenizer_baseline),
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == (
        f"xelm: error: baseline {other_tokenizer_baseline} has a different tokenizer from the "
        "ensemble, so token perplexities are not comparable: compare bits_per_byte "
        "(tokenizer-free) of each evaluated on its own (xelm ensemble eval "
        f"{other_tokenizer_baseline} --data DATA --format json)\n"
    )


# ------------------------------------------------------------------ broken ensemble files


@pytest.fixture
def ensemble_file(tiny_experts: TinyExperts, tmp_path: Path) -> Path:
    """An ensemble file beside copies of two tiny experts (paths recorded relative to it)."""
    root = tmp_path / "ensdir"
    copies = []
    for bundle in tiny_experts.bundles[:2]:
        shutil.copytree(bundle.path, root / bundle.name)
        copies.append(str(root / bundle.name))
    create_ensemble(copies, root / "ens.json", router="uniform")
    return root / "ens.json"


def test_a_member_moved_away_is_named_with_the_ensemble_file(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, ensemble_file: Path
) -> None:
    member = ensemble_file.parent / tiny_experts.bundles[1].name
    member.rename(ensemble_file.parent.parent / "moved")
    code, _, err = cli(
        capsys, "ensemble", "eval", str(ensemble_file), "--data", str(tiny_experts.corpus)
    )
    assert (code, err) == (
        2,
        f"xelm: error: {ensemble_file} lists member {member}, which does not exist (moved or "
        "removed since the ensemble was created?): put the bundle back there, or write it "
        f"again with xelm ensemble create MEMBERS --router NAME -o {ensemble_file}\n",
    )


def test_a_member_with_a_broken_manifest_is_named_with_the_ensemble_file(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, ensemble_file: Path
) -> None:
    manifest = ensemble_file.parent / tiny_experts.bundles[1].name / "xelm.json"
    manifest.chmod(0o644)
    manifest.write_text('{"x": 1}')
    code, _, err = cli(
        capsys, "ensemble", "eval", str(ensemble_file), "--data", str(tiny_experts.corpus)
    )
    assert code == 3
    assert err.endswith(
        f"(a member of {ensemble_file}; write it again with xelm ensemble create MEMBERS "
        f"--router NAME -o {ensemble_file})\n"
    )


def test_an_unknown_combination_rule_in_a_file_is_a_format_error_naming_it(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts, ensemble_file: Path
) -> None:
    """It was a usage error (exit 2) that did not name the file."""
    record = json.loads(ensemble_file.read_text())
    record["combine"] = "mix"
    ensemble_file.write_text(json.dumps(record))
    code, _, err = cli(
        capsys, "ensemble", "eval", str(ensemble_file), "--data", str(tiny_experts.corpus)
    )
    assert (code, err) == (
        3,
        f"xelm: error: {ensemble_file}: unknown combination rule 'mix' (this xelm knows "
        "mixture, logits, product); write it again with xelm ensemble create MEMBERS --router "
        f"NAME -o {ensemble_file} --combine RULE\n",
    )
    record["combine"], record["router"]["name"] = "mixture", "uniformm"
    ensemble_file.write_text(json.dumps(record))
    code, _, err = cli(
        capsys, "ensemble", "eval", str(ensemble_file), "--data", str(tiny_experts.corpus)
    )
    assert code == 2
    assert err.startswith(f"xelm: error: {ensemble_file}: unknown router 'uniformm'")


# --------------------------------------------- choices under a SentencePiece-style tokenizer

ZH = ["他说今天很冷", "所以他穿了外套", "我们明天去北京", "今天天气很好", "他穿了一件外套"]
EN = ["The cat sat on the mat.", "Yes, the dog ran home.", "It is cold today, right? Yes."]


@pytest.fixture(scope="module")
def metaspace_model(tmp_path_factory: pytest.TempPathFactory) -> EnsembleModel:
    """A tiny model on a Llama-style tokenizer (BPE over Metaspace, "▁" before a text and each
    word), trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    root = tmp_path_factory.mktemp("metaspace")
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    bpe.train_from_iterator((ZH + EN) * 20, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) for merge in model["merges"]]
    LlamaTokenizer(vocab=model["vocab"], merges=merges).save_pretrained(root / "tokenizer")
    bundle = init_from_config("tiny", root / "tokenizer", root / "seed", languages=["zh", "en"])
    return single_model(bundle, "metaspace", device="cpu")


@pytest.mark.parametrize(
    ("context", "choice"),
    [("他说今天很冷", "所以他穿了外套"), ("It is cold today, right? ", "Yes")],
)
def test_a_choice_is_scored_on_the_tokens_of_the_running_text(
    metaspace_model: EnsembleModel, context: str, choice: str
) -> None:
    """Encoded on its own, a choice that continues the context's word got the "▁" that marks
    the start of a text: 所以他穿了外套 was one token "▁所以他穿了外套", not the running
    text's 所, 以, 他穿了, 外套."""
    model = metaspace_model
    whole = model.encode(context + choice)
    before = model.encode(context.rstrip())
    assert whole[: len(before)] == before  # the running text splits at the context's end
    tokens = model.tokenizer.convert_ids_to_tokens(model.encode(choice))
    if not context.endswith(" "):
        assert tokens[0].startswith("▁")  # what the choice alone gave: a start it does not have
        assert model.tokenizer.convert_ids_to_tokens(whole[len(before) :])[0][0] != "▁"
    (choice_lp,) = model.score_choices([ChoiceRequest(context, (choice,), "zh")])[0]
    (running,) = model.score_documents([Document(context + choice, "zh")])
    assert len(choice_lp) == len(whole) - len(before)
    np.testing.assert_allclose(choice_lp, running[len(before) :], atol=1e-5)


# ------------------------------------------------------------------------------------ dtypes


@pytest.fixture(scope="module")
def stored_as(tiny_experts: TinyExperts, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first tiny expert, and copies of it stored in bfloat16 and float16."""
    root = tmp_path_factory.mktemp("dtypes")
    parent = tiny_experts.bundles[0]
    copies = {
        name: perturbed_expert(
            parent.path, root / name, seed=0, languages=["en"], scale=0, dtype=dtype
        )
        for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16))
    }
    return {"float32": parent, **copies}


def test_a_bundle_computes_in_its_own_half_dtype_on_cuda(stored_as: dict) -> None:
    from xelm_cli.ensemble.scoring import compute_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # (no GPU needed: no tensor made)
    assert stored_as["bfloat16"].weights_dtype() == "bfloat16"
    assert compute_dtype(stored_as["bfloat16"], cuda) == torch.bfloat16
    assert compute_dtype(stored_as["float16"], cuda) == torch.float16
    assert compute_dtype(stored_as["float32"], cuda) == torch.bfloat16  # as before
    assert {compute_dtype(bundle, cpu) for bundle in stored_as.values()} == {torch.float32}


def test_a_low_precision_model_takes_its_log_softmax_over_float32_logits(
    stored_as: dict,
) -> None:
    """The output layer multiplies the bfloat16 states into float32: logits are not rounded to
    bfloat16 before the log-softmax (they were, by up to ~1e-2 in log-probability here)."""
    bundle = stored_as["float32"]
    loaded = LoadedModel.load(bundle, torch.device("cpu"), dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.chunked
    tokenizer = bundle.load_tokenizer()
    text = " ".join(["The small cat sees a bird."] * 3)
    sequence = [int(tokenizer.bos_token_id), *tokenizer(text, add_special_tokens=False).input_ids]
    (got,) = score_sequences([loaded], [1.0], [sequence])
    model, ids = loaded.model, torch.tensor([sequence])
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids).last_hidden_state[0, :-1]
        head = model.get_output_embeddings()
        exact = torch.log_softmax(hidden.double() @ head.weight.double().t(), dim=-1)
        rounded = torch.log_softmax(head(hidden).double(), dim=-1)  # bf16 logits
    targets = torch.tensor(sequence[1:])[:, None]
    exact_lp = exact.gather(1, targets)[:, 0].numpy()
    rounded_lp = rounded.gather(1, targets)[:, 0].numpy()
    assert np.abs(got - exact_lp).max() < 1e-5
    assert np.abs(rounded_lp - exact_lp).max() > 1e-4  # the test can tell the two apart
    # a spare model is not reused for a bundle that computes in another dtype
    assert loaded.swap(bundle) is None


def test_results_record_the_dtype_computed_in(
    capsys: pytest.CaptureFixture[str], tiny_experts: TinyExperts
) -> None:
    code, out, err = cli(
        capsys, "ensemble", "eval", *members(tiny_experts), "--data", str(tiny_experts.corpus),
        "--each", "--format", "json", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(out)
    assert (results["device"], results["dtype"]) == ("cpu", "float32")
    for system in results["systems"]:
        assert {bundle["dtype"] for bundle in system["bundles"]} == {"float32"}
