"""What the quality gate needs from a GPU-format folder: what it is, and its next-token log-probabilities.

`localserve.quality.measure` puts these folders in the same table (and chart) as GGUF quants,
measured on the same tokens against the same reference. The folder is evaluated in the
llm-compressor venv, its weights decompressed to the exact quantized values and run in fp32 —
the same numbers a GPU kernel multiplies — as the GGUF gate runs its reference.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..models.folders import model_folder
from .formats import format_of
from .run import run_child


@dataclass(frozen=True)
class QuantizedFolder:
    path: Path  # the HF folder holding config.json and the compressed-tensors weights
    quant: str  # the format's name, as users type it ("gptq-w4a16")
    size: int  # bytes of its safetensors files
    n_vocab: int


def quantized_folder(path: Path) -> QuantizedFolder:
    """An HF folder quantized to compressed-tensors, or a vLLM export folder holding one in model/."""
    path = model_folder(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"{path} is neither a GGUF file nor an HF model folder (no config.json)",
                         "pass .gguf files or folders written by export --target vllm --quant")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    qconfig = config.get("quantization_config") or {}
    if qconfig.get("quant_method") != "compressed-tensors":
        raise InputError(f"{path} is not a quantized model (no compressed-tensors quantization_config)",
                         "an unquantized HF folder is a --reference, not a file to measure")
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return QuantizedFolder(path, format_of(qconfig), size, int(config["vocab_size"]))


def folder_logprobs(folder: Path, chunks: Sequence[Sequence[int]], n_vocab: int) -> Iterator[np.ndarray]:
    """Per chunk, float32 [len(chunk)-1, n_vocab] next-token log-probabilities (as `gguf_logprobs`)."""
    with tempfile.TemporaryDirectory(prefix="localserve-quality-") as tmp:
        out = Path(tmp) / "candidate.npy"
        run_child({"task": "logprobs", "model": str(folder), "chunks": [list(c) for c in chunks], "n_vocab": n_vocab,
                   "out": str(out)})
        all_positions = np.load(out, mmap_mode="r")
        at = 0
        for chunk in chunks:
            n = len(chunk) - 1
            yield np.asarray(all_positions[at:at + n])
            at += n
        del all_positions


def folder_chat(folder: Path, question: str, max_tokens: int = 40) -> dict:
    """A greedy answer from the quantized folder's exact weights (transformers, decompressed): a check of
    the weights that needs no serving kernel. {"text": ..., "finish": "stop" | "length"}."""
    return run_child({"task": "chat", "model": str(quantized_folder(folder).path),
                      "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens})


def n_params_of(model_dir: Path) -> int:
    """Parameters of an unquantized HF folder, from its safetensors headers."""
    from ..models.merge import base_tensor_shapes

    return sum(math.prod(s) for s in base_tensor_shapes(Path(model_dir)).values())
