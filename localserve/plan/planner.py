"""`localserve plan`: memory per quant, which devices fit, and the vLLM layout."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, LocalserveError
from ..lineage import find_record
from .bench import Measurement, measurements
from .layout import Layout, parallel_layout
from .memory import Fit, MemoryEstimate, Overhead, estimate, fit, kv_type
from .model import PlannedModel, load_model
from .tables import Device, device, load_devices, this_machine

DEFAULT_VLLM_GPUS = ("L4", "A100-80GB", "H100-80GB")
DEFAULT_CTX = 8192


def planned_ctx(asked: int | None, trained: int | None) -> int:
    """The context to plan for: what was asked, refused above what the model was trained for (engines
    let it run, and it answers badly past that), or by default the model's own, at most DEFAULT_CTX."""
    if asked is None:
        return min(DEFAULT_CTX, trained or DEFAULT_CTX)
    if trained and asked > trained:
        raise InputError(f"--ctx {asked} is above the {trained} tokens of context the model was trained for",
                         f"pass --ctx {trained} or less")
    return asked


@dataclass(frozen=True)
class PlanSpec:
    model: Path
    quants: tuple[str, ...] = ()
    ctx: int | None = None  # default: the model's trained context, at most DEFAULT_CTX
    concurrency: int = 1
    cache_type: str = "f16"
    devices: tuple[str, ...] = ()  # empty: the whole table plus this machine
    devices_file: Path | None = None
    overhead: Overhead = Overhead()
    vllm_gpus: tuple[str, ...] = DEFAULT_VLLM_GPUS
    gpus_per_node: int = 8
    nodes: int = 1

    def __post_init__(self):
        object.__setattr__(self, "model", Path(self.model))
        if self.ctx is not None and self.ctx <= 0:
            raise InputError(f"--ctx must be positive, not {self.ctx}")
        if self.concurrency <= 0:
            raise InputError(f"--concurrency must be positive, not {self.concurrency}")
        if self.gpus_per_node <= 0 or self.nodes <= 0:
            raise InputError("--gpus-per-node and --nodes must be positive")
        kv_type(self.cache_type)


@dataclass(frozen=True)
class QuantPlan:
    estimate: MemoryEstimate
    fits: tuple[Fit, ...]
    quality: dict[str, Any] | None = None  # the quality gate's measured row for this file, if any


@dataclass(frozen=True)
class VllmPlan:
    gpu: str
    layout: Layout | None
    refused: str | None  # the reason when no layout works


@dataclass(frozen=True)
class Plan:
    spec: PlanSpec
    model: PlannedModel
    quants: tuple[QuantPlan, ...]
    vllm: tuple[VllmPlan, ...]
    table_dates: tuple[str, ...]
    measurements: tuple[Measurement, ...] = ()  # newest first

    @property
    def bench(self) -> dict[str, dict[str, Any]]:
        """The newest stored result per bench target."""
        newest: dict[str, dict[str, Any]] = {}
        for m in self.measurements:
            newest.setdefault(m.target, {**m.result, "read_from": str(m.source)})
        return newest

    def to_json(self) -> dict[str, Any]:
        s = self.model.shape
        return {
            "model": str(self.spec.model), "shape": dataclasses.asdict(s),
            "ctx": self.spec.ctx, "concurrency": self.spec.concurrency, "kv_cache_type": self.spec.cache_type,
            "runtime_overhead": self.spec.overhead.describe(),
            "device_table_dates": list(self.table_dates),
            "quants": [{
                "quant": q.estimate.quant, "weights_bytes": q.estimate.weights.total_bytes,
                "weights_exact": q.estimate.weights.exact, "weights_how": q.estimate.weights.how,
                "kv_cache_bytes": q.estimate.kv_bytes, "overhead_bytes": q.estimate.overhead_bytes,
                "total_bytes": q.estimate.total_bytes, "arithmetic": q.estimate.lines(s),
                "quality": q.quality,
                "devices": [{"device": f.device.name, "kind": f.device.kind, "status": f.status,
                             "layers_on_device": f.layers_on_device, "n_layers": f.n_layers,
                             "usable_bytes": f.device.usable_bytes, "date": f.device.date,
                             "source": f.device.source, "text": f.describe()} for f in q.fits],
            } for q in self.quants],
            "vllm": [{"gpu": v.gpu, "gpus_per_node": self.spec.gpus_per_node, "nodes": self.spec.nodes,
                      "tensor_parallel_size": v.layout.tensor_parallel_size if v.layout else None,
                      "pipeline_parallel_size": v.layout.pipeline_parallel_size if v.layout else None,
                      "arithmetic": list(v.layout.lines) if v.layout else [], "refused": v.refused}
                     for v in self.vllm],
            "measured": self.bench,
            "measurements": [{**m.to_json(), "ttft_s": m.result.get("ttft_s"),
                              "prompt_tokens_per_s": m.result.get("prompt_tokens_per_s"),
                              "decode_tokens_per_s": m.result.get("decode_tokens_per_s"),
                              "concurrent": m.result.get("concurrent")} for m in self.measurements],
        }


def plan(spec: PlanSpec) -> Plan:
    model = load_model(spec.model, spec.quants)
    spec = dataclasses.replace(spec, ctx=planned_ctx(spec.ctx, model.shape.context_length))
    if spec.devices:
        devices: list[Device] = [this_machine() if n == "this-machine" else device(n, spec.devices_file)
                                 for n in spec.devices]
    else:
        devices = list(load_devices(spec.devices_file).values()) + [this_machine()]
    quality = _measured_quality(spec.model)
    quants = []
    for weights in model.weights:
        est = estimate(model.shape, weights, spec.ctx, spec.concurrency, spec.cache_type, spec.overhead)
        quants.append(QuantPlan(est, tuple(fit(est, d) for d in devices), quality.get(weights.file or "")))
    vllm = []
    kv_elem = 4 if kv_type(spec.cache_type) == "F32" else 2  # vLLM caches KV in the model dtype (or fp8)
    for name in spec.vllm_gpus:
        gpu = device(name, spec.devices_file)
        try:
            layout = parallel_layout(model, gpu.memory_bytes, spec.gpus_per_node, spec.nodes, spec.ctx,
                                     spec.concurrency, kv_cache_bytes_per_element=kv_elem)
            vllm.append(VllmPlan(gpu.name, layout, None))
        except LocalserveError as e:
            vllm.append(VllmPlan(gpu.name, None, e.message))
    dates = tuple(sorted({d.date for d in devices}))
    return Plan(spec, model, tuple(quants), tuple(vllm), dates, tuple(measurements(spec.model)))


def _measured_quality(model: Path) -> dict[str, dict[str, Any]]:
    """Rows the export's quality gate recorded in localserve.json, by GGUF file name."""
    found = find_record(model)
    rows = ((found[1].quality or {}).get("rows") or []) if found else []
    return {r["file"]: r for r in rows if isinstance(r, dict) and "file" in r}
