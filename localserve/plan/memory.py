"""Memory arithmetic: weights + KV cache + a stated runtime overhead, and what fits on a device."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError, UnknownName
from ..llamacpp.quant_types import bytes_for
from .model import ModelShape, Weights
from .tables import Device

MIB = 1 << 20
GIB = 1 << 30

# The KV cache types llama.cpp accepts (--cache-type-k/-v, Ollama's OLLAMA_KV_CACHE_TYPE):
# user-facing name -> ggml type.
KV_CACHE_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q5_1": "Q5_1",
                  "q5_0": "Q5_0", "q4_1": "Q4_1", "q4_0": "Q4_0", "iq4_nl": "IQ4_NL"}


@dataclass(frozen=True)
class Overhead:
    """Runtime memory beyond weights and KV cache (GPU context, compute buffers, allocator slack).

    It cannot be derived from the model file, so it is an assumption and every plan states it.
    """

    fixed_bytes: int = 512 * MIB
    fraction: float = 0.10  # of weights + KV cache

    def __post_init__(self):
        if self.fixed_bytes < 0 or not 0 <= self.fraction < 1:
            raise InputError(f"runtime overhead must be >= 0 MiB and 0-99%, not {self.fixed_bytes // MIB} MiB "
                             f"and {self.fraction:.0%}")

    def of(self, payload_bytes: int) -> int:
        return self.fixed_bytes + int(self.fraction * payload_bytes)

    def describe(self) -> str:
        share = f" + {self.fraction:.0%} of weights and KV cache" if self.fraction else ""
        return f"{self.fixed_bytes / MIB:.0f} MiB{share} (assumed: GPU context and compute buffers)"


def kv_type(name: str) -> str:
    canon = KV_CACHE_TYPES.get(name.strip().lower())
    if canon is None:
        raise UnknownName("KV cache type", name, tuple(KV_CACHE_TYPES))
    return canon


def kv_bytes_per_layer(shape: ModelShape, ctx: int, concurrency: int = 1, cache_type: str = "f16") -> int:
    """K and V of one layer: KV heads x head dim per token (GQA: KV heads, not attention heads),
    in the cache type's bytes, for `ctx` tokens of each of `concurrency` sequences."""
    ggml = kv_type(cache_type)
    k_row = bytes_for(shape.n_kv_heads * shape.key_length, ggml)
    v_row = bytes_for(shape.n_kv_heads * shape.value_length, ggml)
    return (k_row + v_row) * ctx * concurrency


def kv_cache_bytes(shape: ModelShape, ctx: int, concurrency: int = 1, cache_type: str = "f16") -> int:
    """layers x KV heads x head dim x 2 (K and V) x ctx x bytes per element x concurrent sequences."""
    return shape.n_layers * kv_bytes_per_layer(shape, ctx, concurrency, cache_type)


@dataclass(frozen=True)
class MemoryEstimate:
    quant: str
    weights: Weights
    kv_bytes: int
    kv_layer_bytes: int
    overhead_bytes: int
    overhead: Overhead
    ctx: int
    concurrency: int
    cache_type: str

    @property
    def total_bytes(self) -> int:
        return self.weights.total_bytes + self.kv_bytes + self.overhead_bytes

    def lines(self, shape: ModelShape) -> list[str]:
        w = self.weights
        elem = kv_type(self.cache_type)
        return [
            f"weights {gib(w.total_bytes)} ({w.how})",
            f"KV cache {gib(self.kv_bytes)} = {shape.n_layers} layers x {shape.n_kv_heads} KV heads x "
            f"{shape.key_length} head dim x 2 (K,V) x {self.ctx} ctx x {elem} x {self.concurrency} sequences",
            f"runtime overhead {gib(self.overhead_bytes)} = {self.overhead.describe()}",
            f"total {gib(self.total_bytes)}",
        ]


def estimate(shape: ModelShape, weights: Weights, ctx: int, concurrency: int = 1, cache_type: str = "f16",
             overhead: Overhead = Overhead()) -> MemoryEstimate:
    if ctx <= 0 or concurrency <= 0:
        raise InputError(f"context ({ctx}) and concurrency ({concurrency}) must be positive")
    kv = kv_cache_bytes(shape, ctx, concurrency, cache_type)
    return MemoryEstimate(quant=weights.quant, weights=weights, kv_bytes=kv,
                          kv_layer_bytes=kv_bytes_per_layer(shape, ctx, concurrency, cache_type),
                          overhead_bytes=overhead.of(weights.total_bytes + kv), overhead=overhead,
                          ctx=ctx, concurrency=concurrency, cache_type=cache_type)


@dataclass(frozen=True)
class Fit:
    device: Device
    status: str  # "fits" | "partial" | "no"
    layers_on_device: int
    n_layers: int
    need_bytes: int

    def describe(self) -> str:
        d = self.device
        room = f"{gib(d.usable_bytes)} usable of {gib(d.memory_bytes)}"
        if self.status == "fits":
            return f"fits ({gib(self.need_bytes)} of {room})"
        if self.status == "partial":
            return (f"fits with {self.layers_on_device} of {self.n_layers} layers offloaded to the GPU "
                    f"(the rest in CPU RAM, slower; whole model needs {gib(self.need_bytes)}, {room})")
        return f"does not fit (needs {gib(self.need_bytes)}, {room})"


def fit(est: MemoryEstimate, device: Device) -> Fit:
    """fits / fits with N layers on the GPU (llama.cpp partial offload) / does not fit.

    Partial offload only exists for a discrete GPU: the layers not offloaded run from CPU RAM.
    With n_gpu_layers = n < all, llama.cpp keeps the token embeddings and the output head on the
    CPU, and puts each offloaded layer's KV cache on the GPU with it.
    """
    layers = est.weights.layer_bytes
    need = est.total_bytes
    if need <= device.usable_bytes:
        return Fit(device, "fits", len(layers), len(layers), need)
    if device.kind == "gpu":
        used = est.overhead.fixed_bytes
        n = 0
        for layer_bytes in layers:
            cost = int((layer_bytes + est.kv_layer_bytes) * (1 + est.overhead.fraction))
            if used + cost > device.usable_bytes:
                break
            used += cost
            n += 1
        if n > 0:
            return Fit(device, "partial", n, len(layers), need)
    return Fit(device, "no", 0, len(layers), need)


def gib(n: float) -> str:
    if abs(n) >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"
