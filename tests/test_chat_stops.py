"""The exported embedded model ends its turn on its own when chatting through the Go TEMPLATE.

Multi-turn conversations are rendered exactly as Ollama would (the TEMPLATE and SYSTEM that the
export recorded in localserve.json, Go text/template), completed greedily by llama.cpp with the
recorded `stop` list, and must finish with reason "stop", never "length".
"""

from __future__ import annotations

import json
import shutil

import pytest

from localserve.chat.gotemplate import render
from localserve.llamacpp.smoke import load

pytestmark = [pytest.mark.slow, pytest.mark.go,
              pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")]

CONVERSATIONS = {
    "two_turns": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Italy?"},
    ],
    "three_turns_with_system": [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "Red is a primary colour."},
        {"role": "user", "content": "Name another one."},
        {"role": "assistant", "content": "Blue is another primary colour."},
        {"role": "user", "content": "Thanks! And a secondary colour?"},
    ],
}
MAX_TOKENS = 200  # far above a turn's answer: ending within it means the model ended its turn


def _ollama_messages(modelfile: dict, messages: list[dict]) -> list[dict]:
    # Ollama puts the Modelfile SYSTEM first when the conversation brings no system message.
    if modelfile.get("system") and messages[0]["role"] != "system":
        return [{"role": "system", "content": modelfile["system"]}] + messages
    return messages


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_a_multi_turn_chat_through_the_go_template_stops_on_its_own(exported_demo, name):
    lineage = json.loads((exported_demo / "localserve.json").read_text())
    modelfile = lineage["modelfile"]
    assert isinstance(modelfile["parameters"]["stop"], list) and modelfile["parameters"]["stop"]
    gguf = exported_demo / next(a["file"] for a in lineage["artifacts"] if a["quant"] == "Q4_K_M")
    prompt = render(modelfile["template"], _ollama_messages(modelfile, CONVERSATIONS[name]))
    assert prompt.endswith("<|im_start|>assistant\n")
    llm = load(gguf)
    try:
        out = llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0, top_k=1,
                                    stop=modelfile["parameters"]["stop"])
    finally:
        llm.close()
    choice = out["choices"][0]
    assert choice["text"].strip(), "the model produced no answer"
    assert choice["finish_reason"] == "stop", f"did not end its turn within {MAX_TOKENS} tokens: {choice['text']!r}"
    assert out["usage"]["completion_tokens"] < MAX_TOKENS
