"""vLLM: the production GPU path. A merged (or base + unmerged LoRA) Hugging Face folder and its
serve configuration, the LoRA rules vLLM enforces, and a client for adapters at run time.

    from localserve.vllm import VllmExportSpec, export_vllm
    result = export_vllm(VllmExportSpec(adapters=(Path("adapter"),)))             # merged
    result = export_vllm(VllmExportSpec(adapters=(a1, a2), lora=True))            # multi-tenant
    VllmClient("http://127.0.0.1:8000").load("tenant", "/export/adapters/tenant")  # at run time
"""

from __future__ import annotations

from .client import VllmClient
from .export import VllmExportResult, VllmExportSpec, export_vllm
from .lora import MAX_LORA_RANKS, LoraPlan, max_lora_rank, plan_lora
from .serve import ServeConfig, render

__all__ = ["MAX_LORA_RANKS", "LoraPlan", "ServeConfig", "VllmClient", "VllmExportResult", "VllmExportSpec",
           "export_vllm", "max_lora_rank", "plan_lora", "render"]
