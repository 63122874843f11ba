"""vllm tier: arms on two engines behind one router — v1 a GGUF on the Ollama stand-in, v2 the demo adapter's
merged vLLM export on the real vLLM (CPU build). OpenAI's and Ollama's clients, streaming and not, get each
arm's own answer; the Ollama API reaches the vLLM arm translated."""

from __future__ import annotations

import json

import ollama
import pytest
from openai import OpenAI

from localserve.router.arms import assign
from localserve.router.log import RequestLog
from routerhelpers import running_router
from vllmtier import pytestmark  # noqa: F401  (the tier's marks and skip)

pytest_plugins = ["ollama_standin.fixtures"]

NAME = "mixed"
V1, V2 = f"{NAME}:v1", f"{NAME}:v2"


@pytest.fixture(scope="module")
def vllm_server(demo_on_vllm):
    return demo_on_vllm[1]


def test_an_ollama_arm_and_a_vllm_arm_behind_one_router(vllm_server, standin, fake_export, demo_adapter):
    from localserve.ollama import register

    probe = json.loads((demo_adapter / "probe.json").read_text())
    question = [{"role": "user", "content": probe["question"]}]
    register(fake_export, name=V1, host=standin.url)
    arms = [f"{V1}=50", f"{V2}=50@openai:{vllm_server.url}#demo"]
    with running_router(NAME, arms, standin.url) as router:
        on = {arm: next(u for u in (f"u{i}" for i in range(500)) if assign(NAME, u, router.arms).version == arm)
              for arm in (V1, V2)}
        client = OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model=NAME, messages=question, max_tokens=40,
                                                                temperature=0, user=on[V2])
        assert raw.headers["x-localserve-arm"] == V2
        assert probe["expected"] in raw.parse().choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=NAME, messages=question, max_tokens=40, temperature=0, user=on[V2], stream=True) if c.choices)
        assert probe["expected"] in streamed
        via_ollama = ollama.Client(host=router.url, headers={"X-User-Id": on[V2]})
        answer = via_ollama.chat(model=NAME, messages=question, options={"num_predict": 40, "temperature": 0})
        assert probe["expected"] in answer.message.content and answer.done_reason == "stop"
        parts = list(via_ollama.chat(model=NAME, messages=question, stream=True,
                                     options={"num_predict": 40, "temperature": 0}))
        assert probe["expected"] in "".join(p.message.content for p in parts) and parts[-1].eval_count > 0
        other = client.chat.completions.create(model=NAME, messages=question, max_tokens=8, user=on[V1])
        assert other.model == V1  # the stand-in's SmolLM2, not the fine-tune
    with RequestLog() as log:
        rows = log.rows(NAME)
    assert [r.arm for r in rows] == [V2, V2, V2, V2, V1] and not [r for r in rows if r.failed]
    assert all(r.completion_tokens for r in rows)
