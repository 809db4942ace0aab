"""Tokens read by ``xelm data prepare --tokens`` from streamed per-language datasets, with the
languages' sizes known before reading (``--sizes``: each language is read up to its share of
--tokens) and without them (each read up to the whole --tokens, then cut to its share), on a
local stand-in of mC4: a folder laid out like ``allenai/c4``'s multilingual part holding the
sample data's training documents of en, de, fr and sw, read as the Hub dataset would be. The
sizes are mC4's document counts (the shipped ``mc4`` recipe's for en, de and fr; it has none
for sw, 1.1M here).

Example: .venv/bin/python benchmarks/read_shares.py --data ../shared/data --tokens 20000
"""

import argparse
import sys
import tempfile
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the mirror's layout
from hub_fixtures import c4_like

from xelm_cli.data.corpus import iter_documents
from xelm_cli.data.prepare import prepare
from xelm_cli.data.source_plan import SourceOptions
from xelm_cli.data.tokenizer import train_bpe_tokenizer

LANGUAGES = ["en", "de", "fr", "sw"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--documents", type=int, default=2_000, help="of each language")
    parser.add_argument("--sizes", default="en=3.07B,de=397M,fr=332M,sw=1.1M")
    args = parser.parse_args()
    texts = {
        lang: [
            d.text
            for d in islice(
                iter_documents(args.data / "corpus" / "train", languages=[lang]), args.documents
            )
        ]
        for lang in LANGUAGES
    }
    print(f"--sizes {args.sizes}")
    with tempfile.TemporaryDirectory() as work:
        mirror = c4_like(Path(work) / "allenai" / "c4", texts)
        tokenizer = train_bpe_tokenizer(
            [t for lang in LANGUAGES for t in texts[lang]], Path(work) / "tok", vocab_size=4000
        )
        options = dict(languages=",".join(LANGUAGES), alpha=args.alpha, tokens=args.tokens)
        print(f"--tokens {args.tokens:,} --alpha {args.alpha}, languages {', '.join(LANGUAGES)}")
        print("reading          read     kept  per language read")
        for name, given in (("with --sizes", args.sizes), ("without", None)):
            result = prepare(
                mirror,
                tokenizer,
                Path(work) / name.replace(" ", "-"),
                reading=SourceOptions(config="{lang}"),
                sizes=given,
                **options,
            )
            entries = result.shards.manifest["languages"]
            read = {lang: e.get("source_tokens") or e["tokens"] for lang, e in entries.items()}
            kept = sum(e["tokens"] for e in entries.values())
            each = ", ".join(f"{lang} {n:,}" for lang, n in read.items())
            print(f"{name:<13} {sum(read.values()):>7,}  {kept:>7,}  {each}")


if __name__ == "__main__":
    main()
