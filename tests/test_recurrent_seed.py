"""A recurrent (state-space) seed, Mamba: its state is a cache that is not keys and values, so
generation and choice scoring must build the cache the model's config asks for."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM, PreTrainedTokenizerFast

from xelm_cli.api import Document
from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import UsageError
from xelm_cli.ensemble.generation import generate
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel
from xelm_cli.plugin.contracts import ChoiceRequest

TEXT = "All human beings are born free and equal in dignity and rights."
# Mamba's forward took its state as cache_params, which xelm does not pass, before transformers
# renamed it (after 5.4)
TAKES_A_CACHE = "cache" in inspect.signature(MambaForCausalLM.forward).parameters


@pytest.fixture(scope="module")
def mamba(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    config = MambaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, state_size=8,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = tmp_path_factory.mktemp("mamba-hf")
    MambaForCausalLM(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    return init_from_hf(str(hf), tmp_path_factory.mktemp("mamba") / "seed", languages=["en"])


def _full_logprobs(bundle: Bundle, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = bundle.load_model().eval()(torch.tensor([ids])).logits[0].double()
    targets = torch.tensor(ids[1:])[:, None]
    return torch.log_softmax(logits, -1)[:-1].gather(1, targets)[:, 0].numpy()


def test_perplexity_scores_are_the_models_own(mamba: Bundle) -> None:
    runner = EnsembleModel([mamba], build_router("uniform"), device="cpu")
    got = runner.score_documents([Document(TEXT, "en")])[0]
    ids = [runner.bos, *runner.encode(TEXT)]
    np.testing.assert_allclose(got, _full_logprobs(mamba, ids), atol=1e-5)


@pytest.mark.skipif(not TAKES_A_CACHE, reason="Mamba takes cache_params in this transformers")
def test_generation_is_the_models_greedy_decoding(mamba: Bundle) -> None:
    result = generate([mamba], build_router("uniform"), "All human", max_new_tokens=6,
                      temperature=0)  # fmt: skip
    tokenizer = mamba.load_tokenizer()
    ids = [tokenizer.bos_token_id, *tokenizer("All human", add_special_tokens=False).input_ids]
    greedy = (
        mamba.load_model()
        .eval()
        .generate(torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False)[
            0, len(ids) :
        ]
        .tolist()
    )
    assert result.tokens == greedy


@pytest.mark.skipif(TAKES_A_CACHE, reason="Mamba takes a cache in this transformers")
def test_generation_without_a_cache_xelm_can_pass_is_refused(mamba: Bundle) -> None:
    with pytest.raises(UsageError, match="install a newer transformers"):
        generate([mamba], build_router("uniform"), "All human", max_new_tokens=2)


def test_choices_reuse_the_context_and_match_full_sequences(mamba: Bundle) -> None:
    runner = EnsembleModel([mamba], build_router("uniform"), device="cpu")
    request = ChoiceRequest("All human beings are", (" born", " free and equal"), "en")
    got = runner.score_choices([request])[0]
    for choice, lp in zip(request.choices, got, strict=True):
        full = _full_logprobs(mamba, [runner.bos, *runner.encode(request.context + choice)])
        n = len(runner.encode(choice))
        np.testing.assert_allclose(lp, full[-n:], atol=1e-5)
