"""The demo's presets: model size, token budgets and evaluation sizes."""

import math
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
MOE_TOP_K = 2  # experts per token of the MoE built from the main X-ELM


@dataclass(frozen=True)
class PlannedRun:
    """One training run of the demo: its name (and log's), its step, tokens and the runs it
    waits for when runs train side by side."""

    name: str
    step: str
    tokens: int
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    """Everything that sizes a demo run; recorded in results.json."""

    name: str
    summary: str  # one phrase for --preset's help
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
    # The TF-IDF X-ELM routes the text before every n-th token (1: every prefix, as c-BTM
    # does); None routes each sentence once on its whole text.
    tfidf_stride: int | None = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def batch_tokens(self) -> int:
        """Tokens of one optimiser step of every training run."""
        return int(self.train.get("batch_size", 1)) * int(self.train.get("block_size", 1))

    @property
    def equal_budget(self) -> int:
        """B rounded down so that every expert of every X-ELM trains whole steps and the k
        experts together exactly what the dense model trains (``xelm plan`` rounds the same)."""
        unit = self.batch_tokens * math.lcm(*self.typology_ks, self.tfidf_k)
        return self.budget // unit * unit

    @property
    def main_k(self) -> int:
        """The experts of the X-ELM that is merged, adapted and evaluated in context."""
        return 4 if 4 in self.typology_ks else self.typology_ks[0]

    def seed_ranks(self, devices: int) -> int:
        """On how many of ``devices`` GPUs the seed trains at once (DDP) at the preset's
        batch: the most whose count divides ``batch_size`` (each rank a share of it)."""
        batch = int(self.train.get("batch_size", 1))
        return max((n for n in range(1, devices + 1) if batch % n == 0), default=1)

    def runs(self) -> list[PlannedRun]:
        """Every training run of the demo, by the step that trains it. A run of T tokens takes
        T // batch_tokens whole steps, as ``xelm train`` does. Side by side (``--devices``),
        every run but the seed's starts as soon as the runs in its ``after`` have ended."""
        whole = self.batch_tokens
        main = tuple(f"typology-k{self.main_k}-expert-{i}" for i in range(self.main_k))

        def run(step: str, name: str, tokens: int, after: tuple[str, ...] = ()) -> PlannedRun:
            return PlannedRun(name, step, tokens // whole * whole, after)

        planned = [run("seed", "seed", self.seed_tokens), run("dense", "dense", self.equal_budget)]
        for k in self.typology_ks:
            step = f"typology-k{k}"
            planned += [run(step, f"{step}-expert-{i}", self.equal_budget // k) for i in range(k)]
        step = f"tfidf-k{self.tfidf_k}"
        planned += [run(step, f"{step}-expert-{i}", self.equal_budget // self.tfidf_k)
                    for i in range(self.tfidf_k)]  # fmt: skip
        planned.append(run("moe-finetune", "moe-finetune", self.moe_tokens, main))
        for language in NEW_LANGUAGES:  # LAPT continues the dense model, HMR a main expert
            planned.append(run("adapt", f"lapt-{language}", self.adapt_tokens, ("dense",)))
            planned.append(run("adapt", f"hmr-{language}", self.adapt_tokens, main))
        return planned

    def training_runs(self) -> dict[str, list[int]]:
        """Tokens of each training run, by the step that trains it."""
        steps: dict[str, list[int]] = {}
        for planned in self.runs():
            steps.setdefault(planned.step, []).append(planned.tokens)
        return steps

    def training_tokens(self) -> int:
        return sum(sum(tokens) for tokens in self.training_runs().values())


PRESETS = {
    "smoke": Preset(
        name="smoke",
        summary="tiny, for tests: about 25 s alone on a 2-core CPU",
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
        summary="0.6M-parameter seed, 24M training tokens: 15 min alone on a 2-core CPU, longer "
        "when its cores are shared",
        # 512 positions, as tiny had when docs/demo-small ran: earlier run folders resume
        model={**NAMED_CONFIGS["tiny"], "max_position_embeddings": 512},
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
    # Sized to train in under half of its 8 minutes on one H100-class GPU: xelm train of this
    # seed at its 16 x 512 tokens a step ran at 148,447 tokens/s on an H200 (benchmarks/gpu.md),
    # so its 23.7M tokens take about 160 s. The whole demo has not yet finished inside one
    # device call (`benchmarks/gpu.sh --sections demo` measures it step by step).
    "gpu": Preset(
        name="gpu",
        summary="134M-parameter seed, 23.7M training tokens: sized for 8 min on one H100",
        model={**NAMED_CONFIGS["small"], "max_position_embeddings": 1024},
        vocab_size=32000,
        corpus_bytes=2_000_000,
        document_bytes=1500,
        seed_tokens=6_000_000,
        budget=3_000_000,
        typology_ks=(2, 4, 8),
        tfidf_k=4,
        tfidf_documents=1000,
        adapt_tokens=500_000,
        moe_tokens=1_000_000,
        eval_documents=500,
        icl_examples=100,
        icl_shots=4,
        icl_runs=1,
        train=dict(  # 8,192 tokens a step: B rounds to 2,949,120, 45 steps for each k = 8 expert
            block_size=512,
            batch_size=16,
            lr=6e-4,
            warmup_steps=10,
            log_every=25,
            # one checkpoint (the seed's, of its 732 steps; every other run is shorter): each is
            # 1.5 GB of weights and AdamW state, about 5 s to write on the 2-core machine
            checkpoint_every=500,
            save_dtype="bfloat16",  # what a GPU scores in: half the bytes to write and read
        ),
    ),
    # A GPU node's run (xelm demo --plan gives its tokens; the README its expected time).
    "gpu-large": Preset(
        name="gpu-large",
        summary="374M-parameter seed, 3.3B training tokens from mC4: a GPU node, hours",
        model=dict(
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=2048,
        ),
        vocab_size=32000,
        corpus_bytes=128_000_000,
        document_bytes=1500,
        seed_tokens=500_000_000,
        budget=500_000_000,
        typology_ks=(2, 4, 8),
        tfidf_k=4,
        tfidf_documents=4000,
        adapt_tokens=50_000_000,
        moe_tokens=100_000_000,
        eval_documents=1012,
        icl_examples=204,
        icl_shots=4,
        icl_runs=3,
        train=dict(
            block_size=1024,
            batch_size=32,
            lr=3e-4,
            warmup_steps=500,
            log_every=100,
            checkpoint_every=1000,
            save_dtype="bfloat16",
        ),
    ),
}


PRESET_HELP = "; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items())


def get_preset(name: str | Preset) -> Preset:
    """The preset of that name (a Preset is its own)."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
