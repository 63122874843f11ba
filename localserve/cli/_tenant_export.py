"""`localserve export A1 A2 ... --lora` for Ollama (see localserve.ollama.tenants)."""

from __future__ import annotations

from ..errors import InputError


def run(adapters, **options) -> None:
    raise InputError("--lora is not available in this version", "export one adapter at a time")
