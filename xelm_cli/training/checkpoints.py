"""Training: the request a trainer receives, budgets, block packing and checkpoints.

Normative text: spec/training.md. Trainers (plugins) reach this module through
``xelm_cli.api``; it holds everything that is the same for every trainer, so that two trainers
read the same blocks in the same order and write checkpoints the same way.
"""

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xelm_cli.common.atomic import atomic_directory
from xelm_cli.common.errors import FormatError, UsageError, exception_line
from xelm_cli.common.jsonio import parse_json_object, pretty_json, short_repr
from xelm_cli.data.shards import Shards

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
CHECKPOINT_FORMAT = "xelm-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


# --- budgets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """One run of a plan: a name, the languages it trains on, its tokens."""

    name: str
    languages: tuple[str, ...]
    tokens: int
    expert: int | None  # index in the allocation; None for the dense baseline


def plan_budgets(budget: int, experts: Sequence[Sequence[str]], step: int = 1) -> list[Budget]:
    """Equal compute: each of the k experts trains ``budget // k`` tokens rounded down to whole
    optimiser steps of ``step`` tokens (as `xelm train` trains them), and the dense model what
    they train together.

    Training FLOPs are proportional to tokens for models of one size, so the k experts together
    cost exactly what the dense model costs; the rounding leaves less than k steps of
    ``budget`` untrained.
    """
    if not experts:
        raise UsageError("the allocation has no experts")
    k = len(experts)
    share = budget // k // step * step
    if share < 1:
        raise UsageError(
            f"a budget of {budget:,} tokens gives each of {k} experts less than one step of "
            f"{step:,} tokens: raise --budget or make a step smaller (--batch-size, --block-size)"
        )
    runs = [Budget(f"expert-{i}", tuple(langs), share, i) for i, langs in enumerate(experts)]
    everything = tuple(dict.fromkeys(lang for langs in experts for lang in langs))
    return [*runs, Budget("dense", everything, share * k, None)]


# --- data: documents packed into blocks ----------------------------------------------------------


class BlockStream:
    """Documents of some languages, shuffled per epoch, packed as ``bos doc eos`` into blocks.

    The stream is the concatenation of epochs; epoch ``e`` is every document of the languages
    once, in an order drawn from ``(seed, e)``. Block ``i`` is tokens ``[i * size, (i+1) * size)``
    of the stream, so the data position is one integer (blocks consumed) and a resumed run reads
    exactly the blocks an uninterrupted one would. Blocks never depend on anything but
    ``(shards, languages, size, seed)``; under data parallelism rank ``r`` of ``w`` takes the
    blocks ``i`` with ``i % w == r`` of each global batch (``strided``).
    """

    def __init__(
        self,
        shards: Shards,
        languages: Sequence[str],
        block_size: int,
        *,
        seed: int = 0,
        bos: int | None = None,
        eos: int | None = None,
    ) -> None:
        if block_size < 2:
            raise UsageError(f"block size must be at least 2 tokens, not {block_size}")
        shards.require_languages(languages)
        self.languages = list(languages)
        self.block_size = block_size
        self.seed = seed
        self.bos = [] if bos is None else [bos]
        self.eos = [] if eos is None else [eos]
        self._tokens = [shards.tokens(lang) for lang in self.languages]
        self._offsets = [np.asarray(shards.offsets(lang), dtype=np.int64) for lang in languages]
        # every document as (language index, document index), in the manifest's order
        self._documents = np.concatenate(
            [
                np.stack([np.full(len(off) - 1, i), np.arange(len(off) - 1)], axis=1)
                for i, off in enumerate(self._offsets)
            ]
        ).astype(np.int64)
        lengths = np.concatenate([np.diff(off) for off in self._offsets])
        self._lengths = lengths + len(self.bos) + len(self.eos)
        self.epoch_tokens = int(self._lengths.sum())
        if self.epoch_tokens == 0 or int(lengths.sum()) == 0:
            raise UsageError(f"{shards.path} has no tokens in {', '.join(self.languages)}")
        self._epoch_cache: dict[int, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}

    def epoch_order(self, epoch: int) -> NDArray[np.int64]:
        """Rows of the document table in the order epoch ``epoch`` reads them."""
        return self._epoch(epoch)[0]

    def _epoch(self, epoch: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        if epoch not in self._epoch_cache:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self._documents))
            starts = np.zeros(len(order) + 1, dtype=np.int64)
            np.cumsum(self._lengths[order], out=starts[1:])
            self._epoch_cache = {epoch: (order, starts)}  # one epoch at a time is enough
        return self._epoch_cache[epoch]

    def documents_in(self, first_block: int, n_blocks: int) -> list[tuple[str, int]]:
        """(language, document index) of every document that blocks touch (for audits)."""
        seen: list[tuple[str, int]] = []
        for start, end, row in self._pieces(first_block, n_blocks):
            del start, end
            lang_index, doc = self._documents[row]
            item = (self.languages[int(lang_index)], int(doc))
            if not seen or seen[-1] != item:
                seen.append(item)
        return seen

    def _pieces(self, first_block: int, n_blocks: int) -> list[tuple[int, int, int]]:
        """(start, end, row): slices of packed documents covering the blocks, in order."""
        begin = first_block * self.block_size
        end = begin + n_blocks * self.block_size
        pieces = []
        position = begin
        while position < end:
            epoch, within = divmod(position, self.epoch_tokens)
            order, starts = self._epoch(epoch)
            k = int(np.searchsorted(starts, within, side="right")) - 1
            take = min(int(starts[k + 1]) - within, end - position)
            offset = within - int(starts[k])
            pieces.append((offset, offset + take, int(order[k])))
            position += take
        return pieces

    def _packed(self, row: int, start: int, end: int) -> NDArray[np.int64]:
        """Tokens ``[start, end)`` of document ``row`` packed as ``bos doc eos``, reading only
        that part of the memory-mapped document (a block of a long document costs a block)."""
        lang_index, doc = (int(x) for x in self._documents[row])
        offsets = self._offsets[lang_index]
        first, length = int(offsets[doc]), int(offsets[doc + 1] - offsets[doc])
        lead, tail = len(self.bos), len(self.bos) + length  # where the body and eos start
        low, high = (first + min(max(at - lead, 0), length) for at in (start, end))
        return np.concatenate(
            [
                np.asarray(self.bos[start:end], dtype=np.int64),
                np.asarray(self._tokens[lang_index][low:high], dtype=np.int64),
                np.asarray(self.eos[max(start - tail, 0) : max(end - tail, 0)], dtype=np.int64),
            ]
        )

    def blocks(self, first_block: int, n_blocks: int) -> NDArray[np.int64]:
        """Blocks ``first_block .. first_block + n_blocks - 1``, shape (n_blocks, block_size)."""
        return self._assembled(self._pieces(first_block, n_blocks), n_blocks)

    def strided(self, first_block: int, n_blocks: int, stride: int) -> NDArray[np.int64]:
        """Blocks ``first_block + k * stride`` for ``k < n_blocks``: one rank's share.

        Under data parallelism rank ``r`` of ``w`` reads ``strided(start + r, n, w)`` of the
        ``n * w`` blocks from ``start``; with ``stride == 1`` this is ``blocks``.
        """
        pieces = [p for k in range(n_blocks) for p in self._pieces(first_block + k * stride, 1)]
        return self._assembled(pieces, n_blocks)

    def _assembled(self, pieces: list[tuple[int, int, int]], n_blocks: int) -> NDArray[np.int64]:
        parts = [self._packed(row, start, end) for start, end, row in pieces]
        return np.concatenate(parts).reshape(n_blocks, self.block_size)


# --- checkpoints ---------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:09d}"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as (step, path), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match[1]), child))
    return sorted(found)


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    model: Any,
    optimizer: Any,
    state: dict[str, Any],
    keep: int = 1,
    tensor_files: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write ``step-NNN/`` atomically (model, optimiser, RNG states, JSON state, and
    ``tensor_files``: more safetensors files by name, e.g. the other ranks' RNG states);
    keep the newest ``keep`` (at least 1: this one), delete older ones.

    No pickle: tensors go to safetensors, everything else to JSON.
    """
    if keep < 1:
        raise ValueError(
            f"save_checkpoint: keep must be at least 1 (the checkpoint it writes), not {keep}"
        )
    import torch
    from safetensors.torch import save_file, save_model

    target = directory / checkpoint_name(step)
    directory.mkdir(parents=True, exist_ok=True)
    optimizer_tensors, optimizer_json = _split_optimizer_state(optimizer.state_dict())
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    with atomic_directory(target, overwrite=True) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
        save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
        save_file(rng, str(tmp / RNG_FILE))
        for name, tensors in (tensor_files or {}).items():
            save_file(tensors, str(tmp / name))
        record = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
                  "step": step, "optimizer": optimizer_json, **state}  # fmt: skip
        (tmp / STATE_FILE).write_bytes(pretty_json(record))
    for _, old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


# The param-group flags that say how an optimiser computes, not what: a loaded optimiser keeps
# its own (a run on CUDA its fused kernel), whatever the one that wrote the checkpoint had.
OPTIMIZER_KERNEL_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def load_checkpoint(path: Path, *, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore model, optimiser and RNG states from ``path``; return its JSON state. The
    optimiser keeps its kernel flags (``OPTIMIZER_KERNEL_FLAGS``). A file that cannot be read
    (damaged, missing) is refused in one line naming the checkpoint and the way out."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model

    state = read_checkpoint_state(path)
    try:
        missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=True)
        del missing, unexpected
        tensors = load_file(str(path / OPTIMIZER_FILE))
        rng = load_file(str(path / RNG_FILE))
        for other in sorted(path.glob("*.safetensors")):  # the other ranks' RNG states
            if other.name not in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE):
                _check_safetensors_header(other)
    except (OSError, SafetensorError) as exc:
        raise damaged_checkpoint(path, exc) from None
    saved = _join_optimizer_state(tensors, state.pop("optimizer"))
    groups = getattr(optimizer, "param_groups", None)  # a torch optimiser (else a holder)
    built = [{k: g[k] for k in OPTIMIZER_KERNEL_FLAGS if k in g} for g in groups or ()]
    for group, flags in zip(saved["param_groups"], built, strict=False):
        group.update(flags)  # before loading: torch places the state by them
    optimizer.load_state_dict(saved)
    for group, flags in zip(getattr(optimizer, "param_groups", ()), built, strict=False):
        group.update(flags)
    restore_rng_states(rng)
    return state


def _check_safetensors_header(path: Path) -> None:
    """Read ``path``'s safetensors header (not its tensors): raises what ``load_file`` would on
    a damaged header or a file shorter than the header says."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        f.keys()


def damaged_checkpoint(path: Path, exc: BaseException) -> FormatError:
    """The one line for a checkpoint whose files cannot be read, with the way out: delete it
    and resume from the one before it when there is one (only the newest is usually kept),
    else start over (``--force`` without ``--resume``: with it a run resumes)."""
    reason = exception_line(exc, 160)
    older = [step for step, other in list_checkpoints(path.parent) if other.name < path.name]
    if older:
        way = (
            f"delete it to resume from step {older[-1]} with --resume, or run without --resume "
            "and with --force to start over"
        )
    else:
        way = (
            "no older checkpoint is kept: run without --resume and with --force to start over "
            "(or delete it: --resume then starts the run from the beginning)"
        )
    return FormatError(f"checkpoint {path} cannot be read ({reason}); {way}")


def restore_rng_states(rng: dict[str, Any]) -> None:
    """Set torch's CPU generator and each visible GPU's from a checkpoint's ``rng`` (``torch``,
    ``cuda.I``); a run resumed on fewer GPUs than it saved skips the states of the missing."""
    import torch

    torch.set_rng_state(rng["torch"])
    saved = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
    for device, cuda_state in enumerate(saved[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(cuda_state, device)


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The JSON state of the checkpoint ``path``, refused in one line when it is not one or has
    a format version this xelm does not read (checkpoints of xelm before the field are 1)."""
    try:  # named by the file alone: the refusal names the checkpoint, and is cut at 160
        raw = (path / STATE_FILE).read_bytes()
        state = parse_json_object(raw, STATE_FILE, unique_keys=True)
    except FileNotFoundError:  # gone: the way out as for its other files
        raise damaged_checkpoint(path, FormatError(f"{STATE_FILE} not found")) from None
    except FormatError as exc:  # not JSON, a key twice: the way out as for its other files
        raise damaged_checkpoint(path, exc) from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{path}: not an xelm checkpoint")
    version = state.get("format_version", 1)
    if type(version) is not int or version != CHECKPOINT_FORMAT_VERSION:  # not true, not 1.0
        raise FormatError(
            f"{path}: checkpoint format version {short_repr(version)} is not supported by this "
            f"xelm (reads {CHECKPOINT_FORMAT_VERSION}); resume with the xelm that wrote it, or "
            "pass --force to start over"
        )
    return state


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = json.loads(json.dumps(state_dict["param_groups"]))  # fails loudly on non-JSON
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, entries in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = saved["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}
