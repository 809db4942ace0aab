"""Weights written by merge and moe are hashed as they are written: the digests in the manifest
are sha256_file's of the files, no written file is read back, and a file changed after it was
written is hashed again. And the average they write, computed in place a chunk at a time, is
still the hand computation."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from merge_helpers import mlp_experts
from safetensors.torch import load_file, save_file

from xelm_cli.bundle import merging, store
from xelm_cli.bundle.fingerprint import is_weight_file
from xelm_cli.bundle.manifest import FileEntry
from xelm_cli.bundle.merging import average_tensor, merge_average
from xelm_cli.bundle.moe import build_moe
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.bundle.tensor_stream import (
    INDEX_NAME,
    TensorInfo,
    TensorSource,
    dtype_code,
    plan_shards,
    write_sharded,
)
from xelm_cli.common.digest import sha256_file


def on_disk(directory: Path) -> dict[str, FileEntry]:
    return {p.name: FileEntry(sha256_file(p), p.stat().st_size) for p in directory.iterdir()}


def test_the_reported_digests_are_those_of_the_files(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.bf16": torch.randn(300, 70, generator=generator).to(torch.bfloat16),
        "b.f32": torch.randn(1000, generator=generator),
        "c.i64": torch.arange(12).reshape(3, 4),
        "d.bool": torch.tensor([True, False, True]),
        "e.scalar": torch.tensor(2.5),
        "f.empty": torch.zeros(0, 4),
    }
    layout = {
        name: TensorInfo("", dtype_code(t.dtype), tuple(t.shape)) for name, t in tensors.items()
    }
    planned = plan_shards(layout, max_bytes=42_000)  # a.bf16 (42,000 bytes) alone, the rest
    progressed: list[int] = []
    written = write_sharded(tmp_path, planned, tensors.__getitem__, progressed.append)
    assert len(written) == 3 and INDEX_NAME in written
    assert written == on_disk(tmp_path)
    assert sum(progressed) == sum(t.numel() * t.element_size() for t in tensors.values())
    read_back = {
        name: tensor
        for file in written
        if file != INDEX_NAME
        for name, tensor in load_file(str(tmp_path / file)).items()
    }
    assert read_back.keys() == tensors.keys()
    assert all(torch.equal(read_back[name], tensors[name]) for name in tensors)


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory, seed_bundle: Path) -> list[Bundle]:
    return mlp_experts(seed_bundle, tmp_path_factory.mktemp("digest"), ("en", "tr"))


def hashed_paths(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the bundle store hashes from now on."""
    hashed: list[Path] = []
    real = store.sha256_file

    def spy(path: Path, progress: store.Progress | None = None) -> str:
        hashed.append(path)
        return real(path, progress)

    monkeypatch.setattr(store, "sha256_file", spy)
    return hashed


@pytest.mark.parametrize("command", ["merge", "moe"])
def test_merge_and_moe_do_not_read_back_what_they_wrote(
    experts: list[Bundle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    hashed = hashed_paths(monkeypatch)
    paths = [b.path for b in experts]
    out = tmp_path / command
    made = merge_average(paths, out) if command == "merge" else build_moe(paths, out, top_k=1)
    expert_files = {b.path / name for b in experts for name in b.manifest.files}
    read_back = [path.name for path in hashed if path not in expert_files]  # not the check
    assert not [name for name in read_back if is_weight_file(name)]
    assert read_back == ([] if command == "merge" else ["config.json"])  # moe's own config
    monkeypatch.undo()
    assert verify_bundle(out) == []
    listed = made.manifest.files
    assert {name: listed[name] for name in listed if is_weight_file(name)} == {
        name: entry for name, entry in on_disk(out).items() if is_weight_file(name)
    }


def replace_with_changed_copy(path: Path) -> None:
    """A new inode with one byte of the last tensor changed (both exist until the rename)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    changed = path.with_name("changed.tmp")
    changed.write_bytes(data)
    os.replace(changed, path)


def rewrite_in_place(path: Path) -> None:
    """The same inode and size with one byte of the last tensor changed, the modification time
    one second later (as a later rewrite leaves it, whatever the clock's granularity)."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))


@pytest.mark.parametrize("change", [replace_with_changed_copy, rewrite_in_place])
def test_a_written_file_changed_before_the_manifest_is_hashed_again(
    seed_bundle: Path, tmp_path: Path, change: Callable[[Path], None]
) -> None:
    parent = Bundle.read(seed_bundle)
    source = TensorSource(seed_bundle)
    out = tmp_path / "out"
    step = {"relation": "branch", "parents": [parent.ref]}
    with write_bundle(out, role="dense", languages=["en"], parent=parent, step=step) as writer:
        writer.remove(is_weight_file)
        writer.record_written(write_sharded(writer.directory, source.tensors, source.get))
        change(writer.directory / "model.safetensors")
    assert verify_bundle(out) == []
    recorded = Bundle.read(out).manifest.files["model.safetensors"]
    assert recorded.sha256 == sha256_file(out / "model.safetensors")
    assert recorded.sha256 != parent.manifest.files["model.safetensors"].sha256


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_the_average_a_chunk_at_a_time_is_the_hand_computation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(merging, "WIDENED_CHUNK", 7)  # 50 elements: 7 chunks, the last short
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(5, 10, generator=generator).to(dtype) for _ in range(3)]
    for i, tensor in enumerate(inputs):
        (tmp_path / f"e{i}").mkdir()
        save_file({"w": tensor}, str(tmp_path / f"e{i}" / "model.safetensors"))
    sources = [TensorSource(tmp_path / f"e{i}") for i in range(3)]
    w = [0.5, 0.3, 0.2]
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    by_hand = inputs[0].to(wide) * w[0] + inputs[1].to(wide) * w[1] + inputs[2].to(wide) * w[2]
    got = average_tensor(sources, w, "w")
    assert got.dtype == dtype
    assert torch.equal(got, by_hand.to(dtype))
