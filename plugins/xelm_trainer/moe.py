"""Fine-tuning Mixture-of-Experts bundles (``xelm bundle moe``): the load-balancing loss and
router-only training.

transformers' MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE) add ``router_aux_loss_coef`` x the
load-balancing loss to the language-model loss when a forward asks for the router logits. The
trainer asks for them in its training forwards only, so validation losses stay pure
language-model losses, comparable with dense models; the metrics log reports both parts.
"""

import re
from typing import Any

from xelm_cli.api import UsageError

from .options import TrainOptions

# the router of every MoE layer (not a dense MLP's, nor Qwen2-MoE's shared-expert gate):
# mlp.gate (Mixtral, Qwen2/3-MoE, OLMoE), mlp.router (GPT-OSS, with a bias),
# block_sparse_moe.router (GraniteMoE; its Linear is router.layer in transformers 5.4)
_ROUTER = re.compile(r"\.(?:mlp|block_sparse_moe)\.(?:gate|router)(?:\.layer)?\.(?:weight|bias)$")


def is_moe(model: Any) -> bool:
    return hasattr(model, "router_aux_loss_coef") and hasattr(model.config, "output_router_logits")


def check_moe_options(config: Any, options: TrainOptions) -> None:
    """The refusals of ``--router-only`` and ``--aux-loss`` that the model's config decides,
    made before the model loads (under torchrun before the ranks join: said once): a config
    without ``output_router_logits`` is no MoE model's (``is_moe``); a top-1 MoE whose routers
    would get no gradient."""
    if not hasattr(config, "output_router_logits"):
        _refuse_dense(options)
    elif options.router_only and options.aux_loss == 0 and _top_one_renormalised(config):
        raise UsageError(
            "--router-only --aux-loss 0 on a top-1 MoE trains nothing: the chosen expert's "
            "weight is renormalised to 1, so the language-model loss gives the routers no "
            "gradient; give --aux-loss above 0, or rebuild it with `xelm bundle moe --top-k 2`"
        )


def _refuse_dense(options: TrainOptions) -> None:
    if options.router_only or options.aux_loss is not None:
        raise UsageError(
            "--router-only and --aux-loss apply to Mixture-of-Experts bundles "
            "(made with `xelm bundle moe`)"
        )


def configure_moe(model: Any, options: TrainOptions) -> None:
    """Set the load-balancing coefficient and, with ``router_only``, freeze every parameter
    but the routers; both options are refused for models that are not MoE models."""
    if not is_moe(model):
        _refuse_dense(options)
        return
    check_moe_options(model.config, options)
    if options.aux_loss is not None:
        model.router_aux_loss_coef = options.aux_loss
    if options.router_only:
        routers = 0
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(bool(_ROUTER.search(name)))
            routers += parameter.requires_grad
        if not routers:  # nothing would train: refuse before the first step fails in torch
            raise UsageError(
                f"--router-only: xelm finds no router in this {model.config.model_type} model "
                "(it knows mlp.gate, mlp.router and block_sparse_moe.router); train all weights"
            )


def _top_one_renormalised(config: Any) -> bool:
    """Whether each token's one chosen expert gets weight exactly 1 (top-1, its weight
    renormalised over the chosen: Mixtral always, Qwen-MoE with ``norm_topk_prob``)."""
    top_one = getattr(config, "num_experts_per_tok", None) == 1
    return top_one and getattr(config, "norm_topk_prob", True)


def training_kwargs(model: Any) -> dict[str, Any]:
    """Extra arguments of a training forward: the router logits for MoE models."""
    return {"output_router_logits": True} if is_moe(model) else {}


def validation_kwargs(model: Any) -> dict[str, Any]:
    """Extra arguments of a validation forward: no router logits, whatever the model's config
    says (an imported MoE may say true), so its loss is the language model's alone."""
    return {"output_router_logits": False} if is_moe(model) else {}


def loss_parts(output: Any, model: Any) -> tuple[Any, Any | None]:
    """(language-model loss, load-balancing loss or None) of a training forward's output,
    whose ``loss`` is their sum with the load-balancing loss weighted by its coefficient."""
    aux = getattr(output, "aux_loss", None)
    if aux is None:
        return output.loss, None
    return output.loss - model.router_aux_loss_coef * aux, aux
