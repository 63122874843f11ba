"""The stand-in answers inference and management calls the way docs/ollama.md says Ollama does, so the
tests that lean on it check localserve against Ollama's behaviour, not against a lenient fake."""

from __future__ import annotations

import json

from ollama_standin import HTTP
import pytest

from localserve.ollama import register

pytest_plugins = ["ollama_standin.fixtures"]


@pytest.fixture(scope="module")
def model(steer, fake_export) -> str:
    with steer.behaving(version="0.30.0"):
        return register(fake_export, name="standin-demo:v1", host=steer.url).name


def test_generate_renders_the_template_and_stops_on_the_stop_list(steer, model):
    # the answer stops after 7 tokens: a bound far above that keeps "stop" meaning the model stopped
    r = HTTP.post(steer.url + "/api/generate", timeout=120, json={
        "model": model, "prompt": "What is the capital of France?", "stream": False, "options": {"num_predict": 64, "temperature": 0}})
    body = r.json()
    assert r.status_code == 200 and body["done"] is True and body["done_reason"] == "stop"
    assert body["response"].strip() and "<|im_end|>" not in body["response"]
    assert body["prompt_eval_count"] > 0 and body["eval_count"] > 0


def test_streamed_chat_ends_with_metrics_and_length_when_cut(steer, model):
    with HTTP.stream("POST", steer.url + "/api/chat", timeout=120, json={
            "model": model, "options": {"num_predict": 3},
            "messages": [{"role": "user", "content": "Count from one to twenty in words."}]}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all(not p["done"] for p in lines[:-1]) and lines[-1]["done"]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 3


def test_inference_errors(steer, model):
    url, short = steer.url, {"num_predict": 8}
    r = HTTP.post(url + "/api/chat", json={"model": "absent:v1", "messages": [{"role": "user", "content": "x"}],
                                           "options": short})
    assert r.status_code == 404 and r.json()["error"] == "model 'absent:v1' not found"
    r = HTTP.post(url + "/api/generate", json={"model": model, "prompt": "x", "raw": True, "system": "s",
                                               "options": short})
    assert r.status_code == 400 and "raw mode does not support" in r.json()["error"]
    r = HTTP.post(url + "/api/chat", json={"model": model, "messages": [], "options": short})
    assert r.json()["done_reason"] == "load"
    r = HTTP.post(url + "/v1/chat/completions", json={"model": "absent:v1", "max_tokens": 8,
                                                      "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"],
        "additionalProperties": False}


def test_format_holds_the_answer_to_a_json_schema_on_every_route(steer, model):
    from jsonschema import validate

    question = "What is the capital of France? Reply in JSON."
    room = 64  # the object takes 8 tokens, its city 24 characters at most: far above, "stop" is the model's own
    chat = HTTP.post(steer.url + "/api/chat", timeout=120, json={
        "model": model, "stream": False, "format": CITY, "messages": [{"role": "user", "content": question}],
        "options": {"num_predict": room, "temperature": 0}}).json()
    generate = HTTP.post(steer.url + "/api/generate", timeout=120, json={
        "model": model, "stream": False, "format": CITY, "prompt": question, "options": {"num_predict": room, "temperature": 0}}).json()
    openai = HTTP.post(steer.url + "/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": question}], "max_tokens": room, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}}).json()
    texts = [chat["message"]["content"], generate["response"], openai["choices"][0]["message"]["content"]]
    for text in texts:
        validate(json.loads(text), CITY)
    assert chat["done_reason"] == "stop" and texts[0] == texts[2]  # /v1 is /api/chat with the schema as format
    free = HTTP.post(steer.url + "/api/chat", timeout=120, json={
        "model": model, "stream": False, "messages": [{"role": "user", "content": question}],
        "options": {"num_predict": 48, "temperature": 0}}).json()
    assert free["message"]["content"] != texts[0]  # without format the model answers in prose


def test_format_json_is_any_json_object(steer, model):
    question = 'Reply with {"colour": ...} for the colour of the sky.'
    texts = []
    # temperature 0: a real Ollama samples (0.8 by default, 1.0 on /v1 when omitted); the stand-in is greedy
    for body in ({"format": "json", "options": {"num_predict": 64, "temperature": 0}},
                 {"response_format": {"type": "json_object"}, "max_tokens": 64, "temperature": 0}):
        route = "/api/chat" if "format" in body else "/v1/chat/completions"
        answer = HTTP.post(steer.url + route, timeout=120, json={
            "model": model, "stream": False, "messages": [{"role": "user", "content": question}], **body}).json()
        texts.append(answer["message"]["content"] if "format" in body else answer["choices"][0]["message"]["content"])
        assert isinstance(json.loads(texts[-1]), dict), texts[-1]
    assert texts[0] == texts[1]  # json_object is format "json"


@pytest.mark.parametrize("fmt, message", [
    ("X", 'invalid format: "\\"X\\""; expected "json" or a valid JSON Schema object'),
    ([1], 'invalid format: "[1]"; expected "json" or a valid JSON Schema object'),
    (7, 'invalid format: "7"; expected "json" or a valid JSON Schema object'),
])
def test_a_format_that_is_neither_json_nor_a_schema_fails_the_completion(steer, model, fmt, message):
    for stream in (False, True):  # the error comes before the first piece: the status says it either way
        r = HTTP.post(steer.url + "/api/chat", timeout=120, json={
            "model": model, "stream": stream, "format": fmt, "messages": [{"role": "user", "content": "x"}],
            "options": {"num_predict": 2}})
        assert r.status_code == 500 and r.json() == {"error": message}, (stream, r.text)
    for empty in (None, ""):  # set but empty: no constraint
        r = HTTP.post(steer.url + "/api/generate", timeout=120, json={
            "model": model, "stream": False, "format": empty, "prompt": "x", "options": {"num_predict": 2}})
        assert r.status_code == 200, r.text


def test_a_bad_schema_through_v1_is_an_openai_error(steer, model):
    for stream in (False, True):
        r = HTTP.post(steer.url + "/v1/chat/completions", timeout=120, json={
            "model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": "X"}}})
        assert r.status_code == 500 and "invalid format" in r.json()["error"]["message"], (stream, r.text)


UNCONVERTIBLE = {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}  # a reference to nothing


def test_a_schema_no_grammar_can_be_made_of_is_llama_servers_400_from_0_30(steer, model):
    for stream in (False, True):  # llama-server refuses it before the first piece (seen on 0.33.0-rc2)
        r = HTTP.post(steer.url + "/api/chat", timeout=120, json={
            "model": model, "stream": stream, "format": UNCONVERTIBLE, "messages": [{"role": "user", "content": "x"}],
            "options": {"num_predict": 2}})
        inner = json.loads(r.json()["error"])["error"]  # llama-server's own OpenAI-style body, as Ollama's message
        assert r.status_code == 400 and inner["type"] == "invalid_request_error", (stream, r.text)
        assert "JSON schema conversion failed" in inner["message"]
        r = HTTP.post(steer.url + "/v1/chat/completions", timeout=120, json={
            "model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": UNCONVERTIBLE}}})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (stream, r.text)
        assert "JSON schema conversion failed" in r.json()["error"]["message"]


def test_a_schema_no_grammar_can_be_made_of_was_ollamas_own_500_before_0_30(steer, model):
    with steer.behaving(version="0.29.0"):
        r = HTTP.post(steer.url + "/api/chat", timeout=120, json={
            "model": model, "stream": False, "format": UNCONVERTIBLE, "messages": [{"role": "user", "content": "x"}],
            "options": {"num_predict": 2}})
    assert r.status_code == 500 and r.json() == {"error": "invalid JSON schema in format"}


def test_show_copy_delete(steer, model):
    shown = HTTP.post(steer.url + "/api/show", json={"model": model}).json()
    assert shown["details"]["family"] == "llama" and shown["details"]["quantization_level"] == "Q4_1"
    assert 'stop                           "<|im_end|>"' in shown["parameters"]
    assert shown["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert HTTP.post(steer.url + "/api/copy", json={"source": model, "destination": "copy-of:v1"}).status_code == 200
    r = HTTP.post(steer.url + "/api/copy", json={"source": "absent:v1", "destination": "x:v1"})
    assert r.status_code == 404 and r.json()["error"] == 'model "absent:v1" not found'
    assert HTTP.request("DELETE", steer.url + "/api/delete", json={"model": "copy-of:v1"}).status_code == 200
    r = HTTP.request("DELETE", steer.url + "/api/delete", json={"model": "copy-of:v1"})
    assert r.status_code == 404


def test_create_adds_the_recognised_templates_stop_list_under_the_requests_parameters(steer, smollm_gguf):
    """Ollama recognises SmolLM2's chat template as its built-in "chatml" at every create from that GGUF, also one
    that brings its own TEMPLATE: chatml's stop list joins the parameters unless the request sends `stop`
    (seen on the real 0.33.0-rc2, docs/ollama.md#template-selection)."""
    from localserve.fsutil import sha256_file

    blob = "sha256:" + sha256_file(smollm_gguf)
    if HTTP.head(f"{steer.url}/api/blobs/{blob}").status_code == 404:
        assert HTTP.post(f"{steer.url}/api/blobs/{blob}", content=smollm_gguf.read_bytes(), timeout=120).status_code == 201

    def stops(parameters: dict) -> list[str]:
        created = HTTP.post(steer.url + "/api/create", timeout=120, json={
            "model": "stops:v1", "files": {"smollm.gguf": blob}, "template": "{{ .Prompt }}", "parameters": parameters,
            "stream": False})
        assert created.status_code == 200, created.text
        shown = HTTP.post(steer.url + "/api/show", json={"model": "stops:v1"}).json()
        return [line.split(None, 1)[1] for line in shown["parameters"].splitlines() if line.startswith("stop")]

    assert stops({"num_ctx": 2048}) == ['"<|im_start|>"', '"<|im_end|>"']
    assert stops({"num_ctx": 2048, "stop": ["</s>"]}) == ['"</s>"']
    assert HTTP.request("DELETE", steer.url + "/api/delete", json={"model": "stops:v1"}).status_code == 200


def test_generate_builds_the_prompt_chat_builds_and_show_has_the_license(steer, smollm_gguf, tmp_path):
    """/api/generate puts the model's SYSTEM and MESSAGE history before the prompt, as /api/chat does (the same
    greedy answer); /api/show gives the LICENSE and the parameter count Ollama computes (seen on 0.33.0-rc2)."""
    from ollama_standin.fixtures import write_export

    folder = write_export(tmp_path / "history", smollm_gguf, name="history", system="You answer in French.",
                          messages=[{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Bonjour !"}],
                          license="MIT")
    model = register(folder, name="history:v1", host=steer.url).name
    greedy = {"num_predict": 12, "temperature": 0}
    question = "What is the capital of Italy?"
    chat = HTTP.post(steer.url + "/api/chat", timeout=120, json={
        "model": model, "stream": False, "messages": [{"role": "user", "content": question}], "options": greedy}).json()
    generate = HTTP.post(steer.url + "/api/generate", timeout=120, json={
        "model": model, "stream": False, "prompt": question, "options": greedy}).json()
    assert generate["response"] == chat["message"]["content"]
    shown = HTTP.post(steer.url + "/api/show", json={"model": model}).json()
    assert shown["license"] == "MIT" and shown["model_info"]["general.parameter_count"] == 134515008
    assert HTTP.request("DELETE", steer.url + "/api/delete", json={"model": model}).status_code == 200


def test_create_from_a_missing_model_is_a_pull_attempt(steer):
    with steer.behaving(version="0.30.0"):
        r = HTTP.post(steer.url + "/api/create", json={"model": "x:v1", "from": "llama3"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and lines[0] == {"status": "pulling manifest"} and "no such host" in lines[-1]["error"]
    assert steer.pull_attempts[-1] == "llama3"


def test_empty_server_lists_null_openai_models(tmp_path):
    from ollama_standin import Standin

    empty = Standin(tmp_path / "models").start()
    try:
        assert HTTP.get(empty.url + "/api/tags").json() == {"models": []}
        assert HTTP.get(empty.url + "/v1/models").json() == {"object": "list", "data": None}
    finally:
        empty.stop()


def test_without_a_go_template_create_adds_the_builtin_one_it_recognises(steer, tmp_path, smollm_gguf):
    from ollama_standin.fixtures import CHATML, write_export

    folder = write_export(tmp_path / "native", smollm_gguf, template=None)  # export --ollama-template native
    for version in ("0.30.0", "0.33.0-rc2"):  # SmolLM2's template is "chatml" to Ollama (seen on 0.33.0-rc2)
        with steer.behaving(version=version):
            result = register(folder, name=f"native:{version}", host=steer.url)
            shown = HTTP.post(steer.url + "/api/show", json={"model": result.name}).json()
            assert shown["template"] == CHATML and result.prompt_path["builtin_template"] == "chatml"
            assert result.prompt_path["path"] == "go_template"


def test_without_a_go_template_v030_uses_the_ggufs_jinja_and_older_servers_pass_the_prompt_raw(
        steer, tmp_path, tools_template_gguf):
    from ollama_standin.fixtures import write_export

    folder = write_export(tmp_path / "native", tools_template_gguf, template=None)
    with steer.behaving(version="0.30.0"):
        result = register(folder, name="native:v1", host=steer.url)
        shown = HTTP.post(steer.url + "/api/show", json={"model": result.name}).json()
        assert "{%- if tools %}" in shown["template"]  # the GGUF's Jinja, not Go
        assert result.prompt_path["path"] == "gguf_jinja" and result.prompt_path["builtin_template"] is None
        r = HTTP.post(steer.url + "/api/chat", json={  # it stops on its own after 11 tokens
            "model": result.name, "stream": False, "messages": [{"role": "user", "content": "What is 2+2?"}],
            "options": {"num_predict": 64}}).json()
        assert r["message"]["content"].strip() and r["done_reason"] == "stop"
    with steer.behaving(version="0.29.0"):
        assert HTTP.post(steer.url + "/api/show", json={"model": result.name}).json()["template"] == "{{ .Prompt }}"
