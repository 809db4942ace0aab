"""The gpu demo preset's TF-IDF step without its training: fit, assignment, shards, branches.

    python benchmarks/demo_tfidf_step.py --run DIR [--data ../shared/data] [--repeats 2]
                                         [--json FILE]

Makes (once; reused from DIR) what the step starts from, as `xelm demo --preset gpu` makes it:
the preset's corpus (2 MB of text per language in ~1500-byte documents), its 32,000-token
tokenizer and shards, and a seed (the `tiny` model: the step only branches it). Then runs the
step's work before training (`Demo.tfidf_clusters`: fit the allocation on 1,000 documents a
language, assign every training document, prepare each expert's shards, branch the seed) in a
fresh folder --repeats times, and prints its seconds and those of the fit alone (the allocation,
timed separately with the same call). Run it with another checkout's code first on
PYTHONPATH to compare two versions on the same files.
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from demo_gpu_preset import DATA, scaled_preset

from xelm_cli.api import cluster
from xelm_cli.demo.pipeline import Demo
from xelm_cli.demo.presets import TRAIN_LANGUAGES


def demo_of(run: Path, data: Path) -> Demo:
    """The gpu preset with the tiny model and a thousandth of its training tokens (the seed is
    only branched here), in ``run``."""
    return Demo(scaled_preset("tiny", 0.001, batch_size=2), data, run, device="cpu")


def inputs(demo: Demo) -> tuple[Path, Path, Path]:
    """The corpus, tokenizer and seed of the step, made by the demo's own steps."""
    corpus, tokenizer, shards, seed = (
        demo.out / name for name in ("corpus", "tokenizer", "shards", "seed")
    )
    demo.step("corpus", lambda: demo.sample_corpus(corpus))
    demo.step("tokenizer", lambda: demo.make_tokenizer(corpus, tokenizer))
    demo.step("shards", lambda: demo.prepare(corpus, tokenizer, shards))
    demo.step("seed", lambda: demo.make_seed(tokenizer, shards, seed))
    return corpus, tokenizer, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="folder for the inputs (reused)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    demo = demo_of(args.run, args.data)
    corpus, tokenizer, seed = inputs(demo)
    step, fit = [], []
    root = args.run / f"tfidf-k{demo.preset.tfidf_k}"
    for _ in range(args.repeats):
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        demo.tfidf_clusters(seed, corpus, tokenizer)
        step.append(round(time.perf_counter() - started, 2))
        started = time.perf_counter()
        cluster("tfidf", k=demo.preset.tfidf_k, output=args.run / "fit-alone", overwrite=True,
                languages=TRAIN_LANGUAGES, data=corpus,
                max_docs_per_language=demo.preset.tfidf_documents)  # fmt: skip
        fit.append(round(time.perf_counter() - started, 2))
    report = {"step_seconds": step, "fit_seconds": fit, "load_average": os.getloadavg()[0]}
    print(f"TF-IDF step before training: {step} s; the fit alone: {fit} s "
          f"(1-minute load average at the end {report['load_average']:.1f})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
