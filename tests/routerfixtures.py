"""Fixtures of the router tests: two versions of the tiny model on the Ollama stand-in."""

from __future__ import annotations

import pytest

from routerhelpers import V1, V2


@pytest.fixture(scope="session")
def tiny_arms(standin, fresh_tiny_export) -> str:
    """tiny-ab:v1 (Q4_K_M) and tiny-ab:v2 (Q8_0) registered on the stand-in; returns its URL."""
    from localserve.ollama import register

    tiny_export = fresh_tiny_export()

    register(tiny_export, name=V1, host=standin.url, quant="Q4_K_M")
    register(tiny_export, name=V2, host=standin.url, quant="Q8_0")
    return standin.url
