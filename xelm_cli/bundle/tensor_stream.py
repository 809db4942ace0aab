"""Reading a bundle's tensors one at a time and writing safetensors files tensor by tensor.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once; combining k
models that way would hold a whole model. Here the header (names, dtypes, shapes) is written
first, from shapes known in advance, and each tensor's bytes are appended as it is computed,
so memory holds about two tensors whatever the model's size. Inputs are opened per tensor:
an mmap kept open would keep every page already read resident, k models' worth in the end.
Each file is hashed as it is written (its manifest entry comes back), not read back afterwards.
"""

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from xelm_cli.bundle.fingerprint import reading_safetensors
from xelm_cli.bundle.manifest import FileEntry
from xelm_cli.common.digest import HashingWriter, sha256_bytes
from xelm_cli.common.errors import FormatError
from xelm_cli.common.jsonio import pretty_json, read_json_object

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_SHARD_BYTES = 2 * 10**9  # as bundle writers shard (spec/bundle-v1.md: 2 GB)

_DTYPE_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


@dataclass(frozen=True)
class TensorInfo:
    file: str  # the safetensors file (in the bundle directory) holding the tensor
    dtype: str  # safetensors' code: F32, BF16, ...
    shape: tuple[int, ...]


class TensorSource:
    """The tensors of a bundle's weight files (one ``model.safetensors`` or an index and
    its shards), by name, read one at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index: dict[str, Any] | None = None
        if (directory / INDEX_NAME).is_file():
            self.index = read_json_object(directory / INDEX_NAME, f"{directory}/{INDEX_NAME}")
            weight_map = self.index.get("weight_map")
            if not isinstance(weight_map, dict):
                raise FormatError(f"{directory}/{INDEX_NAME}: no weight_map object")
            files = sorted(set(map(str, weight_map.values())))
        elif (directory / SINGLE_NAME).is_file():
            files = [SINGLE_NAME]
        else:
            raise FormatError(f"{directory}: no {SINGLE_NAME} or {INDEX_NAME}")
        self.files = files
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = directory / name
            with reading_safetensors(path), safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    piece = f.get_slice(key)
                    shape = tuple(int(n) for n in piece.get_shape())
                    self.tensors[key] = TensorInfo(name, str(piece.get_dtype()), shape)

    def get(self, name: str) -> Any:
        """One tensor (torch), read from disk now; nothing stays mapped afterwards."""
        path = self.directory / self.tensors[name].file
        with reading_safetensors(path), safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    def names_by_file(self) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {file: [] for file in self.files}
        for name, info in sorted(self.tensors.items()):
            grouped[info.file].append(name)
        return grouped


def dtype_code(dtype: Any) -> str:
    """safetensors' code for a torch dtype (``torch.bfloat16`` -> ``BF16``)."""
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPE_CODES:
        raise FormatError(f"tensors of dtype {key} cannot be written to safetensors here")
    return _DTYPE_CODES[key]


def element_size(code: str) -> int:
    sizes = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}
    return sizes.get(code, 1)


def tensor_bytes(info: TensorInfo) -> int:
    count = 1
    for n in info.shape:
        count *= n
    return count * element_size(info.dtype)


def write_safetensors(
    path: Path,
    layout: dict[str, TensorInfo],
    produce: Callable[[str], Any],
    *,
    advance: Callable[[int], None] | None = None,
) -> FileEntry:
    """Write ``path`` holding the tensors of ``layout`` (name -> dtype and shape), asking
    ``produce(name)`` for each one in turn; each must have exactly the announced dtype and
    shape. Metadata ``{"format": "pt"}`` as transformers expects. Returns the file's sha256
    and size, hashed from the bytes as they were written."""
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = sorted(layout)
    for name in names:
        size = tensor_bytes(layout[name])
        header[name] = {
            "dtype": layout[name].dtype,
            "shape": list(layout[name].shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "xb") as file:
        out = HashingWriter(file)
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for name in names:
            tensor = produce(name)
            info = layout[name]
            if tuple(tensor.shape) != info.shape or dtype_code(tensor.dtype) != info.dtype:
                raise FormatError(
                    f"internal: {name} came out {dtype_code(tensor.dtype)}{list(tensor.shape)}, "
                    f"expected {info.dtype}{list(info.shape)}"
                )
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
            out.write(memoryview(data))
            if advance is not None:
                advance(data.nbytes)
    return FileEntry(out.digest(), out.size)


def plan_shards(
    tensors: dict[str, TensorInfo], max_bytes: int = MAX_SHARD_BYTES
) -> dict[str, TensorInfo]:
    """``tensors`` assigned to files in name order: ``model.safetensors`` when they fit in
    ``max_bytes``, else ``model-0000i-of-0000n.safetensors`` of at most ``max_bytes`` each
    (a larger tensor gets a file of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        nbytes = tensor_bytes(tensors[name])
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    planned = {}
    for i, group in enumerate(groups):
        file = (
            SINGLE_NAME
            if len(groups) == 1
            else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        )
        for name in group:
            info = tensors[name]
            planned[name] = TensorInfo(file, info.dtype, info.shape)
    return planned


def write_sharded(
    directory: Path,
    tensors: dict[str, TensorInfo],
    produce: Callable[[str], Any],
    advance: Callable[[int], None] | None = None,
    *,
    index: bool | None = None,
) -> dict[str, FileEntry]:
    """Write the files ``tensors`` names (each tensor from ``produce(name)``) and, with
    ``index`` (default: when there are several files), ``model.safetensors.index.json``.
    Returns each written file's sha256 and size, by file name."""
    files = sorted({info.file for info in tensors.values()})
    written = {}
    for file in files:
        part = {name: info for name, info in tensors.items() if info.file == file}
        written[file] = write_safetensors(directory / file, part, produce, advance=advance)
    if index if index is not None else len(files) > 1:
        content = pretty_json(
            {
                "metadata": {"total_size": sum(tensor_bytes(i) for i in tensors.values())},
                "weight_map": {name: info.file for name, info in sorted(tensors.items())},
            }
        )
        (directory / INDEX_NAME).write_bytes(content)
        written[INDEX_NAME] = FileEntry(sha256_bytes(content), len(content))
    return written
