"""A memory-lean causal-LM loss: the output layer and cross-entropy chunk by chunk of tokens.

The plain loss of a Hugging Face causal LM materialises the logits of the whole batch (and an
fp32 copy, and their gradient): at XGLM's 256k vocabulary and 8 x 1024 tokens that is 2.1G
elements, over 16 GB. Here the output layer runs on ``rows`` tokens at a time; the gradients
with respect to the hidden states and the output weights are computed in the same pass (the
loss is a scalar, so its backward only scales them), so no chunk's logits outlive the chunk
and nothing is recomputed: the same three matrix products per chunk as the plain loss. Under
``torch.no_grad`` (validation), or when no input requires grad, only the loss is computed.
"""

import types
from typing import Any

import torch

IGNORE_INDEX = -100  # as transformers' loss: labels with this value are not predicted
CHUNK_ELEMENTS = 1 << 26  # logits per chunk: 256 MB in fp32


class _Gradients:
    """The gradients of the loss with respect to the hidden states, output weights and bias,
    filled chunk by chunk in the forward pass."""

    def __init__(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        wide: torch.dtype,
    ) -> None:
        self.hidden = torch.zeros_like(hidden)
        self.weight = torch.zeros_like(weight, dtype=wide)
        self.bias = None if bias is None else torch.zeros_like(bias, dtype=wide)

    def add(
        self,
        start: int,
        log_probs: torch.Tensor,
        target: torch.Tensor,
        scale: torch.Tensor,
        h: torch.Tensor,
        w: torch.Tensor,
    ) -> None:
        """Add one chunk's: d loss / d logits = (softmax - one_hot) x ``scale`` (1 / count on
        valid rows, 0 on ignored ones); ``log_probs`` is overwritten."""
        grad = log_probs.exp_()
        grad[torch.arange(len(target), device=grad.device), target.clamp_min(0)] -= 1
        grad *= scale[:, None]
        narrow = grad.to(w.dtype)  # in the compute dtype (fp32 compute: ``grad`` itself)
        rows = self.hidden[start : start + len(target)]
        if rows.dtype == narrow.dtype:
            torch.mm(narrow, w, out=rows)
        else:
            rows.copy_(narrow @ w)
        if narrow.dtype == self.weight.dtype:  # fp32 compute: accumulated in place
            self.weight.addmm_(narrow.T, h)
        else:
            # bf16 compute: the product in slices of the vocabulary, each added in place to
            # the fp32 sum: one slice's bf16 product (on the CPU also its fp32 copy) at a
            # time, never a V x h one; each element is the same sum of the same products
            step = max(1, CHUNK_ELEMENTS // h.shape[1])
            for first in range(0, narrow.shape[1], step):
                self.weight[first : first + step].add_(narrow[:, first : first + step].T @ h)
        if self.bias is not None:
            self.bias += grad.sum(0)


class _LinearCrossEntropy(torch.autograd.Function):
    """mean over valid rows of -log softmax(hidden @ weight.T + bias)[target]; the gradients
    only when ``gradients`` (not under torch.no_grad, as in validation)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        rows: int,
        gradients: bool,
    ) -> torch.Tensor:
        device = hidden.device.type
        compute = (
            torch.get_autocast_dtype(device)
            if torch.is_autocast_enabled(device)
            else torch.promote_types(hidden.dtype, weight.dtype)
        )
        wide = torch.promote_types(compute, torch.float32)  # softmax and sums: fp32 at least
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp_min(1).to(wide)
        w = weight.to(compute)
        grads = _Gradients(hidden, weight, bias, wide) if gradients else None
        total = torch.zeros((), dtype=wide, device=hidden.device)
        with torch.autocast(device, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start : start + rows].to(compute)
                target = targets[start : start + rows]
                keep = valid[start : start + rows]
                logits = (h @ w.T).to(wide)
                if bias is not None:
                    logits += bias.to(wide)
                logsumexp = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, target.clamp_min(0)[:, None])[:, 0]
                total += ((logsumexp - picked) * keep).sum()
                if grads is not None:
                    log_probs = logits.sub_(logsumexp[:, None])
                    grads.add(start, log_probs, target, keep / count, h, w)
        if grads is not None:
            ctx.save_for_backward(grads.hidden, grads.weight.to(weight.dtype))
            ctx.bias_grad = (
                None if grads.bias is None or bias is None else grads.bias.to(bias.dtype)
            )
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> Any:
        """The forward's gradients scaled in place (no second V x h tensor): they are this
        function's own, and a second backward through it fails on their changed version
        instead of scaling them twice."""
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_bias = None if ctx.bias_grad is None else ctx.bias_grad.mul_(grad_loss)
        return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), grad_bias, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """The mean cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, computed
    ``rows`` tokens at a time (default: ``CHUNK_ELEMENTS`` logits a chunk)."""
    rows = rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    inputs = (hidden, weight, bias)
    gradients = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    loss: torch.Tensor = _LinearCrossEntropy.apply(hidden, weight, bias, targets, rows, gradients)
    return loss


def use_lean_loss(model: Any, rows: int | None = None) -> None:
    """Make ``model(input_ids=..., labels=...)`` compute its loss with
    ``linear_cross_entropy`` (and no logits); calls without labels are unchanged. Set on the
    instance, so DDP and FSDP, which call the model, run it inside their hooks."""
    plain = model.forward

    def forward(self: Any, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import CausalLMOutput

        if labels is None:
            return plain(input_ids=input_ids, **kwargs)
        body = self.base_model(input_ids=input_ids, use_cache=False, **kwargs)
        states = body.last_hidden_state[:, :-1]
        head = self.get_output_embeddings()
        loss = linear_cross_entropy(
            states.reshape(-1, states.shape[-1]),
            head.weight,
            labels[:, 1:].reshape(-1),
            head.bias,
            rows,
        )
        return CausalLMOutput(loss=loss)

    model.forward = types.MethodType(forward, model)
    model.lean_loss = True  # recorded in the training record
