"""Benchmark ``xelm data prepare`` at scale: peak memory against corpus size, and resuming.

1. Memory: the same languages prepared from a corpus and from one ``--scale`` times larger (the
   language files repeated), each in a fresh ``xelm data prepare`` process; peak resident memory
   (``ru_maxrss`` of the child) side by side. Goal: flat (the larger within 1.2x).
2. Resume: the larger corpus, read from its files and by streaming from a local dataset laid
   out like ``allenai/c4`` (``--config '{lang}'``): one uninterrupted run; then a fresh run
   killed (SIGKILL) at half that time and the same command run again. Reported for each: the
   time the second command took against the uninterrupted run, and whether the shards are
   identical.

Example: .venv/bin/python benchmarks/data_prepare_scale.py --langs sw,el --scale 10
"""

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus
from xelm_cli.lang.codes import parse_language_list

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
XELM = [sys.executable, "-m", "xelm_cli"]


def _repeated_corpus(train: Path, langs: list[str], times: int, out: Path) -> int:
    """``times`` copies of each language's documents as JSON lines; returns the text bytes."""
    out.mkdir(parents=True)
    total = 0
    for lang in langs:
        docs = [d.text for path in sorted(train.glob(f"{lang}.*")) for d in iter_documents(path)]
        lines = "".join(
            json.dumps({"text": t, "lang": lang}, ensure_ascii=False) + "\n" for t in docs
        )
        with open(out / f"{lang}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(times):
                f.write(lines)
        total += times * sum(len(t.encode()) for t in docs)
    return total


def _as_c4(corpus: Path, langs: list[str], out: Path) -> Path:
    (out / "multilingual").mkdir(parents=True)
    header = ["---", "configs:"]
    for lang in langs:
        name = f"multilingual/c4-{lang}.tfrecord-00000-of-00001.json.gz"
        with (
            open(corpus / f"{lang}.jsonl", encoding="utf-8") as src,
            gzip.open(out / name, "wt", encoding="utf-8", compresslevel=1) as dst,
        ):
            for line in src:
                dst.write(line)
        header += [
            f"- config_name: {lang}",
            "  data_files:",
            "  - split: train",
            f"    path: {name}",
        ]
    (out / "README.md").write_text("\n".join([*header, "---", ""]))
    return out


def _run(argv: list[str], kill_after: float | None = None) -> tuple[float, int]:
    """Seconds and peak RSS (KiB, this process alone) of one xelm process; killed (SIGKILL)
    after ``kill_after`` s."""
    start = time.perf_counter()
    process = subprocess.Popen([*XELM, *argv], stdout=subprocess.DEVNULL)
    deadline = None if kill_after is None else start + kill_after
    while True:
        pid, status, usage = os.wait4(process.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            os.kill(process.pid, signal.SIGKILL)
            deadline = None
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, with its usage
    elapsed = time.perf_counter() - start
    if kill_after is None and process.returncode != 0:
        raise SystemExit(f"xelm {' '.join(argv)} failed ({process.returncode})")
    return elapsed, usage.ru_maxrss


def _same_shards(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.bin"))
    return names == sorted(p.name for p in b.glob("*.bin")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--langs", default="sw,el", help="languages of the corpus")
    parser.add_argument("--scale", type=int, default=10, help="how much larger the big corpus is")
    args = parser.parse_args(argv)
    langs = parse_language_list(args.langs)
    train = args.data / "corpus" / "train"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small_bytes = _repeated_corpus(train, langs, 1, root / "small")
        large_bytes = _repeated_corpus(train, langs, args.scale, root / "large")
        tokenizer = train_tokenizer_on_corpus(
            root / "small", root / "tok", vocab_size=8000, chars_per_language=300_000
        ).path
        common = ["--tokenizer", str(tokenizer), "--workers", "1"]
        small_s, small_rss = _run(["data", "prepare", str(root / "small"), *common, "-o",
                                   str(root / "s-small")])  # fmt: skip
        large_s, large_rss = _run(["data", "prepare", str(root / "large"), *common, "-o",
                                   str(root / "s-large")])  # fmt: skip
        print(f"memory: {small_bytes / 1e6:.1f} MB of text -> peak RSS {small_rss / 1024:.0f} MiB "
              f"({small_s:.1f} s); {large_bytes / 1e6:.1f} MB ({args.scale}x) -> "
              f"{large_rss / 1024:.0f} MiB ({large_s:.1f} s); ratio "
              f"{large_rss / small_rss:.2f} (goal <= 1.2)")  # fmt: skip
        c4 = _as_c4(root / "large", langs, root / "c4")
        streamed = [str(c4), "--config", "{lang}", "--langs", ",".join(langs)]
        for how, source in (("corpus files", [str(root / "large")]), ("streamed", streamed)):
            print(f"resume ({how}): {_resume(root / how.replace(' ', '-'), [*source, *common])}")


def _resume(root: Path, options: list[str]) -> str:
    """An uninterrupted run, then one killed at half its time and the same command again."""
    root.mkdir()
    prepare = ["data", "prepare", *options]
    whole_s, _ = _run([*prepare, "-o", str(root / "whole")])
    killed_s, _ = _run([*prepare, "-o", str(root / "resumed")], kill_after=whole_s / 2)
    work = root / ".resumed.prepare" / "state.json"
    state = json.loads(work.read_text()) if work.exists() else {"languages": {}}
    kept = sum(c["tokens"] for c in state["languages"].values())
    resume_s, _ = _run([*prepare, "-o", str(root / "resumed")])
    languages = json.loads((root / "whole" / "shards.json").read_text())["languages"]
    total = sum(entry["tokens"] for entry in languages.values())
    return (
        f"uninterrupted run {whole_s:.1f} s; killed at {killed_s:.1f} s with {kept:,} of "
        f"{total:,} tokens on disk; the same command again took {resume_s:.1f} s = "
        f"{resume_s / whole_s:.2f} of starting over; shards identical: "
        f"{_same_shards(root / 'whole', root / 'resumed')}"
    )


if __name__ == "__main__":
    main()
