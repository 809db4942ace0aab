"""Data parallelism under ``torchrun``: DDP (or FSDP with ``--fsdp``), rank 0 writes.

Imported only when a run starts (it imports torch). Without torchrun (no ``WORLD_SIZE`` in the
environment) every helper is a no-op and the run is the plain single-process loop.
"""

import gc
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from xelm_cli.api import UsageError
from xelm_cli.api import pick_device as checked_device

T = TypeVar("T")

# Other ranks wait in a barrier while rank 0 writes a checkpoint or the bundle (and hashes
# it): gigabytes on a shared file system can outlast NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank ``rank`` of ``world`` (``local`` on its machine)."""

    rank: int = 0
    world: int = 1
    local: int = 0
    launched: bool = False  # started by torchrun (WORLD_SIZE set), even with one rank
    meshes: list[Any] = field(default_factory=list, repr=False, compare=False)  # by mesh()

    @classmethod
    def from_environment(cls) -> "Ranks":
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            world = int(os.environ["WORLD_SIZE"])
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise UsageError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers") from None
        if world < 1 or not 0 <= rank < world:
            raise UsageError(f"RANK {rank} is not a rank of WORLD_SIZE {world}")
        return cls(rank, world, local, launched=True)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes metrics, checkpoints and the bundle."""
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, NCCL on CUDA); a rendezvous of all ranks."""
        if not self.launched or dist.is_initialized():
            return
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT
        )

    def mesh(self, device: torch.device) -> Any:
        """The one-dimensional mesh of all ranks that FSDP shards over (built once)."""
        if not self.meshes:
            from torch.distributed.device_mesh import init_device_mesh

            self.meshes.append(init_device_mesh(device.type, (self.world,)))
        return self.meshes[0]

    def stop(self) -> None:
        """Leave the process group, and let it go. A mesh keeps its groups (for
        torch.compile) and DTensor's caches keep the mesh past the run: gloo's worker
        threads then lived on, and one that freed a collective's tensors while the
        interpreter finalised aborted the process ("terminate called without an active
        exception"). Outside torch.compile a mesh finds its groups by name. The run's
        model, whose FSDP state holds the group too, is collected here (reference cycles)."""
        if not self.launched:
            return
        if dist.is_initialized():
            dist.destroy_process_group()
        for mesh in self.meshes:
            getattr(mesh, "_pg_registry", {}).clear()
        self.meshes.clear()
        gc.collect()

    def barrier(self) -> None:
        if self.launched and dist.is_initialized():
            dist.barrier()

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a collective; pickled, so small values only)."""
        if not self.launched:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over all ranks (logging: every rank gets rank 0's number)."""
        return self.sum(value, device) / self.world

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over all ranks, in float64: on the CUDA device under NCCL, on
        the host under gloo (which reduces CPU tensors; MPS has no float64)."""
        if not self.launched:
            return value
        where = device if device.type == "cuda" else torch.device("cpu")
        tensor = torch.tensor([value], dtype=torch.float64, device=where)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item())


def pick_device(name: str, ranks: Ranks) -> torch.device:
    """The checked device ``name`` names (``xelm_cli.api.pick_device``); under torchrun plain
    ``cuda`` is this rank's own, ``cuda:LOCAL_RANK``, and a numbered one is refused (every
    rank would take that one GPU), before any device is touched."""
    if ranks.launched and name not in ("auto", "cpu", "cuda", "mps"):
        try:
            asked = torch.device(name)
        except RuntimeError:
            asked = None  # checked_device names the way out
        if asked is not None and asked.type == "cuda" and asked.index is not None:
            raise UsageError(
                f"--device {name} under torchrun would put every rank on one GPU: pass "
                "--device cuda (each rank takes the GPU of its LOCAL_RANK; choose the GPUs "
                "with CUDA_VISIBLE_DEVICES)"
            )
    device: torch.device = checked_device(name)
    if device.type == "cuda" and ranks.launched:
        if device.index is None:  # one device per rank
            device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)  # NCCL's default device
    return device


@dataclass(frozen=True)
class Sharding:
    """How FSDP runs: the dtypes it all-gathers parameters in and reduces gradients in (the
    sharded parameters and the optimiser stay fp32), and ``from_main``: rank 0 alone reads
    the weights, the other ranks build the model on the meta device and receive their shards
    after sharding (else every rank reads the whole model, as before; tests compare the two)."""

    param_dtype: torch.dtype = torch.float32
    reduce_dtype: torch.dtype = torch.float32
    from_main: bool = True

    @classmethod
    def on(cls, device: torch.device) -> "Sharding":
        """On CUDA parameters are gathered in bf16, which autocast computes in anyway: half
        the traffic of fp32; elsewhere fp32 throughout."""
        return cls(param_dtype=torch.bfloat16) if device.type == "cuda" else cls()

    def reads_weights(self, ranks: Ranks) -> bool:
        return ranks.main or not self.from_main

    def record(self) -> dict[str, str]:
        """The training record's ``implementation.fsdp``."""
        return {
            "param_dtype": str(self.param_dtype).removeprefix("torch."),
            "reduce_dtype": str(self.reduce_dtype).removeprefix("torch."),
        }


def wrap(model: Any, ranks: Ranks, device: torch.device, sharding: Sharding | None) -> Any:
    """DDP, or FSDP's ``fully_shard`` with ``sharding``, around ``model``; the model itself
    without torchrun."""
    if not ranks.launched:
        return model
    if sharding is not None:
        return shard_from_main(model, sharding, ranks, device)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(model: Any, sharding: Sharding | None = None, mesh: Any = None) -> Any:
    """FSDP2 in place: one shard unit per decoder layer (:func:`shard_units`), then the rest
    of the model (embeddings, final norm, output layer) as the root unit; gathers and
    reductions in ``sharding``'s dtypes (default: fp32); over ``mesh`` (default: all
    ranks)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    sharding = sharding or Sharding()
    policy = MixedPrecisionPolicy(
        param_dtype=sharding.param_dtype, reduce_dtype=sharding.reduce_dtype
    )
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


def shard_from_main(model: Any, sharding: Sharding, ranks: Ranks, device: torch.device) -> Any:
    """:func:`shard`, then with ``sharding.from_main`` every rank's shards of rank 0's
    parameters, and rank 0's buffers whole (a collective; the other ranks' models are on the
    meta device until then)."""
    mesh = ranks.mesh(device)
    if not sharding.from_main:
        return shard(model, sharding, mesh)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = model.state_dict() if ranks.main else {}  # keeps rank 0's whole tensors until sent
    shard(model, sharding, mesh)
    if not ranks.main:
        model.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=options)
    for buffer in model.buffers():  # non-persistent ones (rotary frequencies) are in no state dict
        dist.broadcast(buffer, src=0)
    return model


def shard_units(model: Any) -> list[Any]:
    """The modules of the classes the model declares must not be split (transformers'
    ``_no_split_modules``: its decoder layers, ``GPT2Block``, ``LlamaDecoderLayer``, ...),
    inner ones first; none where it declares none (the whole model is one unit). A module
    holding a parameter tied to one outside it (BERT's embeddings, tied to its output layer)
    stays in the root unit: FSDP manages a parameter in one unit only."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)

    def tied_outside(prefix: str, module: Any) -> bool:
        inside = prefix + "."
        return any(
            not name.startswith(inside)
            for parameter in module.parameters()
            for name in owners[id(parameter)]
        )

    units = [
        module
        for prefix, module in model.named_modules()
        if type(module).__name__ in names and not tied_outside(prefix, module)
    ]
    return units[::-1]


def unwrap(model: Any) -> Any:
    """The module inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(model: Any, last: bool) -> AbstractContextManager[Any]:
    """Skip DDP's gradient all-reduce on every micro-batch but the last of a step. FSDP keeps
    reduce-scattering each micro-batch: skipping it would hold every rank's unsharded
    gradients, the memory FSDP is there to save."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    return nullcontext()


def full_state_dict(model: Any, fsdp: bool) -> dict[str, Any] | None:
    """FSDP: the whole model's parameters on rank 0's CPU (a collective: every rank calls it)."""
    if not fsdp:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


class OptimizerState:
    """Holds an optimiser ``state_dict`` (parameter indices as keys) where an optimiser is
    expected: ``save_checkpoint`` reads it, ``load_checkpoint`` fills it."""

    def __init__(self, value: dict[str, Any] | None = None) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        assert self.value is not None
        return self.value

    def load_state_dict(self, value: dict[str, Any]) -> None:
        self.value = value


def gather_for_checkpoint(model: Any, optimizer: Any) -> tuple[dict[str, Any], OptimizerState]:
    """FSDP: full model and optimiser states on rank 0's CPU (a collective; empty elsewhere),
    the optimiser's keyed by parameter index as an unsharded optimiser's are: parameters
    numbered in the order of the optimiser's param groups, as ``Optimizer.state_dict`` numbers
    them (with weight decay the matrices' group comes first), so a checkpoint is the same file
    with and without FSDP."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    full: dict[str, Any] = dict(get_optimizer_state_dict(model, optimizer, options=options))
    index = {name: i for i, name in enumerate(names_in_group_order(model, optimizer))}
    state = {index[name]: value for name, value in full.get("state", {}).items()}
    groups = [
        {**group, "params": [index[name] for name in group["params"]]}
        for group in full.get("param_groups", [])
    ]
    return weights, OptimizerState({"state": state, "param_groups": groups})


def names_in_group_order(model: Any, optimizer: Any) -> list[str]:
    """The names of the optimiser's parameters, group by group: the position of a name is
    the index ``Optimizer.state_dict`` gives its parameter."""
    named = names_of(model)
    return [named[id(p)] for group in optimizer.param_groups for p in group["params"]]


# The param-group flags that say how the optimiser computes, not what: the run's own (fused on
# CUDA), whatever the optimiser that wrote a checkpoint had (a CPU run's, say).
KERNEL_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer(
    model: Any, optimizer: Any, saved: dict[str, Any] | None, sharding: Sharding | None
) -> None:
    """Restore a checkpoint's optimiser state (parameter indices) into the run's optimiser;
    FSDP: every rank keeps its shard of the full state, which every rank passes, or with
    ``sharding.from_main`` rank 0 alone (``saved`` is None elsewhere; a collective). The
    optimiser keeps the kernel flags (``KERNEL_FLAGS``) it was built with."""
    built = [{k: group[k] for k in KERNEL_FLAGS if k in group} for group in optimizer.param_groups]
    if saved is not None:  # torch places the state (step on the device or not) by these flags
        saved = {
            **saved,
            "param_groups": [
                {**group, **flags}
                for group, flags in zip(saved["param_groups"], built, strict=False)
            ],
        }
    if sharding is None:
        assert saved is not None
        optimizer.load_state_dict(saved)
    else:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        full = {} if saved is None else optimizer_state_by_name(model, optimizer, saved)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=sharding.from_main)
        set_optimizer_state_dict(model, optimizer, full, options=options)
    for group, flags in zip(optimizer.param_groups, built, strict=True):
        group.update(flags)


def optimizer_state_by_name(model: Any, optimizer: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state keyed by parameter index as the one keyed by parameter name that
    ``set_optimizer_state_dict`` reads. As ``Optimizer.load_state_dict`` does, the parameter
    at position j of saved group g is the one at position j of the optimiser's group g."""
    named = names_of(model)
    groups = [[named[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    if [len(g) for g in groups] != [len(g["params"]) for g in saved["param_groups"]]:
        raise ValueError(
            "the checkpoint's optimiser state has other parameter groups than this optimiser"
        )
    names = {
        int(i): name
        for group, ours in zip(saved["param_groups"], groups, strict=True)
        for i, name in zip(group["params"], ours, strict=True)
    }
    return {
        "state": {names[int(i)]: value for i, value in saved["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in saved["param_groups"]
        ],
    }


def names_of(model: Any) -> dict[int, str]:
    """Each parameter's name, by the parameter's ``id`` (a tied one: its first name)."""
    return {id(parameter): name for name, parameter in model.named_parameters()}
