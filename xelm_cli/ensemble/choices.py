"""Multiple-choice scoring: each request's context runs once per model and its key-value cache
is reused by every choice; requests with as many choices run together in left-padded batches.

A batch's forwards, log-probabilities and their one copy to the host are queued on the device
without waiting for it, and the next batch is prepared and queued before the last one's
numbers are taken, as ``scoring.score_sequences`` does for running text.
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.errors import UsageError
from xelm_cli.ensemble.scoring import (
    HostCopy,
    LoadedModel,
    Logprobs,
    Segment,
    capped_for_whole_logits,
    default_batch_tokens,
    device_logprobs,
    new_cache,
    one_in_flight,
    padded,
    position_runs,
    takes_cache,
    uploaded,
)

MAX_PADDING = 0.1  # share of a batch's context positions that may be padding
# key-value positions a CPU's choice batch holds (its contexts' and their repeated caches'),
# within CHOICE_CACHE_BYTES of keys and values: on 2 cores SIB-shaped items scored 1.2-1.5x
# faster than at running text's 2,048, at which a few-shot item's choices run in pieces
# (benchmarks/icl_throughput.md)
CPU_CHOICE_BATCH_TOKENS = 8192
CHOICE_CACHE_BYTES = 1 << 30

# model types that take no position ids and need none under left padding: BLOOM's ALiBi counts
# a row's real tokens in the attention mask; MPT's moves with the key's index, a shift that is
# the same for all of a row's keys and that softmax ignores
POSITIONS_WITHOUT_IDS = frozenset({"bloom", "mpt"})


def _repeatable_cache(model: Any) -> Any:
    """A new cache for ``model`` whose rows can be repeated; None where it takes no cache or
    keeps a state per layer that cannot be (recurrent layers)."""
    if not takes_cache(model):
        return None
    cache = new_cache(model)
    layers = getattr(cache, "layers", [])
    return cache if all(hasattr(layer, "batch_repeat_interleave") for layer in layers) else None


def batches_choice_sets(model: LoadedModel) -> bool:
    """Whether ``model`` scores several requests' contexts in one left-padded forward exactly
    as one at a time: its cache rows can be repeated for the choices, and each row's positions
    can be given (``position_ids``) or need not be (``POSITIONS_WITHOUT_IDS``). Otherwise each
    request runs on its own: recurrent models (Mamba), and models of other types whose forward
    takes no ``position_ids``."""
    return _repeatable_cache(model.model) is not None and (
        model.takes_positions or model.model.config.model_type in POSITIONS_WITHOUT_IDS
    )


@dataclass(frozen=True)
class _ChoiceSet:
    context: list[int]
    choices: list[list[int]]


def _fitted(
    context: Sequence[int], choices: Sequence[Sequence[int]], max_length: int
) -> _ChoiceSet:
    """The request checked, its context cut to fit the model's positions beside its longest
    choice (keeping its BOS, losing its oldest tokens)."""
    if not context:
        raise UsageError("every context must start with its BOS token")
    longest = max((len(c) for c in choices), default=0)
    if longest < 1 or any(len(c) == 0 for c in choices):
        raise UsageError("every choice must have at least one token")
    room = max_length - longest
    if room < 2:
        raise UsageError(
            f"a choice of {longest} tokens leaves no room for its context in "
            f"the model's {max_length} positions"
        )
    kept = list(context)
    if len(kept) > room:
        kept = [kept[0], *kept[len(kept) - room + 1 :]]
    return _ChoiceSet(kept, [list(choice) for choice in choices])


def default_choice_batch_tokens(models: Sequence[LoadedModel]) -> int:
    """The key-value positions a choice batch holds by default: on a GPU the device's running
    text budget; on a CPU ``CPU_CHOICE_BATCH_TOKENS``, fewer where the models' keys and values
    at that many positions would pass ``CHOICE_CACHE_BYTES``, never fewer than running text's
    (:func:`default_batch_tokens`)."""
    text = default_batch_tokens(models[0].device)
    if models[0].device.type == "cuda":
        return text
    widest = max(_cache_bytes_per_position(model) for model in models)
    return max(text, min(CPU_CHOICE_BATCH_TOKENS, CHOICE_CACHE_BYTES // max(widest, 1)))


def _cache_bytes_per_position(model: LoadedModel) -> int:
    """Bytes of keys and values one position of ``model``'s cache holds, from its config
    (every layer attending in full); ``CHOICE_CACHE_BYTES`` where the config does not tell."""
    config = model.model.config.get_text_config()
    heads = getattr(config, "num_attention_heads", None)
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    if not (heads and layers and hidden):
        return CHOICE_CACHE_BYTES
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return 2 * layers * kv_heads * head_dim * model.dtype.itemsize


def _choice_batch_tokens(requests: int, width: int, choices: int, choice_width: int) -> int:
    """The key and value positions a batch holds: its ``requests`` contexts left-padded to
    ``width``, and each of their ``choices`` rows (its context's cache repeated, then the
    choice right-padded to ``choice_width``)."""
    return requests * (width + choices * (width + choice_width))


def choice_batches(
    requests: Sequence[_ChoiceSet], batch_tokens: int, max_length: int
) -> list[list[int]]:
    """Indices of ``requests`` in batches that share a number of choices (a cache repeats its
    rows uniformly), sorted by context length, each within ``batch_tokens``
    (:func:`_choice_batch_tokens`), with at most ``MAX_PADDING`` of its context positions
    padding, and with its widest context and widest choice within the models' ``max_length``
    positions (padded rows count positions too: a table of learned positions ends there);
    a request over the budget on its own is a batch of one, whose choices run in pieces
    (:func:`_choice_pieces`)."""
    order = sorted(
        range(len(requests)),
        key=lambda i: (len(requests[i].choices), -len(requests[i].context)),
    )
    batches: list[list[int]] = []
    width = real = choice_width = 0
    for index in order:
        request = requests[index]
        count, longest = len(request.choices), max(len(c) for c in request.choices)
        if batches and count == len(requests[batches[-1][0]].choices):
            rows = len(batches[-1]) + 1
            wider = max(choice_width, longest)
            fits = width + wider <= max_length
            within = _choice_batch_tokens(rows, width, count, wider) <= batch_tokens
            dense = real + len(request.context) >= rows * width * (1 - MAX_PADDING)
            if fits and within and dense:
                batches[-1].append(index)
                real += len(request.context)
                choice_width = wider
                continue
        batches.append([index])
        width = real = len(request.context)
        choice_width = longest
    return batches


def _left_padded(rows: Sequence[Sequence[int]]) -> tuple[NDArray[np.int64], ...]:
    """(token ids, mask of the real tokens, each row's length) of ``rows``, left-padded to the
    longest (as ``scoring.padded`` right-pads)."""
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    width = int(lengths.max())
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = row
    mask = (np.arange(width)[None, :] >= width - lengths[:, None]).astype(np.int64)
    return ids, mask, lengths


@dataclass
class _ContextRun:
    """One model's run on a batch's contexts, kept while their choices run piece by piece:
    the contexts' states, and their key-value cache and positions (left padding counted).
    Without a cache (recurrent models) the contexts run again inside every choice row, and
    their states are those of the first piece's first row."""

    states: Any = None
    cache: Any = None
    positions: Any = None


def _run_contexts(model: LoadedModel, contexts: Any, context_mask: Any) -> _ContextRun:
    """``model`` on ``contexts`` (B, n; left-padded, ``context_mask``), once for all their
    choices: their keys and values are kept for the choices, positions counted from each row's
    first real token as transformers' generation does for left padding; except in models with
    layers whose state is not keys and values (recurrent ones: transformers neither repeats
    such a state nor continues it by several tokens exactly), which run nothing here."""
    cache = _repeatable_cache(model.model)
    if cache is None:
        return _ContextRun()
    positions = (context_mask.cumsum(dim=1) - 1).clamp(min=0)
    states, past = model.states(
        contexts, context_mask, cache, positions if model.takes_positions else None
    )
    return _ContextRun(states, past, positions)


def _run_choices(
    model: LoadedModel,
    run: _ContextRun,
    contexts: Any,
    context_mask: Any,
    choices: Any,
    choice_mask: Any,
    *,
    last: bool,
) -> Any:
    """``model``'s states on each row of ``choices`` (B * K, right-padded, ``choice_mask``:
    K rows per context, in order) after its context: a copy of the contexts' cache (the cache
    itself for the ``last`` piece) repeated for the rows. Without a cache (recurrent models:
    ``contexts`` is one unpadded context) each row runs whole, context and choice, without a
    mask (right padding changes no earlier position)."""
    import torch

    if run.cache is None:
        rows = torch.cat([contexts.expand(len(choices), -1), choices], dim=1)
        states = model.states(rows, None)[0]
        if run.states is None:
            run.states = states[:1, : contexts.shape[1]]
        return states[:, contexts.shape[1] :]
    repeats = len(choices) // len(contexts)
    past = run.cache if last else copy.deepcopy(run.cache)
    past.batch_repeat_interleave(repeats)
    mask = torch.cat([context_mask.repeat_interleave(repeats, dim=0), choice_mask], dim=1)
    following = run.positions[:, -1:].repeat_interleave(repeats, dim=0) + 1
    following = following + torch.arange(choices.shape[1], device=choices.device)
    return model.states(choices, mask, past, following if model.takes_positions else None)[0]


def _choice_pieces(batch: Sequence[_ChoiceSet], batch_tokens: int) -> list[range]:
    """The batch's choices (indices into each request's) in pieces that run one forward each:
    all of them together for a batch of several requests (:func:`choice_batches` kept it
    within ``batch_tokens``); for one request, consecutive choices as many as fit
    ``batch_tokens`` (:func:`_choice_batch_tokens`), at least one a piece."""
    count = len(batch[0].choices)
    if len(batch) > 1:
        return [range(count)]
    request = batch[0]
    width = len(request.context)
    pieces: list[range] = []
    start, widest = 0, 0
    for index, choice in enumerate(request.choices):
        wider = max(widest, len(choice))
        if (
            index > start
            and _choice_batch_tokens(1, width, index - start + 1, wider) > batch_tokens
        ):
            pieces.append(range(start, index))
            start, wider = index, len(choice)
        widest = wider
    pieces.append(range(start, count))
    return pieces


@dataclass
class _ScoredChoices:
    """A batch of requests whose scores are on their way to the host, in three blocks: every
    context's tokens 1..n-1, every choice's first token, every choice's other tokens (each
    block request by request, choice by choice)."""

    indices: list[int]  # of the requests, in the batch's order
    requests: Sequence[_ChoiceSet]
    scores: HostCopy

    def split(self) -> list[tuple[Logprobs, list[Logprobs]]]:
        """Each request's (context log-probabilities, each choice's)."""
        scores = self.scores.numpy()
        context_counts = [len(request.context) - 1 for request in self.requests]
        firsts = sum(context_counts)
        other = firsts + sum(len(request.choices) for request in self.requests)
        results = []
        context = 0
        for request, count in zip(self.requests, context_counts, strict=True):
            choice_lps = []
            for choice in request.choices:
                rest = scores[other : other + len(choice) - 1]
                choice_lps.append(np.concatenate([scores[firsts : firsts + 1], rest]))
                firsts, other = firsts + 1, other + len(choice) - 1
            results.append((scores[context : context + count], choice_lps))
            context += count
        return results


def _score_choice_batch(
    models: Sequence[LoadedModel],
    coefficients: Sequence[float],
    indices: list[int],
    batch: Sequence[_ChoiceSet],
    batch_tokens: int,
) -> _ScoredChoices:
    """Start scoring a batch of requests (``indices``, ``batch``): its contexts in one forward
    per model and its choices in others (:func:`_choice_pieces`: one, unless a request alone
    has more choices than ``batch_tokens`` holds), all after the contexts' one run: a
    context's tokens from its left-padded row, a choice's first token from its context's last
    state, its others from the choice's own row. How the choices are split changes no result:
    every piece continues the same contexts (cut by :func:`_fitted` for all of a request's
    choices). Nothing here waits for the device."""
    import torch

    device = models[0].device
    context_ids, context_mask, context_lengths = _left_padded(
        [request.context for request in batch]
    )
    contexts, context_mask_on = uploaded(context_ids, device), uploaded(context_mask, device)
    runs = [_run_contexts(model, contexts, context_mask_on) for model in models]
    pieces = _choice_pieces(batch, batch_tokens)
    others = []
    for number, piece in enumerate(pieces):
        piece_rows = [request.choices[c] for request in batch for c in piece]
        ids, mask, lengths = padded([Segment(0, 0, choice, 0) for choice in piece_rows])
        more_rows, more_cols = position_runs(lengths - 1, np.zeros_like(lengths))
        choices, choice_mask, rows_on, cols_on, targets = (
            uploaded(array, device)
            for array in (ids, mask, more_rows, more_cols, ids[more_rows, more_cols + 1])
        )
        states = [
            _run_choices(
                model, run, contexts, context_mask_on, choices, choice_mask,
                last=number == len(pieces) - 1,
            )[rows_on, cols_on]
            for model, run in zip(models, runs, strict=True)
        ]  # fmt: skip
        others.append(device_logprobs(models, coefficients, states, targets))
    # from the context states: each context's tokens 1..n-1, then each choice's first token
    width = context_ids.shape[1]
    context_rows, context_cols = position_runs(context_lengths - 1, width - context_lengths)
    choice_counts = np.array([len(request.choices) for request in batch], dtype=np.int64)
    first_rows = np.repeat(np.arange(len(batch)), choice_counts)
    rows_np = np.concatenate([context_rows, first_rows])
    cols_np = np.concatenate([context_cols, np.full(len(first_rows), width - 1)])
    first_tokens = np.array([choice[0] for request in batch for choice in request.choices])
    targets_np = np.concatenate([context_ids[context_rows, context_cols + 1], first_tokens])
    rows_on, cols_on, targets = (uploaded(a, device) for a in (rows_np, cols_np, targets_np))
    firsts = [run.states[rows_on, cols_on] for run in runs]
    scores = torch.cat([device_logprobs(models, coefficients, firsts, targets), *others])
    return _ScoredChoices(indices, batch, HostCopy.start(scores))


def score_choice_sets(
    models: Sequence[LoadedModel],
    coefficients: Sequence[float],
    requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    batch_tokens: int | None = None,
    advance: Any = None,
) -> list[tuple[Logprobs, list[Logprobs]]]:
    """For each (context, choices): the context's own log-probabilities (tokens 1..n-1, as in
    ``score_sequences``) and each choice's, given the context. A context (starting with BOS)
    is encoded once per model and its key-value cache reused by every choice; a context too
    long for the model keeps its BOS and loses its oldest tokens. Requests with as many
    choices run together (:func:`choice_batches`, within ``batch_tokens``, by default
    :func:`default_choice_batch_tokens`) where every model :func:`batches_choice_sets`,
    else one at a time; a request with more choices than the budget holds runs them in pieces
    after its context's one run, scoring as all at once. ``advance(n)`` is told of the n
    requests each batch scored."""
    import torch

    max_length = min(model.max_length for model in models)
    fitted = [_fitted(context, choices, max_length) for context, choices in requests]
    budget = capped_for_whole_logits(models, batch_tokens or default_choice_batch_tokens(models))
    if all(batches_choice_sets(model) for model in models):
        batches = choice_batches(fitted, budget, max_length)
    else:
        batches = [[index] for index in range(len(fitted))]
    results: dict[int, tuple[Logprobs, list[Logprobs]]] = {}

    def collect(scored: _ScoredChoices) -> None:
        results.update(zip(scored.indices, scored.split(), strict=True))
        if advance is not None:
            advance(len(scored.indices))

    def start(batch: list[int]) -> _ScoredChoices:
        requests_of = [fitted[index] for index in batch]
        return _score_choice_batch(models, coefficients, batch, requests_of, budget)

    with torch.inference_mode():
        one_in_flight(batches, start, collect)
    return [results[index] for index in range(len(fitted))]
