"""The trainer's options: its declaration (defaults: the paper's optimiser; the help of every
``xelm train`` flag), parsing and the derived batch shape."""

import math
from dataclasses import asdict, dataclass
from typing import Any

from xelm_cli.api import Bundle, UsageError, option, parse_options, parse_token_count

SCHEDULES = ("linear", "cosine", "constant")
SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
LABEL = "trainer 'causal-lm'"


@dataclass(frozen=True)
class TrainOptions:
    """Every setting of a run; all of them are recorded in the training record. The
    declaration of the ``causal-lm`` trainer: ``xelm train`` derives its flags from it."""

    block_size: int = option(1024, help="Tokens per packed block.")
    batch_size: int = option(8, help="Blocks per micro-batch (of each rank under torchrun).")
    global_batch_tokens: int | None = option(
        None,
        help="Tokens per optimiser step, a multiple of one micro-batch (--batch-size x "
        "--block-size, 8 x 1024 = 8192 by default), e.g. 65536 or 1.024M (gradient "
        "accumulation reaches it; default: one micro-batch per rank, no accumulation).",
        flag="--global-batch",
        parse=parse_token_count,
    )
    lr: float = option(1e-4, help="Peak learning rate.")
    schedule: str = option(
        "linear", help="linear (decay to 0, the paper's), cosine (to 0) or constant.",
        choices=SCHEDULES,
    )  # fmt: skip
    warmup_steps: int = option(0, help="Linear warm-up steps.")
    beta1: float = option(0.9, help="AdamW beta1.")
    beta2: float = option(0.95, help="AdamW beta2.")
    eps: float = option(1e-6, help="AdamW epsilon.")
    weight_decay: float = option(
        0.0, help="AdamW weight decay, of weight matrices (not of biases and norm scales)."
    )
    clip: float = option(1.0, help="Gradient-norm clipping (0: none; the norm is still logged).")
    seed: int = option(0, help="Seed of the data order and the RNGs.")
    log_every: int = option(10, help="Loss-curve point every N steps.")
    eval_every: int = option(
        0, help="Validate every N steps (0: before the first and after the last)."
    )
    eval_blocks: int = option(16, help="Held-out blocks per validation.")
    checkpoint_every: int = option(100, help="Checkpoint every N steps (before the last).")
    keep_checkpoints: bool = option(
        False,
        help="Checkpoint after the last step too and keep it (in .OUT.ckpt/) after writing "
        "the bundle, to train on from it.",
    )
    compile: bool = option(False, help="Use torch.compile.")
    gradient_checkpointing: bool = option(
        False, help="Activation checkpointing (less memory, more compute)."
    )
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")
    role: str | None = option(
        None,
        help="Role of the new bundle (default: the parent's; a trained seed is dense).",
        choices=Bundle.ROLES,
    )
    fsdp: bool = option(False, help="Under torchrun: shard the model with FSDP instead of DDP.")
    save_dtype: str = option(
        "auto",
        help="dtype of the saved weights: auto (the bundle's own, e.g. a bf16 seed stays bf16; "
        "training keeps fp32 master weights), float32, bfloat16 or float16.",
        choices=SAVE_DTYPES,
    )
    lean_loss: bool = option(
        True,
        help="Output layer and cross-entropy in chunks of tokens: never the whole batch's "
        "logits (models whose logits are more than the output layer keep the plain loss).",
    )
    attention: str = option(
        "auto",
        help="attn_implementation: auto (transformers' choice, sdpa where supported), sdpa, "
        "eager, flash_attention_2, ...",
        choices=ATTENTION,
    )
    router_only: bool = option(False, help="MoE bundles (xelm bundle moe): train only the routers.")
    aux_loss: float | None = option(
        None,
        help="MoE bundles: weight of the load-balancing loss (default: the config's "
        "router_aux_loss_coef); it is logged as aux_loss.",
    )
    world_size: int = option(
        1, help="Ranks under torchrun (set by the trainer from WORLD_SIZE).", cli=False
    )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainOptions":
        """The options of ``values`` (text or Python values; None: the default), checked
        against the declaration, then against each other (``check``)."""
        given = {k: v for k, v in values.items() if v is not None and k != "world_size"}
        parsed = parse_options(cls, given, label=LABEL, via="--train-arg")
        if values.get("world_size") is not None:
            parsed["world_size"] = int(values["world_size"])
        options = cls(**parsed)
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
        if self.role is not None and self.role not in Bundle.ROLES:
            raise UsageError(
                f"unknown --role {self.role!r}; choose one of {', '.join(Bundle.ROLES)}"
            )
        for name in ("block_size", "batch_size", "log_every", "eval_blocks", "world_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.aux_loss is not None and not (math.isfinite(self.aux_loss) and self.aux_loss >= 0):
            raise UsageError(f"--aux-loss must be a number of 0 or more, not {self.aux_loss}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative")
        self.check_optimiser()
        if self.global_batch_tokens is not None and (
            self.global_batch_tokens < self.round_tokens
            or self.global_batch_tokens % self.round_tokens
        ):
            ranks = f" x {self.world_size} ranks" if self.world_size > 1 else ""
            fits = batch_size_for(
                self.global_batch_tokens, self.block_size, self.world_size, self.batch_size
            )
            hint = f"; --batch-size {fits} makes one" if fits is not None else ""
            blocks, unshared = divmod(self.global_batch_tokens, self.block_size)
            if fits is None and self.world_size > 1 and not unshared:
                hint = (
                    f"; its {blocks:,} blocks of --block-size {self.block_size:,} cannot be "
                    f"shared by {self.world_size} ranks: run on a number of ranks that divides "
                    f"{blocks:,}"
                )
            raise UsageError(
                f"--global-batch {self.global_batch_tokens:,} must be a multiple of one "
                f"micro-batch (--batch-size x --block-size{ranks} = {self.round_tokens:,} "
                f"tokens){hint}"
            )

    def check_optimiser(self) -> None:
        """AdamW's and the clipping's numbers: finite and in range (a NaN compares false with
        everything, so each test is written to fail for it), before the model loads."""
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be positive and finite, not {self.lr}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:  # also false for NaN
                raise UsageError(f"--{name} must be at least 0 and below 1, not {value}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise UsageError(f"--eps must be positive and finite, not {self.eps}")
        for name in ("weight_decay", "clip"):  # clip 0: no clipping (the norm is still logged)
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                flag = f"--{name.replace('_', '-')}"
                raise UsageError(f"{flag} must be a finite number of 0 or more, not {value}")

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


def batch_size_for(global_tokens: int, block_size: int, world: int, at_most: int) -> int | None:
    """The largest ``--batch-size`` of at most ``at_most`` blocks (1 at least) whose micro-batch
    on ``world`` ranks divides ``global_tokens``: None when no batch size does (the global
    batch is not a whole number of blocks on every rank)."""
    if global_tokens % (block_size * world):
        return None
    per_rank = global_tokens // (block_size * world)  # blocks of one step on each rank
    return max(b for b in range(1, min(per_rank, max(at_most, 1)) + 1) if per_rank % b == 0)
