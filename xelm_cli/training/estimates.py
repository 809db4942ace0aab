"""What a training run will cost before it starts: memory on the device and time.

Memory of the ``causal-lm`` trainer (fp32 master weights, AdamW), in bytes, for N parameters,
a micro-batch of b x s tokens, L layers of hidden size h and MLP width i, vocabulary V:

- weights 4N, gradients 4N, AdamW moments 8N; on CUDA the bf16 copies autocast makes, 2N,
  less an untied input embedding's (a lookup, which autocast does not cast);
  under DDP (several ranks without ``--fsdp``) another 4N of gradients, DDP's buckets (a copy
  of every gradient for the all-reduce: the trainer keeps ``gradient_as_bucket_view`` off);
  under FSDP over r ranks (``--fsdp``, each decoder layer a shard unit and the rest of the
  model the root unit, as the trainer wraps it) each device holds 1/r of the weights,
  gradients and moments, plus the gathered weights of the root unit (embeddings, final norm,
  an untied output layer: FSDP keeps the root gathered from the forward to the end of the
  backward) and one decoder layer's gathered weights and gradients; not the root's
  gradients (the output layer's is the loss's, the input embedding's comes last, when the
  activations are freed). Measured on the CPU (rank 0 of 8 in a fake process group, fp32,
  a 58M-parameter Llama at 1 x 128): 0.43 GB for 0.43 estimated with the chunked loss, 0.38
  for 0.38 with the plain one. On CUDA FSDP gathers in bf16 (the trainer's mixed-precision
  policy), so the gathered weights take 2 bytes a parameter and autocast makes no copies of
  its own (not yet measured on a GPU);
- activations kept for the backward pass: e (10h + 5i) + 8h bytes per token and layer (e = 2
  under bf16 autocast, 4 in fp32), and the attention matrix: with SDPA (``--attention sdpa``,
  and ``auto``, transformers' choice where the model supports it) on the CPU its
  probabilities, 4 x heads x s (its SDPA kernel keeps them; CUDA's fused kernels, SDPA and
  flash attention, do not); with eager attention its scores and probabilities, 2e x heads x s,
  on either device; with gradient checkpointing 4h per token and layer plus one layer's full
  activations. The coefficients were fitted to the peak
  resident memory of fp32 training steps on the CPU (Llama-style, h = 256 and 512, s = 128 and
  512; within 13%; tests/test_plan_estimates.py checks one, with SDPA and with eager attention,
  the latter 2% over the measured peak at b x s = 8 x 512 and 14% over at 2 x 2048); on a GPU
  they are not yet measured;
- the loss: the plain loss (transformers' cross-entropy of the whole batch's logits, upcast to
  fp32) peaks in its backward with log-softmax's fp32 output, the gradient coming into it and
  the one it makes: 12 bytes a logit, under autocast too (the bf16 logits are freed by then;
  10, the forward's peak, was 0.96x a step measured on an H200); the chunked loss one chunk
  of 2^26 logits in fp32 with a temporary of the same size (logsumexp's; under autocast,
  later, the chunk's gradient in bf16 and a bf16 product of at most 2^26 elements, one slice
  of the vocabulary, on its way into the output layer's gradient), the hidden states'
  gradient and an fp32 gradient of the output layer, accumulated in place (the backward
  scales it in place too).

Time: tokens x 6N FLOP at the FLOP/s a measured run reached on the same machine (its training
record: tokens, ``wall_seconds``, the time from the training loop's start, validation and
checkpoints included, and its model's parameters; a record without ``wall_seconds``, of an
older xelm, gives ``seconds``, the training steps' time alone), scaled from the devices it ran
on (its ``hardware.world_size``, 1 in a record without it) to those each planned run trains on,
plus its ``setup_seconds`` (from the trainer's start to its loop: loading the model and the data,
sharding, the optimiser; 0 in a record without it) once per run: the time a run of a few steps
actually takes. The process's start (Python, importing torch) comes before and is not counted.

An MoE model built from k experts of this shape (xelm bundle moe) holds N + (k - 1) x 3hiL + khL
parameters (k MLPs per layer, plus k x h router weights a layer) and, with top-t routing, uses
N + (t - 1) x 3hiL + khL of them per token (every router weight: each token is scored against
all k experts): its memory is estimated at the first count with the plain loss (the trainer
keeps transformers' loss, which adds the load-balancing term, for MoE models) and t MLPs'
activations a token, its time at the second (``moe_shapes``).
"""

import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from xelm_cli.bundle.fingerprint import tensor_shapes
from xelm_cli.bundle.store import Bundle
from xelm_cli.common.errors import UsageError
from xelm_cli.common.jsonio import read_json_object

LEAN_CHUNK_ELEMENTS = 1 << 26  # as plugins/xelm_trainer/lean_loss.py
# a tensor of a decoder layer (the trainer's FSDP shards them one by one): its name has a
# numbered part, the layer's (model.layers.3.mlp, transformer.h.3.attn, gpt_neox.layers.3...)
IN_A_LAYER = re.compile(r"\.\d+\.")
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*")


def parse_size(text: str) -> int:
    """``80GB`` -> 80e9 bytes, ``141GiB`` -> 141 x 2^30; also ``512M``, ``2T``."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise UsageError(f"not a memory size: {text!r} (examples: 80GB, 141GiB, 512M)")
    power = " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * (1024 if match[3] else 1000) ** power)


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    embedding: int  # parameters of the input embedding
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    # one decoder layer's (FSDP's shard unit); 0: no numbered layers, the whole model is one
    # unit
    layer_parameters: int = 0
    # the output layer is the input embedding's matrix; an untied input embedding is only
    # looked up, which autocast never casts (no bf16 copy of it)
    tied: bool = True

    @classmethod
    def of(cls, bundle: Bundle) -> "ModelShape":
        config = read_json_object(bundle.path / "config.json", f"{bundle.path}/config.json")
        config |= config.get("text_config") or {}

        def first(*names: str) -> int | None:
            found = [config[n] for n in names if isinstance(config.get(n), int)]
            return found[0] if found else None

        shapes: dict[str, list[int]] = {}
        for path in sorted(bundle.path.glob("*.safetensors")):
            shapes |= tensor_shapes(path)
        hidden = first("hidden_size", "n_embd", "d_model", "dim")
        layers = first("num_hidden_layers", "n_layer", "num_layers", "n_layers")
        vocab = first("vocab_size")
        if not (shapes and hidden and layers and vocab):
            raise UsageError(
                f"cannot estimate {bundle.path}: its config names no hidden size, layer count "
                "or vocabulary size that xelm knows"
            )
        intermediate = first("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size")
        heads = first("num_attention_heads", "n_head", "attention_heads", "num_heads")
        embedding = max((math.prod(s) for s in shapes.values() if s[:1] == [vocab]), default=0)
        vocabulary_matrices = sum(1 for s in shapes.values() if s == [vocab, hidden])
        in_layers = sum(math.prod(s) for name, s in shapes.items() if IN_A_LAYER.search(name))
        return cls(
            parameters=sum(math.prod(s) for s in shapes.values()),
            embedding=embedding,
            layers=layers,
            hidden=hidden,
            intermediate=intermediate or 4 * hidden,
            vocab=vocab,
            heads=heads or max(1, hidden // 64),
            layer_parameters=in_layers // layers,
            tied=vocabulary_matrices < 2,
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the training device, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    loss: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.loss

    def as_dict(self) -> dict[str, int]:
        return asdict(self) | {"total": self.total}


def training_memory(
    shape: ModelShape,
    batch_size: int,
    block_size: int,
    *,
    cuda: bool,
    lean_loss: bool = True,
    gradient_checkpointing: bool = False,
    attention: str = "sdpa",
    mlps_per_token: int = 1,
    shards: int = 1,
    ddp: bool = False,
) -> MemoryEstimate:
    """The formula of the module's docstring, for one micro-batch on one device, with the
    ``attention`` implementation the run uses (``--attention``; ``auto`` is sdpa),
    ``mlps_per_token`` MLPs' activations a token and layer (an MoE's top-t routing: t) and the
    model sharded over ``shards`` ranks by FSDP (1: every device holds all of it), or with
    ``ddp`` its gradients in DDP's buckets too."""
    n, h, i = shape.parameters, shape.hidden, shape.intermediate
    tokens = batch_size * block_size
    element = 2 if cuda else 4
    per_layer = (
        element * (10 * h + 5 * i * mlps_per_token)
        + 8 * h
        + attention_matrix(shape, block_size, cuda, attention)
    )
    if gradient_checkpointing:
        activations = tokens * (4 * h * shape.layers + per_layer)
    else:
        activations = tokens * per_layer * shape.layers
    activations += tokens * 8 * h  # the embedding's output and the final norm
    if lean_loss:
        chunk = min(tokens, max(1, LEAN_CHUNK_ELEMENTS // shape.vocab)) * shape.vocab
        # a chunk's fp32 logits with logsumexp's temporary of them, or (bf16) with their
        # gradient in bf16 and one vocabulary slice of the output layer's gradient in bf16
        part = min(shape.vocab, max(1, LEAN_CHUNK_ELEMENTS // h)) * h if cuda else 0
        transient = max(chunk * 8, chunk * (4 + element) + part * element)
        loss = transient + tokens * h * element + shape.vocab * h * 4
    else:
        loss = tokens * shape.vocab * 12
    weights, gradients, moments = model_states(shape, shards, cuda=cuda)
    cast = n - (0 if shape.tied else shape.embedding)  # the weights autocast copies to bf16
    return MemoryEstimate(
        weights=weights + (2 * cast if cuda and shards == 1 else 0),
        gradients=gradients + (4 * n if ddp else 0),  # DDP's buckets
        optimizer=moments,
        activations=activations,
        loss=loss,
    )


def model_states(shape: ModelShape, shards: int, *, cuda: bool = False) -> tuple[int, int, int]:
    """Bytes of the fp32 weights, gradients and AdamW moments one device holds at the peak:
    the whole model's, or under FSDP over ``shards`` ranks a 1/shards slice of each, plus the
    gathered weights of the root unit (every parameter outside the decoder layers) and one
    decoder layer's gathered weights (bf16 on CUDA, fp32 elsewhere) and gradients (a model
    without numbered layers is one unit: its weights and gradients are gathered whole)."""
    n, layer = shape.parameters, shape.layer_parameters
    if shards == 1:
        return 4 * n, 4 * n, 8 * n
    part, root = math.ceil(n / shards), n - shape.layers * layer
    gathered = 2 if cuda else 4
    return 4 * part + gathered * (root + layer), 4 * (part + (layer or n)), 8 * part


def attention_matrix(shape: ModelShape, block_size: int, cuda: bool, attention: str) -> int:
    """Bytes per token and layer of the attention matrix kept for the backward pass: eager
    attention's scores and probabilities (heads x s each, in the compute dtype); SDPA's on the
    CPU keeps the fp32 probabilities; the fused kernels of CUDA none."""
    if attention == "eager":
        return 2 * (2 if cuda else 4) * shape.heads * block_size
    return 0 if cuda else 4 * shape.heads * block_size


def largest_batch(
    shape: ModelShape, block_size: int, limit: int, **options: Any
) -> tuple[int, MemoryEstimate]:
    """The largest micro-batch (sequences) whose estimate fits in ``limit`` bytes (0: none)."""
    if training_memory(shape, 1, block_size, **options).total > limit:
        return 0, training_memory(shape, 1, block_size, **options)
    low, high = 1, 2
    while training_memory(shape, high, block_size, **options).total <= limit:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if training_memory(shape, middle, block_size, **options).total <= limit:
            low = middle
        else:
            high = middle
    return low, training_memory(shape, low, block_size, **options)


# What a CUDA device's memory keeps from a run's tensors, which the estimate counts alone: the
# CUDA context (0.3-0.5 GiB), cuBLAS and cuDNN workspaces, NCCL's buffers across ranks, and the
# caching allocator's fragmentation (blocks it holds but cannot hand out whole). A batch planned
# against the whole memory runs out of it; the reserve is the larger of these two.
CUDA_RESERVE_BYTES = 3 << 29  # 1.5 GiB
CUDA_RESERVE_FRACTION = 0.05


def usable_memory(total: int, cuda: bool) -> int:
    """The bytes of a device of ``total`` bytes that a run's estimate may fill: on CUDA
    ``total`` less ``CUDA_RESERVE_BYTES`` or ``CUDA_RESERVE_FRACTION`` of it, the larger (0
    at least); on the CPU all of it."""
    if not cuda:
        return total
    return max(0, total - max(CUDA_RESERVE_BYTES, math.ceil(total * CUDA_RESERVE_FRACTION)))


def device_memory(cuda: bool) -> int:
    """Memory of the device that would train: the first GPU's, else the machine's RAM;
    refused in one line asking for --memory when the runs train on CUDA and this machine has
    none."""
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "the runs train on CUDA (--device in --train-args), which this machine lacks: "
                "give the memory of the GPU that will train with --memory (e.g. 80GB)"
            )
        return int(torch.cuda.get_device_properties(0).total_memory)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class Throughput:
    """The FLOP/s a measured training run reached (6N x tokens / seconds), scaled to the
    devices of the runs planned, where, and which time of its training record it divides by
    (``timed``): ``wall_seconds``, everything from the training loop's start, or, in a record
    without it, ``seconds``, the steps alone."""

    flops_per_s: float
    device: str
    measured: str
    timed: str
    setup_seconds: float = 0.0  # before its loop: loading, sharding (0 in older records)

    @classmethod
    def of(cls, bundle_path: Path, ranks: int = 1) -> "Throughput":
        """Of the run that wrote ``bundle_path``, on ``ranks`` devices instead of its own."""
        bundle = Bundle.read(bundle_path)
        record = bundle.manifest.training or {}
        timed = "wall_seconds" if "wall_seconds" in record else "seconds"
        tokens, seconds = record.get("tokens"), record.get(timed)
        if not (isinstance(tokens, int) and isinstance(seconds, int | float) and seconds > 0):
            raise UsageError(
                f"{bundle_path} holds no timed training run; pass a bundle `xelm train` wrote"
            )
        parameters = ModelShape.of(bundle).parameters
        hardware = record.get("hardware") or {}
        device = str(hardware.get("device", "unknown"))
        scale = ranks / int(hardware.get("world_size") or 1)
        flops = 6 * parameters * tokens / seconds * scale
        setup = record.get("setup_seconds")
        setup = float(setup) if isinstance(setup, int | float) and setup >= 0 else 0.0
        return cls(flops, device, str(bundle_path), timed, setup)

    def seconds(self, shape: ModelShape, tokens: int) -> float:
        """A run's time: the measured run's setup, then its tokens at the measured FLOP/s."""
        return self.setup_seconds + 6 * shape.parameters * tokens / self.flops_per_s


def moe_shapes(shape: ModelShape, k: int, top_k: int) -> tuple[ModelShape, ModelShape]:
    """(held, active): the shape of the MoE model built from k experts of ``shape`` with every
    parameter it holds (for memory), and with the parameters one token uses under top-``top_k``
    routing (for time: 6 x active x tokens FLOP)."""
    mlp = 3 * shape.hidden * shape.intermediate * shape.layers
    routers = k * shape.hidden * shape.layers
    held = replace(
        shape,
        parameters=shape.parameters + (k - 1) * mlp + routers,
        layer_parameters=shape.layer_parameters + ((k - 1) * mlp + routers) // shape.layers,
    )
    active = replace(shape, parameters=shape.parameters + (top_k - 1) * mlp + routers)
    return held, active
