"""How a model frames a document with special tokens: what comes before it and after it.

A pretrained seed is trained, scored and prompted the way its own tokenizer frames text
(design principle 7). The framing is decided once, at ``bundle init``, recorded in the
manifest (``framing``, spec/bundle-v1.md section 3.5) and inherited by every derived bundle:

- ``start``: the token the tokenizer puts before text (``tokenizer(text)`` with special tokens:
  ``</s>`` for XGLM and OPT, ``<s>`` for Llama and Mistral, ``<bos>`` for Gemma, nothing for
  GPT-2, Qwen or BLOOM);
- ``end``: the token the tokenizer puts after text; when it adds none, the end-of-sequence
  token separates documents (GPT-2's ``<|endoftext|>``), unless the start token already is that
  token (XGLM: ``</s> doc1 </s> doc2`` is exactly the stream its authors trained on).

Training packs ``start doc end``; scoring and generation put ``prefix`` (the start token, or
the end token of the document before) in front of a document, so its first token is predicted
from the context it has in training. Bundles written before the field existed, and seeds
initialised from a named config, use ``start = bos``, ``end = eos`` (rule ``bos-eos``).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import read_json_object

RULE_TOKENIZER = "tokenizer"
RULE_BOS_EOS = "bos-eos"
RULE_OVERRIDE = "override"
_PROBE = "Hello world 123"
# why a framing has neither token, by the rule that chose it
_NEITHER = {
    RULE_TOKENIZER: "the tokenizer adds none around text and has no end-of-sequence token",
    RULE_BOS_EOS: "the tokenizer has no bos or eos token",
    RULE_OVERRIDE: "both were set to none",
}


@dataclass(frozen=True)
class Framing:
    start: int | None
    end: int | None
    rule: str

    @property
    def prefix(self) -> int:
        """The token that precedes a document in the packed stream (scoring's context)."""
        token = self.start if self.start is not None else self.end
        if token is None:
            raise UsageError(
                "the model frames documents with no start or end token; set one with "
                "`xelm bundle init --doc-start TOKEN` or `--doc-end TOKEN`"
            )
        return token

    def stops(self, tokenizer: Any, model: Path | None = None) -> set[int]:
        """Tokens that end a generated text: the end token, the tokenizer's eos and the eos
        ids of the generation_config.json in the directory ``model`` (``generation_eos``)."""
        stops = {t for t in (self.end, tokenizer.eos_token_id) if t is not None}
        return stops | (generation_eos(model) if model is not None else set())

    def record(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "rule": self.rule}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Framing":
        return cls(record.get("start"), record.get("end"), str(record.get("rule", "")))


def generation_eos(model: Path) -> set[int]:
    """The ids that end a generated text by the model's ``generation_config.json`` in the
    directory ``model`` (``eos_token_id``: an id or a list: Llama 3's ``<|eot_id|>`` beside its
    eos); none without the file."""
    path = model / "generation_config.json"
    if not path.is_file():
        return set()
    eos = read_json_object(path, "generation config").get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos]
    return {i for i in ids if isinstance(i, int) and not isinstance(i, bool)}


def bos_eos(tokenizer: Any) -> Framing:
    """``bos doc eos``: xelm's own seeds and bundles older than the ``framing`` field."""
    return Framing(tokenizer.bos_token_id, tokenizer.eos_token_id, RULE_BOS_EOS)


def from_tokenizer(tokenizer: Any) -> Framing:
    """What ``tokenizer`` adds around text (see the module's docstring for the rule)."""
    framed = list(tokenizer(_PROBE, add_special_tokens=True)["input_ids"])
    body = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    at = next(
        (i for i in range(len(framed) - len(body) + 1) if framed[i : i + len(body)] == body), None
    )
    if at is None or not body:
        raise UsageError(
            "cannot tell which special tokens the tokenizer adds around text; "
            "pass --doc-start and --doc-end to `xelm bundle init`"
        )
    before, after = framed[:at], framed[at + len(body) :]
    if len(before) > 1 or len(after) > 1:
        raise UsageError(
            f"the tokenizer adds {len(before)} tokens before and {len(after)} after text; "
            "choose one of each with --doc-start and --doc-end on `xelm bundle init`"
        )
    start = before[0] if before else None
    eos = tokenizer.eos_token_id
    end = after[0] if after else (eos if eos != start else None)
    return Framing(start, end, RULE_TOKENIZER)


def token_id(tokenizer: Any, value: str, option: str) -> int | None:
    """``none``, a token id, or a token as the vocabulary spells it (``</s>``)."""
    if value.lower() == "none":
        return None
    if value.isdigit():
        token = int(value)
        if token >= len(tokenizer):
            raise UsageError(f"{option} {value}: the vocabulary has {len(tokenizer)} tokens")
        return token
    token = tokenizer.convert_tokens_to_ids(value)
    if token is None or (token == tokenizer.unk_token_id and value != tokenizer.unk_token):
        raise UsageError(f"{option} {value!r} is not a token of the vocabulary; give its id")
    return int(token)


def overridden(
    framing: Framing, tokenizer: Any, start: str | None = None, end: str | None = None
) -> Framing:
    """``framing`` with the start and/or end token a user chose (``--doc-start/--doc-end``),
    refused when it has neither: nothing would separate the documents training packs, and
    scoring would have no token to put before a document."""
    if start is not None or end is not None:
        framing = Framing(
            framing.start if start is None else token_id(tokenizer, start, "--doc-start"),
            framing.end if end is None else token_id(tokenizer, end, "--doc-end"),
            RULE_OVERRIDE,
        )
    if framing.start is None and framing.end is None:
        raise UsageError(
            f"documents would have neither a start nor an end token "
            f"({_why_neither(framing.rule, start, end)}); "
            "name one with --doc-start TOKEN or --doc-end TOKEN on `xelm bundle init` (a token "
            "like '</s>', or its id)"
        )
    return framing


def _why_neither(rule: str, start: str | None, end: str | None) -> str:
    """Why a framing has neither token: the rule's reason, or which override left none."""
    if rule != RULE_OVERRIDE or (start is None) == (end is None):
        return _NEITHER[rule]
    option, other = ("--doc-start", "end") if start is not None else ("--doc-end", "start")
    return f"{option} was set to none and the tokenizer puts no {other} token around text"
