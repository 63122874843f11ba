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


# Each reply stops on its own after 7 tokens, the JSON answer after 9: a bound this far above them keeps
# "stop" meaning the model stopped, and a model that does not stop fails quickly.
ROOM = 64


def test_all_three_clients_hold_a_conversation_that_stops(ollama_host, registered):
    report = verify(registered, host=ollama_host, max_tokens=ROOM)
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


CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"],
        "additionalProperties": False}


def test_with_a_json_schema_every_client_gets_an_answer_that_validates(ollama_host, registered):
    from jsonschema import validate

    report = verify(registered, host=ollama_host, max_tokens=ROOM, json_schema=CITY)
    assert report.ok, [(c.client, c.problem) for c in report.clients]
    for c in report.clients:
        assert c.structured is not None and c.structured.finish_reason == "stop", c.client
        validate(json.loads(c.structured.reply), CITY)


def test_the_cli_shows_each_json_answer_and_its_verdict(ollama_host, registered, tmp_path):
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(CITY))
    r = CliRunner().invoke(cli, ["-q", "verify", registered, "--host", ollama_host, "--client", "ollama",
                                 "--json-schema", str(schema), "--json"])
    assert r.exit_code == 0, r.output
    (client,) = json.loads(r.stdout)["clients"]
    assert client["ok"] and client["json_answer"]["problem"] is None and json.loads(client["json_answer"]["reply"])


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "holds a JSON list, not a schema object"),
    ('{"type": 12}', "is not a valid JSON Schema: 12 is not valid under any of the given schemas"),
])
def test_a_bad_schema_file_is_one_line_before_any_client_runs(ollama_host, registered, tmp_path, text, message):
    from clihelpers import assert_one_line_error

    schema = tmp_path / "schema.json"
    schema.write_text(text)
    r = CliRunner().invoke(cli, ["-q", "verify", registered, "--host", ollama_host, "--json-schema", str(schema)])
    assert_one_line_error(r, message)


def test_what_is_wrong_with_a_json_answer_is_one_line():
    from localserve.ollama.verification import schema_problem

    assert schema_problem('{"city": "Paris"}', "stop", CITY) is None
    assert schema_problem('{"city": 3}', "stop", CITY) == "the schema rejects it at city: 3 is not of type 'string'"
    assert schema_problem('{"town": "Paris"}', "stop", CITY).startswith("the schema rejects it at the top level")
    assert schema_problem('{"city": "Par', "length", CITY) == "ended with 'length' before the JSON was complete"
    assert schema_problem("Paris", "stop", CITY).startswith("not JSON (Expecting value at column 1)")


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
