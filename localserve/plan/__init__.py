"""Capacity and cost planning from measured numbers.

- `plan(PlanSpec)`: memory per quant (weights + KV cache + stated overhead), device fit, vLLM layout;
- `bench(BenchSpec)`: measure TTFT, prompt and decode tokens/s on this machine, stored next to the model;
- `measurements(path)`: every stored bench result of a GGUF or export folder, with where it was read;
- `cost(CostSpec)`: API vs self-hosted vLLM vs local Ollama, crossover, decision, multi-LoRA economics;
- `parallel_layout(...)`: the one vLLM tensor/pipeline-parallel layout function (the vLLM export uses it).

Device and price figures come from dated tables in localserve/data/ (see `tables`).
"""

from .bench import BenchSpec, Measurement, bench, load_bench, measured, measurements
from .cost import Assumptions, CostReport, CostSpec, cost, crossover, self_hosted_per_1m
from .layout import Layout, parallel_layout
from .memory import Overhead, estimate, fit, kv_cache_bytes
from .model import load_model, read_gguf
from .planner import Plan, PlanSpec, plan

__all__ = ["Assumptions", "BenchSpec", "CostReport", "CostSpec", "Layout", "Measurement", "Overhead", "Plan",
           "PlanSpec", "bench", "cost", "crossover", "estimate", "fit", "kv_cache_bytes", "load_bench", "load_model",
           "measured", "measurements", "parallel_layout", "plan", "read_gguf", "self_hosted_per_1m"]
