"""How `score_sequences` batches the ensemble benchmark's text: one expert against the language
router's eight two-language groups.

    python benchmarks/router_batches.py [--docs 1012] [--batch-tokens 16384,2048]

The FLORES-200 devtest sentences of benchmarks/ensemble.py's 16 languages, tokenized by its
4,000-token BPE (trained as it trains it), in ``length_batches`` at each budget: all of them
at once (one expert's evaluation) and each expert's two languages apart (the language
router's); for each, the batches, the padded positions, the attention positions (the sum of
each batch's rows x width^2) and the batches under half the budget. Counts, not times: what a
batch costs depends on the device (benchmarks/gpu.md).
"""

import argparse
import tempfile
from pathlib import Path

from ensemble import DATA, LANGS  # the benchmark's data and languages (its folder is on the path)
from transformers import AutoTokenizer

from xelm_cli.data.tokenizer import train_bpe_tokenizer
from xelm_cli.ensemble.scoring import Segment, length_batches


def sentences(lang: str) -> list[str]:
    return (DATA / "eval" / "flores200-devtest" / f"{lang}.txt").read_text().splitlines()


def counts(sequences: list[list[int]], budget: int) -> list[int]:
    """[batches, padded positions, attention positions, batches under half the budget]."""
    batches = length_batches([Segment(i, 0, s, 0) for i, s in enumerate(sequences)], budget)
    widths = [(len(batch[0].tokens), len(batch)) for batch in batches]
    return [
        len(batches),
        sum(w * rows for w, rows in widths),
        sum(w * w * rows for w, rows in widths),
        sum(1 for w, rows in widths if w * rows < budget / 2),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1012, help="sentences a language")
    parser.add_argument("--batch-tokens", default="16384,2048", help="budgets, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        texts = [line for lang in LANGS for line in sentences(lang)[200:600]]
        train_bpe_tokenizer(texts, Path(work) / "tok", vocab_size=4000)
        tokenizer = AutoTokenizer.from_pretrained(Path(work) / "tok")
    docs = {
        lang: [[1, *ids] for ids in tokenizer(sentences(lang)[: args.docs],
                                               add_special_tokens=False).input_ids]
        for lang in LANGS
    }  # fmt: skip
    groups = [docs[LANGS[2 * e]] + docs[LANGS[2 * e + 1]] for e in range(len(LANGS) // 2)]
    print(f"{'budget':>7} {'system':<16} {'batches':>8} {'padded':>10} {'attention':>12} "
          f"{'small':>6}")  # fmt: skip
    for budget in (int(b) for b in args.batch_tokens.split(",")):
        one = counts([s for lang in LANGS for s in docs[lang]], budget)
        router = [sum(column) for column in zip(*(counts(g, budget) for g in groups), strict=True)]
        for name, row in (("one expert", one), ("language router", router)):
            print(f"{budget:>7} {name:<16} {row[0]:>8} {row[1]:>10,} {row[2]:>12,} {row[3]:>6}")
        print(f"{budget:>7} {'router / one':<16} {router[0] / one[0]:>8.3f} "
              f"{router[1] / one[1]:>10.3f} {router[2] / one[2]:>12.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
