"""How purely TF-IDF clusters keep each language together, and what that depends on.

    python benchmarks/tfidf_purity.py [--data ../shared/data] [--quick] [--json FILE]

The demo's TF-IDF X-ELM fitted on single sample sentences spread most languages evenly over
its experts. This fits ``xelm cluster tfidf`` (k=4, the 16 demo training languages) under one
change at a time from the demo's old setting (single sentences, 1000 documents per language,
100 SVD dimensions, balanced assignment):

- document length: single records, or consecutive records of one language and one source
  joined to about 500 / 1500 / 3000 bytes (``xelm_cli.demo.documents.group_records``);
- fitting size: documents per language used to fit;
- SVD dimensions;
- assignment: balanced (equal clusters) or nearest centroid.

Purity of a language = share of its documents in its most common cluster (1.0: all in one;
0.25: spread evenly over 4); entropy = of that distribution, in bits (0 .. 2 for k=4). Each
setting is measured on its fitting documents, on 100 held-out documents per language of the
same shape, and on FLORES-200 devtest sentences (200 per language: the text the demo routes
at evaluation). Reported: the mean over languages and the worst language. Prints measured
numbers only.
"""

import argparse
import contextlib
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xelm_cli.api import Document, get_registry, read_allocation
from xelm_cli.cli import run
from xelm_cli.demo.documents import cluster_purity, grouped_documents, mean_purity
from xelm_cli.demo.pipeline import write_jsonl
from xelm_cli.demo.presets import TRAIN_LANGUAGES

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
K = 4
HELD_OUT = 100
FLORES = 200


def pools(data: Path, target: int) -> dict[str, tuple[list[str], list[str]]]:
    """Per language: (fitting pool, held-out documents), shuffled with a fixed seed."""
    result = {}
    for language in TRAIN_LANGUAGES:
        texts = grouped_documents(data / "corpus" / "train" / f"{language}.jsonl.zst", target)
        random.Random(f"purity-{language}").shuffle(texts)
        result[language] = (texts[HELD_OUT:], texts[:HELD_OUT])
    return result


def flores(data: Path) -> dict[str, list[str]]:
    root = data / "eval" / "flores200-devtest"
    return {
        lang: (root / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:FLORES]
        for lang in TRAIN_LANGUAGES
    }


def purity_of(model: Any, texts: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    documents = [Document(t, lang) for lang, ts in texts.items() for t in ts]
    clusters = model.assign(documents)
    return cluster_purity([str(d.language) for d in documents], clusters.tolist(), K)


def measure(
    pool: dict[str, tuple[list[str], list[str]]],
    sentences: dict[str, list[str]],
    per_language: int,
    components: int,
    assignment: str,
) -> dict[str, Any]:
    fitting = {lang: fit[:per_language] for lang, (fit, _) in pool.items()}
    held_out = {lang: held for lang, (_, held) in pool.items()}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for language, texts in fitting.items():
            write_jsonl(corpus / f"{language}.jsonl", texts, language)
        out = Path(tmp) / "allocation"
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = run(["cluster", "tfidf", str(corpus), "-k", str(K), "-o", str(out),
                        "--max-docs-per-language", "0", "--components", str(components),
                        "--assignment", assignment, "--json"])  # fmt: skip
        seconds = time.perf_counter() - started
        if code:
            raise SystemExit(f"xelm cluster tfidf failed ({code})")
        model = get_registry().get("clusterer", "tfidf").obj.assigner(read_allocation(out))
        scopes = {
            "fit": purity_of(model, fitting),
            "held-out": purity_of(model, held_out),
            "flores": purity_of(model, sentences),
        }
    row: dict[str, Any] = {
        "fit_documents": sum(len(t) for t in fitting.values()),
        "mean_bytes": round(
            statistics.mean(len(t.encode()) for ts in fitting.values() for t in ts)
        ),
        "fit_seconds": round(seconds, 1),
    }
    for scope, purity in scopes.items():
        worst = min(purity, key=lambda lang: purity[lang]["purity"])
        row[scope] = {
            "mean_purity": round(mean_purity(purity), 3),
            "mean_entropy_bits": round(
                statistics.mean(p["entropy_bits"] for p in purity.values()), 3
            ),
            "worst": f"{worst} {purity[worst]['purity']:.2f}",
            "languages": purity,
        }
    return row


def settings(quick: bool) -> list[tuple[str, int, int, int, str]]:
    """(what varies, target bytes, documents per language, SVD dimensions, assignment)."""
    base = (0, 1000, 100, "balanced")
    doc = (1500, 1000, 100, "balanced")
    rows = [("demo before (sentences)", *base)]
    rows += [("length", t, 1000, 100, "balanced") for t in (500, 1500)]
    if not quick:
        rows += [("length", 3000, 300, 100, "balanced")]
        rows += [("fitting size, sentences", 0, n, 100, "balanced") for n in (300, 3000)]
        rows += [("fitting size, 1500 B", 1500, n, 100, "balanced") for n in (100, 300)]
        rows += [("SVD dims, sentences", 0, 1000, d, "balanced") for d in (20, 300)]
        rows += [("SVD dims, 1500 B", 1500, 1000, d, "balanced") for d in (20, 300)]
        rows += [("assignment, sentences", 0, 1000, 100, "nearest")]
    rows += [("assignment, 1500 B", *doc[:3], "nearest")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="Only the length and assignment.")
    parser.add_argument("--json", type=Path, help="Also write every number to this JSON file.")
    args = parser.parse_args()
    sentences = flores(args.data)
    cache: dict[int, dict[str, tuple[list[str], list[str]]]] = {}
    rows = []
    for what, target, per_language, components, assignment in settings(args.quick):
        if target not in cache:
            cache[target] = pools(args.data, target)
        row = measure(cache[target], sentences, per_language, components, assignment)
        row.update(what=what, target_bytes=target, per_language=per_language,
                   components=components, assignment=assignment)  # fmt: skip
        rows.append(row)
        print(f"done: {what} {target} B, {per_language}/lang, {components} dims, {assignment}: "
              f"{row['fit_seconds']} s", file=sys.stderr)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"TF-IDF cluster purity, k={K}, {len(TRAIN_LANGUAGES)} languages (mean over languages; "
          "worst language); 2-core CPU machine\n")  # fmt: skip
    print(
        "| varies | text | docs/lang | SVD | assignment | mean B | fit s | purity fit | "
        "purity held-out | entropy held-out | worst held-out | purity FLORES | worst FLORES |"
    )
    print("|" + "---|" * 13)
    for r in rows:
        text = "records" if r["target_bytes"] == 0 else f"~{r['target_bytes']} B"
        print(f"| {r['what']} | {text} | {r['per_language']} | {r['components']} | "
              f"{r['assignment']} | {r['mean_bytes']} | {r['fit_seconds']} | "
              f"{r['fit']['mean_purity']:.3f} | {r['held-out']['mean_purity']:.3f} | "
              f"{r['held-out']['mean_entropy_bits']:.2f} | {r['held-out']['worst']} | "
              f"{r['flores']['mean_purity']:.3f} | {r['flores']['worst']} |")  # fmt: skip
    for r in (rows[0], rows[2]):
        print(
            f"\nPer language, held-out documents: {r['what']} "
            f"({'records' if r['target_bytes'] == 0 else str(r['target_bytes']) + ' B'})\n"
        )
        print("| language | shares over clusters | purity | entropy bits |\n|---|---|---|---|")
        for lang, p in r["held-out"]["languages"].items():
            shares = "/".join(f"{s:.2f}" for s in p["shares"])
            print(f"| {lang} | {shares} | {p['purity']:.2f} | {p['entropy_bits']:.2f} |")


if __name__ == "__main__":
    main()
