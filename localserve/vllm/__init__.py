"""vLLM: what localserve knows of it — the serve configuration it reads, the LoRA rules it enforces,
the real server run from its own venv, and a client for adapters at run time. The export that
writes a folder for it is `localserve.exports.vllm`.

    VllmClient("http://127.0.0.1:8000").load("tenant", "/export/adapters/tenant")  # at run time
"""

from __future__ import annotations

from .client import VllmClient
from .lora import MAX_LORA_RANKS, LoraPlan, max_lora_rank, plan_lora
from .serve import ServeConfig, render

__all__ = ["MAX_LORA_RANKS", "LoraPlan", "ServeConfig", "VllmClient", "max_lora_rank", "plan_lora", "render"]
