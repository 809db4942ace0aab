"""A data folder for `xelm demo --preset gpu` small enough to carry to a GPU machine that has no
network: of each language's training text only the documents the preset samples (the demo's
own sample, each document one record), and the evaluation files the demo reads as they are.

    .venv/bin/python benchmarks/gpu_demo_data.py [--data ../shared/data] [--preset gpu] -o DIR

`xelm demo --preset gpu --data DIR` then trains and evaluates on the same text as with the
whole sample data (benchmarks/gpu-prepare.sh writes DIR as gpu-data/demo). DIR is written
beside itself and renamed into place when whole; a --data without the demo's files is refused
before anything is written.
"""

import argparse
import json
import shutil
from pathlib import Path

import zstandard

from xelm_cli.demo.data import demo_files, missing_files
from xelm_cli.demo.documents import sampled_documents
from xelm_cli.demo.presets import NEW_LANGUAGES, PRESETS, TRAIN_LANGUAGES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GATE_TEXT = "eval/ntrex128"  # the MoE's gate reads it where every training language has it


def write_sample(source: Path, target: Path, language: str, document_bytes: int, size: int):
    """The demo's sample of ``source`` as a corpus file: one record a document, each its own
    source, so that the demo's grouping keeps them as they are."""
    documents = sampled_documents(source, language, document_bytes, size)
    lines = (
        json.dumps({"text": text, "lang": language, "source": f"sample-{i}"}, ensure_ascii=False)
        for i, text in enumerate(documents)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(zstandard.ZstdCompressor(level=19).compress("\n".join(lines).encode()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    missing = missing_files(args.data)
    if missing:
        raise SystemExit(
            f"gpu_demo_data.py: {args.data} lacks {missing[0]} and {len(missing) - 1} more of "
            "the demo's files; pass --data DIR"
        )
    partial = args.output.with_name(args.output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name in demo_files():
        source, target = args.data / name, partial / name
        if name.startswith("corpus/train/"):
            language = Path(name).name.removesuffix(".jsonl.zst")
            write_sample(source, target, language, preset.document_bytes, preset.corpus_bytes)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    for language in TRAIN_LANGUAGES:
        gate = args.data / GATE_TEXT / f"{language}.txt"
        if gate.is_file():
            (partial / GATE_TEXT).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(gate, partial / GATE_TEXT / gate.name)
    if args.output.exists():
        shutil.rmtree(args.output)
    partial.rename(args.output)
    held = sum(f.stat().st_size for f in args.output.rglob("*") if f.is_file())
    languages = len(TRAIN_LANGUAGES) + len(NEW_LANGUAGES)
    print(f"{args.output}: {held / 2**20:.1f} MiB for preset {args.preset}, {languages} languages")


if __name__ == "__main__":
    main()
