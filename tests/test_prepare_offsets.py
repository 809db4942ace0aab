"""``xelm data prepare``'s document offsets are not held in memory: at the end of pass 1 the
work directory writes each language's offsets to a file (a cumulative sum over its lengths, a
bounded chunk at a time) and maps it read-only; pass 2 links it into the shards. A file a
killed run left there is written afresh, never trusted, and one linked into shards already
written keeps its content."""

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from corpus_helpers import Counting, valid_texts

from xelm_cli.data import prepare_work
from xelm_cli.data.prepare import prepare
from xelm_cli.data.prepare_finish import Held, finish
from xelm_cli.data.prepare_work import DamagedWork, WorkDirectory, lengths_file, write_offsets
from xelm_cli.data.shards import Shards, offsets_file, tokens_file, write_manifest

KEY = "test key"
LENGTHS = [5, 1, 7, 3, 3, 9, 2, 4, 8, 6, 1]  # 11 documents, 49 tokens


def documents(lengths: list[int], first: int = 0) -> list[list[int]]:
    out, token = [], first
    for n in lengths:
        out.append(list(range(token, token + n)))
        token += n
    return out


def work_directory(out: Path) -> WorkDirectory:
    return WorkDirectory(out, KEY, "uint16", fresh=False, inputs={}, source={})


def read(out: Path, lengths: list[int] = LENGTHS, *, done: bool = True) -> WorkDirectory:
    """A work directory for ``out`` holding documents of ``lengths`` in en, checkpointed."""
    work = work_directory(out)
    work.appender("en").add(documents(lengths), nbytes=sum(lengths))
    work.checkpoint("corpus", {"line": len(lengths)}, done=done, now=True)
    return work


def expected(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype("<u8")


@pytest.mark.parametrize("chunk", [1, 3, len(LENGTHS), 1 << 20])
def test_close_maps_offsets_summed_a_chunk_at_a_time_from_a_file_in_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(prepare_work, "OFFSETS_CHUNK", chunk)
    work = read(tmp_path / "s")
    offsets = work.close()
    assert list(offsets) == ["en"]
    en = offsets["en"]
    assert isinstance(en, np.memmap)
    assert Path(en.filename) == work.path / offsets_file("en")
    assert not en.flags.writeable
    assert en.dtype == np.dtype("<u8") and en.shape == (len(LENGTHS) + 1,)
    np.testing.assert_array_equal(en, expected(LENGTHS))
    assert (work.path / offsets_file("en")).read_bytes() == expected(LENGTHS).tobytes()
    assert not list(work.path.glob("*.partial"))
    work.remove()


def test_sums_beyond_32_bits_carry_over_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_work, "OFFSETS_CHUNK", 2)
    lengths = np.array([3 << 31, 1, 5 << 31, 7, 1 << 40], dtype="<u8")
    source = tmp_path / "en.lengths.bin"
    source.write_bytes(lengths.tobytes())
    mapped = write_offsets(source, tmp_path / "en.offsets.bin", len(lengths))
    np.testing.assert_array_equal(mapped, np.concatenate([[0], np.cumsum(lengths)]))
    assert int(mapped[-1]) == (3 << 31) + 1 + (5 << 31) + 7 + (1 << 40)


def test_a_lengths_file_shorter_than_the_documents_is_damaged_work(tmp_path: Path) -> None:
    source = tmp_path / "en.lengths.bin"
    source.write_bytes(np.array([1, 2], dtype="<u8").tobytes())
    with pytest.raises(DamagedWork, match="shorter than its recorded size"):
        write_offsets(source, tmp_path / "en.offsets.bin", 3)


def test_a_stale_offsets_file_of_a_killed_run_is_written_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run left offsets of fewer documents, a partial temporary, and wrote more
    lengths after its checkpoint: the rerun's offsets are those of the recorded lengths."""
    monkeypatch.setattr(prepare_work, "OFFSETS_CHUNK", 4)
    out = tmp_path / "s"
    killed = read(out, LENGTHS[:6], done=False)
    killed.close()  # its offsets file: 6 documents
    with open(killed.path / lengths_file("en"), "ab") as f:  # written after its checkpoint
        f.write(np.array([100, 100], dtype="<u8").tobytes())
    with open(killed.path / tokens_file("en"), "ab") as f:
        f.write(np.zeros(200, dtype="<u2").tobytes())
    path = killed.path / offsets_file("en")
    assert len(np.fromfile(path, dtype="<u8")) == 7
    (killed.path / f".{offsets_file('en')}.partial").write_bytes(b"\xff" * 24)
    resumed = work_directory(out)
    assert resumed.resumed and resumed.counts["en"].documents == 6
    resumed.appender("en").add(documents(LENGTHS[6:]), nbytes=0)
    resumed.checkpoint("corpus", {"line": len(LENGTHS)}, done=True)
    path.write_bytes(np.arange(len(LENGTHS) + 1, dtype="<u8").tobytes())  # right size, wrong
    offsets = resumed.close()
    np.testing.assert_array_equal(offsets["en"], expected(LENGTHS))
    assert path.read_bytes() == expected(LENGTHS).tobytes()
    assert not list(resumed.path.glob("*.partial"))
    # the lengths and tokens files are cut back as before; the state is what it was
    assert (resumed.path / lengths_file("en")).stat().st_size == 8 * len(LENGTHS)
    state = json.loads((resumed.path / "state.json").read_text())
    assert state["languages"]["en"]["documents"] == len(LENGTHS)
    resumed.remove()


def test_an_offsets_file_resumed_over_is_not_checked_as_damage(tmp_path: Path) -> None:
    """Offsets are derived: a missing or truncated one does not discard the work."""
    out = tmp_path / "s"
    first = read(out, LENGTHS[:4], done=False)
    first.close()
    (first.path / offsets_file("en")).write_bytes(b"\x01")
    again = work_directory(out)
    assert again.resumed and again.counts["en"].documents == 4
    (again.path / offsets_file("en")).unlink()
    np.testing.assert_array_equal(again.close()["en"], expected(LENGTHS[:4]))
    again.remove()


ZERO = "sha256:" + "0" * 64
MINIMAL_FIELDS = {  # what a valid manifest holds besides its languages (spec/shards-v1.md 3)
    "dtype": "uint16",
    "tokenizer": {
        "fingerprint": ZERO,
        "vocab_size": 320,
        "special_tokens": {"bos": None, "eos": None, "pad": None},
    },
    "source": {"kind": "files", "path": "corpus", "digest": ZERO},
    "options": {
        "languages": None, "token_caps": None, "alpha": None, "tokens": None, "seed": 0,
        "split": None,
    },
}  # fmt: skip


def test_finish_links_the_offsets_file_and_a_rerun_leaves_finished_shards_whole(
    tmp_path: Path,
) -> None:
    out = tmp_path / "s"
    work = read(out)
    offsets = work.close()
    shards = tmp_path / "shards"
    shards.mkdir()
    held = Held.of(work, offsets, {"en": "en"})
    entries = finish(work, shards, held, {"en": 10**9}, seed=0, streamed=set())
    assert entries["en"]["documents"] == len(LENGTHS) and entries["en"]["budget"] is None
    linked = shards / offsets_file("en")
    assert os.path.samefile(linked, work.path / offsets_file("en"))
    assert linked.read_bytes() == expected(LENGTHS).tobytes()
    write_manifest(shards, MINIMAL_FIELDS | {"languages": entries})
    # sealed: read-only, and work's file is the same one
    # killed now: the rerun writes its offsets under another name, renamed over the link
    work.release()
    rerun = work_directory(out)
    (rerun.path / offsets_file("en")).chmod(0o444)
    assert rerun.resumed
    again = rerun.close()
    assert not os.path.samefile(linked, rerun.path / offsets_file("en"))
    assert linked.read_bytes() == expected(LENGTHS).tobytes()
    np.testing.assert_array_equal(again["en"], expected(LENGTHS))
    assert Shards.open(shards).verify() == []
    rerun.remove()


def test_finish_cuts_a_language_down_from_its_mapped_offsets(tmp_path: Path) -> None:
    work = read(tmp_path / "s")
    offsets = work.close()
    shards = tmp_path / "shards"
    shards.mkdir()
    held = Held.of(work, offsets, {"en": "en"})
    entries = finish(work, shards, held, {"en": 20}, seed=3, streamed=set())
    kept = np.fromfile(shards / offsets_file("en"), dtype="<u8")
    tokens = np.fromfile(shards / tokens_file("en"), dtype="<u2")
    assert not os.path.samefile(shards / offsets_file("en"), work.path / offsets_file("en"))
    assert entries["en"]["tokens"] == int(kept[-1]) == len(tokens) <= 20
    assert entries["en"]["documents"] == len(kept) - 1 > 0
    whole = documents(LENGTHS)
    pieces = [tokens[a:b].tolist() for a, b in itertools.pairwise(kept)]
    assert all(piece in whole for piece in pieces)  # whole documents, in corpus order
    assert [whole.index(p) for p in pieces] == sorted(whole.index(p) for p in pieces)
    work.remove()


def test_prepare_with_small_chunks_and_a_stale_offsets_file_matches_a_fresh_run(
    tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare_work, "CHECKPOINT_SECONDS", 0.0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "tr"):
        lines = [json.dumps({"text": t, "lang": lang}) for t in valid_texts(lang, 30)]
        (corpus / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fresh = prepare(corpus, tokenizer_dir, tmp_path / "fresh", batch_size=4).shards
    monkeypatch.setattr(prepare_work, "OFFSETS_CHUNK", 3)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, tokenizer_dir, out, batch_size=4, progress=Counting(3))
    work = tmp_path / ".s.prepare"
    (work / offsets_file("en")).write_bytes(np.arange(5, dtype="<u8").tobytes())
    resumed = prepare(corpus, tokenizer_dir, out, batch_size=4).shards
    assert resumed.verify() == []
    assert resumed.manifest["languages"] == fresh.manifest["languages"]
    for lang in ("en", "tr"):
        for name in (tokens_file(lang), offsets_file(lang)):
            assert (out / name).read_bytes() == (fresh.path / name).read_bytes()
    assert not work.exists()
