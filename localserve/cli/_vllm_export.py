"""`localserve export --target vllm` (see localserve.vllm)."""

from __future__ import annotations

from ..errors import InputError


def run(adapters, **options) -> None:
    raise InputError("--target vllm is not available in this version", "export for Ollama (the default target)")
