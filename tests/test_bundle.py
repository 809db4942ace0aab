"""Bundle format v1: init, golden fixture, versioning, integrity, branching."""

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, flip_byte
from transformers import AutoModelForCausalLM, AutoTokenizer

from xelm_cli.bundle.manifest import MANIFEST_NAME, content_digest
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.common.errors import FormatError, IntegrityError

GOLDEN = FIXTURES / "golden-v1"
GOLDEN_DIGEST = "sha256:0f6126770088ac5716952ce64a3a450020cd076bb2c481594061b862eb727d63"


def writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def rewrite_manifest(bundle: Path, edit, *, reseal: bool = True) -> None:
    """Edit xelm.json; with ``reseal`` recompute content_digest as a writer would."""
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    if reseal:
        data["content_digest"] = content_digest(data)
    path.write_text(json.dumps(data, indent=2))


def test_init_tiny_loads_with_transformers(seed_bundle: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(seed_bundle)
    tokenizer = AutoTokenizer.from_pretrained(seed_bundle)
    ids = tokenizer("Everyone has the right to life", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    bundle = Bundle.open(seed_bundle)
    assert bundle.manifest.role == "seed"
    assert bundle.languages == ["en", "tr", "ar", "ru"]
    assert bundle.manifest.relation == "init"
    assert bundle.manifest.origin == {"kind": "config", "name": "tiny", "seed": 0}
    assert set(bundle.manifest.files) == {p.name for p in seed_bundle.iterdir()} - {MANIFEST_NAME}
    assert verify_bundle(seed_bundle) == []


def test_model_card_has_hub_metadata(seed_bundle: Path) -> None:
    card = (seed_bundle / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front
    assert 'language:\n- "en"\n- "tr"\n- "ar"\n- "ru"' in front
    assert Bundle.read(seed_bundle).id in card


def test_golden_v1_bundle_keeps_loading() -> None:
    bundle = Bundle.open(GOLDEN)
    assert bundle.digest == GOLDEN_DIGEST
    assert verify_bundle(GOLDEN) == []
    model, info = bundle.load_model(output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = bundle.load_tokenizer()
    ids = tokenizer("each expert learns a new language", return_tensors="pt").input_ids
    assert ids.tolist() == [[14, 6, 21, 4, 24, 19]]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 6, 27)
    assert logits.sum().item() == pytest.approx(-1.58365, abs=1e-4)


def test_unknown_fields_are_ignored_and_newer_minor_accepted(tmp_path: Path) -> None:
    bundle_dir = writable_copy(GOLDEN, tmp_path / "b")

    def future(data: dict) -> None:
        data["format_version"] = "1.7.0"
        data["quantisation"] = {"scheme": "int4"}
        data["lineage"][0]["operator"] = "someone"
        data["files"]["model.safetensors"]["mediaType"] = "application/x-safetensors"

    rewrite_manifest(bundle_dir, future)
    assert verify_bundle(bundle_dir) == []
    assert Bundle.open(bundle_dir).manifest.format_version == "1.7.0"


def test_unknown_major_version_is_refused(tmp_path: Path) -> None:
    bundle_dir = writable_copy(GOLDEN, tmp_path / "b")
    rewrite_manifest(bundle_dir, lambda d: d.update(format_version="2.0.0"))
    with pytest.raises(FormatError, match=r"2\.0\.0 is not supported.*upgrade xelm"):
        Bundle.open(bundle_dir)
    assert "not supported" in verify_bundle(bundle_dir)[0]


def test_schema_problems_are_listed(tmp_path: Path) -> None:
    bundle_dir = writable_copy(GOLDEN, tmp_path / "b")
    rewrite_manifest(bundle_dir, lambda d: d.update(role="wizard", languages=["en", 7]))
    problems = verify_bundle(bundle_dir)
    assert any("languages/1" in p for p in problems)
    assert any("role" in p for p in problems)
    with pytest.raises(FormatError, match="manifest"):
        Bundle.open(bundle_dir)


def test_an_allocation_reference_names_its_clusterer_as_allocations_do(seed_bundle: Path) -> None:
    """The reference copies the allocation's ``clusterer``, so it has that name's form."""
    from xelm_cli.bundle.manifest import schema_problems

    data = Bundle.read(seed_bundle).manifest.to_dict()
    reference = {"clusterer": "typology", "expert": 0, "digest": "sha256:" + "0" * 64}
    assert schema_problems({**data, "allocation": reference}) == []
    problems = schema_problems({**data, "allocation": {**reference, "clusterer": "TF-IDF"}})
    assert len(problems) == 1 and problems[0].startswith("manifest allocation: ")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (flip_byte, "model.safetensors: sha256 does not match"),
        (truncate, "model.safetensors: size"),
        (Path.unlink, "model.safetensors: missing"),
    ],
)
def test_damaged_weights_detected_by_verify_and_load(tmp_path: Path, damage, expected) -> None:
    bundle_dir = writable_copy(GOLDEN, tmp_path / "b")
    damage(bundle_dir / "model.safetensors")
    assert any(expected in p for p in verify_bundle(bundle_dir))
    with pytest.raises(IntegrityError, match=expected):
        Bundle.open(bundle_dir)
    with pytest.raises(IntegrityError, match=expected):
        Bundle.read(bundle_dir).load_model()


def test_edited_manifest_detected(tmp_path: Path) -> None:
    bundle_dir = writable_copy(GOLDEN, tmp_path / "b")
    rewrite_manifest(bundle_dir, lambda d: d.update(languages=["en", "tr"]), reseal=False)
    assert any("edited after it was written" in p for p in verify_bundle(bundle_dir))
    with pytest.raises(IntegrityError, match="edited"):
        Bundle.read(bundle_dir).load_model()


def test_a_manifest_with_a_key_twice_is_refused(tmp_path: Path) -> None:
    """Python keeps the last of two equal keys, other JSON readers the first: the bundle would
    mean different things to each. The second "role" here is appended after the sealed one."""
    bundle_dir = writable_copy(GOLDEN, tmp_path / "b")
    path = bundle_dir / MANIFEST_NAME
    text = path.read_text().rstrip()
    path.write_text(text[:-1].rstrip() + ',\n  "role": "dense"\n}\n')
    problems = verify_bundle(bundle_dir)
    assert problems == [f"bundle manifest {path}: key 'role' appears twice in one object"]


def test_unlisted_and_tokenizer_tampering_detected(tmp_path: Path) -> None:
    bundle_dir = writable_copy(GOLDEN, tmp_path / "b")
    (bundle_dir / "extra.bin").write_bytes(b"\x80\x04 pickle?")
    assert "extra.bin: not listed in the manifest" in verify_bundle(bundle_dir)
    (bundle_dir / "extra.bin").unlink()
    flip_byte(bundle_dir / "tokenizer.json")
    with pytest.raises(IntegrityError, match=r"tokenizer\.json"):
        Bundle.read(bundle_dir).load_tokenizer()


def test_failed_write_leaves_nothing(tmp_path: Path, seed_bundle: Path) -> None:
    parent = Bundle.open(seed_bundle)
    out = tmp_path / "child"
    with (
        pytest.raises(RuntimeError),
        write_bundle(
            out,
            role="expert",
            languages=["en"],
            parent=parent,
            step={"relation": "branch", "parents": [parent.ref]},
        ),
    ):
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    assert verify_bundle(seed_bundle) == []


def test_existing_output_refused(tmp_path: Path, seed_bundle: Path) -> None:
    parent = Bundle.open(seed_bundle)
    out = tmp_path / "child"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    from xelm_cli.common.errors import UsageError

    with (
        pytest.raises(UsageError, match="is a folder but no bundle"),  # --force would not help
        write_bundle(
            out,
            role="expert",
            languages=["en"],
            parent=parent,
            step={"relation": "branch", "parents": [parent.ref]},
        ),
    ):
        pass
    assert (out / "keep.txt").read_text() == "mine"


def test_seeds_from_python_take_text_paths_and_languages(
    tmp_path: Path, tokenizer_dir: Path, seed_bundle: Path
) -> None:
    """As the commands take them: paths as text, languages as "en,tr" (normalised)."""
    from xelm_cli.bundle.seed import init_from_config, init_from_hf

    seed = init_from_config("tiny", str(tokenizer_dir), str(tmp_path / "a"), languages="eng,tr")
    assert seed.path == tmp_path / "a" and seed.languages == ["en", "tr"]
    hf_dir = tmp_path / "hf-model"
    AutoModelForCausalLM.from_pretrained(seed_bundle).save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(seed_bundle).save_pretrained(hf_dir)
    seed = init_from_hf(hf_dir, str(tmp_path / "b"), languages=["ara"])
    assert seed.languages == ["ar"] and seed.manifest.origin["model"] == str(hf_dir.resolve())


def test_init_from_local_hf_directory(tmp_path: Path, seed_bundle: Path) -> None:
    from xelm_cli.bundle.seed import init_from_hf

    hf_dir = tmp_path / "hf-model"
    AutoModelForCausalLM.from_pretrained(seed_bundle).save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(seed_bundle).save_pretrained(hf_dir)
    bundle = init_from_hf(str(hf_dir), tmp_path / "seed", languages=["en"])
    assert bundle.manifest.origin == {
        "kind": "hf",
        "model": str(hf_dir.resolve()),
        "hub": False,
        "revision": None,
    }
    seed = Bundle.read(seed_bundle)
    assert bundle.manifest.fingerprints == seed.manifest.fingerprints
    assert verify_bundle(bundle.path) == []
    assert "base_model" not in (bundle.path / "README.md").read_text()


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
    hub_unreachable.cache_clear()
    yield cache
    hub_unreachable.cache_clear()


def test_a_hub_model_without_the_hub_is_refused_at_once_or_read_from_the_cache(
    hub_down: Path, tmp_path: Path, seed_bundle: Path
) -> None:
    """Offline, a Hub id not in the cache is one line at once, and one in the cache is read
    from it, neither after the Hub client's retries (about 25 s)."""
    from xelm_cli.bundle.seed import init_from_hf
    from xelm_cli.common.errors import UsageError

    started = time.monotonic()
    with pytest.raises(UsageError, match=r"^cannot reach the Hugging Face Hub for org/tiny: "):
        init_from_hf("org/tiny", tmp_path / "refused", languages=["en"])
    assert time.monotonic() - started < 15 and not (tmp_path / "refused").exists()
    snapshot = hub_down / "models--org--tiny" / "snapshots" / ("a" * 40)
    AutoModelForCausalLM.from_pretrained(seed_bundle).save_pretrained(snapshot)
    AutoTokenizer.from_pretrained(seed_bundle).save_pretrained(snapshot)
    (hub_down / "models--org--tiny" / "refs").mkdir()
    (hub_down / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    started = time.monotonic()
    bundle = init_from_hf("org/tiny", tmp_path / "seed", languages=["en"])
    assert time.monotonic() - started < 15  # not through the retries
    assert bundle.manifest.origin["model"] == "org/tiny" and bundle.manifest.origin["hub"]
    assert bundle.manifest.fingerprints == Bundle.read(seed_bundle).manifest.fingerprints


def test_pickle_only_checkpoint_is_refused(tmp_path: Path, seed_bundle: Path) -> None:
    from xelm_cli.bundle.seed import init_from_hf
    from xelm_cli.common.errors import UsageError

    hf_dir = tmp_path / "bin-model"
    model = AutoModelForCausalLM.from_pretrained(seed_bundle)
    model.config.save_pretrained(hf_dir)
    torch.save(model.state_dict(), hf_dir / "pytorch_model.bin")
    with pytest.raises(UsageError, match="--convert-pickle"):
        init_from_hf(str(hf_dir), tmp_path / "seed", languages=["en"])
    assert not (tmp_path / "seed").exists()


def test_model_card_names_hub_base_model(seed_bundle: Path) -> None:
    from xelm_cli.bundle.modelcard import render_model_card

    manifest = Bundle.read(seed_bundle).manifest
    manifest.lineage = [
        {
            "relation": "init",
            "parents": [],
            "source": {"kind": "hf", "model": "facebook/xglm-564M", "hub": True},
        },
        {"relation": "branch", "parents": [{"id": "a" * 32, "digest": "sha256:" + "0" * 64}]},
    ]
    front = render_model_card(manifest).split("---")[1]
    assert 'base_model: "facebook/xglm-564M"' in front
    assert "base_model_relation: finetune" in front


def test_loading_and_saving_draw_no_transformers_bars(
    tmp_path: Path, seed_bundle: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh session (scoring turns them off for good)
    parent = Bundle.open(seed_bundle)
    model = parent.load_model()
    step = {"relation": "train", "parents": [parent.ref]}
    with write_bundle(
        tmp_path / "saved", role="seed", languages=parent.languages, parent=parent, step=step
    ) as writer:
        writer.save_model(model)
    from xelm_cli.bundle.seed import init_from_hf

    err = capfd.readouterr().err
    model.save_pretrained(tmp_path / "hf-model")  # transformers' own call: its bar shows
    AutoTokenizer.from_pretrained(seed_bundle).save_pretrained(tmp_path / "hf-model")
    capfd.readouterr()
    init_from_hf(str(tmp_path / "hf-model"), tmp_path / "from-hf", languages=["en"])
    err += capfd.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is given back


def test_written_languages_are_normalised(tmp_path: Path, seed_bundle: Path) -> None:
    from xelm_cli.bundle.branching import branch

    parent = Bundle.read(seed_bundle)
    step = {"relation": "branch", "parents": [parent.ref]}
    with write_bundle(
        tmp_path / "w", role="expert", languages=["tur", "ara", "tr"], parent=parent, step=step
    ) as writer:
        pass
    assert writer.result is not None and writer.result.languages == ["tr", "ar"]
    assert branch(seed_bundle, tmp_path / "b", languages=["tur", "ara"]).languages == ["tr", "ar"]


def test_a_manifest_with_a_number_json_does_not_have_is_refused(seed_bundle: Path) -> None:
    """Python writes and reads NaN and Infinity, JSON has neither: a manifest holding one (a
    diverged run's loss curve, say) is invalid, for its writer and its readers."""
    from xelm_cli.bundle.manifest import schema_problems

    data = Bundle.read(seed_bundle).manifest.to_dict()
    assert schema_problems(data) == []
    for bad in (float("nan"), float("inf")):
        problems = schema_problems({**data, "extra": {"curve": [[1, bad]]}})
        assert problems == [
            f"manifest (top level): number {bad} is not finite: JSON has no NaN or Infinity"
        ]
