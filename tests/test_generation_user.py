"""`xelm ensemble generate` as a user meets it: a prompt without a language is refused naming
`--lang`, and generation never emits the document-start token, even from a model that
predicts it above every other token."""

import json
from pathlib import Path

import pytest
import torch

from xelm_cli.api import Bundle, UsageError, generate_text, init_from_config, init_from_hf
from xelm_cli.bundle.seed import config_for
from xelm_cli.cli import run

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
