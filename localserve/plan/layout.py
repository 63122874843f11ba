"""vLLM tensor/pipeline-parallel layout: which (TP, PP) serves a model on given GPUs, and why.

ONE implementation, shared: `localserve plan` shows this layout for vLLM targets, and the vLLM
export reuses `parallel_layout` itself to write `--tensor-parallel-size` and
`--pipeline-parallel-size` into its serve configs. Change the arithmetic here, nowhere else.

The rules are vLLM's own:
- attention heads must divide by TP; KV heads must divide by TP, or, when there are fewer KV heads
  than TP ranks, TP must be a multiple of them (vLLM then replicates each KV head);
- PP splits the layers into stages, so PP cannot exceed the layer count;
- each GPU holds 1/TP of its stage's weights and KV cache, and vLLM uses at most
  `gpu_memory_utilization` of each GPU's memory for everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .memory import Overhead, gib
from .model import ModelShape, PlannedModel, hf_config_shape

# vLLM's default `--dtype auto` serves float32 checkpoints in float16 and the others as stored
# (float16/bfloat16): 2 bytes per weight unless the caller says otherwise.
VLLM_DTYPE_BYTES = 2


@dataclass(frozen=True)
class Layout:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    lines: tuple[str, ...]  # the arithmetic, one step per line
    per_gpu_bytes: int = 0
    budget_bytes: int = 0

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def _shape_and_weights(config: Any, dtype_bytes: int | None) -> tuple[ModelShape, int, int, int]:
    """(shape, bytes of all layers, bytes outside layers, bytes per element) at vLLM's dtype."""
    if isinstance(config, PlannedModel):
        shape, tensors = config.shape, config.tensors
    else:
        if isinstance(config, dict):
            raw = config
            shape, tensors = hf_config_shape(raw)
        else:
            path = Path(config)
            path = path / "config.json" if path.is_dir() else path
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise InputError(f"cannot read the model config {path}: {e}",
                                 "pass a Hugging Face model folder with config.json") from None
            shape, tensors = hf_config_shape(raw, path.parent.name, str(path))
    dtype_bytes = dtype_bytes or VLLM_DTYPE_BYTES
    layer_bytes = sum(t.n for t in tensors if t.layer >= 0) * dtype_bytes
    other_bytes = sum(t.n for t in tensors if t.layer < 0) * dtype_bytes
    return shape, layer_bytes, other_bytes, dtype_bytes


def _divisibility(shape: ModelShape, tp: int, pp: int) -> str | None:
    if shape.n_heads % tp:
        return f"TP={tp}: {shape.n_heads} attention heads are not divisible by {tp}"
    kv = shape.n_kv_heads
    if kv >= tp and kv % tp:
        return f"TP={tp}: {kv} KV heads are not divisible by {tp}"
    if kv < tp and tp % kv:
        return f"TP={tp}: more ranks than the {kv} KV heads, and {tp} is not a multiple of {kv} (vLLM can only replicate them evenly)"
    if pp > shape.n_layers:
        return f"PP={pp}: only {shape.n_layers} layers to split into {pp} stages"
    return None


def parallel_layout(config: Any, gpu_memory_bytes: int, gpus_per_node: int, nodes: int, ctx: int,
                    concurrency: int, *, gpu_memory_utilization: float = 0.9, kv_cache_bytes_per_element: int = 2,
                    dtype_bytes: int | None = None, overhead: Overhead = Overhead(fraction=0.0),
                    tensor_parallel_size: int | None = None,
                    pipeline_parallel_size: int | None = None) -> Layout:
    """The smallest (TP x PP) that holds the model and `concurrency` sequences of `ctx` tokens.

    `config` is a PlannedModel, an HF config dict, or a path to an HF folder / config.json.
    TP stays inside a node (NVLink); PP spans nodes. Among layouts with the same GPU count the one
    with more TP (fewer pipeline bubbles) wins. Give `tensor_parallel_size`/`pipeline_parallel_size`
    to check one layout instead of searching. Raises InputError naming the reason when nothing fits.
    """
    for label, value in (("GPU memory", gpu_memory_bytes), ("GPUs per node", gpus_per_node), ("nodes", nodes),
                         ("context", ctx), ("concurrency", concurrency)):
        if value <= 0:
            raise InputError(f"{label} must be positive, not {value}")
    if not 0 < gpu_memory_utilization <= 1:
        raise InputError(f"gpu_memory_utilization must be in (0, 1], not {gpu_memory_utilization}")
    shape, layer_bytes, other_bytes, dtype_bytes = _shape_and_weights(config, dtype_bytes)
    budget = int(gpu_memory_bytes * gpu_memory_utilization)
    total_gpus = gpus_per_node * nodes

    def per_gpu(tp: int, pp: int) -> tuple[int, list[str]]:
        stage_layers = -(-shape.n_layers // pp)
        w = (layer_bytes * stage_layers // shape.n_layers + other_bytes) // tp
        kv_heads_per_gpu = max(1, shape.n_kv_heads // tp)
        kv = (stage_layers * kv_heads_per_gpu * (shape.key_length + shape.value_length)
              * kv_cache_bytes_per_element * ctx * concurrency)
        need = w + kv + overhead.of(w + kv)
        return need, [
            f"TP={tp} x PP={pp} = {tp * pp} GPU(s); a stage holds up to {stage_layers} of {shape.n_layers} layers",
            f"weights per GPU {gib(w)} = ({gib(layer_bytes)} layers x {stage_layers}/{shape.n_layers} + "
            f"{gib(other_bytes)} embeddings/head, counted on every stage) / TP {tp}, at {dtype_bytes} bytes per weight",
            f"KV cache per GPU {gib(kv)} = {stage_layers} layers x {kv_heads_per_gpu} KV head(s) x "
            f"({shape.key_length}+{shape.value_length}) dims x {kv_cache_bytes_per_element} bytes x {ctx} ctx x {concurrency} sequences",
            f"runtime overhead per GPU {gib(overhead.of(w + kv))} ({overhead.describe()})",
            f"need {gib(need)} per GPU; vLLM may use {gib(budget)} = {gib(gpu_memory_bytes)} x "
            f"gpu_memory_utilization {gpu_memory_utilization}",
        ]

    if tensor_parallel_size or pipeline_parallel_size:
        tp, pp = tensor_parallel_size or 1, pipeline_parallel_size or 1
        if tp <= 0 or pp <= 0:
            raise InputError(f"tensor/pipeline parallel sizes must be positive, not TP={tp} PP={pp}")
        if tp > gpus_per_node:
            raise InputError(f"TP={tp} is more than the {gpus_per_node} GPUs of a node",
                             "keep tensor parallelism inside a node and use pipeline parallelism across nodes")
        if tp * pp > total_gpus:
            raise InputError(f"TP={tp} x PP={pp} needs {tp * pp} GPUs; there are {total_gpus}")
        reason = _divisibility(shape, tp, pp)
        if reason:
            raise InputError(f"cannot serve {shape.name} with {reason}", "choose a TP that divides the head counts")
        need, lines = per_gpu(tp, pp)
        if need > budget:
            raise InputError(f"{shape.name} does not fit with TP={tp} x PP={pp}: needs {gib(need)} per GPU, "
                             f"vLLM may use {gib(budget)}", "use more GPUs, a shorter context or fewer sequences")
        return Layout(tp, pp, tuple(lines), need, budget)

    candidates = sorted(((tp, pp) for tp in range(1, gpus_per_node + 1)
                         for pp in range(1, total_gpus // tp + 1)), key=lambda c: (c[0] * c[1], c[1]))
    rejected: list[str] = []
    for tp, pp in candidates:
        reason = _divisibility(shape, tp, pp)
        if reason:
            rejected.append(reason)
            continue
        need, lines = per_gpu(tp, pp)
        if need > budget:
            rejected.append(f"TP={tp} x PP={pp}: needs {gib(need)} per GPU, vLLM may use {gib(budget)}")
            continue
        skipped = [f"not fewer GPUs: {r}" for r in dict.fromkeys(rejected)][:6]
        return Layout(tp, pp, tuple(skipped + lines), need, budget)
    reasons = "; ".join(list(dict.fromkeys(rejected))[-4:])
    raise InputError(f"no vLLM layout on {nodes} node(s) x {gpus_per_node} GPU(s) of {gib(gpu_memory_bytes)} serves "
                     f"{shape.name} at {ctx} ctx x {concurrency} sequences: {reasons}",
                     "add GPUs or nodes, use larger GPUs, or lower --ctx/--concurrency")
