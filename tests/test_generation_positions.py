"""`xelm ensemble generate` and `generate_text` refuse a prompt and new tokens that do not fit
the model's positions, in one line, before any expert runs: the prefix token, the prompt and the
new tokens but the last, which no expert reads."""

from pathlib import Path

import pytest
import torch

from xelm_cli.api import Bundle, UsageError, generate_text, init_from_config, init_from_hf
from xelm_cli.cli import run

PROMPT = "All human beings are born free and equal in dignity and rights."


@pytest.fixture(scope="module")
def gpt2_seed(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A GPT-2 seed with a learned table of 64 positions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    root = tmp_path_factory.mktemp("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64,
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    return init_from_hf(str(root / "hf"), root / "seed", languages=["en"]).path


def prompt_tokens(seed: Path, prompt: str) -> int:
    return len(Bundle.open(seed).load_tokenizer()(prompt, add_special_tokens=False).input_ids)


def test_new_tokens_past_a_learned_position_table_are_refused(
    gpt2_seed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = prompt_tokens(gpt2_seed, PROMPT)
    expected = (
        f"the prompt's {n} tokens, its prefix token and --max-new-tokens 80 need {n + 80} "
        "positions (the last new token is never read); the model has 64: pass --max-new-tokens "
        f"{64 - n} or less, or shorten the prompt"
    )
    with pytest.raises(UsageError) as refused:
        generate_text(gpt2_seed, PROMPT, router="uniform", max_new_tokens=80, device="cpu")
    assert str(refused.value) == expected
    args = ["ensemble", "generate", str(gpt2_seed), "--router", "uniform", "--prompt", PROMPT]
    assert run([*args, "--max-new-tokens", "80", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"xelm: error: {expected}\n"
    fits = generate_text(
        gpt2_seed, PROMPT, router="uniform", max_new_tokens=64 - n, temperature=0, device="cpu"
    )
    assert 1 <= len(fits["tokens"]) <= 64 - n


def test_a_prompt_longer_than_a_learned_position_table_is_refused(
    gpt2_seed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = " ".join([PROMPT] * 8)
    n = prompt_tokens(gpt2_seed, prompt)
    assert n > 64
    args = ["ensemble", "generate", str(gpt2_seed), "--router", "uniform", "--prompt", prompt]
    assert run([*args, "--max-new-tokens", "3", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"xelm: error: the prompt's {n} tokens, its prefix token and --max-new-tokens 3 need "
        f"{n + 3} positions (the last new token is never read); the model has 64: shorten the "
        "prompt to at most 63 tokens\n"
    )


def test_new_tokens_past_rotary_positions_are_refused(tmp_path: Path, tokenizer_dir: Path) -> None:
    """Rotary positions would run past the 1,024 the tiny Llama declares (and never saw)."""
    seed = init_from_config("tiny", tokenizer_dir, tmp_path / "seed", languages=["en"])
    n = prompt_tokens(seed.path, "Hello")
    with pytest.raises(
        UsageError,
        match=rf"need {n + 1100:,} positions \(.*\); the model has 1,024: pass ",
    ):
        generate_text(seed.path, "Hello", router="uniform", max_new_tokens=1100, device="cpu")


def test_the_last_new_token_is_not_read_by_the_experts(
    gpt2_seed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each expert reads every new token but the last, whose forward would go unused."""
    from xelm_cli.ensemble import generation

    read: list[int] = []
    original = generation._read_token
    monkeypatch.setattr(
        generation,
        "_read_token",
        lambda expert, token: (read.append(token), original(expert, token)),
    )
    made = generate_text(
        gpt2_seed, PROMPT, router="uniform", max_new_tokens=4, temperature=0, device="cpu"
    )
    assert read == made["tokens"][:-1]


def _prompt_of(seed: Path, tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens: the longest start of the repeated declaration
    that encodes to them."""
    text = " ".join([PROMPT] * 8)
    tokenizer = Bundle.open(seed).load_tokenizer()
    counts = tokenizer([text[:end] for end in range(len(text))], add_special_tokens=False)
    fits = [text[:end] for end, ids in enumerate(counts.input_ids) if len(ids) == tokens]
    assert fits, f"no prompt of {tokens} tokens"
    return fits[-1]


def test_new_tokens_fill_a_learned_position_table_exactly(gpt2_seed: Path) -> None:
    """The prefix token, n prompt tokens and 64 - n new tokens use the 64 positions: the last
    new token is never read, so it needs none; one more new token is refused."""
    n = prompt_tokens(gpt2_seed, PROMPT)
    fills = generate_text(
        gpt2_seed, PROMPT, router="uniform", max_new_tokens=64 - n, temperature=0, device="cpu"
    )
    assert len(fills["tokens"]) == 64 - n  # every one generated: positions 0 .. 63 all read
    with pytest.raises(UsageError, match=rf"need 65 positions .*: pass --max-new-tokens {64 - n} "):
        generate_text(gpt2_seed, PROMPT, router="uniform", max_new_tokens=65 - n, device="cpu")


def test_a_prompt_of_all_positions_but_one_takes_one_new_token(gpt2_seed: Path) -> None:
    """63 prompt tokens after the prefix token fill the table; the one new token is never read.
    A 64-token prompt leaves no room for any."""
    fits = _prompt_of(gpt2_seed, 63)
    made = generate_text(gpt2_seed, fits, router="uniform", max_new_tokens=1, device="cpu")
    assert len(made["tokens"]) == 1
    with pytest.raises(
        UsageError, match=r"need 65 positions .*: shorten the prompt to at most 63 "
    ):
        generate_text(gpt2_seed, _prompt_of(gpt2_seed, 64), router="uniform", max_new_tokens=1)
