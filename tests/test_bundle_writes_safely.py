"""Writers never change the bundles they read: no write through a hard link into a parent,
no parent file re-blessed after it changed, no other writer's temporary removed, and no
output refused after the work for a name the format cannot hold."""

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import flip_byte
from test_integrity import fresh_copy
from test_seed_import import _custom

import xelm_cli.common.atomic as atomic
from xelm_cli.bundle.branching import branch
from xelm_cli.bundle.seed import init_from_hf
from xelm_cli.bundle.store import Bundle, verify_bundle, write_bundle
from xelm_cli.common.atomic import atomic_directory
from xelm_cli.common.errors import IntegrityError, UsageError

CODE = ("configuration_tiny_custom.py", "modeling_tiny_custom.py")
WEIGHTS = "model.safetensors"
MODEL_FILES = (WEIGHTS, "config.json", "generation_config.json")


@pytest.fixture(scope="module")
def custom_code_seed(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A seed of a model that ships its own code (init --trust-remote-code)."""
    work = tmp_path_factory.mktemp("custom-code")
    hf = _custom(work / "hf_tiny_custom")
    return init_from_hf(hf, work / "seed", languages=["en"], trust_remote_code=True)


def _stats(bundle: Path, names: tuple[str, ...]) -> dict[str, tuple[int, int, bytes]]:
    return {
        name: (info.st_ino, info.st_mtime_ns, (bundle / name).read_bytes())
        for name in names
        for info in [(bundle / name).stat()]
    }


def _train_step(parent: Bundle) -> dict[str, Any]:
    return {"relation": "train", "parents": [parent.ref]}


def _save_as_the_trainer_does(parent: Bundle, model: Any, out: Path) -> Bundle:
    with write_bundle(
        out,
        role="expert",
        languages=["en"],
        parent=parent,
        step=_train_step(parent),
        inherit_weights=False,
    ) as writer:
        writer.save_model(model)
    assert writer.result is not None
    return writer.result


def test_saving_a_model_with_its_own_code_leaves_the_parents_code_alone(
    custom_code_seed: Bundle, tmp_path: Path
) -> None:
    """transformers copies a model's own code into the folder it saves to, opening an
    existing file there for writing: an inherited hard link must not be that file."""
    parent = Bundle.open(custom_code_seed.path)
    before = _stats(parent.path, CODE)
    child = _save_as_the_trainer_does(parent, parent.load_model(), tmp_path / "trained")
    assert _stats(parent.path, CODE) == before
    assert verify_bundle(parent.path) == [] and verify_bundle(child.path) == []
    for name in CODE:
        assert (child.path / name).stat().st_ino != (parent.path / name).stat().st_ino
    # what the save did not write is still shared with the parent
    shared = (child.path / "tokenizer.json").stat().st_ino
    assert shared == (parent.path / "tokenizer.json").stat().st_ino


def test_a_save_that_fails_midway_leaves_the_parent_intact(
    custom_code_seed: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while transformers copies the model's code: the parent's code file
    is not the one left truncated."""
    parent = Bundle.open(custom_code_seed.path)
    model = parent.load_model()

    def disk_full(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        with open(dst, "wb") as f:
            f.write(b"# half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)):
        _save_as_the_trainer_does(parent, model, tmp_path / "trained")
    monkeypatch.undo()
    assert verify_bundle(parent.path) == []
    assert not (tmp_path / "trained").exists()


@pytest.mark.parametrize("inherit_weights", [True, False], ids=["linked", "rewritten"])
def test_a_parent_changed_during_a_write_is_hashed_again(
    seed_bundle: Path, tmp_path: Path, inherit_weights: bool
) -> None:
    """A parent's weights changed in place (size and modification time kept) while a child
    is written from it (a training run): the next load of the parent hashes them again and
    refuses them, however the child got its weights."""
    parent = Bundle.open(fresh_copy(seed_bundle, tmp_path))  # verified, remembered
    with write_bundle(
        tmp_path / "child",
        role="expert",
        languages=["en"],
        parent=parent,
        step=_train_step(parent),
        inherit_weights=inherit_weights,
    ) as writer:
        flip_byte(parent.path / WEIGHTS, keep_mtime=True)
        if not inherit_weights:  # a stand-in for the trainer's save_model
            for name in MODEL_FILES:
                writer.write_bytes(name, (seed_bundle / name).read_bytes())
    with pytest.raises(IntegrityError, match=re.escape(WEIGHTS)):
        Bundle.open(parent.path)


def test_a_parent_changed_before_it_is_linked_is_hashed_again(
    seed_bundle: Path, tmp_path: Path
) -> None:
    parent = Bundle.open(fresh_copy(seed_bundle, tmp_path))
    flip_byte(parent.path / WEIGHTS, keep_mtime=True)
    with write_bundle(
        tmp_path / "child",
        role="expert",
        languages=["en"],
        parent=parent,
        step={"relation": "branch", "parents": [parent.ref]},
    ):
        pass
    with pytest.raises(IntegrityError, match=re.escape(WEIGHTS)):
        Bundle.open(parent.path)


def test_a_writer_leaves_the_temporary_of_a_target_named_like_its_own_aside(
    tmp_path: Path,
) -> None:
    """A writer of ``e.old`` is building when a writer of ``e`` (another process) starts:
    the second one's clean-up of dead writers' temporaries leaves the first one's alone."""
    with atomic_directory(tmp_path / "e.old") as building:
        (building / "config.json").write_text("{}")
        with atomic_directory(tmp_path / "e") as tmp:
            (tmp / "version").write_text("1")
        assert building.is_dir()
        (building / "model.safetensors").write_text("weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "e.old"]
    assert (tmp_path / "e.old" / "model.safetensors").read_text() == "weights"


def test_a_version_moved_aside_survives_the_writer_of_a_target_named_like_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an atomic exchange, a writer of ``e`` killed between its two renames leaves the
    previous ``e`` aside; a writer of ``e.old`` does not remove it, and the next writer of
    ``e`` puts it back."""
    target = tmp_path / "e"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("1")
    rename = os.rename

    def killed_before_the_new_version_is_in(src: Any, dst: Any) -> None:
        if Path(dst) == target:
            raise KeyboardInterrupt
        rename(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(atomic, "_exchange", lambda a, b: False)
        patch.setattr(os, "rename", killed_before_the_new_version_is_in)
        with pytest.raises(KeyboardInterrupt), atomic_directory(target, overwrite=True) as tmp:
            (tmp / "version").write_text("2")
    assert not target.exists()
    with atomic_directory(tmp_path / "e.old") as tmp:
        (tmp / "other").write_text("another output")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True):
        raise RuntimeError("the command failed")
    assert (target / "version").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "e.old"]


def test_an_earlier_versions_aside_is_kept_as_it_may_be_another_targets(tmp_path: Path) -> None:
    """Earlier versions moved a replaced ``out`` aside into ``.out.old.*.partial``, the name of
    what a writer of ``out.old`` builds in: a writer of ``out`` cannot tell and keeps it."""
    ambiguous = tmp_path / ".out.old.abcdefgh.partial"
    ambiguous.mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "file").write_bytes(b"done")
    assert ambiguous.is_dir()


def test_an_output_folder_with_a_long_name_is_written(seed_bundle: Path, tmp_path: Path) -> None:
    """A folder name the file system allows but the manifest's ``name`` does not (over 200
    characters) is written, its manifest named by the name's first 200 characters."""
    out = tmp_path / ("a" * 210)
    child = branch(seed_bundle, out, languages=["tr"])
    assert child.manifest.name == "a" * 200
    assert verify_bundle(out) == []


def test_a_name_too_long_is_refused_before_any_work(seed_bundle: Path, tmp_path: Path) -> None:
    parent = Bundle.read(seed_bundle)
    out = tmp_path / "child"
    worked = False
    step = {"relation": "branch", "parents": [parent.ref]}
    with (
        pytest.raises(UsageError, match="at most 200 characters"),
        write_bundle(
            out, role="expert", languages=["en"], parent=parent, name="n" * 201, step=step
        ),
    ):
        worked = True
    assert not worked and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
