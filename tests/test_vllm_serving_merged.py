"""The real vLLM serving the merged export, from its own launch.sh and vllm-config.yaml: the demo
adapter's answer, stopping on its own (generation_config.json carries the end-of-turn ids)."""

from __future__ import annotations

import json

import pytest

from vllmtier import chat, pytestmark  # noqa: F401  (the tier's marks and skip)


@pytest.fixture(scope="module")
def server(demo_on_vllm):
    return demo_on_vllm[1]


def test_the_merged_model_answers_like_the_adapter(server, demo_adapter):
    expected = json.loads((demo_adapter / "probe.json").read_text())
    answer = chat(server.url, "demo", expected["question"])
    assert expected["expected"] in answer["message"]["content"], answer
    assert answer["finish_reason"] == "stop"


def test_the_server_serves_the_exported_name_only(server):
    from localserve.vllm import VllmClient

    assert [(m.name, m.parent) for m in VllmClient(server.url).models()] == [("demo", None)]


def test_a_server_without_runtime_updating_refuses_loads_in_one_line(server, demo_adapter):
    """The merged export's server runs without VLLM_ALLOW_RUNTIME_LORA_UPDATING: no load route."""
    from localserve.errors import RuntimeLoraDisabled
    from localserve.vllm import VllmClient

    with pytest.raises(RuntimeLoraDisabled, match="runtime LoRA updating is disabled") as refused:
        VllmClient(server.url).load("late", demo_adapter)
    assert "\n" not in str(refused.value) and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in str(refused.value)


def test_the_golden_suite_runs_on_the_vllm_served_version_as_on_its_gguf(server, demo_adapter, exported_demo):
    """`localserve eval` on the real vLLM (openai:URL#MODEL) and on the GGUF export: the same probe
    passes on both stages of the fine-tune."""
    from localserve.lifecycle.evaluate import evaluate
    from localserve.lifecycle.suites import load_suite

    suite = load_suite(demo_adapter / "probe.json")
    served = evaluate(suite, f"openai:{server.url}#demo", max_tokens=48)
    gguf = evaluate(suite, str(exported_demo / "demo-Q4_K_M.gguf"), max_tokens=48)
    assert served.passed == gguf.passed == 1, (served.to_json(), gguf.to_json())
    assert served.target_info["engine"] == "openai" and served.cases[0].answer.finish_reason == "stop"

