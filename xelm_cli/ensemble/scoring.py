"""Target-token log-probabilities from causal LMs, without materialising full logits.

A model's final hidden states are computed for a batch, then the output layer and the
log-softmax run on chunks of positions, so at most :func:`chunk_rows` positions' logits exist
at a time.
Several models can be scored together with coefficients (logit averaging: log_softmax of
sum_e a_e z_e); one model with coefficient 1 gives its own log-probabilities.
"""

import functools
import inspect
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from xelm_cli.bundle.fingerprint import reading_safetensors
from xelm_cli.bundle.store import Bundle, probe_ids
from xelm_cli.common.errors import UsageError

CHUNK_ELEMENTS = 1 << 22  # logits per chunk on a CPU: 16 MB in float32
# on a GPU: 256 MB, as the training's lean loss. A chunk runs about ten kernels whatever its
# size, so at 2^22 a 256k vocabulary's 16-row chunks would be launch-bound (1,024 a batch)
CUDA_CHUNK_ELEMENTS = 1 << 26
# fewer positions a chunk make slow products on a CPU too: at a 256k vocabulary 16 took 1.75x
# the time of 128 (benchmarks/logit_chunks.md)
MIN_CHUNK_ROWS = 128
DEFAULT_BATCH_TOKENS = 2048  # on CPU (8,192: 1.09-1.35x the time at 3 sizes; ensemble.md)
CUDA_BATCH_TOKENS = 16384
# padding a batch of running text may hold, as a share of a full batch's positions (of its
# budget, not of its own size: a batch of a few long documents may be more padding than a full
# one, or the sparse lengths of a few languages' documents fall into many small batches)
MAX_BATCH_PADDING = 0.1
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
        with torch.no_grad(), without_cudnn_attention():
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


def takes_cache(model: Any) -> bool:
    """Whether ``model``'s forward takes a cache xelm can pass (:func:`with_cache`)."""
    model_class: Any = type(model)
    return _cache_keyword(model_class) is not None


@functools.cache
def _takes_positions(model_class: Any) -> bool:
    return "position_ids" in inspect.signature(model_class.forward).parameters


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


def chunk_rows(vocab_size: int, device: Any) -> int:
    """Positions whose logits are computed at once on ``device``: ``CHUNK_ELEMENTS`` logits
    (``CUDA_CHUNK_ELEMENTS`` on a GPU) of a ``vocab_size`` vocabulary, at least
    ``MIN_CHUNK_ROWS``."""
    elements = CUDA_CHUNK_ELEMENTS if device.type == "cuda" else CHUNK_ELEMENTS
    return max(1, MIN_CHUNK_ROWS, elements // max(vocab_size, 1))


def default_batch_tokens(device: Any) -> int:
    return CUDA_BATCH_TOKENS if device.type == "cuda" else DEFAULT_BATCH_TOKENS


def without_cudnn_attention() -> Any:
    """A context in which scaled-dot-product attention may use every PyTorch backend but
    cuDNN's. Scoring's batches come in ever new shapes (each its own rows and width, a cache
    one position longer each generated token), and cuDNN's attention, which PyTorch prefers on
    Hopper and Blackwell GPUs once its bundled cuDNN is 9.15.1 or newer, builds an execution
    plan for every shape it has not seen, tens of milliseconds each (more than a batch's
    compute at these sizes); the flash and memory-efficient kernels need no plan. Training's
    one block shape keeps cuDNN. The switch holds process-wide while the context lasts."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


HALF_DTYPES = ("bfloat16", "float16")  # stored so, a bundle is computed so on CUDA


def compute_dtype(bundle: Bundle, device: Any) -> Any:
    """The torch dtype ``bundle`` is scored in on ``device``: on CUDA the dtype its weights are
    stored in where that is bfloat16 or float16 (what it was trained and saved in), else
    bfloat16 (a float32 bundle in half the memory, on tensor cores); elsewhere float32."""
    import torch

    if device.type != "cuda":
        return torch.float32
    stored = bundle.weights_dtype()
    return getattr(torch, stored) if stored in HALF_DTYPES else torch.bfloat16


def read_weights(bundle: Bundle, device: Any) -> dict[str, Any]:
    """``bundle``'s tensors for :meth:`LoadedModel.load` on ``device``: checked, in its
    :func:`compute_dtype`. Safe on a background thread."""
    return bundle.read_weights(compute_dtype(bundle, device))


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` as results record it: ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@functools.cache
def _mm_to_float32(device: str, dtype: Any) -> bool:
    """Whether this torch multiplies ``dtype`` matrices on ``device`` into a float32 result
    (``torch.mm(..., out_dtype=torch.float32)``: accumulated and returned in float32, never
    rounded to ``dtype``), checked once against the product of the float32 copies."""
    import torch

    if not device.startswith("cuda"):
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(8, 16, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(16, 8, generator=generator).to(device=device, dtype=dtype)
        product = torch.mm(a, b, out_dtype=torch.float32)
        expected = a.float() @ b.float()
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return product.dtype == torch.float32 and bool(torch.allclose(product, expected, atol=1e-4))


@dataclass
class LoadedModel:
    """A model ready to score: its body (hidden states) and output layer, on one device."""

    model: Any
    device: Any
    max_length: int

    config: dict[str, Any] | None = None
    # a float32 copy of a low-precision output layer's weight, where this torch cannot
    # multiply into float32 on the device (:meth:`logits`); made on first use
    _float_head: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def load(
        cls, bundle: Bundle, device: Any, dtype: Any = None, weights: Any = None
    ) -> "LoadedModel":
        """``bundle``'s model on ``device``, in ``dtype`` (default :func:`compute_dtype`), from
        its files or from ``weights`` read already (:func:`read_weights`, in that dtype)."""
        dtype = compute_dtype(bundle, device) if dtype is None else dtype
        if weights is None:
            model = bundle.load_model(dtype=dtype)
        else:
            model = bundle.model_from_weights(weights, dtype)
        model = model.to(device).eval()
        max_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        return cls(model, device, max_length, _model_config(bundle))

    @property
    def dtype(self) -> Any:
        """The dtype the model computes in (its weights')."""
        return next(self.model.parameters()).dtype

    def swap(self, bundle: Bundle) -> "LoadedModel | None":
        """Load ``bundle``'s weights into this model (same config, same tensors), checking
        its files first; None when they do not fit (then load the bundle afresh). Much
        cheaper than building a new model for each expert of an ensemble."""
        import torch
        from safetensors import safe_open

        if self.config is None or _model_config(bundle) != self.config:
            return None
        if compute_dtype(bundle, self.device) != self.dtype:  # it computes in another dtype
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
        self._float_head = None  # of the weights replaced
        return self

    @property
    def chunked(self) -> bool:
        """Whether logits can be computed from the body's hidden states by the output layer
        alone (``logits_are_output_layer``)."""
        return logits_are_output_layer(self.model)

    def states(
        self, input_ids: Any, attention_mask: Any, past: Any = None, positions: Any = None
    ) -> tuple[Any, Any]:
        """(hidden states or, for non-chunked models, logits; the key-value cache).
        ``positions``: explicit position ids, only for a model that :attr:`takes_positions`."""
        forward = self.model.base_model if self.chunked else self.model
        with without_cudnn_attention():
            out = forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **with_cache(forward, past),
                **({} if positions is None else {"position_ids": positions}),
            )
        states = out.last_hidden_state if self.chunked else out.logits
        return states, cache_of(forward, out)

    @property
    def takes_positions(self) -> bool:
        """Whether the forward that :meth:`states` calls takes ``position_ids``."""
        forward: Any = type(self.model.base_model if self.chunked else self.model)
        return _takes_positions(forward)

    def logits(self, states: Any) -> Any:
        """Float32 logits of ``states`` (from :meth:`states`). A low-precision model's output
        layer multiplies its states into float32 (as torch's own matmul accumulates them), so
        the logits are not rounded to bfloat16 (or float16) before the log-softmax: on CUDA by
        ``torch.mm(..., out_dtype=torch.float32)`` where this torch has it, else with a float32
        copy of the layer's weight (made once per model). A model whose logits are not its
        output layer's (not :attr:`chunked`) gives its own, cast."""
        import torch

        if not self.chunked:
            return states.float()
        head = self.model.get_output_embeddings()
        weight = head.weight
        if weight.dtype == torch.float32:
            return head(states).float()
        flat = states.reshape(-1, states.shape[-1])
        if _mm_to_float32(str(states.device), weight.dtype):
            logits = torch.mm(flat, weight.t(), out_dtype=torch.float32)
        else:
            if self._float_head is None:
                self._float_head = weight.float()
            logits = flat.float() @ self._float_head.t()
        if head.bias is not None:
            logits = logits + head.bias.float()
        return logits.reshape(*states.shape[:-1], logits.shape[-1])

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
    ``targets`` (N,); computed :func:`chunk_rows` positions at a time. Float64, on the CPU."""
    # to the host first: MPS has no float64
    return device_logprobs(models, coefficients, states, targets).cpu().double()


def device_logprobs(
    models: Sequence[LoadedModel],
    coefficients: Sequence[float],
    states: Sequence[Any],
    targets: Any,
) -> Any:
    """:func:`target_logprobs` left on the models' device in the logits' dtype: nothing here
    waits for the device (one copy to the host per batch, by the caller)."""
    import torch

    n = int(targets.shape[0])
    rows = chunk_rows(models[0].vocab_size(), states[0].device)
    targets = targets.to(states[0].device)
    parts = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        logits = None
        for model, coef, state in zip(models, coefficients, states, strict=True):
            part = model.logits(state[start:stop])
            if coef != 1:  # a single model's logits are used as they are (x * 1.0 is x)
                part = part * coef
            logits = part if logits is None else logits + part.to(logits.device)
        assert logits is not None
        chosen = targets[start:stop].to(logits.device)
        parts.append(logits.gather(1, chosen[:, None])[:, 0] - torch.logsumexp(logits, dim=1))
    if not parts:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


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
    """Length-sorted batches of at most ``batch_tokens`` padded tokens, of which at most
    ``MAX_BATCH_PADDING x batch_tokens`` padding (a long batch of short documents wastes
    compute)."""
    ordered = sorted(segments, key=lambda s: -len(s.tokens))
    batches: list[list[Segment]] = []
    real = 0
    for segment in ordered:
        if batches:
            width, rows = len(batches[-1][0].tokens), len(batches[-1]) + 1
            padded = width * rows
            padding = padded - real - len(segment.tokens)
            if padded <= batch_tokens and padding <= MAX_BATCH_PADDING * batch_tokens:
                batches[-1].append(segment)
                real += len(segment.tokens)
                continue
        batches.append([segment])
        real = len(segment.tokens)
    return batches


def right_padded(batch: Sequence[Segment]) -> tuple[Any, Any]:
    """(token ids, mask of the real tokens) of ``batch``, right-padded to its longest row."""
    import torch

    ids, mask, _ = padded(batch)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def padded(batch: Sequence[Segment]) -> tuple[NDArray[np.int64], ...]:
    """(token ids, mask of the real tokens, each row's length) of ``batch``, right-padded."""
    lengths = np.array([len(segment.tokens) for segment in batch], dtype=np.int64)
    ids = np.zeros((len(batch), int(lengths.max())), dtype=np.int64)
    for row, segment in enumerate(batch):
        ids[row, : len(segment.tokens)] = segment.tokens
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    return ids, mask, lengths


@dataclass
class HostCopy:
    """Scores on their way from the device to the host: ``scores`` fills once ``ready`` (a
    CUDA event; None where the copy was made at once) has happened."""

    scores: Any
    ready: Any = None

    @classmethod
    def start(cls, scores: Any) -> "HostCopy":
        """Start copying ``scores`` to the host: from a GPU into pinned memory, after what is
        queued on the device and without waiting for it."""
        import torch

        if scores.device.type != "cuda":  # the CPU's, or a copy now (MPS)
            return cls(scores.cpu())
        host = torch.empty(scores.shape, dtype=scores.dtype, pin_memory=True)
        host.copy_(scores, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(host, ready)

    def numpy(self) -> Logprobs:
        """The scores in float64, once they are on the host."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.scores.numpy().astype(np.float64)


@dataclass
class _ScoredBatch:
    """A batch whose scores are on their way to the host."""

    segments: Sequence[Segment]
    counts: NDArray[np.int64]  # target tokens of each segment, in order
    scores: HostCopy


def _score_batch(
    models: Sequence[LoadedModel], coefficients: Sequence[float], batch: Sequence[Segment]
) -> _ScoredBatch:
    """Start scoring ``batch``: its forward passes and log-probabilities are queued on the
    device and the result's copy to the host after them, without waiting for any of it."""
    ids, mask, lengths = padded(batch)
    skips = np.array([segment.skip for segment in batch], dtype=np.int64)
    counts = lengths - 1 - skips
    rows, cols = position_runs(counts, skips)  # each segment's predicting positions
    device = models[0].device
    ids_on, mask_on, rows_on, cols_on, targets = (
        uploaded(array, device) for array in (ids, mask, rows, cols, ids[rows, cols + 1])
    )
    states = [model.states(ids_on, mask_on)[0][rows_on, cols_on] for model in models]
    scores = device_logprobs(models, coefficients, states, targets)
    return _ScoredBatch(batch, counts, HostCopy.start(scores))


def position_runs(
    counts: NDArray[np.int64], firsts: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(rows, columns) of runs of positions, row after row: row r's ``counts[r]`` positions
    from column ``firsts[r]`` on."""
    rows = np.repeat(np.arange(len(counts)), counts)
    # a running index, less where the row's run begins and plus its first column
    cols = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts - firsts, counts)
    return rows, cols


def uploaded(array: NDArray[Any], device: Any) -> Any:
    """``array`` as a tensor on ``device``; to a GPU from pinned memory without blocking (a
    copy from pageable memory would first wait for everything queued on the device)."""
    import torch

    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


Batch = TypeVar("Batch")
Started = TypeVar("Started")


def one_in_flight(
    batches: Iterable[Batch], start: Callable[[Batch], Started], collect: Callable[[Started], None]
) -> None:
    """``start`` each batch (its work queued on the device, its numbers on their way to the
    host) and ``collect`` the one before it only once the next is queued: the host prepares a
    batch while the device still computes the last."""
    in_flight: list[Started] = []
    for batch in batches:
        in_flight.append(start(batch))
        if len(in_flight) > 1:
            collect(in_flight.pop(0))
    for started in in_flight:
        collect(started)


def capped_for_whole_logits(models: Sequence[LoadedModel], batch_tokens: int) -> int:
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
    batch_tokens: int | None = None,
    advance: Any = None,
) -> list[Logprobs]:
    """For each token sequence (starting with BOS), ln p(x_t | x_<t) for t = 1..n-1 under the
    models' logit combination; sequences longer than the context are scored in windows, in
    batches of ``batch_tokens`` padded tokens (by default :func:`default_batch_tokens`).
    ``advance(n)`` is told of the n target tokens each batch scored (each token once). A
    batch's numbers come to the host once, after the next batch is queued on the device."""
    import torch

    max_length = min(model.max_length for model in models)
    stride = max(1, max_length // 2)
    budget = batch_tokens or default_batch_tokens(models[0].device)
    batch_tokens = capped_for_whole_logits(models, budget)
    segments = []
    for index, sequence in enumerate(sequences):
        spans = windows(len(sequence), max_length, stride)
        for window, (start, end, first) in enumerate(spans):
            segments.append(Segment(index, window, list(sequence[start:end]), first - start - 1))
    pieces: list[list[tuple[int, Any]]] = [[] for _ in sequences]

    def collect(scored: _ScoredBatch) -> None:
        logprobs = scored.scores.numpy()
        ends = np.cumsum(scored.counts)
        for segment, end, count in zip(scored.segments, ends, scored.counts, strict=True):
            pieces[segment.sequence].append((segment.window, logprobs[end - count : end]))
        if advance is not None:
            advance(int(ends[-1]))

    with torch.inference_mode():
        one_in_flight(
            length_batches(segments, batch_tokens),
            lambda batch: _score_batch(models, coefficients, batch),
            collect,
        )
    results = []
    for parts in pieces:
        parts.sort(key=lambda part: part[0])
        results.append(
            np.concatenate([part for _, part in parts]) if parts else np.zeros(0, np.float64)
        )
    return results
