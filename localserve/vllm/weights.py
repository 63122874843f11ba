"""Write a model's safetensors as bounded shards, streaming one tensor at a time.

Peak memory follows the shard size, not the model. The layout is the one transformers and vLLM
read: `model.safetensors` when one shard holds everything, else `model-0000i-of-0000n.safetensors`
plus `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..progress import bar

DEFAULT_SHARD_BYTES = 2 * 1000**3


def _tensor_bytes(folder: Path) -> list[tuple[Path, str, int]]:
    """(file, tensor name, bytes) of every tensor in `folder`'s safetensors, from headers only."""
    import struct

    found = []
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                start, end = info["data_offsets"]
                found.append((f, name, end - start))
    return found


def write_shards(source: Path, out: Path, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Copy every tensor of `source`'s safetensors into shards of at most `shard_bytes` in `out`.

    A single tensor larger than `shard_bytes` gets a shard of its own (tensors are never split).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = _tensor_bytes(source)
    groups: list[list[tuple[Path, str, int]]] = [[]]
    size = 0
    for entry in tensors:
        if groups[-1] and size + entry[2] > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += entry[2]
    n = len(groups)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    written = []
    with bar(sum(t[2] for t in tensors), f"write {out.name} shards") as progress:
        for name, group in zip(names, groups):
            shard = {}
            for file, tensor, nbytes in group:
                with safe_open(str(file), framework="pt") as st:
                    shard[tensor] = st.get_tensor(tensor)
                weight_map[tensor] = name
                progress.update(nbytes)
            save_file(shard, str(out / name), metadata={"format": "pt"})
            written.append(out / name)
    if n > 1:
        index = {"metadata": {"total_size": sum(t[2] for t in tensors)}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return written
