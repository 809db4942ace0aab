"""The demo's presets: model size, token budgets and evaluation sizes."""

from dataclasses import asdict, dataclass, field
from typing import Any

from xelm_cli.bundle.seed import NAMED_CONFIGS
from xelm_cli.common.errors import UsageError

TRAIN_LANGUAGES = (
    "ar",
    "bg",
    "de",
    "el",
    "en",
    "es",
    "fr",
    "hi",
    "ja",
    "ko",
    "ru",
    "sw",
    "tr",
    "ur",
    "vi",
    "zh",
)
NEW_LANGUAGES = {"pl": "ru", "sv": "en"}  # new language -> donor (xelm-method.md section 8)


@dataclass(frozen=True)
class Preset:
    """Everything that sizes a demo run; recorded in results.json."""

    name: str
    model: dict[str, int]  # LlamaConfig sizes (the vocabulary comes from the tokenizer)
    vocab_size: int
    corpus_bytes: int  # training text per language taken from the corpus
    document_bytes: int  # consecutive records of one source joined to this size (0: records)
    seed_tokens: int  # pre-training of the seed on all training languages
    budget: int  # B: the dense model's continued training; each X-ELM splits it over k experts
    typology_ks: tuple[int, ...]
    tfidf_k: int
    tfidf_documents: int  # documents per language the TF-IDF clusterer is fitted on
    adapt_tokens: int  # HMR and LAPT, per new language
    moe_tokens: int  # fine-tune of the MoE built from the main X-ELM's experts (all weights)
    eval_documents: int  # FLORES-200 devtest sentences per language
    icl_examples: int  # SIB-200 test examples per language
    icl_shots: int
    icl_runs: int
    train: dict[str, Any] = field(default_factory=dict)  # trainer options
    moe_aux_loss: float = 0.01  # load-balancing loss coefficient of the MoE fine-tune

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    "smoke": Preset(
        name="smoke",
        model={**NAMED_CONFIGS["tiny"], "max_position_embeddings": 256},
        vocab_size=1000,
        corpus_bytes=40_000,
        document_bytes=500,
        seed_tokens=32_768,
        budget=32_768,
        typology_ks=(4,),
        tfidf_k=4,
        tfidf_documents=120,
        adapt_tokens=8_192,
        moe_tokens=8_192,
        eval_documents=8,
        icl_examples=8,
        icl_shots=1,
        icl_runs=1,
        train=dict(
            block_size=64,
            batch_size=8,
            lr=3e-3,
            warmup_steps=4,
            log_every=20,
            checkpoint_every=1000,
        ),
    ),
    "small": Preset(
        name="small",
        model=dict(NAMED_CONFIGS["tiny"]),
        vocab_size=4000,
        corpus_bytes=1_500_000,
        document_bytes=1500,
        seed_tokens=2_000_000,
        budget=4_000_000,
        typology_ks=(2, 4, 8),
        tfidf_k=4,
        tfidf_documents=1000,
        adapt_tokens=500_000,
        moe_tokens=400_000,
        eval_documents=200,
        icl_examples=100,
        icl_shots=4,
        icl_runs=3,
        train=dict(
            block_size=128,
            batch_size=16,
            lr=5e-3,
            warmup_steps=20,
            log_every=50,
            checkpoint_every=500,
        ),
    ),
    "gpu": Preset(
        name="gpu",
        model={**NAMED_CONFIGS["small"], "max_position_embeddings": 1024},
        vocab_size=32000,
        corpus_bytes=12_000_000,
        document_bytes=1500,
        seed_tokens=40_000_000,
        budget=80_000_000,
        typology_ks=(2, 4, 8),
        tfidf_k=4,
        tfidf_documents=4000,
        adapt_tokens=10_000_000,
        moe_tokens=8_000_000,
        eval_documents=1012,
        icl_examples=204,
        icl_shots=4,
        icl_runs=5,
        train=dict(
            block_size=512,
            batch_size=32,
            lr=6e-4,
            warmup_steps=200,
            log_every=50,
            checkpoint_every=500,
        ),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
