"""Target-token log-probabilities from causal LMs, without materialising full logits.

A model's final hidden states are computed for a batch, then the output layer and the
log-softmax run on chunks of positions, so at most ``CHUNK_ELEMENTS`` logits exist at a time.
Several models can be scored together with coefficients (logit averaging: log_softmax of
sum_e a_e z_e); one model with coefficient 1 gives its own log-probabilities.
"""

import functools
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.bundle.fingerprint import reading_safetensors
from xelm_cli.bundle.store import Bundle, probe_ids
from xelm_cli.common.errors import UsageError

CHUNK_ELEMENTS = 1 << 22  # logits per chunk: 16 MB in float32
DEFAULT_BATCH_TOKENS = 2048  # on CPU, small batches stay in cache: faster than big ones
CUDA_BATCH_TOKENS = 16384
MAX_PADDING = 0.1  # share of a batch's positions that may be padding
UNCHUNKED_LOGITS = 1 << 28  # a batch's logits where they cannot be chunked: 512 MB in bf16
Logprobs = NDArray[np.float64]


def pick_device(name: str | None = None) -> Any:
    """The torch device ``name`` names, checked: a kind xelm runs on (cpu, cuda, mps) that
    this torch sees, else a one-line :class:`UsageError` naming the way out. None or
    ``auto``: CUDA when present, else the CPU."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}  # fmt: skip
    if device.type not in available:
        raise UsageError(f"device {name!r} is not one xelm runs on; use cpu, cuda or mps")
    if not available[device.type]:
        raise UsageError(
            f"device {name!r} asked for but {device.type.upper()} is not available in this "
            "torch; use --device cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(
            f"device {name!r} asked for but this machine has {torch.cuda.device_count()} CUDA "
            "devices; use cuda:0 or another it has"
        )
    return device


_OUTPUT_LAYER_PROBES: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def logits_are_output_layer(model: Any) -> bool:
    """Whether a causal LM's logits are its output layer (an ``nn.Linear``) applied to its
    body's last hidden states and nothing else: no head transform before it (BERT-style
    heads), no logit scaling after it (Granite's ``logits_scaling``, Cohere). Only then may
    logits be computed from the hidden states chunk by chunk. Decided by running the model
    once on a few tokens (``_head_is_output_layer``), remembered per model object: call it
    on the bare model, before DDP or FSDP wrap it or a lean loss replaces its forward."""
    import torch

    if model not in _OUTPUT_LAYER_PROBES:
        _OUTPUT_LAYER_PROBES[model] = (
            model.base_model is not model
            and isinstance(model.get_output_embeddings(), torch.nn.Linear)
            # soft-capping is near the identity on small logits (an untrained model's),
            # where the probe cannot see it
            and not getattr(model.config, "final_logit_softcapping", None)
            and _head_is_output_layer(model)
        )
    return _OUTPUT_LAYER_PROBES[model]


def _head_is_output_layer(model: Any) -> bool:
    """Whether ``model``'s logits on a few tokens equal its output layer applied to its body's
    last hidden states (in eval mode, so dropout does not differ between the two)."""
    import torch

    ids = probe_ids(model)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
            hidden = model.base_model(input_ids=ids).last_hidden_state
            chunked = model.get_output_embeddings()(hidden).float()
    finally:
        model.train(training)
    tolerance = max(1e-5, 4 * torch.finfo(next(model.parameters()).dtype).eps)
    return torch.allclose(logits, chunked, rtol=tolerance, atol=tolerance)


@functools.cache
def _cache_keyword(model_class: Any) -> str | None:
    """``cache`` in the transformers versions that renamed it (``past_key_values`` warns
    there), else ``past_key_values``; None for a forward that takes neither (Mamba in
    transformers before the rename takes ``cache_params``, a state of its own kind)."""
    parameters = inspect.signature(model_class.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword arguments that pass ``cache`` (from :func:`new_cache`) to ``model``'s
    forward; a one-line :class:`UsageError` where the forward takes no cache xelm can pass."""
    model_class: Any = type(model)
    keyword = _cache_keyword(model_class)
    if keyword is None:
        if cache is not None:
            import transformers

            raise UsageError(
                f"{type(model).__name__} takes no cache that xelm can pass in transformers "
                f"{transformers.__version__}: install a newer transformers to generate text "
                "with it"
            )
        return {}
    return {keyword: cache, "use_cache": cache is not None}


def new_cache(model: Any) -> Any:
    """An empty cache of the kinds ``model``'s layers keep (keys and values, a sliding
    window, a recurrent state), made from its config as transformers' own generation does."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def cache_of(model: Any, output: Any) -> Any:
    """The cache ``model``'s forward returned, under the name that model uses (the other
    name warns); None when it made none."""
    model_class: Any = type(model)
    keyword = _cache_keyword(model_class)
    return None if keyword is None else output.get(keyword)


def default_batch_tokens(device: Any) -> int:
    return CUDA_BATCH_TOKENS if device.type == "cuda" else DEFAULT_BATCH_TOKENS


@dataclass
class LoadedModel:
    """A model ready to score: its body (hidden states) and output layer, on one device."""

    model: Any
    device: Any
    max_length: int

    config: dict[str, Any] | None = None

    @classmethod
    def load(cls, bundle: Bundle, device: Any) -> "LoadedModel":
        import torch

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = bundle.load_model(dtype=dtype).to(device).eval()
        max_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        return cls(model, device, max_length, _model_config(bundle))

    def swap(self, bundle: Bundle) -> "LoadedModel | None":
        """Load ``bundle``'s weights into this model (same config, same tensors), checking
        its files first; None when they do not fit (then load the bundle afresh). Much
        cheaper than building a new model for each expert of an ensemble."""
        import torch
        from safetensors import safe_open

        if self.config is None or _model_config(bundle) != self.config:
            return None
        bundle.check_files()
        parameters = self.model.state_dict()
        files = sorted(bundle.path.glob("*.safetensors"))
        shapes: dict[str, tuple[int, ...]] = {}
        for path in files:
            with reading_safetensors(path), safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        if shapes != {name: tuple(t.shape) for name, t in parameters.items()}:
            return None
        with torch.no_grad():
            for path in files:  # one tensor at a time: no second copy of the model in memory
                with reading_safetensors(path), safe_open(str(path), framework="pt") as f:
                    for name in f.keys():  # noqa: SIM118
                        parameters[name].copy_(f.get_tensor(name))
        return self

    @property
    def chunked(self) -> bool:
        """Whether logits can be computed from the body's hidden states by the output layer
        alone (``logits_are_output_layer``)."""
        return logits_are_output_layer(self.model)

    def states(self, input_ids: Any, attention_mask: Any, past: Any = None) -> tuple[Any, Any]:
        """(hidden states or, for non-chunked models, logits; the key-value cache)."""
        if self.chunked:
            body = self.model.base_model
            out = body(input_ids=input_ids, attention_mask=attention_mask, **with_cache(body, past))
            return out.last_hidden_state, cache_of(body, out)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, **with_cache(self.model, past)
        )
        return out.logits, cache_of(self.model, out)

    def logits(self, states: Any) -> Any:
        if self.chunked:
            return self.model.get_output_embeddings()(states).float()
        return states.float()

    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)


def _model_config(bundle: Bundle) -> dict[str, Any]:
    from xelm_cli.common.jsonio import read_json_object

    config = read_json_object(bundle.path / "config.json", f"{bundle.path}/config.json")
    return {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}


def target_logprobs(
    models: Sequence[LoadedModel],
    coefficients: Sequence[float],
    states: Sequence[Any],
    targets: Any,
) -> Any:
    """ln softmax(sum_e a_e z_e)[target] for each row: ``states[e]`` is (N, H) for model e,
    ``targets`` (N,); computed ``CHUNK_ELEMENTS`` logits at a time."""
    import torch

    n = int(targets.shape[0])
    out = torch.empty(n, dtype=torch.float64)
    rows = max(1, CHUNK_ELEMENTS // max(models[0].vocab_size(), 1))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        logits = None
        for model, coef, state in zip(models, coefficients, states, strict=True):
            part = model.logits(state[start:stop])
            logits = part * coef if logits is None else logits + part.to(logits.device) * coef
        assert logits is not None
        chosen = targets[start:stop].to(logits.device)
        picked = logits.gather(1, chosen[:, None])[:, 0] - torch.logsumexp(logits, dim=1)
        out[start:stop] = picked.double().cpu()
    return out


@dataclass(frozen=True)
class Segment:
    sequence: int
    window: int
    tokens: list[int]
    skip: int  # leading positions whose predictions another window already made


def windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, end, first) covering a sequence of ``length`` tokens: each predicts
    tokens first..end-1 from tokens start..end-2; after the first, each window keeps at least
    ``max_length - stride`` tokens of context and every token is predicted exactly once."""
    if length <= max_length:
        return [(0, length, 1)]
    spans = [(0, max_length, 1)]
    end = max_length
    while end < length:
        new_end = min(end + stride, length)
        spans.append((new_end - max_length, new_end, end))
        end = new_end
    return spans


def length_batches(segments: list[Segment], batch_tokens: int) -> list[list[Segment]]:
    """Length-sorted batches of at most ``batch_tokens`` padded tokens, and at most
    ``MAX_PADDING`` of them padding (a long batch of short documents wastes compute)."""
    ordered = sorted(segments, key=lambda s: -len(s.tokens))
    batches: list[list[Segment]] = []
    real = 0
    for segment in ordered:
        if batches:
            width, rows = len(batches[-1][0].tokens), len(batches[-1]) + 1
            padded = width * rows
            if padded <= batch_tokens and real + len(segment.tokens) >= padded * (1 - MAX_PADDING):
                batches[-1].append(segment)
                real += len(segment.tokens)
                continue
        batches.append([segment])
        real = len(segment.tokens)
    return batches


def right_padded(batch: Sequence[Segment]) -> tuple[Any, Any]:
    """(token ids, mask of the real tokens) of ``batch``, right-padded to its longest row."""
    import torch

    width = max(len(segment.tokens) for segment in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, segment in enumerate(batch):
        ids[row, : len(segment.tokens)] = torch.tensor(segment.tokens)
        mask[row, : len(segment.tokens)] = 1
    return ids, mask


def _capped_for_whole_logits(models: Sequence[LoadedModel], batch_tokens: int) -> int:
    """``batch_tokens``, lowered so that a model whose forward must return a whole batch's
    logits (not :attr:`LoadedModel.chunked`) returns at most ``UNCHUNKED_LOGITS`` of them
    (a batch still holds one window, whatever the cap)."""
    caps = [UNCHUNKED_LOGITS // model.vocab_size() for model in models if not model.chunked]
    return max(1, min([batch_tokens, *caps]))


def score_sequences(
    models: Sequence[LoadedModel],
    coefficients: Sequence[float],
    sequences: Sequence[Sequence[int]],
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    advance: Any = None,
) -> list[Logprobs]:
    """For each token sequence (starting with BOS), ln p(x_t | x_<t) for t = 1..n-1 under the
    models' logit combination; sequences longer than the context are scored in windows.
    ``advance(n)`` is told of the n target tokens each batch scored (each token once)."""
    import torch

    max_length = min(model.max_length for model in models)
    stride = max(1, max_length // 2)
    batch_tokens = _capped_for_whole_logits(models, batch_tokens)
    segments = []
    for index, sequence in enumerate(sequences):
        spans = windows(len(sequence), max_length, stride)
        for window, (start, end, first) in enumerate(spans):
            segments.append(Segment(index, window, list(sequence[start:end]), first - start - 1))
    pieces: list[list[tuple[int, Any]]] = [[] for _ in sequences]
    device = models[0].device
    with torch.inference_mode():
        for batch in length_batches(segments, batch_tokens):
            ids, mask = right_padded(batch)
            rows: list[int] = []
            cols: list[int] = []
            targets: list[int] = []
            for row, segment in enumerate(batch):
                count = len(segment.tokens) - 1 - segment.skip
                rows += [row] * count
                cols += range(segment.skip, segment.skip + count)
                targets += segment.tokens[segment.skip + 1 :]
            states = [
                model.states(ids.to(device), mask.to(device))[0][rows, cols] for model in models
            ]
            logprobs = target_logprobs(models, coefficients, states, torch.tensor(targets))
            offset = 0
            for segment in batch:
                count = len(segment.tokens) - 1 - segment.skip
                pieces[segment.sequence].append(
                    (segment.window, logprobs[offset : offset + count].numpy())
                )
                offset += count
            if advance is not None:
                advance(len(targets))
    results = []
    for parts in pieces:
        parts.sort(key=lambda part: part[0])
        results.append(
            np.concatenate([part for _, part in parts]) if parts else np.zeros(0, np.float64)
        )
    return results


def _repeatable_cache(model: Any) -> Any:
    """A new cache for ``model`` whose rows can be repeated; None where it takes no cache or
    keeps a state per layer that cannot be (recurrent layers)."""
    model_class: Any = type(model)
    if _cache_keyword(model_class) is None:
        return None
    cache = new_cache(model)
    layers = getattr(cache, "layers", [])
    return cache if all(hasattr(layer, "batch_repeat_interleave") for layer in layers) else None


def _context_and_choices(
    model: LoadedModel, context: Any, choices: Any, mask: Any
) -> tuple[Any, Any]:
    """``model``'s states on ``context`` (1, n) and on each row of ``choices`` (right-padded,
    ``mask`` over context and choice) after it. The context runs once and its keys and values
    are repeated for the rows, except in models with layers whose state is not keys and values
    (recurrent ones: transformers neither repeats such a state nor continues it by several
    tokens exactly): there each row runs whole, without a mask (right padding changes no
    earlier position)."""
    import torch

    cache = _repeatable_cache(model.model)
    if cache is not None:
        states, past = model.states(context, torch.ones_like(context), cache)
        past.batch_repeat_interleave(len(choices))
        return states, model.states(choices, mask, past)[0]
    rows = torch.cat([context.expand(len(choices), -1), choices], dim=1)
    states = model.states(rows, None)[0]
    return states[:1, : context.shape[1]], states[:, context.shape[1] :]


def score_choice_sets(
    models: Sequence[LoadedModel],
    coefficients: Sequence[float],
    requests: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    advance: Any = None,
) -> list[tuple[Logprobs, list[Logprobs]]]:
    """For each (context, choices): the context's own log-probabilities (tokens 1..n-1, as in
    ``score_sequences``) and each choice's, given the context. The context (starting with BOS)
    is encoded once per model and its key-value cache reused by every choice; a context too
    long for the model keeps its BOS and loses its oldest tokens."""
    import torch

    max_length = min(model.max_length for model in models)
    device = models[0].device
    results = []
    with torch.inference_mode():
        for context, choices in requests:
            longest = max((len(c) for c in choices), default=0)
            if longest < 1 or any(len(c) == 0 for c in choices):
                raise UsageError("every choice must have at least one token")
            room = max_length - longest
            if room < 2:
                raise UsageError(
                    f"a choice of {longest} tokens leaves no room for its context in "
                    f"the model's {max_length} positions"
                )
            context = list(context)
            if len(context) > room:
                context = [context[0], *context[len(context) - room + 1 :]]
            ctx = torch.tensor([context], device=device)
            width = longest
            conts = torch.zeros((len(choices), width), dtype=torch.long)
            mask = torch.zeros((len(choices), len(context) + width), dtype=torch.long)
            mask[:, : len(context)] = 1
            for row, choice in enumerate(choices):
                conts[row, : len(choice)] = torch.tensor(list(choice))
                mask[row, len(context) : len(context) + len(choice)] = 1
            ctx_states, choice_states = [], []
            for model in models:
                states, more = _context_and_choices(model, ctx, conts.to(device), mask.to(device))
                ctx_states.append(states[0])
                choice_states.append((states[0, -1], more))
            ctx_targets = torch.tensor(context[1:], dtype=torch.long)
            context_lp = target_logprobs(
                models, coefficients, [s[:-1] for s in ctx_states], ctx_targets
            ).numpy()
            choice_lps = []
            for row, choice in enumerate(choices):
                states = [
                    torch.cat([last[None], more[row, : len(choice) - 1]])
                    for last, more in choice_states
                ]
                lp = target_logprobs(models, coefficients, states, torch.tensor(list(choice)))
                choice_lps.append(lp.numpy())
            results.append((context_lp, choice_lps))
            if advance is not None:
                advance(1)
    return results
