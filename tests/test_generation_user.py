"""`xelm ensemble generate` as a user meets it: a prompt without a language is refused naming
`--lang`, and generation never emits the document-start token, even from a model that
predicts it above every other token; a seed torch cannot take is refused in one line, a tiny
temperature samples the most likely tokens, a router with a stride routes the growing text as
scoring routes prefixes, and a long prompt leaves each expert one vocabulary of
log-probabilities, not a table of them per prompt token."""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from xelm_cli.api import Bundle, UsageError, generate_text, init_from_config, init_from_hf
from xelm_cli.bundle.seed import config_for
from xelm_cli.cli import run
from xelm_cli.plugin.contracts import Document, ExpertInfo, PreRouter

NO_LANGUAGE = (
    "router 'language' needs the prompt's language and it has none: pass --lang CODE "
    "(language= from Python), or a router that needs none (--router posterior)"
)
PROMPT = "All human beings"


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> list[str]:
    root = tmp_path_factory.mktemp("experts")
    for i, langs in enumerate((["en", "tr"], ["ar"])):
        init_from_config("tiny", tokenizer_dir, root / f"x{i}", languages=langs, seed=i)
    return [str(root / "x0"), str(root / "x1")]


def test_a_prompt_without_a_language_is_refused_naming_lang(
    experts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError) as refused:
        generate_text(experts, "Dzisiaj jest", router="language", max_new_tokens=2)
    assert str(refused.value) == NO_LANGUAGE
    code = run(["ensemble", "generate", *experts, "--router", "language", "--prompt", "Dzisiaj"])
    assert (code, capsys.readouterr().err) == (2, f"xelm: error: {NO_LANGUAGE}\n")
    assert run(["ensemble", "generate", *experts, "--router", "language", "--lang", "tr",
                "--prompt", "Dzisiaj", "--max-new-tokens", "2"]) == 0  # fmt: skip


def test_a_refusal_a_language_would_not_lift_keeps_the_routers_message(
    experts: list[str],
) -> None:
    with pytest.raises(UsageError) as refused:
        generate_text(experts, "Dzisiaj jest", router="oracle", max_new_tokens=2)
    assert str(refused.value) == (
        "the oracle router is not calibrated: create the ensemble with --router oracle "
        "--calibration DEV_DATA"
    )


def _start_loving_model(tokenizer_dir: Path, out: Path) -> Path:
    """A tiny Llama (as HF files) whose most likely next token is the start token (0) after
    any text: hidden dimension 0 carries a large constant through the residual stream, and
    only the start token's output row reads it; the other dimensions still vary with the
    text, so the other tokens' order changes from step to step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for("tiny", tokenizer))
    start = tokenizer.bos_token_id
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 50.0
        output = model.get_output_embeddings().weight
        output[:, 0] = 0.0
        output[start, 0] = 10.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def start_loving(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A bundle of that model framing documents ``<s> doc </s>``."""
    root = tmp_path_factory.mktemp("start-loving")
    hf = _start_loving_model(tokenizer_dir, root / "hf")
    start, end = _start_token(tokenizer_dir), _end_token(tokenizer_dir)
    return init_from_hf(hf, root / "seed", languages=["en"], doc_start=start, doc_end=end).path


def _start_token(tokenizer_dir: Path) -> str:
    from transformers import AutoTokenizer

    return str(AutoTokenizer.from_pretrained(tokenizer_dir).bos_token_id)


def _end_token(tokenizer_dir: Path) -> str:
    from transformers import AutoTokenizer

    return str(AutoTokenizer.from_pretrained(tokenizer_dir).eos_token_id)


def _masked_greedy(bundle: Path, prompt: str, new_tokens: int, start: int) -> list[int]:
    """Greedy decoding with a plain forward pass per step, the start token masked out;
    stops after the end token."""
    opened = Bundle.open(bundle)
    model, tokenizer = opened.load_model().eval(), opened.load_tokenizer()
    ids = [start, *tokenizer(prompt, add_special_tokens=False).input_ids]
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            assert int(torch.argmax(logits)) == start  # the model prefers the start token
            logits[start] = float("-inf")
            token = int(torch.argmax(logits))
            generated.append(token)
            ids.append(token)
            if token == tokenizer.eos_token_id:
                break
    return generated


def test_greedy_generation_never_emits_the_start_token(
    start_loving: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = Bundle.open(start_loving).load_tokenizer().bos_token_id
    expected = _masked_greedy(start_loving, PROMPT, 8, start)
    assert len(set(expected)) > 1  # not one token repeated: the test can tell steps apart
    code = run(["ensemble", "generate", str(start_loving), "--router", "uniform",
                "--prompt", PROMPT, "--max-new-tokens", "8", "--temperature", "0", "--json",
                "--device", "cpu"])  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert code == 0
    assert record["tokens"] == expected and start not in record["tokens"]
    assert record["text"] != ""
    assert record["weights"] == [[1.0]] * len(expected)


def test_sampling_never_emits_the_start_token(start_loving: Path) -> None:
    start = Bundle.open(start_loving).load_tokenizer().bos_token_id
    for seed in range(3):
        record = generate_text(
            start_loving, PROMPT, router="uniform", max_new_tokens=10, seed=seed, device="cpu"
        )
        assert record["tokens"] and start not in record["tokens"]


def test_a_start_token_that_also_ends_a_text_is_generated_and_stops(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """``</s> doc </s>`` framing (XGLM): the start token is a stop token, so generation may
    pick it, and ends there."""
    hf = _start_loving_model(tokenizer_dir, tmp_path / "hf")
    start = _start_token(tokenizer_dir)
    same = init_from_hf(
        hf, tmp_path / "seed", languages=["en"], doc_start=start, doc_end=start
    ).path
    record = generate_text(
        same, PROMPT, router="uniform", max_new_tokens=5, temperature=0, device="cpu"
    )
    assert record["tokens"] == [int(start)] and record["text"] == ""


@pytest.mark.parametrize("seed", [2**64, 99999999999999999999, -1])
def test_a_seed_torch_cannot_take_is_refused_in_one_line(
    experts: list[str], seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = f"--seed must be from 0 to {2**64 - 1} (2**64 - 1), not {seed}"
    with pytest.raises(UsageError) as refused:
        generate_text(experts, PROMPT, router="uniform", seed=seed, device="cpu")
    assert str(refused.value) == expected
    code = run(["ensemble", "generate", *experts, "--router", "uniform", "--prompt", PROMPT,
                "--seed", str(seed), "--device", "cpu"])  # fmt: skip
    assert (code, capsys.readouterr().err) == (2, f"xelm: error: {expected}\n")
    largest = generate_text(experts, PROMPT, router="uniform", max_new_tokens=2,
                            seed=2**64 - 1, device="cpu")  # fmt: skip
    assert len(largest["tokens"]) >= 1


def test_a_tiny_temperature_samples_the_most_likely_tokens(experts: list[str]) -> None:
    """1e-320 would make every ln p / temperature -inf (NaN probabilities): sampling takes the
    most likely token's off first, so it keeps all the probability."""
    made = {
        temperature: generate_text(experts, PROMPT, router="uniform", max_new_tokens=5,
                                   temperature=temperature, seed=1, device="cpu")["tokens"]
        for temperature in (0.0, 1e-320)
    }  # fmt: skip
    assert made[1e-320] == made[0.0] and len(made[0.0]) > 1


class _AlternatingPrefixes(PreRouter):
    """Routes prefixes every 2 tokens (c-BTM), putting all the weight on expert 0, then 1,
    then 0 ... call after call, and records the texts it is asked about."""

    name = "alternating-prefixes"
    stride = 2

    def __init__(self) -> None:
        self.asked: list[str] = []

    def route(self, documents: Sequence[Document], experts: Sequence[ExpertInfo]) -> np.ndarray:
        rows = []
        for document in documents:
            rows.append(np.eye(len(experts))[len(self.asked) % 2])
            self.asked.append(document.text)
        return np.array(rows)


def test_a_router_with_a_stride_routes_the_growing_text_as_scoring_routes_prefixes(
    experts: list[str],
) -> None:
    """Target tokens 0, 2, 4, ... (the prompt's, then the new ones) are routed on the text
    before them: first the prompt up to its last such token, then the prompt and the new tokens
    before every other new one; each new token takes the weights of the latest, and every
    expert runs, since any may get weight later."""
    from xelm_cli.ensemble.generation import generate

    members = [Bundle.open(path) for path in experts]
    tokenizer = members[0].load_tokenizer()
    prompt = "All human beings are"
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    prompt_tokens = len(encoded["input_ids"])
    assert prompt_tokens % 2 == 1  # token prompt_tokens - 1 is routed: inside the prompt
    router = _AlternatingPrefixes()
    made = generate(members, router, prompt, max_new_tokens=6, temperature=0, device="cpu")
    tokens = made.tokens
    assert len(tokens) == 6 and made.experts == ["x0", "x1"]
    prompt_ids = encoded["input_ids"]
    assert tokenizer.decode(prompt_ids) == prompt
    # the new tokens are decoded with the prompt's, as the whole text
    assert router.asked == [
        prompt[: encoded["offset_mapping"][prompt_tokens - 1][0]],
        *(tokenizer.decode([*prompt_ids, *tokens[:step]]) for step in (1, 3, 5)),
    ]
    assert made.weights == [[[1.0, 0.0], [0.0, 1.0]][(step + 1) // 2 % 2] for step in range(6)]


def test_reading_a_prompt_keeps_one_vocabulary_of_log_probabilities(experts: list[str]) -> None:
    """A running expert holds ln p of the next token (V float64s, a tensor of its own) and of
    each prompt token (scoring's values), not a prompt x V table."""
    from xelm_cli.ensemble.generation import _read_prompt
    from xelm_cli.ensemble.scoring import LoadedModel, score_sequences

    bundle = Bundle.open(experts[0])
    model = LoadedModel.load(bundle, torch.device("cpu"))
    tokenizer = bundle.load_tokenizer()
    ids = [tokenizer.bos_token_id, *tokenizer(" ".join([PROMPT] * 30)).input_ids]
    assert len(ids) > 100
    with torch.inference_mode():
        read = _read_prompt(model, ids)
        logits = model.model(torch.tensor([ids])).logits[0, -1]
    vocabulary = logits.shape[-1]
    assert read.next_logprobs.shape == (vocabulary,)
    assert read.next_logprobs.untyped_storage().nbytes() == vocabulary * 8
    torch.testing.assert_close(
        read.next_logprobs, torch.log_softmax(logits.double(), -1), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(read.history, score_sequences([model], [1.0], [ids])[0], atol=1e-6)
