"""`localserve verify` through ChatOllama, the ollama client and the openai client, and the
issue's done-criterion: export -> bundle -> install --store into an empty store -> served -> verified."""

from __future__ import annotations

import json
import os

from ollama_standin import HTTP
import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.errors import OllamaError
from localserve.ollama import register, verify

pytest_plugins = ["ollama_standin.fixtures"]


@pytest.fixture(scope="module")
def registered(ollama_host, fake_export) -> str:
    return register(fake_export, name="verify-demo:v1", host=ollama_host).name


def test_all_three_clients_hold_a_conversation_that_stops(ollama_host, registered):
    report = verify(registered, host=ollama_host)
    assert [c.client for c in report.clients] == ["langchain", "ollama", "openai"]
    for c in report.clients:
        assert c.ok, (c.client, c.problem)
        assert len(c.turns) == 2 and all(t.reply.strip() for t in c.turns)
        assert c.ttft_s > 0 and c.tokens_per_s > 0
    assert report.ok


def test_the_openai_layer_overrides_temperature_unless_sent(steer, registered):
    r = HTTP.post(steer.url + "/v1/chat/completions", timeout=120, json={
        "model": registered, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert steer.last_options["temperature"] == 1.0 and steer.last_options["top_p"] == 1.0
    assert steer.last_options["stop"] == ["<|im_end|>"]  # the model's params still apply


def test_a_model_that_never_stops_fails_verification(steer, tmp_path, smollm_gguf):
    from ollama_standin.fixtures import write_export

    # no assistant turn opened and no stop list: the model rambles until the token limit
    folder = write_export(tmp_path / "ramble", smollm_gguf, template="{{ range .Messages }}{{ .Content }} {{ end }}",
                          parameters={})
    with steer.behaving(version="0.30.0"):
        name = register(folder, name="ramble:v1", host=steer.url).name
    report = verify(name, host=steer.url, clients=("ollama",), max_tokens=24)
    (c,) = report.clients
    assert not c.ok and "did not stop" in c.problem


def test_verify_of_a_missing_model_says_how_to_register(ollama_host):
    with pytest.raises(OllamaError, match="not on the Ollama server"):
        verify("never-registered:v1", host=ollama_host)


@pytest.mark.slow
def test_export_bundle_install_serve_verify(exported_demo, tmp_path):
    """The done-criterion, as an operator would run it on an air-gapped host."""
    if os.environ.get("OLLAMA_TEST_HOST"):
        pytest.skip("installs into a fresh store served by the stand-in")
    from ollama_standin import Standin

    runner = CliRunner()
    tar = tmp_path / "demo.tar"
    r = runner.invoke(cli, ["-q", "bundle", str(exported_demo), "-o", str(tar)])
    assert r.exit_code == 0, r.stderr

    store = tmp_path / "empty-store"
    standin = Standin(store).start()  # an Ollama already running on that (empty) store
    try:
        assert HTTP.get(standin.url + "/api/tags", timeout=60).json() == {"models": []}
        r = runner.invoke(cli, ["-q", "install", str(tar), "--store", str(store)])
        assert r.exit_code == 0, r.stderr
        (model,) = HTTP.get(standin.url + "/api/tags", timeout=60).json()["models"]
        assert model["name"] == "demo:q4_k_m" and model["details"]["quantization_level"] == "Q4_K_M"

        r = runner.invoke(cli, ["-q", "verify", "demo:q4_k_m", "--host", standin.url, "--json"])
        assert r.exit_code == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["ok"] and [c["client"] for c in report["clients"]] == ["langchain", "ollama", "openai"]
        for c in report["clients"]:
            assert all(t["finish_reason"] == "stop" and t["reply"].strip() for t in c["turns"])
    finally:
        standin.stop()
