"""Three tiny real experts for conformance checks: one per language of a small generated corpus,
sharing one BPE tokenizer, built in a temporary directory in seconds on a CPU."""

import json
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xelm_cli.plugin.contracts import (
    Document,
)

# A tiny generated corpus: three "languages", each its own small vocabulary, so that every
# expert (one per language) and a language router have something to tell apart.
WORDS = {
    "en": [
        "the",
        "a",
        "cat",
        "dog",
        "sees",
        "runs",
        "home",
        "green",
        "small",
        "river",
        "walks",
        "bird",
        "house",
        "old",
    ],
    "tr": [
        "kedi",
        "köpek",
        "ev",
        "yeşil",
        "küçük",
        "nehir",
        "kuş",
        "eski",
        "görüyor",
        "koşuyor",
        "yürüyor",
        "bir",
    ],
    "es": [
        "el",
        "la",
        "gato",
        "perro",
        "casa",
        "verde",
        "pequeño",
        "río",
        "pájaro",
        "viejo",
        "ve",
        "corre",
        "anda",
    ],
}
LANGUAGES = tuple(WORDS)
SENTENCES_PER_LANGUAGE = 120
VOCAB_SIZE = 300


def sentences(language: str, count: int, seed: int = 0) -> list[str]:
    """``count`` short generated sentences of ``language`` (deterministic)."""
    rng = random.Random(f"{language}-{seed}")
    words = WORDS[language]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 9))).capitalize() + "."
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------- tiny experts


@dataclass
class TinyExperts:
    """Three tiny real bundles (one per generated language) and text to route and score."""

    root: Path
    bundles: list[Any]
    documents: list[Document]

    @property
    def corpus(self) -> Path:
        """A corpus directory: ``{lang}.txt``, one held-out document per line."""
        return self.root / "corpus"

    @property
    def choice_task(self) -> Path:
        """A multiple-choice task in the ``jsonl`` layout: ``{lang}.jsonl``."""
        return self.root / "choices"


def build_tiny_experts(root: Path) -> TinyExperts:
    """Write the tokenizer, three tiny bundles, a held-out corpus and a multiple-choice task
    under ``root``; a few seconds on a CPU."""
    from xelm_cli.bundle.seed import init_from_config
    from xelm_cli.data.tokenizer import train_bpe_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    texts = [s for language in LANGUAGES for s in sentences(language, SENTENCES_PER_LANGUAGE)]
    tokenizer = train_bpe_tokenizer(texts, root / "tokenizer", vocab_size=VOCAB_SIZE)
    bundles = [
        init_from_config(
            "tiny", tokenizer, root / f"expert-{language}", languages=[language], seed=i
        )
        for i, language in enumerate(LANGUAGES)
    ]
    documents = []
    (root / "corpus").mkdir(exist_ok=True)
    (root / "choices").mkdir(exist_ok=True)
    for language in LANGUAGES:
        held_out = sentences(language, 4, seed=1)
        pairs = [" ".join(held_out[i : i + 2]) for i in (0, 2)]  # two sentences per document
        documents += [Document(text, language) for text in pairs]
        (root / "corpus" / f"{language}.txt").write_text("\n".join(pairs) + "\n")
        words = WORDS[language]
        records = [
            {"context": held_out[i], "choices": [words[i], words[i + 1]], "label": i % 2}
            for i in range(4)
        ]
        (root / "choices" / f"{language}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )
    return TinyExperts(root, bundles, documents)


@contextmanager
def tiny_experts() -> Iterator[TinyExperts]:
    """:func:`build_tiny_experts` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="xelm-check-") as tmp:
        yield build_tiny_experts(Path(tmp))
