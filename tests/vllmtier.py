"""Shared by the `vllm` test tier: the skip when the vLLM virtualenv is missing, and one chat call."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


def missing_venv(locate, make_target: str) -> str | None:
    """Why a side virtualenv is unusable (`locate` raises SetupError), with the make target that builds it."""
    from localserve.errors import SetupError

    try:
        locate()
    except SetupError as e:
        return f"{e.message}: build it with `make {make_target}`"
    return None


def _vllm_python():
    from localserve.vllm.runtime import vllm_python

    return vllm_python()


MISSING = missing_venv(_vllm_python, "bootstrap-vllm")
# The tier is slow too: `make test-fast` (-m "not slow") leaves it out.
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def chat(url: str, model: str, question: str, max_tokens: int = 40) -> dict:
    """One greedy chat completion; returns vLLM's first choice (message, finish_reason)."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["choices"][0]


def chat_status(url: str, model: str, question: str) -> int:
    try:
        chat(url, model, question, max_tokens=4)
        return 200
    except urllib.error.HTTPError as e:
        return e.code
