"""Benchmark ``xelm data prepare --expert all`` against a run per expert (``--expert I``).

A TF-IDF allocation of k experts is fitted on the sample corpus; a byte-level BPE tokenizer is
trained on it. Then the same preparation is made twice, side by side on the same machine: k
runs of ``prepare(..., allocation=A, expert=I)``, and one ``prepare_experts(...)``. The input
is a local copy of the corpus laid out like ``allenai/c4`` (one configuration per language,
streamed through ``--config '{lang}'``: the path mC4 takes) unless ``--files``; ``--cap`` cuts
each language at a read limit, as at scale. Reported: each way's seconds, the ratio, the
documents each way read from the source (k times the corpus, or once), and whether every
expert's shards are the same bytes both ways.

Example: .venv/bin/python benchmarks/prepare_experts.py --langs en,de,tr,ar,ru,zh -k 4
"""

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from data_prepare import DEFAULT_DATA, _c4_like, _corpus

from xelm_cli.cluster.fitting import cluster
from xelm_cli.data.prepare import prepare, prepare_experts
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.sources import Batch, DatasetSource, FileSource, Stream
from xelm_cli.data.tokenizer import train_tokenizer_on_corpus
from xelm_cli.lang.codes import parse_language_list


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="sample data directory")
    parser.add_argument("--langs", default="en,de,tr,ar,ru,zh", help="languages, comma-separated")
    parser.add_argument("-k", type=int, default=4, help="experts of the TF-IDF allocation")
    parser.add_argument("--cap", help="read limit per language and expert, e.g. 200K")
    parser.add_argument("--files", action="store_true", help="read the corpus files, not a copy")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser.parse_args(argv)


class _Counted:
    """Counts the records every source yields (the reading the two ways differ in)."""

    def __init__(self) -> None:
        self.records = 0
        for kind in (FileSource, DatasetSource):
            real = kind.open

            def counted(source: Any, *args: Any, real: Any = real, **kwargs: Any) -> Stream:
                stream = real(source, *args, **kwargs)
                return Stream(self._counting(stream), lambda stream=stream: stream.position)

            kind.open = counted  # type: ignore[method-assign]

    def _counting(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for batch in batches:
            self.records += len(batch.texts)
            yield batch


def _files(shards: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(shards.iterdir())}


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    langs = parse_language_list(args.langs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = _corpus(args.data / "corpus" / "train", langs, root)
        tokenizer = root / "tok"
        train_tokenizer_on_corpus(corpus, tokenizer, vocab_size=4000, languages=langs)
        allocation = root / "alloc"
        cluster("tfidf", k=args.k, output=allocation, languages=langs, data=corpus)
        source: Path = corpus if args.files else _c4_like(corpus, langs, root)
        options: dict[str, Any] = {"allocation": allocation, "languages": langs}
        if not args.files:
            options["reading"] = SourceOptions(config="{lang}")
        if args.cap:
            options["token_caps"] = args.cap
        counted = _Counted()
        started = time.perf_counter()
        for i in range(args.k):
            prepare(source, tokenizer, root / f"one-{i}", expert=i, **options)
        apart_s, apart_records = time.perf_counter() - started, counted.records
        counted.records = 0
        started = time.perf_counter()
        prepare_experts(source, tokenizer, root / "all-{expert}", **options)
        together_s, together_records = time.perf_counter() - started, counted.records
        same = all(_files(root / f"one-{i}") == _files(root / f"all-{i}") for i in range(args.k))
    report = {
        "languages": langs,
        "k": args.k,
        "source": "corpus files" if args.files else "streamed (c4 layout)",
        "cap": args.cap,
        "per_expert_s": round(apart_s, 2),
        "all_experts_s": round(together_s, 2),
        "speedup": round(apart_s / together_s, 2),
        "records_read_per_expert_runs": apart_records,
        "records_read_all_experts": together_records,
        "same_shards": same,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.k} experts, {len(langs)} languages, {report['source']}"
        f"{', cap ' + args.cap if args.cap else ''}:\n"
        f"  --expert I, {args.k} runs: {apart_s:7.2f} s  ({apart_records:,} records read)\n"
        f"  --expert all, one run:  {together_s:7.2f} s  ({together_records:,} records read)\n"
        f"  speedup {apart_s / together_s:.2f}x; same shards: {'yes' if same else 'NO'}"
    )
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
