"""Registering an export through Ollama's HTTP API, and the stand-in's strictness
(docs/ollama.md#http, #blobs, #create-api)."""

from __future__ import annotations

import hashlib
import json
import socket
import urllib.request

from ollama_standin import HTTP
import pytest

from localserve.errors import InputError, OllamaError, OllamaUnreachable, UnknownName
from localserve.ollama import register, server_available
from localserve.ollama.client import OllamaServer, ServerTooOld, resolve_host
from localserve.ollama.layers import typed_params

pytest_plugins = ["ollama_standin.fixtures"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _manifest(steer, name: str) -> dict:
    from ollama_standin.server import Name

    path = steer.store.find(Name.parse(name))
    assert path is not None, f"{name} not in the stand-in store"
    return json.loads(path.read_bytes())


def _blob(steer, digest: str) -> bytes:
    return steer.store.blob(digest).read_bytes()


def test_server_available_sees_the_standin_and_not_a_closed_port(ollama_host):
    assert server_available(ollama_host)
    assert not server_available(f"http://127.0.0.1:{_free_port()}")


def test_host_resolution_follows_ollama_host(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert resolve_host() == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:5555")
    assert resolve_host() == "http://127.0.0.1:5555"
    assert resolve_host("https://box.internal") == "https://box.internal:443"


def test_register_uploads_then_creates_with_typed_layers(steer, fake_export):
    steer.requests.clear()
    steer.pull_attempts.clear()  # the stand-in is shared by the session: only this registration counts
    result = register(fake_export, name="reg-typed:v1", host=steer.url)
    assert result.name == "reg-typed:v1" and result.create_form == "json"

    calls = [(m, p) for m, p, _ in steer.requests]
    blob_path = f"/api/blobs/{result.model_digest}"
    assert calls.index(("HEAD", blob_path)) < calls.index(("POST", "/api/create"))
    create_body = next(b for m, p, b in steer.requests if p == "/api/create")
    assert "from" not in create_body, "a `from` can trigger a registry pull"
    assert create_body["files"] == {"demo-Q4_1.gguf": result.model_digest}
    assert create_body["parameters"] == {"stop": ["<|im_end|>"], "num_ctx": 2048}

    m = _manifest(steer, "reg-typed:v1")
    kinds = [layer["mediaType"] for layer in m["layers"]]
    assert kinds == ["application/vnd.ollama.image.model", "application/vnd.ollama.image.template",
                     "application/vnd.ollama.image.params"]
    params = json.loads(_blob(steer, m["layers"][2]["digest"]))
    assert params == {"num_ctx": 2048, "stop": ["<|im_end|>"]}
    tags = {t["name"]: t for t in HTTP.get(steer.url + "/api/tags").json()["models"]}
    assert tags["reg-typed:v1"]["digest"] == result.manifest_digest
    assert steer.pull_attempts == []


def test_second_register_heads_and_skips_the_upload(steer, fake_export):
    register(fake_export, name="reg-twice:a", host=steer.url)
    steer.requests.clear()
    result = register(fake_export, name="reg-twice:b", host=steer.url)
    assert not result.uploaded
    assert not [p for m, p, _ in steer.requests if m == "POST" and p.startswith("/api/blobs/")]


def test_legacy_server_gets_the_modelfile_form_and_the_same_layers(steer, fake_export):
    with steer.behaving(version="0.5.4"):
        steer.requests.clear()
        result = register(fake_export, name="reg-legacy:v1", host=steer.url)
        body = next(b for m, p, b in steer.requests if p == "/api/create")
    assert result.create_form == "modelfile"
    assert body["modelfile"].startswith(f"FROM @{result.model_digest}\n")
    assert "files" not in body and "from" not in body
    with steer.behaving(version="0.30.0"):
        register(fake_export, name="reg-modern:v1", host=steer.url)
    legacy, modern = _manifest(steer, "reg-legacy:v1"), _manifest(steer, "reg-modern:v1")
    assert legacy["layers"] == modern["layers"]


def test_head_server_rewrites_the_gguf_so_the_stored_digest_differs(steer, fake_export):
    with steer.behaving(version="0.33.0-rc2"):
        result = register(fake_export, name="reg-head:v1", host=steer.url)
    model_layer = _manifest(steer, "reg-head:v1")["layers"][0]
    assert model_layer["mediaType"] == "application/vnd.ollama.image.model"
    assert model_layer["digest"] != result.model_digest
    assert _blob(steer, model_layer["digest"])[:4] == b"GGUF"


# --- errors -----------------------------------------------------------------------------------------

def test_unreachable_server_names_the_address_and_the_ways_out(fake_export):
    host = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(OllamaUnreachable) as e:
        register(fake_export, host=host)
    text = str(e.value)
    assert host in text and "ollama serve" in text and "--store" in text


def test_template_a_legacy_server_cannot_take_is_refused_as_too_old(steer, tmp_path, smollm_gguf):
    from ollama_standin.fixtures import write_export

    # A line ending in """ inside a multi-line value closes every quoting form: no Modelfile can hold it.
    folder = write_export(tmp_path / "q", smollm_gguf, template='"""hi"""\n{{ .Prompt }}')
    with steer.behaving(version="0.5.4"), pytest.raises(ServerTooOld) as e:
        register(folder, name="too-old:v1", host=steer.url)
    assert "0.5.4" in str(e.value) and "0.5.5" in str(e.value)


def test_invalid_model_name_is_refused_before_any_request(steer, fake_export):
    steer.requests.clear()
    for bad in ("bad name", "-demo", "a/b/c/d", "my.ns/demo", "demo:", "demo:cloud"):
        with pytest.raises(InputError, match="invalid Ollama model name"):
            register(fake_export, name=bad, host=steer.url)
    assert steer.requests == []


def test_create_failing_mid_stream_under_http_200_is_an_error(steer, fake_export):
    with steer.behaving(version="0.30.0", create_fault=("writing manifest", "write manifest: no space left on device")):
        with pytest.raises(OllamaError, match="no space left on device"):
            register(fake_export, name="reg-fault:v1", host=steer.url)
    names = [t["name"] for t in HTTP.get(steer.url + "/api/tags").json()["models"]]
    assert "reg-fault:v1" not in names


def test_typed_params_coerce_what_is_safe_and_refuse_the_rest():
    assert typed_params({"stop": "</s>", "num_ctx": "4096", "temperature": 1, "use_mmap": False}) == {
        "stop": ["</s>"], "num_ctx": 4096, "temperature": 1.0, "use_mmap": False}
    assert typed_params({"mirostat": 1}) == {}  # deprecated: dropped with a notice
    with pytest.raises(UnknownName, match="Temperature"):
        typed_params({"Temperature": 0.7})
    for bad in ({"num_ctx": 4096.5}, {"stop": [1]}, {"use_mmap": "yes"}, {"top_k": True}):
        with pytest.raises(InputError):
            typed_params(bad)


# --- the stand-in is strict where Ollama is -----------------------------------------------------------

def test_host_header_that_is_not_local_gets_403_without_body(steer):
    r = HTTP.get(steer.url + "/api/version", headers={"Host": "evil.example.com"})
    assert r.status_code == 403 and r.content == b""
    assert HTTP.get(steer.url + "/api/version", headers={"Host": "box.local:11434"}).status_code == 200


def test_blob_digest_rules(steer):
    data = b"not a model, just bytes"
    hexd = hashlib.sha256(data).hexdigest()
    url = steer.url + "/api/blobs/"
    assert HTTP.head(url + "sha256:xyz").status_code == 400
    assert HTTP.post(url + f"sha256:{hexd.upper()}", content=data).status_code == 400  # uppercase: mismatch
    assert HTTP.head(url + f"sha256:{hexd}").status_code == 200  # the misnamed upload stayed stored
    dashed = b"other bytes"
    assert HTTP.post(url + f"sha256-{hashlib.sha256(dashed).hexdigest()}", content=dashed).status_code == 400
    other = b"fresh bytes"
    d2 = hashlib.sha256(other).hexdigest()
    assert HTTP.post(url + f"sha256:{d2}", content=other).status_code == 201
    assert HTTP.post(url + f"sha256:{d2}", content=other).status_code == 200


def test_create_validation(steer, fake_export):
    blob = OllamaServer(steer.url).push_blob(fake_export / "demo-Q4_1.gguf")
    junk = b'{"not": "gguf"}'
    jd = "sha256:" + hashlib.sha256(junk).hexdigest()
    HTTP.post(steer.url + f"/api/blobs/{jd}", content=junk)
    refused = [  # what the request gets wrong: its status, before any progress
        ({"model": "v:1", "files": {"../m.gguf": blob.digest}}, "file path must be relative"),
        ({"model": "v:1", "files": {"/m.gguf": blob.digest}}, "file path must be relative"),
        ({"model": "v:1", "files": {"m.gguf": ""}}, "invalid digest format"),
        ({"model": "v:1", "modelfile": f"FROM @{blob.digest}"}, "neither 'from' or 'files' was specified"),
        ({"model": "bad name", "files": {"m.gguf": blob.digest}}, "invalid model name"),
    ]
    failed = [  # what reading the files finds: after "parsing GGUF", in the stream under 200 (seen on 0.33.0-rc2)
        ({"model": "v:1", "files": {"m.gguf": jd}}, "supplied file was not in GGUF format"),
        ({"model": "v:1", "files": {"m.gguf": "sha256:" + "0" * 64}}, "no such file or directory"),
        ({"model": "v:1", "files": {"m.gguf": blob.digest}, "template": "{{ .Prompt"}, "template error"),
    ]
    with steer.behaving(version="0.30.0"):
        for body, message in refused:
            r = HTTP.post(steer.url + "/api/create", json=body)
            assert r.status_code == 400 and message in r.json()["error"], (body, r.text)
        for body, message in failed:
            r = HTTP.post(steer.url + "/api/create", json=body)
            lines = [json.loads(line) for line in r.text.splitlines()]
            assert r.status_code == 200 and lines[0] == {"status": "parsing GGUF"}, (body, r.text)
            assert message in lines[-1]["error"] and not any(p.get("status") == "success" for p in lines)
        assert HTTP.post(steer.url + "/api/create", content=b"").json()["error"] == "missing request body"
    with steer.behaving(version="0.5.4"):
        r = HTTP.post(steer.url + "/api/create", json={"model": "v:1", "files": {"m.gguf": blob.digest}})
        assert r.status_code == 400 and r.json()["error"] == "path or Modelfile are required"


def test_params_of_the_wrong_type_break_inference_not_create(steer, fake_export):
    blob = OllamaServer(steer.url).push_blob(fake_export / "demo-Q4_1.gguf")
    body = {"model": "wrong-type:v1", "files": {"m.gguf": blob.digest}, "parameters": {"stop": "<|im_end|>"},
            "stream": False}
    with steer.behaving(version="0.30.0"):
        assert HTTP.post(steer.url + "/api/create", json=body).json() == {"status": "success"}
    r = HTTP.post(steer.url + "/api/chat", json={"model": "wrong-type:v1", "options": {"num_predict": 8},
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500 and r.json()["error"] == 'option "stop" must be of type array'


def test_tags_digest_size_and_modified_at_come_from_the_manifest_file(steer, fake_export):
    import os
    from datetime import datetime

    register(fake_export, name="tags-rule:v1", host=steer.url)
    from ollama_standin.server import Name

    path = steer.store.find(Name.parse("tags-rule:v1"))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    entry = next(t for t in HTTP.get(steer.url + "/api/tags").json()["models"] if t["name"] == "tags-rule:v1")
    raw = path.read_bytes()
    m = json.loads(raw)
    assert entry["digest"] == hashlib.sha256(raw).hexdigest()
    assert entry["size"] == m["config"]["size"] + sum(layer["size"] for layer in m["layers"])
    assert datetime.fromisoformat(entry["modified_at"]).timestamp() == 1_700_000_000
    steer.store.blob(m["config"]["digest"]).rename(steer.store.root / "config.aside")
    try:
        names = [t["name"] for t in HTTP.get(steer.url + "/api/tags").json()["models"]]
        assert "tags-rule:v1" not in names  # a manifest without its config blob vanishes
    finally:
        (steer.store.root / "config.aside").rename(steer.store.blob(m["config"]["digest"]))


# --- the last step of `export` ------------------------------------------------------------------

def test_export_registers_the_model_when_ollama_answers(steer, tiny_adapter, tmp_path):
    from localserve import ExportSpec, export

    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), name="tinyreg", out=tmp_path / "o",
                               smoke=False, ollama_host=steer.url))
    assert result.registered and result.registered["name"].startswith("tinyreg")
    assert result.register_hint is None
    listed = json.loads(urllib.request.urlopen(f"{steer.url}/api/tags", timeout=30).read())
    assert result.registered["name"] in {m["name"] for m in listed["models"]}
    assert json.loads((tmp_path / "o" / "localserve.json").read_text())["registered"] == result.registered


def test_export_without_a_server_says_how_to_register_later(tiny_adapter, tmp_path):
    from localserve import ExportSpec, export
    from localserve.vllm.runtime import free_port

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), name="tinyreg", out=tmp_path / "o",
                               smoke=False, ollama_host=closed))
    assert result.registered is None
    assert f"no Ollama server answered at {closed}" in result.register_hint
    assert f"localserve register {tmp_path / 'o'}" in result.register_hint


def test_a_native_template_export_is_refused_by_a_server_older_than_0_30(steer, smollm_gguf, tmp_path):
    from ollama_standin.fixtures import write_export

    native = write_export(tmp_path / "native", smollm_gguf, template=None)  # export --ollama-template native
    with steer.behaving(version="0.29.1"), pytest.raises(ServerTooOld) as refused:
        steer.requests.clear()
        register(native, name="native-old:v1", host=steer.url)
    assert "unformatted" in str(refused.value) and "--ollama-template go" in str(refused.value)
    assert not [p for m, p, _ in steer.requests if m == "POST"]  # refused before any upload
    with steer.behaving(version="0.30.0"):
        assert register(native, name="native-new:v1", host=steer.url).name == "native-new:v1"
