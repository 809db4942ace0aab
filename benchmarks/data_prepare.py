"""Benchmark ``xelm data prepare``: tokenisation throughput with 1 and 2 (or N) workers.

Trains a byte-level BPE tokenizer on a capped sample of the corpus (or takes ``--tokenizer``),
then runs ``prepare`` on the sample training corpus once per worker count, each in a fresh
subprocess: the Rust tokenizer fixes its thread pool at the first parallel call in a process,
so measuring several worker counts in one process would time the first count every time.

Reported per worker count: the end-to-end ``prepare`` time (reading, tokenising, writing,
hashing, manifest), its throughput in MB of input text (UTF-8) and tokens per second, the
tokenizer alone (``encode_batch_fast`` over the same texts held in memory: the practical
limit), and prepare's throughput as a share of that limit ("of limit"; goal >= 0.8).
``--streamed`` reads the same documents from a local copy laid out like ``allenai/c4`` (one
configuration per language, gzipped JSON lines) through the streaming path
(``--config '{lang}'``) instead of the corpus files. ``--repeat N`` measures each worker count
N times and reports the median (and the range of "of limit"); ``--before DIR`` (the root of an
earlier checkout, e.g. from ``git archive``) measures that version too, alternating with this
one on the same text, tokenizer and corpus, so that a before/after comparison on a shared
machine sees the same load.

Example: .venv/bin/python benchmarks/data_prepare.py --langs en,de,tr,ar --workers 1,2
Before/after: mkdir /tmp/old && git archive HEAD~3 xelm_cli spec | tar -x -C /tmp/old &&
    .venv/bin/python benchmarks/data_prepare.py --streamed --repeat 3 --before /tmp/old
"""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import DEFAULT_BATCH_SIZE, prepare
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import DatasetSource
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus
from xelm_cli.data.tokenizer_loading import load_tokenizer, tokenizer_threads
from xelm_cli.lang.codes import parse_language_list

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="sample data directory")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer or bundle (default: train one)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument(
        "--chars-per-language", type=int, default=300_000, help="tokenizer training sample"
    )
    parser.add_argument("--langs", help="only these languages, e.g. en,de,tr (default: all)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count (median)")
    parser.add_argument(
        "--before", type=Path, help="an earlier checkout's root: measure it too, alternating"
    )
    parser.add_argument(
        "--streamed", action="store_true", help="read a c4-like local dataset by streaming"
    )
    parser.add_argument(
        "--child",
        nargs=4,
        metavar=("CORPUS", "TOKENIZER", "WORKERS", "LANGS"),
        help=argparse.SUPPRESS,
    )  # one measurement, in a fresh process; LANGS "-" for a corpus of files
    return parser.parse_args(argv)


def _corpus(train: Path, langs: list[str] | None, root: Path) -> Path:
    """``train`` itself, or a directory linking only the files of ``langs``."""
    if not langs:
        return train
    subset = root / "corpus"
    subset.mkdir()
    for lang in langs:
        files = sorted(train.glob(f"{lang}.*"))
        if not files:
            raise SystemExit(f"no corpus file for {lang} in {train}")
        for path in files:
            (subset / path.name).symlink_to(path)
    return subset


def _c4_like(train: Path, langs: list[str], root: Path) -> Path:
    """The corpus files of ``langs`` rewritten as a dataset laid out like ``allenai/c4``."""
    repo = root / "c4"
    (repo / "multilingual").mkdir(parents=True)
    header = ["---", "configs:"]
    for lang in langs:
        name = f"multilingual/c4-{lang}.tfrecord-00000-of-00001.json.gz"
        with gzip.open(repo / name, "wt", encoding="utf-8", compresslevel=1) as f:
            for path in sorted(train.glob(f"{lang}.*")):
                for doc in iter_documents(path):
                    f.write(json.dumps({"text": doc.text}, ensure_ascii=False) + "\n")
        header += [f"- config_name: {lang}", "  data_files:", "  - split: train"]
        header += [f"    path: {name}"]
    (repo / "README.md").write_text("\n".join([*header, "---", ""]))
    return repo


def _texts(corpus: Path, langs: list[str] | None) -> list[str]:
    if langs is None:
        return [d.text for d in iter_documents(corpus) if d.text]
    texts = []
    for lang in langs:
        source = DatasetSource(str(corpus), config=lang, language=lang)
        for batch in source.open():
            texts += batch.texts
    return texts


def _measure(
    corpus: Path, tokenizer: Path, workers: int, batch_size: int, langs: list[str] | None
) -> dict[str, Any]:
    """One prepare run plus the tokenizer alone, in this (fresh) process."""
    texts = _texts(corpus, langs)
    text_bytes = sum(len(t.encode()) for t in texts)
    options: dict[str, Any] = (
        {"reading": SourceOptions(config="{lang}"), "languages": langs} if langs else {}
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        shards = prepare(corpus, tokenizer, Path(tmp) / "shards", workers=workers, **options)
        shards = shards.shards
        prepare_s = time.perf_counter() - start
        tokens = sum(s.tokens for s in shards.stats.values())
    backend = load_tokenizer(tokenizer).backend
    with tokenizer_threads(workers):
        start = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            backend.encode_batch_fast(texts[i : i + batch_size], add_special_tokens=False)
        encode_s = time.perf_counter() - start
    return {
        "workers": workers,
        "documents": len(texts),
        "text_mb": text_bytes / 1e6,
        "tokens": tokens,
        "prepare_s": prepare_s,
        "prepare_mb_per_s": text_bytes / 1e6 / prepare_s,
        "prepare_tokens_per_s": tokens / prepare_s,
        "encode_s": encode_s,
        "encode_mb_per_s": text_bytes / 1e6 / encode_s,
        "encode_tokens_per_s": tokens / encode_s,
        "of_limit": encode_s / prepare_s,  # prepare's throughput as a share of the tokenizer's
    }


def _in_subprocess(
    corpus: Path,
    tokenizer: Path,
    workers: int,
    batch_size: int,
    langs: list[str] | None,
    code: Path | None = None,
) -> Any:
    """One measurement in a fresh process, of this checkout's xelm or of the one at ``code``."""
    listed = ",".join(langs) if langs else "-"
    command = [sys.executable, __file__, "--child", str(corpus), str(tokenizer), str(workers)]
    command += [listed]
    command += ["--batch-size", str(batch_size)]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(":")
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout)


def _median(runs: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """The run with the median prepare time, with the spread of "of limit" over all runs."""
    ordered = sorted(runs, key=lambda r: r["prepare_s"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    limits = [r["of_limit"] for r in runs]
    middle.update(
        version=version,
        runs=len(runs),
        of_limit=statistics.median(limits),
        of_limit_min=min(limits),
        of_limit_max=max(limits),
    )
    return middle


def _table(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'version':>7} {'workers':>7} {'docs':>8} {'text MB':>8} {'tokens':>11} "
        f"{'prepare s':>9} {'MB/s':>6} {'tok/s':>10} {'encode s':>8} {'MB/s':>6} {'tok/s':>10} "
        f"{'of limit':>8} {'range':>11}"
    )
    rows = [
        f"{r.get('version', 'now'):>7} {r['workers']:>7} {r['documents']:>8,} "
        f"{r['text_mb']:>8.1f} {r['tokens']:>11,} {r['prepare_s']:>9.2f} "
        f"{r['prepare_mb_per_s']:>6.2f} {r['prepare_tokens_per_s']:>10,.0f} "
        f"{r['encode_s']:>8.2f} {r['encode_mb_per_s']:>6.2f} {r['encode_tokens_per_s']:>10,.0f} "
        f"{r['of_limit']:>8.2f} "
        f"{r.get('of_limit_min', r['of_limit']):>5.2f}-{r.get('of_limit_max', r['of_limit']):<5.2f}"
        for r in results
    ]
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.child:
        corpus, tokenizer, workers, listed = args.child
        langs_read = None if listed == "-" else listed.split(",")
        result = _measure(Path(corpus), Path(tokenizer), int(workers), args.batch_size, langs_read)
        print(json.dumps(result))
        return
    langs = parse_language_list(args.langs) if args.langs else None
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _corpus(args.data / "corpus" / "train", langs, Path(tmp))
        tokenizer, train_s = args.tokenizer, 0.0
        if tokenizer is None:
            start = time.perf_counter()
            tokenizer = train_tokenizer_on_corpus(
                corpus,
                Path(tmp) / "tok",
                vocab_size=args.vocab_size,
                chars_per_language=args.chars_per_language,
            ).path
            train_s = time.perf_counter() - start
        streamed = None
        if args.streamed:
            streamed = langs or sorted({p.name.split(".")[0] for p in corpus.iterdir()})
            corpus = _c4_like(corpus, streamed, Path(tmp))
        versions = [("now", None)] + ([("before", args.before.resolve())] if args.before else [])
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _ in range(args.repeat):  # alternating: every version sees the same machine load
            for w in workers:
                for version, code in versions:
                    run = _in_subprocess(corpus, tokenizer, w, args.batch_size, streamed, code)
                    runs.setdefault((version, w), []).append(run)
        results = [_median(runs[(v, w)], v) for w in workers for v, _ in reversed(versions)]
    if args.json:
        print(json.dumps({"tokenizer_train_s": train_s, "results": results}, indent=2))
        return
    if train_s:
        print(f"trained a {args.vocab_size}-token byte-level BPE in {train_s:.1f} s")
    how = "streamed from a c4-like local dataset" if args.streamed else "corpus files"
    print(f"corpus: {', '.join(langs) if langs else 'all languages'} (train split, {how})")
    print(_table(results))


if __name__ == "__main__":
    main()
