"""The Go renderer behaves like Ollama's template engine (docs/ollama.md#go-template), with the real text/template."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest

from localserve.chat import gotemplate
from localserve.chat.gotemplate import Conversation, GoTemplateError, render, render_many

HAVE_GO = shutil.which("go") is not None
pytestmark = [pytest.mark.go, pytest.mark.skipif(not HAVE_GO, reason="Go is not installed (apt-get install golang-go)")]

CHATML = ('{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
          '<|im_start|>assistant\n')


def test_messages_mode_renders_each_message():
    out = render(CHATML, [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_consecutive_same_role_messages_are_merged_with_a_blank_line_but_tool_results_are_not():
    tpl = "{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
            {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"}]
    assert render(tpl, msgs) == "[user:a\n\nb][tool:r1][tool:r2]"


def test_system_variable_joins_every_system_message():
    tpl = "{{ .System }}|{{ len .Messages }}"
    msgs = [{"role": "system", "content": "one"}, {"role": "user", "content": "u"},
            {"role": "system", "content": "two"}]
    assert render(tpl, msgs) == "one\n\ntwo|3"


def test_legacy_template_runs_once_per_turn_and_cuts_the_last_turn_after_response():
    tpl = "{{ if .System }}S:{{ .System }} {{ end }}U:{{ .Prompt }} A:{{ .Response }}<end>"
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "tool", "content": "dropped"}]
    assert render(tpl, msgs) == "S:sys U:q1 A:a1<end>U:q2 A:"


def test_response_is_appended_when_a_template_uses_neither_messages_nor_response():
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}]
    assert render("{{ .Prompt }}|", msgs) == "q1|a1q2|"


def test_missing_keys_are_zero_values_not_errors():
    assert render("{{ if .NotAVariable }}set{{ else }}unset{{ end }}", [{"role": "user", "content": "x"}]) == "unset"


def test_tool_call_arguments_and_tools_print_as_json():
    tpl = ("{{ range .Tools }}{{ .Function.Name }}={{ .Function.Parameters }};{{ end }}"
           "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }}({{ .Function.Arguments }})"
           "{{ json .Function.Arguments }}{{ end }}{{ end }}")
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}}]
    msgs = [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": '{"b": 2, "a": "x"}'}}]}]  # OpenAI style: a JSON string
    out = render(tpl, msgs, tools)
    assert out == ('f={"type":"object","required":["a"],"properties":{"a":{"type":"string"}}};'
                   'f({"a":"x","b":2}){"a":"x","b":2}')


def test_tool_messages_carry_name_and_call_id():
    tpl = "{{ range .Messages }}{{ .ToolName }}/{{ .ToolCallID }}/{{ .Content }}{{ end }}"
    msgs = [{"role": "tool", "content": "21C", "name": "weather", "tool_call_id": "c1"}]
    assert render(tpl, msgs) == "weather/c1/21C"


def test_date_functions_and_typescript_types():
    out = render("{{ currentDate }} {{ yesterdayDate }}", [])
    today = dt.date.today()
    assert out in (f"{today} {today - dt.timedelta(days=1)}",
                   f"{today + dt.timedelta(days=1)} {today}")  # the run may cross midnight
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "n": {"type": "integer"}, "s": {"type": ["string", "null"]}}}}}]
    tpl = "{{ $_ := .Messages }}{{ range .Tools }}{{ range $k, $v := .Function.Parameters.Properties }}{{ $k }}:{{ toTypeScriptType $v }};{{ end }}{{ end }}"
    assert render(tpl, [], tools) == "n:number;s:string | null;"


def test_think_values_reach_the_template():
    assert render("{{ .Think }}/{{ .IsThinkSet }}", [], think=True, is_think_set=True) == "true/true"


def test_parse_and_execution_errors_are_reported_per_job():
    results = render_many([("{{ .Messages ", Conversation(())),
                           ("ok {{ len .Messages }}", Conversation(({"role": "user", "content": "x"},))),
                           ("{{ index .Messages 5 }}", Conversation(({"role": "user", "content": "x"},)))])
    assert isinstance(results[0], GoTemplateError) and "template parse" in results[0].message
    assert results[1] == "ok 1"
    assert isinstance(results[2], GoTemplateError) and "index out of range" in results[2].message


def test_unknown_template_variable_names_are_refused_in_python():
    with pytest.raises(ValueError, match="unknown template variable"):
        render("x", [], temperature=1)


def test_the_renderer_is_built_once_into_the_cache_keyed_by_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSERVE_HOME", str(tmp_path))
    exe = gotemplate.binary_path()
    assert exe.parent == tmp_path / "bin" and exe.name == f"gotemplate-{gotemplate.source_hash()}"
    mtime = exe.stat().st_mtime_ns
    assert gotemplate.binary_path() == exe and exe.stat().st_mtime_ns == mtime
    assert not [p for p in exe.parent.iterdir() if p.name.endswith(".partial")]
    proc = subprocess.run([str(exe)], input='{"jobs": []}', capture_output=True, text=True)
    assert proc.returncode == 0 and '"results"' in proc.stdout
