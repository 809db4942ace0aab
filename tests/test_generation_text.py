"""The text of generated tokens under a SentencePiece-style (Metaspace) tokenizer, as XGLM's:
what the new tokens add after the prompt, decoded with it, so the prompt followed by it is the
whole text. Decoded on their own, a first "▁world" lost its space ("hello" + "▁world" read
"helloworld"), in the text returned and printed, and in what routers saw of the text so far."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from xelm_cli.api import Bundle, generate_text, init_from_hf
from xelm_cli.bundle.seed import config_for
from xelm_cli.cli import run
from xelm_cli.ensemble.generation import generate
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.plugin.contracts import (
    Document,
    ExpertInfo,
    OutputRouter,
    PreRouter,
    ScoredDocument,
)

PIECES = ["▁hello", "▁world", "▁", *"helowrd."]
PROMPT = "hello"


def _xglm_tokenizer(out: Path) -> Any:
    """A SentencePiece (Unigram) tokenizer as XGLM's, Metaspace decoder included: <s>, <pad>,
    </s>, <unk>, then a few pieces."""
    from transformers import AutoTokenizer, XGLMTokenizer

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    XGLMTokenizer(vocab=vocab + [(p, -1.0) for p in PIECES]).save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _xglm_tokenizer(tmp_path_factory.mktemp("xglm-tokenizer"))


@pytest.fixture(scope="module")
def world_loving(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a tiny Llama on that tokenizer, framing documents ``</s> doc </s>`` as XGLM,
    whose most likely next token is "▁world" after any text: hidden dimension 0 carries a
    large constant, and only that token's output row reads it."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("world-loving")
    tokenizer = _xglm_tokenizer(root / "hf")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for("tiny", tokenizer))
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 50.0
        output = model.get_output_embeddings().weight
        output[:, 0] = 0.0
        output[tokenizer.convert_tokens_to_ids("▁world"), 0] = 10.0
    model.save_pretrained(root / "hf")
    end = str(tokenizer.eos_token_id)
    return init_from_hf(
        root / "hf", root / "seed", languages=["en"], doc_start=end, doc_end=end
    ).path


def test_a_new_word_keeps_its_space_after_the_prompt(
    world_loving: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    record = generate_text(
        world_loving, PROMPT, router="uniform", max_new_tokens=3, temperature=0, device="cpu"
    )
    world = tokenizer.convert_tokens_to_ids("▁world")
    assert record["tokens"] == [world] * 3
    assert record["text"] == " world world world"  # not "world world world"
    prompt_ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    whole = tokenizer.decode([*prompt_ids, *record["tokens"]], skip_special_tokens=True)
    assert PROMPT + record["text"] == whole
    code = run(["ensemble", "generate", str(world_loving), "--router", "uniform",
                "--prompt", PROMPT, "--max-new-tokens", "3", "--temperature", "0",
                "--device", "cpu"])  # fmt: skip
    assert (code, capsys.readouterr().out) == (0, "hello world world world\n")


class _RecordingPrefixes(PreRouter):
    """Routes prefixes every 2 tokens, all the weight on the one expert, and records the texts
    it is asked about."""

    name = "recording-prefixes"
    stride = 2

    def __init__(self) -> None:
        self.asked: list[str] = []

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> np.ndarray:
        self.asked += [document.text for document in documents]
        return np.ones((len(documents), len(experts)))


def test_a_router_with_a_stride_is_asked_about_the_text_scoring_routes(
    world_loving: Path,
) -> None:
    """Before new tokens 1 and 3 the router sees "hello world" and "hello world world world",
    as scoring's router sees the prefixes of the whole text, not "helloworld"."""
    bundle = Bundle.open(world_loving)
    router = _RecordingPrefixes()
    made = generate([bundle], router, PROMPT, max_new_tokens=5, temperature=0, device="cpu")
    assert router.asked == ["", "hello world", "hello world world world"]
    scoring = _RecordingPrefixes()
    EnsembleModel([bundle], scoring, device="cpu").score_documents(
        [Document(PROMPT + made.text, None)]
    )
    assert router.asked == scoring.asked


class _RecordingOutputs(OutputRouter):
    """Uniform weights per token; records the text of each document it weighs."""

    name = "recording-outputs"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def route_tokens(self, scored: ScoredDocument, experts: Sequence[ExpertInfo]) -> np.ndarray:
        self.seen.append(scored.document.text)
        return np.full(scored.logprobs.shape, 1.0 / len(experts))


def test_an_output_router_sees_the_text_so_far(world_loving: Path) -> None:
    router = _RecordingOutputs()
    generate(
        [Bundle.open(world_loving)], router, PROMPT, max_new_tokens=3, temperature=0, device="cpu"
    )
    assert router.seen == ["hello", "hello world", "hello world world"]


def test_a_prompt_the_decoder_changes_falls_back_to_the_new_tokens_alone(tokenizer: Any) -> None:
    """A decoder that cleans up spaces reads "hello " + "." as "hello.": the decoded prompt
    does not begin it, so the new tokens are decoded alone; a first word-start token alone
    keeps its space."""
    from transformers import AutoTokenizer

    from xelm_cli.ensemble.generation import Continuation

    cleaning = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    cleaning.clean_up_tokenization_spaces = True
    prompt_ids = cleaning("hello ", add_special_tokens=False).input_ids
    dot, world = cleaning.convert_tokens_to_ids([".", "▁world"])
    assert cleaning.decode([*prompt_ids, dot]) == "hello."
    after = Continuation(cleaning, prompt_ids)
    assert after([dot]) == "."
    assert after([world]) == " world"  # "hello  world" after "hello "
    assert after._alone([world, dot]) == " world."
    assert after([]) == ""
