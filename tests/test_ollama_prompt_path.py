"""Which template builds a model's prompts on Ollama (localserve/ollama/prompt_path.py, docs/ollama.md#template-selection):
what an export expects from its two templates, and what a server's /api/show says it chose. The same
choices are proven on the real server in the ollama tier (tests/test_ollama_real.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localserve.ollama.prompt_path import (GGUF_JINJA, GO_TEMPLATE, RAW, expected_path, go_capabilities,
                                           jinja_capabilities, path_in_use)

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")


def jinja(model: str) -> str:
    return json.loads((TEMPLATES / model / "tokenizer_config.json").read_text())["chat_template"]


def test_a_go_template_advertising_what_the_jinja_does_is_used():
    assert expected_path(CHATML_GO, jinja("SmolLM2-135M-Instruct")).path == GO_TEMPLATE


def test_a_jinja_template_advertising_more_wins_and_says_what():
    path = expected_path(CHATML_GO, jinja("Qwen2.5-7B-Instruct"))  # tools, and the Go template has no .Tools
    assert path.path == GGUF_JINJA and "tools" in path.why
    assert jinja_capabilities(jinja("Qwen3-8B")) == {"completion", "tools", "thinking"}


def test_with_tools_on_both_sides_only_a_jinja_tool_round_trip_wins():
    tools_go = CHATML_GO.replace("{{- range .Messages }}", "{{- if .Tools }}{{ .Tools }}{{ end }}{{- range .Messages }}")
    assert go_capabilities(tools_go) == {"completion", "tools"}
    assert expected_path(tools_go, jinja("Qwen2.5-7B-Instruct")).path == GGUF_JINJA  # Qwen's renders tool results
    assert expected_path(tools_go, "{% if tools %}{{ tools }}{% endif %}").path == GO_TEMPLATE  # no round trip


@pytest.mark.parametrize("env, path", [(True, GO_TEMPLATE), (False, GGUF_JINJA)])
def test_ollama_go_template_decides_when_the_server_sets_it(env, path):
    assert expected_path(CHATML_GO, jinja("Qwen2.5-7B-Instruct"), go_template_env=env).path == path
    assert expected_path(CHATML_GO, jinja("SmolLM2-135M-Instruct"), go_template_env=env).path == path


def test_without_a_go_template_the_gguf_decides_and_before_0_30_the_prompt_is_raw():
    native = expected_path(None, jinja("SmolLM2-135M-Instruct"))
    assert native.path == GGUF_JINJA and "built-in Go template" in native.why
    assert expected_path(None, None).path == RAW
    assert expected_path(None, jinja("SmolLM2-135M-Instruct"), version=(0, 29, 9)).path == RAW
    assert expected_path(CHATML_GO, jinja("Qwen2.5-7B-Instruct"), version=(0, 29, 9)).path == GO_TEMPLATE


def _shown(template: str, modelfile_template: str | None) -> dict:
    quoted = f'"""{modelfile_template}"""' if modelfile_template and "\n" in modelfile_template else \
        (modelfile_template or "{{ .Prompt }}")
    return {"template": template, "modelfile": f"FROM /blobs/sha256-x\nTEMPLATE {quoted}\n"}


def test_the_server_says_through_show_which_template_it_renders():
    qwen = jinja("Qwen2.5-7B-Instruct")
    assert path_in_use(_shown(CHATML_GO, CHATML_GO), (0, 33, 0)).path == GO_TEMPLATE
    assert path_in_use(_shown(qwen, CHATML_GO), (0, 33, 0)).path == GGUF_JINJA  # preferred, or OLLAMA_GO_TEMPLATE=0
    assert path_in_use(_shown(qwen, None), (0, 33, 0)).path == GGUF_JINJA  # no template layer
    assert path_in_use(_shown("{{ .Prompt }}", None), (0, 29, 0)).path == RAW
    assert path_in_use(_shown(CHATML_GO, CHATML_GO), (0, 29, 0)).path == GO_TEMPLATE
