"""The lm-eval bridge: XelmLM against the LanguageModel API, and a local custom task end to end."""

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from xelm_cli.api import (  # noqa: E402
    ChoiceRequest,
    Document,
    EvalRequest,
    LanguageModel,
    UsageError,
)
from xelm_cli.bundle.store import Bundle  # noqa: E402
from xelm_cli.ensemble.runner import EnsembleModel, single_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
TASK_FIXTURE = Path(__file__).parent / "fixtures" / "lmeval-task"
TASK = "xelm_tiny_choice"

from xelm_lmeval import INSTALL_HINT, LmEvalEvaluator  # noqa: E402
from xelm_lmeval.bridge import XelmLM  # noqa: E402


@pytest.fixture(scope="module")
def model(seed_bundle: Path) -> EnsembleModel:
    return single_model(Bundle.read(seed_bundle), "seed")


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    """The fixture task with absolute data paths: `datasets` resolves a relative data file
    against the working directory, not the YAML file; its cache goes under tmp_path."""
    out = tmp_path / "lmeval-task"
    shutil.copytree(TASK_FIXTURE, out)
    config_path = out / f"{TASK}.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["dataset_kwargs"] = {
        "data_files": {"test": str(out / "examples.jsonl")},
        "cache_dir": str(tmp_path / "hf-datasets"),
    }
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def instances(kind: str, arguments: Sequence[tuple[str, ...]]) -> list[Instance]:
    return [
        Instance(request_type=kind, doc={}, arguments=tuple(args), idx=i)
        for i, args in enumerate(arguments)
    ]


class RecordingModel(LanguageModel):
    """Scores every token -1 and records what it was asked."""

    name = "recording"

    def __init__(self) -> None:
        self.choice_calls: list[list[ChoiceRequest]] = []
        self.document_calls: list[list[Document]] = []

    def score_documents(self, documents: Sequence[Document]) -> list[np.ndarray]:
        self.document_calls.append(list(documents))
        return [-np.ones(len(d.text)) for d in documents]

    def score_choices(self, requests: Sequence[ChoiceRequest]) -> list[list[np.ndarray]]:
        self.choice_calls.append(list(requests))
        return [[-np.ones(len(c)) for c in r.choices] for r in requests]

    def count_tokens(self, text: str) -> int:
        return len(text)


# ---------------------------------------------------------------------------- XelmLM


def test_loglikelihood_is_the_summed_choice_logprobs(model: EnsembleModel) -> None:
    pairs = [
        ("The cat sat on the", " mat"),
        ("The cat sat on the", " hat"),
        ("Hello", " world"),
        ("", "Everyone has the right"),  # lm-eval's empty context: scored after BOS alone
    ]
    results = XelmLM(model, language="en").loglikelihood(instances("loglikelihood", pairs))
    for (context, continuation), (loglikelihood, is_greedy) in zip(pairs, results, strict=True):
        [[direct]] = model.score_choices([ChoiceRequest(context, (continuation,), "en")])
        assert loglikelihood == pytest.approx(float(direct.sum()), abs=1e-4)
        assert loglikelihood < 0
        assert is_greedy is False


def test_loglikelihood_groups_contexts_and_moves_trailing_space() -> None:
    recorder = RecordingModel()
    pairs = [("Q: a", " yes"), ("Q: a", " no"), ("Q: b ", "yes"), ("Q: b", " yes"), ("Q: c", "")]
    results = XelmLM(recorder, language="tr").loglikelihood(instances("loglikelihood", pairs))
    assert len(recorder.choice_calls) == 1  # one call: an ensemble loads each expert once
    assert recorder.choice_calls[0] == [
        ChoiceRequest("Q: a", (" yes", " no"), "tr"),
        ChoiceRequest("Q: b", (" yes",), "tr"),  # "Q: b " + "yes" is "Q: b" + " yes"
    ]
    assert results == [(-4.0, False), (-3.0, False), (-4.0, False), (-4.0, False), (0.0, False)]


def test_loglikelihood_groups_by_document_not_by_context_text() -> None:
    """XNLI-like instances (empty context, the whole sentence a choice) and documents that
    share a context are one request per document, not one request holding every document's
    choices; a document's instances with another context are a request of their own; the
    results come back in lm-eval's order."""
    recorder = RecordingModel()
    documents = {  # (task, doc_id): [(context, continuation), ...]
        ("xnli_en", 0): [("", " A, right? Yes, B"), ("", " A, right? Also, B"), ("", " A, no")],
        ("xnli_en", 1): [("", " C, right? Yes, D"), ("", " C, no")],
        ("xnli_de", 0): [("", " A, richtig? Ja, B"), ("", " A, nein")],
        ("tiny", 0): [("Q: same", " yes"), ("Q: same", " no")],
        ("tiny", 1): [("Q: same", " yes"), ("Q: same", " no")],
        ("tiny", 2): [("Q: x", " yes"), ("Q: x", " no"), ("Answer:", " yes"), ("Answer:", " no")],
    }
    made = [
        Instance("loglikelihood", {}, pair, i, metadata=(task, doc_id, 1))
        for (task, doc_id), pairs in documents.items()
        for i, pair in enumerate(pairs)
    ]
    asked = made[::2] + made[1::2]  # documents interleaved: the order lm-eval asks in
    results = XelmLM(recorder, language="en").loglikelihood(asked)

    assert len(recorder.choice_calls) == 1  # still one call: an ensemble loads experts once
    [batch] = recorder.choice_calls
    expected = [
        (context, sorted(c for x, c in pairs if x == context), "en")
        for pairs in documents.values()
        for context in dict.fromkeys(x for x, _ in pairs)
    ]
    got = [(r.context, sorted(r.choices), r.language) for r in batch]
    assert sorted(got) == sorted(expected)
    assert len(batch) == 7  # a request per document and context: none merged across documents
    assert max(len(r.choices) for r in batch) == 3
    assert results == [(-float(len(i.args[1])), False) for i in asked]


def test_loglikelihood_rolling_is_the_summed_document_logprobs(model: EnsembleModel) -> None:
    texts = ["All human beings are born free and equal in dignity and rights.", "", "Hello"]
    results = XelmLM(model, language="en").loglikelihood_rolling(
        instances("loglikelihood_rolling", [(t,) for t in texts])
    )
    assert results[1] == 0.0
    for text, total in zip(texts, results, strict=True):
        if text:
            [direct] = model.score_documents([Document(text, "en")])
            assert total == pytest.approx(float(direct.sum()), abs=1e-4)


def test_generate_until_is_refused() -> None:
    lm = XelmLM(RecordingModel())
    with pytest.raises(NotImplementedError, match="does not generate"):
        lm.generate_until(instances("generate_until", [("Hi", {"until": ["\n"]})]))  # type: ignore[list-item]


# ---------------------------------------------------------------------------- the evaluator


def expected_accuracy(model: LanguageModel, task_dir: Path, language: str | None) -> float:
    """0-shot accuracy of the fixture task computed directly with score_choices."""
    import json

    rows = [json.loads(line) for line in (task_dir / "examples.jsonl").read_text().splitlines()]
    requests = [
        ChoiceRequest(
            f"Question: {r['question']}\nAnswer:", tuple(f" {c}" for c in r["choices"]), language
        )
        for r in rows
    ]
    scored = model.score_choices(requests)
    hits = [
        int(np.argmax([s.sum() for s in per_choice])) == r["label"]
        for r, per_choice in zip(rows, scored, strict=True)
    ]
    return sum(hits) / len(hits)


def test_custom_task_end_to_end(model: EnsembleModel, task_dir: Path) -> None:
    request = EvalRequest(task=TASK, options={"include_path": str(task_dir), "language": "en"})
    evaluator = LmEvalEvaluator(request)
    assert evaluator.languages == ["en"]
    result = evaluator.evaluate(model)

    overall = result["overall"]
    assert result["primary_metric"] == "acc" == LmEvalEvaluator.primary
    assert 0.0 <= overall["acc"] <= 1.0 and 0.0 <= overall["acc_norm"] <= 1.0
    assert overall["examples"] == 6
    assert overall["acc"] == pytest.approx(expected_accuracy(model, task_dir, "en"))
    assert set(overall) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "examples"}
    assert result["languages"] == {"en": overall}
    assert result["tasks"] == {TASK: overall}
    assert result["higher_is_better"] == {"acc": True, "acc_norm": True}
    assert result["n_shot"] == {TASK: 0}
    assert result["lm_eval_version"] == lm_eval.__version__
    assert "notes" not in result
    # the loaded tasks serve every system of an evaluation
    assert evaluator.evaluate(model)["overall"] == overall


def test_limit_shots_seed_and_data_directory(model: EnsembleModel, task_dir: Path) -> None:
    request = EvalRequest(data=str(task_dir), task=TASK, limit=4, shots=2, seed=3)
    evaluator = LmEvalEvaluator(request)
    assert evaluator.languages == []
    result = evaluator.evaluate(model)
    assert result["overall"]["examples"] == 4
    assert result["n_shot"] == {TASK: 2}
    assert set(result["languages"]) == {"all"}


def test_the_default_seed_is_lm_evals_own(
    model: EnsembleModel, task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--seed 0, xelm's default, gives lm-eval its own default seeds (1234 for few-shot
    sampling, numpy and torch), so default prompts are a stock lm-eval run's; another --seed
    sets every seed; results record them."""
    import inspect

    import lm_eval.evaluator

    stock = inspect.signature(lm_eval.evaluator.simple_evaluate).parameters
    defaults = {
        name: stock[name].default
        for name in ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    }
    assert defaults["fewshot_random_seed"] == 1234  # what a stock lm-eval run uses
    given: list[dict[str, object]] = []
    real = lm_eval.evaluator.simple_evaluate

    def recording(**kwargs: object) -> object:
        given.append({k: kwargs[k] for k in defaults})
        return real(**kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "simple_evaluate", recording)
    for seed, expected in ((0, defaults), (7, dict.fromkeys(defaults, 7))):
        request = EvalRequest(data=str(task_dir), task=TASK, limit=2, shots=1, seed=seed)
        result = LmEvalEvaluator(request).evaluate(model)
        assert given[-1] == expected
        assert result["lm_eval_seeds"] == expected


def multilingual_tasks(task_dir: Path) -> None:
    """The fixture task as an XNLI-like suite: one subtask per language, each its dataset's
    language config (``dataset_name``), and a group of them."""
    config = yaml.safe_load((task_dir / f"{TASK}.yaml").read_text())
    for language in ("de", "tr"):
        subtask = {**config, "task": f"xelm_tiny_{language}", "dataset_name": language}
        (task_dir / f"xelm_tiny_{language}.yaml").write_text(yaml.safe_dump(subtask))
    group = {"group": "xelm_tiny_multi", "task": ["xelm_tiny_de", "xelm_tiny_tr"]}
    (task_dir / "xelm_tiny_multi.yaml").write_text(yaml.safe_dump(group))


@pytest.mark.parametrize(
    ("task", "languages", "options"),
    [
        ("xelm_tiny_multi", ("de",), {}),
        ("xelm_tiny_de,xelm_tiny_tr", None, {"language": "tr"}),
    ],
)
def test_one_language_for_tasks_in_several_is_refused(
    task_dir: Path, task: str, languages: tuple[str, ...] | None, options: dict
) -> None:
    """``--task xnli --langs en`` would tell a language router ``en`` for every language's
    subtask: refused, naming the way out."""
    multilingual_tasks(task_dir)
    given = languages[0] if languages else options["language"]
    request = EvalRequest(
        task=task, languages=languages, options={"include_path": str(task_dir), **options}
    )
    with pytest.raises(UsageError, match="2 languages") as caught:
        LmEvalEvaluator(request)
    message = str(caught.value)
    assert "\n" not in message
    assert f"told {given} for all of them" in message
    assert f"--task xelm_tiny_{given} --langs {given}" in message


def test_one_language_task_or_no_language_is_accepted(task_dir: Path) -> None:
    multilingual_tasks(task_dir)
    include = {"include_path": str(task_dir)}
    alone = LmEvalEvaluator(EvalRequest(task="xelm_tiny_de", languages=("de",), options=include))
    assert alone.languages == ["de"]
    unrouted = LmEvalEvaluator(EvalRequest(task="xelm_tiny_multi", options=include))
    assert unrouted.languages == []
    # subsets named like codes but none the language told (basqueglue's bec, wic): one suite
    other = LmEvalEvaluator(EvalRequest(task="xelm_tiny_multi", languages=("eu",), options=include))
    assert other.languages == ["eu"]


def scoring_tasks(task_dir: Path) -> list[str]:
    """A LAMBADA-like (loglikelihood) and a wikitext-like (loglikelihood_rolling) task beside
    the fixture task, reading its examples."""
    data = yaml.safe_load((task_dir / f"{TASK}.yaml").read_text())["dataset_kwargs"]
    common = {"dataset_path": "json", "dataset_kwargs": data, "test_split": "test"}
    tasks = {
        "xelm_tiny_answer": {  # LAMBADA-like: perplexity and greedy-match accuracy
            "output_type": "loglikelihood",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{' ' + choices[label]}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
        },
        "xelm_tiny_text": {  # wikitext-like
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{question}}",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}],
        },
    }
    for name, config in tasks.items():
        (task_dir / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **config}))
    return list(tasks)


def test_a_tasks_own_shots_hold_unless_shots_are_given(
    model: EnsembleModel, task_dir: Path
) -> None:
    config_path = task_dir / f"{TASK}.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.update(num_fewshot=2, fewshot_split="test")
    config_path.write_text(yaml.safe_dump(config))
    for shots, used in (({}, 2), ({"shots": 0}, 0), ({"shots": 1}, 1)):  # {}: not given
        request = EvalRequest(data=str(task_dir), task=TASK, limit=2, **shots)
        assert LmEvalEvaluator(request).evaluate(model)["n_shot"] == {TASK: used}


def test_loglikelihood_and_rolling_tasks(model: EnsembleModel, task_dir: Path) -> None:
    tasks = scoring_tasks(task_dir)
    request = EvalRequest(task=",".join(tasks), limit=3, options={"include_path": str(task_dir)})
    result = LmEvalEvaluator(request).evaluate(model)

    answer, text = result["tasks"]["xelm_tiny_answer"], result["tasks"]["xelm_tiny_text"]
    assert result["overall"] == answer and result["primary_metric"] == "perplexity"
    assert answer["perplexity"] > 1 and answer["examples"] == 3
    assert answer["acc"] is None and answer["acc_stderr"] is None  # needs greedy decoding
    assert result["notes"] and "xelm_tiny_answer:acc" in result["notes"][0]
    assert text["word_perplexity"] > 1 and text["bits_per_byte"] > 0 and text["examples"] == 3


@pytest.mark.parametrize(
    ("task", "primary", "higher"),
    [
        (TASK, "acc", True),
        ("xelm_tiny_answer", "perplexity", False),
        ("xelm_tiny_text,xelm_tiny_answer", "word_perplexity", False),
    ],
)
def test_the_headline_is_the_first_tasks_first_metric_xelm_computes(
    seed_bundle: Path, task_dir: Path, task: str, primary: str, higher: bool
) -> None:
    """Through ``xelm ensemble eval``'s Python call: a LAMBADA-like task's headline is its
    perplexity (its acc needs greedy decoding: null), a wikitext-like one's word perplexity."""
    from xelm_cli.api import evaluate

    scoring_tasks(task_dir)
    results = evaluate(
        [seed_bundle], data=str(task_dir), evaluator="lm-eval", task=task, limit=2, languages="en"
    )
    assert (results["primary"], results["higher_is_better"]) == (primary, higher)
    overall = results["systems"][0]["metrics"]["overall"]
    assert overall[primary] > 0


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({}, "needs --task"),
        ({"task": TASK, "options": {"model": "x"}}, "evaluator 'lm-eval' has no option 'model'"),
        ({"task": TASK, "runs": 3}, "runs each task once"),
        ({"task": TASK, "languages": ("en", "tr")}, "one language"),
        (
            {"task": TASK, "options": {"bootstrap_iters": "many"}},
            "option 'bootstrap_iters' expects int, not 'many'",
        ),
        (
            {"task": TASK, "options": {"bootstrap_iters": -1}},
            "option 'bootstrap_iters' must be at least 0, not -1",
        ),
        ({"task": TASK, "options": {"include_path": "/nonexistent"}}, "not a directory"),
    ],
)
def test_bad_requests_are_one_line_errors(request_args: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        LmEvalEvaluator(EvalRequest(**request_args))
    assert "\n" not in str(caught.value)


def test_generation_tasks_are_refused_before_any_model_runs(task_dir: Path) -> None:
    config = yaml.safe_load((task_dir / f"{TASK}.yaml").read_text())
    config.update(task="xelm_tiny_generate", output_type="generate_until", doc_to_target="label")
    for key in ("doc_to_choice", "metric_list"):
        config.pop(key)
    (task_dir / "generate.yaml").write_text(yaml.safe_dump(config))
    request = EvalRequest(
        task=f"{TASK},xelm_tiny_generate", options={"include_path": str(task_dir)}
    )
    with pytest.raises(UsageError, match="'xelm_tiny_generate' has output_type generate_until"):
        LmEvalEvaluator(request)


def test_missing_data_is_a_one_line_error(task_dir: Path) -> None:
    (task_dir / "examples.jsonl").unlink()
    request = EvalRequest(task=TASK, options={"include_path": str(task_dir)})
    with pytest.raises(UsageError, match=f"lm-eval could not load task '{TASK}'") as caught:
        LmEvalEvaluator(request)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------- without lm-eval


def test_without_lm_eval_the_evaluator_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval...` now fails
    with pytest.raises(UsageError) as caught:
        LmEvalEvaluator(EvalRequest(task=TASK))
    assert str(caught.value) == INSTALL_HINT


def test_the_plugin_imports_without_lm_eval() -> None:
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"
        "import xelm_lmeval\n"
        "found = {}\n"
        "xelm_lmeval.register_evaluators(register=lambda name, obj: found.update({name: obj}))\n"
        "assert found == {'lm-eval': xelm_lmeval.LmEvalEvaluator}, found\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------- an MoE bundle


@pytest.fixture(scope="module")
def moe_experts(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> list[Bundle]:
    """Two experts of the seed that differ in their MLPs."""
    from merge_helpers import mlp_experts

    return mlp_experts(seed_bundle, tmp_path_factory.mktemp("lmeval-moe"), ("en", "tr"))


@pytest.fixture(scope="module")
def moe_bundle(moe_experts: list[Bundle], tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from xelm_cli.bundle.moe import build_moe

    out = tmp_path_factory.mktemp("lmeval-moe-built") / "moe"
    return build_moe([b.path for b in moe_experts], out, top_k=2, gate="random", seed=1)


def test_an_moe_bundle_is_scored_like_any_other(
    moe_bundle: Bundle, moe_experts: list[Bundle], task_dir: Path
) -> None:
    """The bridge scores a Mixtral bundle built by `xelm bundle moe`: its rolling
    log-likelihood is the plain transformers model's, and a local task runs end to end."""
    import torch
    from transformers import AutoModelForCausalLM

    moe = single_model(moe_bundle, "moe")
    texts = ["All human beings are born free and equal in dignity and rights.", "Hello world"]
    rolling = XelmLM(moe, language="en").loglikelihood_rolling(
        instances("loglikelihood_rolling", [(t,) for t in texts])
    )
    plain = AutoModelForCausalLM.from_pretrained(moe_bundle.path).eval()
    assert type(plain).__name__ == "MixtralForCausalLM"
    tokenizer = moe_bundle.load_tokenizer()
    bos = moe_bundle.framing(tokenizer).prefix
    for text, total in zip(texts, rolling, strict=True):
        ids = [bos, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            logits = plain(torch.tensor([ids])).logits[0, :-1].double()
        expected = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).sum()
        assert total < 0 and total == pytest.approx(float(expected), abs=1e-3)
    # the MoE's numbers are its own: neither expert alone gives them
    for expert in moe_experts:
        alone = XelmLM(single_model(expert, "expert"), language="en").loglikelihood_rolling(
            instances("loglikelihood_rolling", [(texts[0],)])
        )
        assert abs(alone[0] - rolling[0]) > 1e-3

    pairs = [("The cat sat on the", " mat"), ("Hello", " world")]
    results = XelmLM(moe, language="en").loglikelihood(instances("loglikelihood", pairs))
    for (context, continuation), (loglikelihood, _) in zip(pairs, results, strict=True):
        [[direct]] = moe.score_choices([ChoiceRequest(context, (continuation,), "en")])
        assert loglikelihood == pytest.approx(float(direct.sum()), abs=1e-4) and loglikelihood < 0

    request = EvalRequest(task=TASK, options={"include_path": str(task_dir), "language": "en"})
    overall = LmEvalEvaluator(request).evaluate(moe)["overall"]
    assert overall["examples"] == 6
    assert overall["acc"] == pytest.approx(expected_accuracy(moe, task_dir, "en"))
