"""Building the model a run trains (its attention, its loss) and the AdamW optimiser over it."""

from typing import Any

import torch

from xelm_cli.api import Bundle, XelmError, logits_are_output_layer

from .distributed import Ranks, Sharding
from .lean_loss import use_lean_loss
from .moe import configure_moe, is_moe
from .options import TrainOptions
from .resuming import follow_main
from .run_state import Inputs


def load_model(
    inputs: Inputs,
    device: torch.device,
    ranks: Ranks | None = None,
    sharding: Sharding | None = None,
) -> Any:
    """fp32 master weights on ``device``, with the chosen attention and, where it equals the
    plain loss, the chunked loss (lean_loss.py); on the ranks that do not read the weights
    (``Sharding.from_main``) the same model on the meta device."""
    options, ranks = inputs.options, ranks or Ranks()
    chosen: dict[str, Any] = {}
    if options.attention != "auto":
        chosen["attn_implementation"] = options.attention
    reads = sharding is None or sharding.reads_weights(ranks)
    if reads:
        model = inputs.bundle.load_model(verify=False, dtype=torch.float32, **chosen).to(device)
    else:
        model = empty_model(inputs.bundle, chosen)
    refusal: XelmError | None = None
    try:  # what check_moe_options could not tell from the config alone (no router found)
        configure_moe(model, options)
    except XelmError as exc:
        refusal = exc
    follow_main(refusal, ranks)  # every rank refuses alike: rank 0 says why, once
    if refusal is not None:
        raise refusal
    # the chunked loss has no load-balancing term: MoE models keep transformers' own loss
    if options.lean_loss and not is_moe(model):
        chunked = reads and loss_can_be_chunked(model, device)
        if sharding is not None and sharding.from_main:
            chunked = ranks.from_main(chunked)  # the others' models cannot run the probe
        if chunked:
            use_lean_loss(model)
    # from_pretrained returns eval mode, in which dropout and gradient checkpointing do nothing
    return model.train()


def empty_model(bundle: Bundle, chosen: dict[str, Any]) -> Any:
    """The bundle's model, as ``load_model`` builds it, with its parameters and buffers on the
    meta device: no weights are read."""
    from transformers import AutoModelForCausalLM

    # with the bundle's own code where Bundle.load_model runs it (made with --trust-remote-code)
    trusted = bundle.runs_trusted_code()
    config = bundle.load_config()
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, trust_remote_code=trusted, **chosen
        )


def loss_can_be_chunked(model: Any, device: torch.device) -> bool:
    """``logits_are_output_layer``, probed as training runs it (flash attention runs in half
    precision only)."""
    with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
        return logits_are_output_layer(model)


def fused_adamw(device: torch.device) -> bool:
    """torch's fused AdamW kernel: one launch per step for all parameters (CUDA)."""
    return device.type == "cuda"


def implementation(
    model: Any, device: torch.device, sharding: Sharding | None = None
) -> dict[str, Any]:
    """How the run computed: recorded in the training record (FSDP runs: its dtypes too)."""
    return {
        "attention": getattr(model.config, "_attn_implementation", None),
        "loss": "chunked" if getattr(model, "lean_loss", False) else "plain",
        "optimizer": "adamw-fused" if fused_adamw(device) else "adamw",
        "autocast": "bfloat16" if device.type == "cuda" else None,
        **({"fsdp": sharding.record()} if sharding is not None else {}),
    }


def make_optimizer(
    model: Any, options: TrainOptions, device: torch.device | None = None
) -> torch.optim.Optimizer:
    fused = {"fused": True} if device is not None and fused_adamw(device) else {}
    return torch.optim.AdamW(
        decay_groups(model, options.weight_decay),
        lr=options.lr,
        betas=(options.beta1, options.beta2),
        eps=options.eps,
        weight_decay=options.weight_decay,
        **fused,
    )


def decay_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """The parameters as AdamW groups: with weight decay, matrices decay and vectors (biases,
    norm scales) do not, as transformers' Trainer groups them; without, one group."""
    parameters = list(model.parameters())
    if not weight_decay:
        return [{"params": parameters}]
    groups = [
        {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
