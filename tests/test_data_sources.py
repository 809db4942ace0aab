"""Where documents come from, and how they are labelled and encoded, in ``xelm data prepare``:
the same rows give the same documents whatever form they arrive in."""

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from xelm_cli.data.prepare import prepare
from xelm_cli.data.shards import Shards

TEXTS = [
    "All human beings are born free and equal in dignity and rights.",
    "They are endowed with reason and conscience.",
    "Everyone has the right to life, liberty and security of person.",
]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def documents(shards: Shards, lang: str) -> list[list[int]]:
    return [ids.tolist() for ids in shards.iter_documents([lang])]


@pytest.mark.parametrize(
    "stored",
    [
        {"truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst",
                        "stride": 0}},
        {"padding": {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                     "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}},
    ],
    ids=["truncation", "padding"],
)  # fmt: skip
def test_truncation_or_padding_stored_in_the_tokenizer_is_not_applied(
    tokenizer_dir: Path, tmp_path: Path, stored: dict[str, object]
) -> None:
    tokenizer = shutil.copytree(tokenizer_dir, tmp_path / "tok")
    saved = json.loads((tokenizer / "tokenizer.json").read_text())
    (tokenizer / "tokenizer.json").write_text(json.dumps({**saved, **stored}))
    corpus = write_jsonl(tmp_path / "corpus" / "en.jsonl", [{"text": t} for t in TEXTS])
    shards = prepare(corpus.parent, tokenizer, tmp_path / "shards").shards
    plain = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    expected = [plain.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert min(len(ids) for ids in expected) > 4  # long enough to be cut, of unequal lengths
    assert len({len(ids) for ids in expected}) > 1
    assert documents(shards, "en") == expected
