"""Safetensors read and written one tensor at a time, so memory follows the largest tensor.

The safetensors package reads through a memory map of the whole file, whose touched pages stay
resident for as long as the file is open, and writes only from a dict holding every tensor of a
shard. Streaming a multi-GB model through it would hold a shard (or the whole file) in memory, so
this module reads each tensor with one positioned read and writes a shard's header first (every
offset is known from the shapes) and then each tensor's bytes as it is produced. The format is
the documented one: an 8-byte little-endian header length, a JSON header padded to 8 bytes, then
the tensors' bytes at the header's offsets.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import InputError
from ..faults import SHARDS, fault_point
from ..progress import bar

# safetensors dtype names <-> torch dtypes (floating and integer types checkpoints use)
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_NAMES = {v: k for k, v in _DTYPES.items()}
_ALIGN = 8
# transformers and vLLM load a model shard by shard: bounded shards keep their loading memory bounded too.
DEFAULT_SHARD_BYTES = 2 * 1000**3


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor of a safetensors file lies."""

    file: Path
    name: str
    dtype: str  # safetensors name: BF16, F32, ...
    shape: tuple[int, ...]
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, _DTYPES[self.dtype])


def read_header(file: Path) -> list[StoredTensor]:
    """Every tensor of one safetensors file, in the order of its data."""
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        size = os.stat(file).st_size
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{file} is not a readable safetensors file ({e})",
                         "re-download or re-save it; a truncated copy is the usual cause") from None
    start = 8 + length
    found = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] not in _DTYPES or start + end > size:
            raise InputError(f"{file}: tensor {name} ({info['dtype']}) lies outside the file or has an unknown "
                             "dtype", "re-download or re-save it; a truncated copy is the usual cause")
        found.append(StoredTensor(Path(file), name, info["dtype"], tuple(info["shape"]), start + begin, end - begin))
    return sorted(found, key=lambda t: t.offset)


def read_folder(folder: Path) -> list[StoredTensor]:
    """Every tensor of a model folder's safetensors files, file by file."""
    return [t for f in sorted(Path(folder).glob("*.safetensors")) for t in read_header(f)]


def read_tensor(stored: StoredTensor):
    """The tensor's values, read with one positioned read (no memory map is left behind)."""
    import torch

    data = bytearray(stored.nbytes)
    with open(stored.file, "rb") as f:
        f.seek(stored.offset)
        if f.readinto(data) != stored.nbytes:
            raise InputError(f"{stored.file} ends inside tensor {stored.name}", "re-download or re-save it")
    if not data:
        return torch.empty(stored.shape, dtype=stored.torch_dtype)
    return torch.frombuffer(data, dtype=stored.torch_dtype).reshape(stored.shape)


def as_stored(folder: Path) -> list["PlannedTensor"]:
    """Every tensor of a model folder, to be written unchanged."""
    return [PlannedTensor(t.name, _DTYPES[t.dtype], t.shape, lambda t=t: read_tensor(t)) for t in read_folder(folder)]


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor to write: its name, dtype (torch name), shape, and how to produce its values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], object]

    @property
    def nbytes(self) -> int:
        import torch

        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


def shard_names(n: int) -> list[str]:
    """transformers' names: model.safetensors alone, else model-0000i-of-0000n.safetensors."""
    return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def write_shards(tensors: Iterable[PlannedTensor], out: Path, shard_bytes: int, desc: str) -> list[Path]:
    """Write `tensors` into `out` as shards of at most `shard_bytes` (a larger tensor gets one of its
    own), with `model.safetensors.index.json` when there are several. Each tensor is produced, written
    and dropped before the next."""
    tensors = list(tensors)
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    names = shard_names(len(groups))
    written = []
    with bar(sum(t.nbytes for t in tensors), desc) as progress:
        for name, group in zip(names, groups):
            written.append(_write_shard(out / name, group, progress.update))
            fault_point(SHARDS)
    if len(groups) > 1:
        weight_map = {t.name: name for name, group in zip(names, groups) for t in group}
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return written


def _write_shard(path: Path, group: list[PlannedTensor], progress) -> Path:
    import torch

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in group:
        header[t.name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in group:
            value = t.produce()
            if str(value.dtype).removeprefix("torch.") != t.dtype or tuple(value.shape) != t.shape:
                raise AssertionError(f"{t.name} came out {value.dtype} {tuple(value.shape)}, planned {t.dtype} {t.shape}")
            data = value.contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(memoryview(data))
            progress(t.nbytes)
            del value, data
    return path
