"""The trainer's options: defaults (the paper's optimiser), parsing and the derived batch shape."""

from dataclasses import asdict, dataclass, fields
from typing import Any

from xelm_cli.api import UsageError

SCHEDULES = ("linear", "cosine", "constant")
SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class TrainOptions:
    """Every setting of a run; all of them are recorded in the training record."""

    block_size: int = 1024
    batch_size: int = 8  # sequences per micro-batch (of each rank under torchrun)
    global_batch_tokens: int | None = None  # default: one micro-batch per rank, no accumulation
    lr: float = 1e-4
    schedule: str = "linear"  # linear decay to 0 (the paper), cosine to 0, or constant
    warmup_steps: int = 0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-6
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only before the first and after the last step
    eval_blocks: int = 16
    checkpoint_every: int = 100
    keep_checkpoints: bool = False  # keep the last checkpoint once the bundle is written
    compile: bool = False
    gradient_checkpointing: bool = False
    device: str = "auto"
    role: str | None = None
    fsdp: bool = False  # shard parameters, gradients and optimiser state (torchrun only)
    save_dtype: str = "auto"  # dtype of the saved weights; auto: the one the bundle is stored in
    lean_loss: bool = True  # chunked output layer + cross-entropy where it equals the plain loss
    attention: str = "auto"  # attn_implementation; auto: transformers' choice (sdpa if supported)
    router_only: bool = False  # MoE bundles: train the routers only (moe.py)
    aux_loss: float | None = None  # MoE bundles: load-balancing loss weight (default: config's)
    world_size: int = 1  # ranks under torchrun (set by the trainer from WORLD_SIZE, not an option)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"unknown trainer option {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        options = cls(**{k: v for k, v in values.items() if v is not None})
        options.check()
        return options

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if self.save_dtype not in SAVE_DTYPES:
            raise UsageError(
                f"unknown --save-dtype {self.save_dtype!r}; choose one of {', '.join(SAVE_DTYPES)}"
            )
        if self.attention not in ATTENTION:
            raise UsageError(
                f"unknown --attention {self.attention!r}; choose one of {', '.join(ATTENTION)}"
            )
        for name in ("block_size", "batch_size", "log_every", "eval_blocks", "world_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.aux_loss is not None and not self.aux_loss >= 0:
            raise UsageError(f"--aux-loss must not be negative, not {self.aux_loss}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "weight_decay", "clip"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, not {self.lr}")
        if self.global_batch_tokens is not None and (
            self.global_batch_tokens < self.round_tokens
            or self.global_batch_tokens % self.round_tokens
        ):
            ranks = f" x {self.world_size} ranks" if self.world_size > 1 else ""
            raise UsageError(
                f"--global-batch {self.global_batch_tokens} must be a multiple of one micro-batch "
                f"(--batch-size x --block-size{ranks} = {self.round_tokens} tokens)"
            )

    @property
    def micro_batch_tokens(self) -> int:
        return self.batch_size * self.block_size

    @property
    def round_tokens(self) -> int:
        """Tokens of one micro-batch on every rank: one accumulation round."""
        return self.micro_batch_tokens * self.world_size

    @property
    def batch_tokens(self) -> int:
        """The global batch: micro-batch x accumulation x world size."""
        return self.global_batch_tokens or self.round_tokens

    @property
    def accumulation(self) -> int:
        return self.batch_tokens // self.round_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"global_batch_tokens": self.batch_tokens}
