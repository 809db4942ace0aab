"""A resident ensemble reads the next expert's weights on a background thread while the current
one scores (xelm_cli/ensemble/load_ahead.py) and builds each model on the scoring thread: the
same models, the same numbers, the same errors, no stray thread."""

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import flip_byte
from test_ensemble import DOCS, EXPERT_LANGUAGES
from test_seed_fidelity import FAMILIES
from transformers import LlamaForCausalLM

from xelm_cli.bundle.seed import init_from_config, init_from_hf
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import IntegrityError
from xelm_cli.ensemble.load_ahead import THREAD_NAME, LoadAhead
from xelm_cli.ensemble.routing import build_router
from xelm_cli.ensemble.runner import EnsembleModel


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> list[Bundle]:
    root = tmp_path_factory.mktemp("experts")  # test_ensemble's: e0 (en, tr), e1 (ar), e2 (ru)
    return [
        init_from_config("tiny", tokenizer_dir, root / f"e{i}", languages=langs, seed=i + 1)
        for i, langs in enumerate(EXPERT_LANGUAGES)
    ]


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def threads_of(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, str]]]:
    """(bundle name, thread name) of each weights read and each model build from now on."""
    seen: dict[str, list[tuple[str, str]]] = {"read": [], "build": [], "files": []}

    def recorded(kind: str, method: Any) -> Any:
        def call(self: Bundle, *args: Any, **kwargs: Any) -> Any:
            seen[kind].append((self.path.name, threading.current_thread().name))
            return method(self, *args, **kwargs)

        return call

    monkeypatch.setattr(Bundle, "read_weights", recorded("read", Bundle.read_weights))
    monkeypatch.setattr(Bundle, "model_from_weights", recorded("build", Bundle.model_from_weights))
    monkeypatch.setattr(Bundle, "load_model", recorded("files", Bundle.load_model))
    return seen


@pytest.mark.parametrize("router", ["language", "posterior"])
def test_reading_ahead_gives_the_numbers_of_loading_in_turn(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch, router: str
) -> None:
    streamed = EnsembleModel(experts, build_router(router), device="cpu", resident=False)
    want = streamed.score_documents(DOCS)
    seen = threads_of(monkeypatch)
    resident = EnsembleModel(experts, build_router(router), device="cpu", resident=True)
    got = resident.score_documents(DOCS)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    assert seen["read"][0] == ("e0", "MainThread")  # nothing to overlap the first read with
    assert [name for name, _ in seen["read"]] == ["e0", "e1", "e2"]
    assert all(thread.startswith(THREAD_NAME) for _, thread in seen["read"][1:])
    # every model is built on the scoring thread: transformers sets the default dtype then
    assert seen["build"] == [(f"e{i}", "MainThread") for i in range(3)] and not seen["files"]
    assert dict(resident.stats.loads) == {"e0": 1, "e1": 1, "e2": 1}
    resident.score_documents(DOCS)
    assert len(seen["read"]) == 3  # kept on the device: nothing loads again
    assert not helper_threads()


def test_a_failing_background_read_raises_the_error_of_loading_in_turn(
    experts: list[Bundle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = [Bundle.read(shutil.copytree(e.path, tmp_path / e.path.name)) for e in experts]
    flip_byte(copies[1].path / "model.safetensors")

    def error() -> str:
        model = EnsembleModel(copies, build_router("language"), device="cpu", resident=True)
        with pytest.raises(IntegrityError) as raised:
            model.score_documents(DOCS)
        assert dict(model.stats.loads) == {"e0": 1, "e1": 1}  # e2 never taken
        return str(raised.value)

    seen = threads_of(monkeypatch)
    ahead = error()
    assert ("e1", f"{THREAD_NAME}_0") in seen["read"]
    assert not helper_threads()
    monkeypatch.setattr(EnsembleModel, "_load_ahead", lambda self, order: None)
    assert ahead == error()  # loading each in turn, from its files
    assert "e1: model.safetensors" in ahead and "xelm bundle verify" in ahead


def test_a_streamed_ensemble_loads_on_the_calling_thread(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed ensemble swaps each expert into the spare model the previous one used."""
    started = threading.active_count()
    model = EnsembleModel(experts, build_router("posterior"), device="cpu", resident=False)
    seen = threads_of(monkeypatch)
    model.score_documents(DOCS[:2])
    assert seen == {"read": [], "build": [], "files": [("e0", "MainThread")]}
    assert threading.active_count() == started


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_bundle(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Bundle:
    build = FAMILIES[request.param][0]
    root = tmp_path_factory.mktemp(request.param)
    return init_from_hf(str(build(root / "hf")), root / "seed", languages=["en"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_model_built_from_read_weights_is_the_model_loaded_from_its_files(
    family_bundle: Bundle, dtype: torch.dtype
) -> None:
    loaded = family_bundle.load_model(dtype=dtype)
    built = family_bundle.model_from_weights(family_bundle.read_weights(dtype), dtype)
    assert type(built) is type(loaded)
    for kind in ("named_parameters", "named_buffers"):  # non-persistent buffers too
        want, got = dict(getattr(loaded, kind)()), dict(getattr(built, kind)())
        assert sorted(got) == sorted(want)
        for name, tensor in want.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(built(ids).logits, loaded(ids).logits)


def test_tensors_a_class_keeps_in_float32_are_read_as_stored(
    experts: list[Bundle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LlamaForCausalLM, "_keep_in_fp32_modules_strict", ["norm"])
    weights = experts[0].read_weights(torch.bfloat16)
    norms = [name for name in weights if "norm" in name]
    assert norms and all(weights[name].dtype == torch.float32 for name in norms)
    assert weights["model.embed_tokens.weight"].dtype == torch.bfloat16
    loaded = experts[0].load_model(dtype=torch.bfloat16)
    built = experts[0].model_from_weights(weights, torch.bfloat16)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(built.state_dict()[name], tensor) and tensor.dtype == (
            torch.float32 if "norm" in name else torch.bfloat16
        )


def test_load_ahead_reads_at_most_one_ahead() -> None:
    started: list[int] = []

    def read(index: int) -> int:
        started.append(index)
        return index * 10

    with LoadAhead([3, 5, 7], read) as ahead:
        assert ahead.take(3) == 30
        time.sleep(0.05)  # time for a second background read, were one started
        assert 7 not in started
        assert ahead.take(5) == 50
        assert ahead.take(7) == 70
    assert started == [3, 5, 7]
    assert not helper_threads()


def test_load_ahead_raises_a_background_error_on_taking_it() -> None:
    def read(index: int) -> int:
        if index == 1:
            raise ValueError("expert 1: cannot be read")
        return index

    with LoadAhead([0, 1, 2], read) as ahead:
        assert ahead.take(0) == 0
        with pytest.raises(ValueError, match=r"^expert 1: cannot be read$"):
            ahead.take(1)
    assert not helper_threads()


def test_leaving_load_ahead_early_waits_for_the_unfinished_read_and_drops_it() -> None:
    finished: list[int] = []

    def read(index: int) -> int:
        if index:
            time.sleep(0.2)  # still reading when the caller fails
            finished.append(index)
        return index

    with pytest.raises(RuntimeError, match="scoring failed"), LoadAhead([0, 1], read) as ahead:
        ahead.take(0)
        raise RuntimeError("scoring failed")
    assert finished == [1]
    assert not helper_threads()
