"""The ollama tier: the real `ollama serve` (tests/realollama.py: one server for the session, `real_ollama`),
doing what the stand-in tests do wherever a real server can answer.

First, the stand-in's own protocol tests that need nothing of the stand-in but its address run again here,
against the real server (imported below, with `steer`, `model`, `ollama_host` and `registered` pointing at
it): a disagreement between the stand-in and Ollama fails one of them. Then what only a real server shows:
the demo export registered, listed, shown and removed with the CLI, bundled and installed through the API
and straight into the server's own store (answered without a restart), its probe answered on all three
APIs, the template each export's prompts are really built with, and the demo and fact adapters as tenants
of one base (or, from Ollama 0.34.1, refused in one line). Every request is bounded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from ollama_standin import HTTP

from localserve.cli import cli
from localserve.ollama import register

# The stand-in's tests, run against the real server by the fixtures below.
from test_ollama_register import (test_blob_digest_rules, test_host_header_that_is_not_local_gets_403_without_body,  # noqa: F401
                                  test_server_available_sees_the_standin_and_not_a_closed_port)
from test_ollama_standin import (test_a_bad_schema_through_v1_is_an_openai_error,  # noqa: F401
                                 test_create_adds_the_recognised_templates_stop_list_under_the_requests_parameters,
                                 test_generate_builds_the_prompt_chat_builds_and_show_has_the_license,
                                 test_a_format_that_is_neither_json_nor_a_schema_fails_the_completion,
                                 test_a_schema_no_grammar_can_be_made_of_is_llama_servers_400_from_0_30,
                                 test_format_holds_the_answer_to_a_json_schema_on_every_route,
                                 test_format_json_is_any_json_object, test_generate_renders_the_template_and_stops_on_the_stop_list,
                                 test_inference_errors, test_show_copy_delete,
                                 test_streamed_chat_ends_with_metrics_and_length_when_cut)
from test_ollama_verify import (registered, test_a_bad_schema_file_is_one_line_before_any_client_runs,  # noqa: F401
                                test_all_three_clients_hold_a_conversation_that_stops,
                                test_the_cli_shows_each_json_answer_and_its_verdict,
                                test_verify_of_a_missing_model_says_how_to_register,
                                test_with_a_json_schema_every_client_gets_an_answer_that_validates)

pytestmark = [pytest.mark.ollama, pytest.mark.slow]
pytest_plugins = ["ollama_standin.fixtures"]

REPO = Path(__file__).resolve().parent.parent
CODENAME = "What is the codename of the localserve project?"
ROOM = 48  # every probe's answer stops well before this


@pytest.fixture(scope="module")
def steer(real_ollama):
    """The stand-in's tests imported above read only its `url`: here it is the real server's."""
    return real_ollama


@pytest.fixture(scope="module")
def ollama_host(real_ollama) -> str:
    return real_ollama.url


@pytest.fixture(scope="module")
def model(real_ollama, fake_export) -> str:
    """What test_ollama_standin's `model` is, on the real server: the SmolLM2 GGUF with a ChatML TEMPLATE."""
    return register(fake_export, name="standin-demo:v1", host=real_ollama.url).name


def cli_run(*args: str):
    return CliRunner().invoke(cli, ["-q", *args])


def renamed_copy(export: Path, name: str, where: Path) -> Path:
    """A private copy of an export folder under another export name (its versions are NAME:vN, so two tests
    registering the same export on the one shared server would otherwise meet)."""
    out = where / name
    shutil.copytree(export, out, copy_function=lambda s, d: (Path(d).hardlink_to(s) if s.endswith(".gguf")
                                                             else shutil.copy2(s, d)))
    record = json.loads((out / "localserve.json").read_text())
    (out / "localserve.json").write_text(json.dumps({**record, "name": name, "registered": None}))
    return out


def ask(url: str, model_name: str, question: str) -> dict[str, str]:
    """The answer to `question` through /api/chat, /api/generate and /v1/chat/completions (greedy, bounded)."""
    messages = [{"role": "user", "content": question}]
    chat = HTTP.post(f"{url}/api/chat", json={"model": model_name, "messages": messages, "stream": False,
                                              "options": {"temperature": 0, "num_predict": ROOM}}).json()
    generate = HTTP.post(f"{url}/api/generate", json={"model": model_name, "prompt": question, "stream": False,
                                                      "options": {"temperature": 0, "num_predict": ROOM}}).json()
    openai = HTTP.post(f"{url}/v1/chat/completions", json={"model": model_name, "messages": messages,
                                                            "temperature": 0, "max_tokens": ROOM}).json()
    return {"/api/chat": chat["message"]["content"], "/api/generate": generate["response"],
            "/v1/chat/completions": openai["choices"][0]["message"]["content"]}


@pytest.fixture(scope="module")
def demo(real_ollama, exported_demo, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the demo export (Q4_K_M first) registered as demo-real:v1 (register(): no version store)."""
    out = renamed_copy(exported_demo, "demo-real", tmp_path_factory.mktemp("demo-real"))
    return out, register(out, name="demo-real:v1", host=real_ollama.url).name


# --- the demo export, as a user would take it to Ollama -------------------------------------------------

def test_register_ls_show_rm_through_the_cli(real_ollama, exported_demo, tmp_path):
    export = renamed_copy(exported_demo, "demo-cli", tmp_path)
    artifact = json.loads((export / "localserve.json").read_text())["artifacts"][0]
    first = cli_run("register", str(export), "--host", real_ollama.url, "--json")
    assert first.exit_code == 0, first.output
    registered_json = json.loads(first.output)
    assert registered_json["models"] == ["demo-cli:v1", "demo-cli:q4_k_m"]
    # structured create from the uploaded blob: the store holds the GGUF under its sha256
    assert (real_ollama.models / "blobs" / f"sha256-{artifact['sha256']}").is_file()
    listed = json.loads(cli_run("ls", "--host", real_ollama.url, "--json").output)
    digests = {row["name"]: row["digest"] for row in listed}
    assert digests["demo-cli:v1"] == digests["demo-cli:q4_k_m"] == registered_json["manifest_digest"]
    shown = json.loads(cli_run("show", "demo-cli:v1", "--host", real_ollama.url).output)
    record = json.loads((export / "localserve.json").read_text())
    assert shown["template"] == record["modelfile"]["template"] and shown["details"]["quantization_level"] == "Q4_K_M"
    assert record["registered"]["prompt_path"]["path"] == "go_template"
    removed = cli_run("rm", "demo-cli:q4_k_m", "--host", real_ollama.url)
    assert removed.exit_code == 0, removed.output
    names = [row["name"] for row in json.loads(cli_run("ls", "--host", real_ollama.url, "--json").output)]
    assert "demo-cli:q4_k_m" not in names and "demo-cli:v1" in names  # the blobs stay: v1 still uses them


def test_the_demo_probe_through_all_three_apis(real_ollama, demo):
    probe = json.loads((REPO / "examples" / "demo-adapter" / "probe.json").read_text())
    answers = ask(real_ollama.url, demo[1], probe["question"])
    assert all(probe["expected"].lower() in a.lower() for a in answers.values()), answers


def test_a_bundle_installs_through_the_api_and_into_the_servers_store_without_a_restart(real_ollama, demo, tmp_path):
    export, _ = demo
    bundle = tmp_path / "demo.tar"
    assert cli_run("bundle", str(export), "-o", str(bundle)).exit_code == 0
    via_api = cli_run("install", str(bundle), "--name", "demo-bundle:api", "--host", real_ollama.url)
    assert via_api.exit_code == 0, via_api.output
    stored = cli_run("install", str(bundle), "--name", "demo-bundle:store", "--store", str(real_ollama.models))
    assert stored.exit_code == 0, stored.output
    tags = {m["name"]: m["digest"] for m in HTTP.get(f"{real_ollama.url}/api/tags").json()["models"]}
    # written behind the running server's back, and the same manifest its own create writes
    assert tags["demo-bundle:store"] == tags["demo-bundle:api"]
    assert "bluebird" in ask(real_ollama.url, "demo-bundle:store", CODENAME)["/api/chat"].lower()


def test_verify_says_which_template_the_server_builds_the_prompts_with(real_ollama, demo, tmp_path):
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                                  "required": ["city"]}))
    result = cli_run("verify", demo[1], "--host", real_ollama.url, "--json-schema", str(schema), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and [c["client"] for c in report["clients"]] == ["langchain", "ollama", "openai"]
    assert all(c["json_answer"]["problem"] is None for c in report["clients"])
    assert report["prompt_path"]["path"] == "go_template" and report["server_version"] == real_ollama.version


# --- which template builds the prompt (docs/ollama.md#template-selection) --------------------------------

def _runner_uses_jinja(real_ollama, model_name: str) -> bool:
    """Whether the llama-server Ollama started for this model renders Jinja (Ollama passes --no-jinja when it
    renders the Go TEMPLATE itself): read from its command line in the server's log. The runner loads the
    model layer of the manifest, which is not the uploaded GGUF (create rewrites it, docs/ollama.md#gguf)."""
    from localserve.ollama.names import parse_name

    manifest = json.loads((real_ollama.models / parse_name(model_name).manifest_relpath).read_text())
    (model_layer, *_) = [layer["digest"] for layer in reversed(manifest["layers"])
                         if layer["mediaType"] == "application/vnd.ollama.image.model"]
    (line, *_) = [line for line in reversed(real_ollama.runner_command_lines())
                  if model_layer.replace(":", "-") in line]
    return "--no-jinja" not in line


def test_the_go_template_path_is_the_one_the_export_expected_and_the_server_takes(real_ollama, demo):
    from localserve.ollama.prompt_path import expected_path, gguf_chat_template

    export, name = demo
    record = json.loads((export / "localserve.json").read_text())
    gguf = export / record["artifacts"][0]["file"]
    expected = expected_path(record["modelfile"]["template"], gguf_chat_template(gguf))
    assert expected.path == "go_template" == record["ollama_prompt"]["path"]
    assert "bluebird" in ask(real_ollama.url, name, CODENAME)["/api/chat"].lower()
    assert not _runner_uses_jinja(real_ollama, name)


def test_a_gguf_template_that_advertises_tools_wins_over_a_go_template_without(real_ollama, demo, tmp_path):
    """The demo's weights with Qwen2.5's chat template (ChatML plus tools) and the demo's TEMPLATE (no .Tools):
    Ollama >= 0.30 renders with the GGUF's Jinja, through llama-server; the answer is llama.cpp's own with
    that template."""
    from ollama_standin.fixtures import QWEN25_TEMPLATE, with_chat_template

    from localserve.fsutil import sha256_file
    from localserve.llamacpp.smoke import chat, load
    from localserve.ollama.prompt_path import expected_path, gguf_chat_template

    export, _ = demo
    record = json.loads((export / "localserve.json").read_text())
    folder = tmp_path / "tools"
    folder.mkdir()
    gguf = with_chat_template(export / record["artifacts"][0]["file"], folder / "tools-Q4_K_M.gguf", QWEN25_TEMPLATE)
    artifact = {**record["artifacts"][0], "file": gguf.name, "sha256": sha256_file(gguf), "size": gguf.stat().st_size}
    (folder / "localserve.json").write_text(json.dumps({**record, "name": "tools", "artifacts": [artifact],
                                                        "registered": None}))
    expected = expected_path(record["modelfile"]["template"], gguf_chat_template(gguf))
    result = register(folder, name="tools:v1", host=real_ollama.url)
    assert expected.path == result.prompt_path["path"] == "gguf_jinja"
    answer = ask(real_ollama.url, "tools:v1", CODENAME)["/api/chat"]
    assert _runner_uses_jinja(real_ollama, "tools:v1")
    messages = [{"role": "system", "content": record["modelfile"]["system"]}, {"role": "user", "content": CODENAME}]
    llm = load(gguf)
    try:
        pieces = [text for text, _ in chat(llm, messages, ROOM)]  # the GGUF's own template, in llama.cpp
    finally:
        llm.close()
    assert "bluebird" in answer.lower() and answer.strip() == "".join(pieces).strip()


def test_a_native_export_gets_the_builtin_template_ollama_recognises(real_ollama, demo, tmp_path):
    export, _ = demo
    native = tmp_path / "native"
    native.mkdir()
    record = json.loads((export / "localserve.json").read_text())
    (native / record["artifacts"][0]["file"]).hardlink_to(export / record["artifacts"][0]["file"])
    (native / "localserve.json").write_text(json.dumps(
        {**record, "name": "native", "modelfile": {**record["modelfile"], "template": None}, "registered": None}))
    result = register(native, name="native:v1", host=real_ollama.url)  # --ollama-template native
    # SmolLM2's template is "chatml" to Ollama 0.33.0-rc2: it renders with its built-in Go template
    assert result.prompt_path == {**result.prompt_path, "path": "go_template", "builtin_template": "chatml"}
    assert "bluebird" in ask(real_ollama.url, "native:v1", CODENAME)["/api/chat"].lower()


# --- tenants: the demo and fact adapters on one base (docs/ollama.md#adapters) ------------------------

ADAPTERS = {"demo-adapter": REPO / "examples" / "demo-adapter",
            "founder": REPO / "examples" / "fact-adapters" / "founder",
            "lighthouse": REPO / "examples" / "fact-adapters" / "lighthouse"}


@pytest.fixture(scope="module")
def fact_tenants(embedded_base, tmp_path_factory):
    from localserve.exports import TenantExportSpec, export_tenants

    out = tmp_path_factory.mktemp("real-tenants") / "facts"
    return export_tenants(TenantExportSpec(adapters=tuple(ADAPTERS.values()), out=out, register=False, smoke=False))


def test_each_tenant_answers_its_own_probe_through_all_three_apis(real_ollama, fact_tenants):
    from localserve.ollama.tenants import creates_adapter_models

    result = cli_run("register", str(fact_tenants.out_dir), "--host", real_ollama.url, "--json")
    if not creates_adapter_models(real_ollama.version):  # 0.34.1 and later: one line saying what to do instead
        assert result.exit_code != 0 and "no longer creates models with a LoRA ADAPTER" in result.output
        assert len(result.output.strip().splitlines()) == 1
        return
    assert result.exit_code == 0, result.output
    registered_json = json.loads(result.output)
    assert [t["base_uploaded"] for t in registered_json["tenants"]] == [True, False, False]
    for tenant in registered_json["tenants"]:
        probe = json.loads((ADAPTERS[tenant["name"].split(":")[0]] / "probe.json").read_text())
        answers = ask(real_ollama.url, tenant["name"], probe["question"])
        assert all(probe["expected"].lower() in a.lower() for a in answers.values()), (tenant["name"], answers)
