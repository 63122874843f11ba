"""Shared by the `vllm` test tier: the skip when the vLLM virtualenv is missing, and one chat call."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


def _missing() -> str | None:
    from localserve.errors import SetupError
    from localserve.vllm.runtime import vllm_python

    try:
        vllm_python()
    except SetupError as e:
        return f"{e.message}: build it with `make bootstrap-vllm` (scripts/bootstrap_vllm.sh)"
    return None


MISSING = _missing()
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
