"""Importing a seed as it was stored: the dtype of its weights (not its config's), its own code
when the user lets it run (and its bundles then load without asking again, on this machine
only), and pickled weights converted only when the model has no safetensors, named by the file
read (the index for sharded pickles), for local directories and Hub ids read from the cache."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from custom_code import MODELING, add_custom_code
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaTokenizer

from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.common.errors import FormatError, UsageError
from xelm_cli.training.positions import learned_positions

LETTERS = "helowrd"


def _tokenizer() -> LlamaTokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, **{c: i + 4 for i, c in enumerate(LETTERS)}}
    return LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def _llama(out: Path, dtype: torch.dtype = torch.float32, **save: object) -> Path:
    """A tiny random Llama saved with save_pretrained, its weights stored in ``dtype``."""
    config = LlamaConfig(
        vocab_size=len(_tokenizer()), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(dtype).save_pretrained(out, **save)  # type: ignore[arg-type]
    _tokenizer().save_pretrained(out)
    return out


def _config_says(model_dir: Path, dtype: str) -> None:
    """Make config.json name another dtype than the weights are stored in (as checkpoints whose
    config was edited, or converted without updating it, do)."""
    config = json.loads((model_dir / "config.json").read_text())
    config["dtype"] = dtype
    (model_dir / "config.json").write_text(json.dumps(config))


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors |= load_file(str(file))
    return tensors


def _bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]) for name in a
    )


def _pickle(model_dir: Path, sharded: bool) -> str:
    """Replace the safetensors of ``model_dir`` with pickled weights, as older models ship them
    (two shards and their index when ``sharded``); returns the file transformers reads."""
    state = _tensors(model_dir)
    for file in model_dir.glob("*.safetensors*"):
        file.unlink()
    if not sharded:
        torch.save(state, model_dir / "pytorch_model.bin")
        return "pytorch_model.bin"
    names = sorted(state)
    shards = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
    for file, part in shards.items():
        torch.save({name: state[name] for name in part}, model_dir / file)
    weight_map = {name: file for file, part in shards.items() for name in part}
    index = {"metadata": {}, "weight_map": weight_map}
    (model_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return "pytorch_model.bin.index.json"


# --- dtype: the stored one, not the config's ---------------------------------------------------


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize(
    ("stored", "said"),
    [(torch.float32, "bfloat16"), (torch.bfloat16, "float32")],
    ids=["f32-stored-config-bf16", "bf16-stored-config-f32"],
)
def test_a_seed_keeps_the_dtype_its_weights_are_stored_in(
    tmp_path: Path, stored: torch.dtype, said: str, sharded: bool
) -> None:
    """transformers' dtype="auto" prefers the config's dtype: fp32 weights under a config saying
    bfloat16 would be cut to bf16 (lossy), bf16 weights under float32 doubled in size."""
    save = {"max_shard_size": "4KB"} if sharded else {}
    hf = _llama(tmp_path / "hf", stored, **save)
    assert (len(list(hf.glob("*.safetensors"))) > 1) == sharded
    _config_says(hf, said)
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"])
    name = str(stored).removeprefix("torch.")
    assert _bit_exact(_tensors(seed.path), _tensors(hf))
    assert seed.weights_dtype() == name
    assert json.loads((seed.path / "config.json").read_text())["dtype"] == name
    assert seed.manifest.origin["dtype"] == {"stored": name, "config": said}
    assert verify_bundle(seed.path) == []


def test_a_config_that_agrees_with_the_weights_is_not_recorded(tmp_path: Path) -> None:
    hf = _llama(tmp_path / "hf", torch.bfloat16)
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"])
    assert _bit_exact(_tensors(seed.path), _tensors(hf))
    assert "dtype" not in seed.manifest.origin


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_converted_pickles_keep_their_dtype_and_name_the_file_read(
    tmp_path: Path, sharded: bool
) -> None:
    """Pickled fp32 weights under a config saying bfloat16: converted bit for bit (the dtype
    read from the tensors), and the record names the file read: the index for shards."""
    hf = _llama(tmp_path / "hf", torch.float32)
    original = _tensors(hf)
    read = _pickle(hf, sharded)
    _config_says(hf, "bfloat16")
    with pytest.raises(UsageError, match=rf"only pickled weights \({read}\); pass --convert"):
        init_from_hf(hf, tmp_path / "refused", languages=["en"])
    seed = init_from_hf(hf, tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert _bit_exact(_tensors(seed.path), original)
    assert seed.manifest.origin["converted"] == {"from": read, "loader": "torch.load(weights_only)"}
    assert seed.manifest.origin["dtype"] == {"stored": "float32", "config": "bfloat16"}


# --- custom code: refused unless asked, then its bundles load ----------------------------------


def _custom(out: Path) -> Path:
    """A tiny model whose config names its own code (auto_map), as Hub models with custom
    architectures ship: configuration and modeling modules beside config.json."""
    return add_custom_code(_llama(out), "xelm-tiny-custom")


@pytest.fixture(scope="module")
def custom_seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Bundle]]:
    """The custom model's directory and its seed, made with --trust-remote-code."""
    work = tmp_path_factory.mktemp("custom")
    hf = _custom(work / "hf_tiny_custom")
    yield hf, init_from_hf(hf, work / "seed_tiny_custom", languages=["en"], trust_remote_code=True)


def test_custom_code_is_refused_naming_the_flag(tmp_path: Path) -> None:
    hf = _custom(tmp_path / "hf_refused_custom")
    with pytest.raises(UsageError) as refused:
        init_from_hf(hf, tmp_path / "seed", languages=["en"])
    message = str(refused.value)
    assert "--trust-remote-code" in message and "\n" not in message
    assert message.startswith(f"cannot use {str(hf)!r} as a seed: it runs its own Python code")
    assert not (tmp_path / "seed").exists()


def test_a_custom_code_seed_records_it_and_its_branches_load(
    custom_seed: tuple[Path, Bundle], tmp_path: Path
) -> None:
    """init --trust-remote-code, branch, load the branch's model and tokenizer: no flag needed
    after init (the user opted in then, on this machine), the code read from the bundle."""
    hf, seed = custom_seed
    assert seed.manifest.origin["trust_remote_code"] is True
    assert {"configuration_tiny_custom.py", "modeling_tiny_custom.py"} <= set(seed.manifest.files)
    assert verify_bundle(seed.path) == []
    child = branch(seed.path, tmp_path / "br_tiny_custom", languages=["tr"])
    assert verify_bundle(child.path) == []
    assert child.manifest.origin["trust_remote_code"] is True
    model = child.load_model()
    assert type(model).__name__ == "TinyCustomModel"
    assert type(model).__module__.startswith("transformers_modules.")
    loaded = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    assert _bit_exact({name: loaded[name] for name in _tensors(hf)}, _tensors(hf))
    tokenizer = child.load_tokenizer()
    assert tokenizer("hello").input_ids[0] == 1
    # what reads the config alone (plans, block checks, moe) takes the same code
    assert type(child.load_config()).__name__ == "TinyCustomConfig"
    assert learned_positions(child.path, 64) is False  # rotary, as the Llama it extends


def test_fsdp_ranks_that_read_no_weights_build_a_custom_code_seed(
    custom_seed: tuple[Path, Bundle],
) -> None:
    """Under --fsdp the ranks other than 0 build the model on the meta device from its config
    (model_setup.empty_model): with the bundle's own code, as rank 0's Bundle.load_model (before:
    transformers asked to run it, or refused, and rank 0 waited for them)."""
    from xelm_trainer.model_setup import empty_model

    _, seed = custom_seed
    empty = empty_model(seed, {})
    loaded = seed.load_model(verify=False, dtype=torch.float32)
    assert type(empty).__name__ == type(loaded).__name__ == "TinyCustomModel"
    assert type(empty).__module__.startswith("transformers_modules.")
    assert {p.device.type for p in empty.parameters()} == {"meta"}
    shapes = {name: p.shape for name, p in empty.named_parameters()}
    assert shapes == {name: p.shape for name, p in loaded.named_parameters()}


def _derived(seed: Bundle, out: Path, files: dict[str, bytes]) -> Bundle:
    """A bundle branched from ``seed`` (same lineage, so the same init record) whose files
    ``files`` were replaced: what anyone can write, with digests that match."""
    with write_bundle(
        out,
        role="expert",
        languages=["en"],
        parent=seed,
        step={"relation": "branch", "parents": [seed.ref]},
    ) as writer:
        for name, data in files.items():
            writer.write_bytes(name, data)
    return Bundle.open(out)


def test_a_recorded_opt_in_does_not_run_code_this_machine_never_trusted(
    custom_seed: tuple[Path, Bundle], tmp_path: Path
) -> None:
    """The init record is whatever a bundle's writer put there: code other than the code
    trusted at init never runs, however the bundle came here (an archive from elsewhere)."""
    _, seed = custom_seed
    marker = tmp_path / "code-ran"
    hostile = MODELING + f"\nopen({str(marker)!r}, 'w').close()\n"
    other = _derived(seed, tmp_path / "hostile", {"modeling_tiny_custom.py": hostile.encode()})
    assert other.manifest.origin["trust_remote_code"] is True and verify_bundle(other.path) == []
    for load in (other.load_model, other.load_tokenizer):
        with pytest.raises(FormatError, match="not trusted on this machine") as refused:
            load()
        assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_code_outside_the_bundle_is_not_run(
    custom_seed: tuple[Path, Bundle], tmp_path: Path
) -> None:
    """An auto_map naming another repository's code (transformers would fetch it from the
    Hub) is refused: only the bundle's own, trusted files run."""
    _, seed = custom_seed
    config = json.loads((seed.path / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "someone/else--modeling_x.Model"
    other = _derived(seed, tmp_path / "elsewhere", {"config.json": json.dumps(config).encode()})
    with pytest.raises(FormatError, match=r"names code outside the bundle \(someone/else--"):
        other.load_model()


# --- a Hub model's pickles: only when it has no safetensors ------------------------------------

COMMIT = "c" * 40
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")


@pytest.fixture
def hub_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The Hub refusing connections at once (a closed local port) and an empty Hugging Face
    cache of our own; yields the cache."""
    import huggingface_hub.constants

    from xelm_cli.common.hub import hub_unreachable

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("DISABLE_SAFETENSORS_CONVERSION", "1")  # transformers' conversion bot
    hub_unreachable.cache_clear()
    yield cache
    hub_unreachable.cache_clear()


def _cached_hub_model(cache: Path, repo: str, model_dir: Path, absent: list[str]) -> None:
    """``model_dir``'s files in the Hugging Face cache as Hub model ``repo`` at COMMIT, with
    the Hub's earlier answers that it has no file named as in ``absent`` (``.no_exist``)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name in absent:
        (root / ".no_exist" / COMMIT).mkdir(parents=True, exist_ok=True)
        (root / ".no_exist" / COMMIT / name).touch()


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_a_hub_models_pickles_are_named_by_the_file_read(
    hub_down: Path, tmp_path: Path, sharded: bool
) -> None:
    """The Hub said (the cache remembers) that it has no safetensors: its pickles are converted
    on request, and the record names the file read, the index for shards (not always
    pytorch_model.bin)."""
    hf = _llama(tmp_path / "hf")
    original = _tensors(hf)
    read = _pickle(hf, sharded)
    _cached_hub_model(hub_down, "xelm-test/pickles", hf, absent=list(SAFETENSORS))
    seed = init_from_hf(
        "xelm-test/pickles", tmp_path / "seed", languages=["en"], convert_pickle=True
    )
    assert seed.manifest.origin["converted"]["from"] == read
    assert seed.manifest.origin["hub"] is True
    assert _bit_exact(_tensors(seed.path), original)
    with pytest.raises(UsageError, match=rf"only pickled weights \({read}\); pass --convert"):
        init_from_hf("xelm-test/pickles", tmp_path / "refused", languages=["en"])


def test_a_hub_model_is_not_taken_for_pickles_when_the_hub_cannot_say(
    hub_down: Path, tmp_path: Path
) -> None:
    """Pickles in the cache, the Hub unreachable and no earlier answer about its safetensors:
    it may well have them, so nothing is converted (a network error is no missing file)."""
    hf = _llama(tmp_path / "hf")
    _pickle(hf, sharded=False)
    _cached_hub_model(hub_down, "xelm-test/unknown", hf, absent=[])
    with pytest.raises(UsageError, match="cannot tell whether xelm-test/unknown has safetensors"):
        init_from_hf("xelm-test/unknown", tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert not (tmp_path / "seed").exists()


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_a_hub_model_with_safetensors_is_read_from_them_with_their_dtype(
    hub_down: Path, tmp_path: Path, sharded: bool
) -> None:
    """Read from the cache as a full download leaves it (no word on the files it lacks: a
    sharded model's model.safetensors), in the dtype stored, not the config's."""
    save = {"max_shard_size": "4KB"} if sharded else {}
    hf = _llama(tmp_path / "hf", torch.bfloat16, **save)
    _config_says(hf, "float32")
    _cached_hub_model(hub_down, "xelm-test/bf16", hf, absent=[])
    seed = init_from_hf("xelm-test/bf16", tmp_path / "seed", languages=["en"], convert_pickle=True)
    assert "converted" not in seed.manifest.origin
    assert seed.manifest.origin["dtype"] == {"stored": "bfloat16", "config": "float32"}
    assert _bit_exact(_tensors(seed.path), _tensors(hf))
