"""The product-of-experts combination rule (spec/ensemble-v1.md section 3, ``product``).

ln p(x_t) = sum_e w[e, t] ln p_e(x_t) - ln sum_v exp(sum_e w[e, t] ln p_e(v)): a weighted
geometric mean of the experts' next-token distributions, renormalised over the vocabulary,
with weights from each expert's likelihood of the previous token times the cluster weights
(mixing.product_weights). The normaliser needs every expert's full distribution at the same
position, so the experts of a document run together, window by window when they share a
context length; log-softmax runs in float64 on the experts' device (on the host for MPS, which
has no float64), on chunks of positions (at most ``CHUNK_ELEMENTS`` values per expert, the
CPU's chunk on every device: each is held k times, in float64), never on T x V at once; only
the picked tokens' log-probabilities (k per position) and the scores cross to the host.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from xelm_cli.ensemble.mixing import product_weights
from xelm_cli.ensemble.scoring import CHUNK_ELEMENTS, LoadedModel, Logprobs, windows


def _window_states(model: LoadedModel, sequence: Sequence[int], max_length: int) -> Iterator[Any]:
    """Final hidden states (or, for a model whose logits cannot be chunked, logits) of the
    positions predicting tokens 1..n-1, window by window of at most ``max_length`` tokens,
    each token predicted once (as scoring does)."""
    import torch

    for start, end, first in windows(len(sequence), max_length, max(1, max_length // 2)):
        ids = torch.tensor([list(sequence[start:end])], device=model.device)
        states, _ = model.states(ids, torch.ones_like(ids))
        yield states[0, first - start - 1 : end - start - 1]


def _blocks(models: Sequence[LoadedModel], sequence: Sequence[int]) -> Iterator[list[Any]]:
    """The models' states of consecutive runs of target positions, one list a run. Models of
    one context length run window by window side by side, so no more than a window of states
    (of logits, for a model that cannot chunk them) is held at once; models of different
    lengths each window the sequence with their own, and their states come as one run."""
    import torch

    lengths = {model.max_length for model in models}
    if len(lengths) == 1:
        (max_length,) = lengths
        yield from (
            list(run)
            for run in zip(*(_window_states(m, sequence, max_length) for m in models), strict=True)
        )
    else:
        yield [torch.cat(list(_window_states(m, sequence, m.max_length))) for m in models]


def product_logprobs(
    models: Sequence[LoadedModel], prior: Sequence[float], sequence: Sequence[int]
) -> Logprobs:
    """ln p(x_t | x_<t) for t = 1..n-1 of one sequence (starting with BOS) under the product
    rule with cluster weights ``prior`` (one per model, all positive)."""
    import torch

    # in float64 on the models' device, but on the host where the device has no float64 (MPS)
    device = models[0].device if models[0].device.type != "mps" else torch.device("cpu")
    targets = torch.tensor(list(sequence[1:]), dtype=torch.long, device=device)
    c = np.asarray(prior, dtype=np.float64)
    out = np.empty(len(targets), dtype=np.float64)
    rows = max(1, CHUNK_ELEMENTS // max(models[0].vocab_size(), 1))
    carry: np.ndarray | None = None  # L[:, t] of the position before the chunk
    offset = 0  # the first target of the block
    for states in _blocks(models, sequence):
        size = len(states[0])
        for start in range(0, size, rows):
            stop = min(start + rows, size)
            chosen = targets[offset + start : offset + stop]
            full = torch.stack(
                [
                    torch.log_softmax(model.logits(state[start:stop]).to(device, torch.float64), -1)
                    for model, state in zip(models, states, strict=True)
                ]
            )  # (k, rows, V)
            picked = full.gather(2, chosen[None, :, None].expand(len(models), -1, 1))[..., 0]
            logprobs = picked.cpu().numpy()  # the weights need them: (k, rows) to the host
            if carry is None:
                weights = product_weights(logprobs, c)
            else:
                weights = product_weights(np.concatenate([carry, logprobs], axis=1), c)[:, 1:]
            w = torch.from_numpy(weights).to(device)
            combined = (w[:, :, None] * full).sum(dim=0)
            normaliser = torch.logsumexp(combined, dim=-1)
            scores = (w * picked).sum(dim=0) - normaliser
            out[offset + start : offset + stop] = scores.cpu().numpy()
            carry = logprobs[:, -1:]
        offset += size
    return out


def score_product(
    models: Sequence[LoadedModel],
    prior: Sequence[float],
    sequences: Sequence[Sequence[int]],
    *,
    advance: Any = None,
) -> list[Logprobs]:
    import torch

    results = []
    with torch.inference_mode():
        for sequence in sequences:
            results.append(product_logprobs(models, prior, sequence))
            if advance is not None:
                advance(1)
    return results
