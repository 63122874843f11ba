"""Servers under faults: an Ollama that dies mid-create or mid-answer, answers slower than we wait, or
answers with broken JSON; a vLLM that dies while an adapter loads. Each is one line naming the server
and the next step; nothing is registered half-way, and the same command run again finishes.

Against the Ollama stand-in (its `Behaviour` faults) and a loopback vLLM stand-in, with the tiny export.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from http.server import BaseHTTPRequestHandler

import pytest

from clihelpers import assert_one_line_error, invoke
from localserve.errors import VllmError
from localserve.lifecycle.store import VersionStore
from localserve.lifecycle.targets import TargetUnreachable, open_target
from localserve.lineage import read_record
from localserve.vllm import VllmClient
from loopback import serving
from ollama_standin import HTTP

pytest_plugins = ["ollama_standin.fixtures"]

QUESTION = [{"role": "user", "content": "hello, what colour is the quick brown fox today?"}]


def export_named(tiny_export, folder, name: str):
    """A copy of the tiny export whose model name is `name` (the stand-in is shared by the session)."""
    shutil.copytree(tiny_export, folder)
    record = json.loads((folder / "localserve.json").read_text())
    record["name"] = name
    (folder / "localserve.json").write_text(json.dumps(record))
    return folder


def tags(url: str) -> set[str]:
    return {m["name"] for m in HTTP.get(url + "/api/tags").json()["models"]}


def assert_nothing_registered(export, url: str, name: str) -> None:
    assert f"{name}:v1" not in tags(url)
    with VersionStore() as store:
        assert store.versions(name) == []  # the version this run made is gone with its registration
        assert store.db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0] == 0
        assert store.db.execute("SELECT COUNT(*) FROM pending_registrations").fetchone()[0] == 0
    assert read_record(export).registered is None


# --- registration -------------------------------------------------------------------------------------

def test_ollama_dying_mid_create_is_one_line_registers_nothing_and_the_rerun_finishes(steer, tiny_export, tmp_path):
    export = export_named(tiny_export, tmp_path / "e", "fault-drop")
    with steer.behaving(create_drop="writing manifest"):
        result = invoke("--quiet", "register", export, "--host", steer.url)
    assert_one_line_error(result, f"Ollama at {steer.url} closed the connection during the create of fault-drop:v1",
                          "fault-drop:v1 was not registered, and nothing of it is left", "check its log")
    assert_nothing_registered(export, steer.url, "fault-drop")
    again = invoke("--quiet", "register", export, "--host", steer.url)
    assert again.exit_code == 0 and "registered fault-drop:v1, fault-drop:q4_k_m" in again.output, again.output
    assert {"fault-drop:v1", "fault-drop:q4_k_m"} <= tags(steer.url)


def test_a_connection_closed_after_success_is_a_finished_create(steer, tiny_export, tmp_path):
    export = export_named(tiny_export, tmp_path / "e", "fault-late")
    with steer.behaving(create_drop="success"):  # Ollama wrote the manifest and said so
        result = invoke("--quiet", "register", export, "--host", steer.url)
    assert result.exit_code == 0, result.output
    assert read_record(export).registered["version"] == "fault-late:v1"


def test_a_create_slower_than_the_timeout_is_one_line_and_registers_nothing(steer, tiny_export, tmp_path,
                                                                              monkeypatch):
    export = export_named(tiny_export, tmp_path / "e", "fault-slow")
    monkeypatch.setenv("LOCALSERVE_OLLAMA_TIMEOUT", "1")
    start = time.monotonic()
    with steer.behaving(slow=("/api/create", 3.0)):
        result = invoke("--quiet", "register", export, "--host", steer.url)
        assert_one_line_error(result, f"Ollama at {steer.url} did not answer the create of fault-slow:v1 within 1 s",
                              "LOCALSERVE_OLLAMA_TIMEOUT=SECONDS")
        time.sleep(max(0.0, start + 4.0 - time.monotonic()))  # the server got to the create after we gave up
    assert_nothing_registered(export, steer.url, "fault-slow")


def test_a_create_answered_with_broken_json_is_one_line_and_registers_nothing(steer, tiny_export, tmp_path):
    export = export_named(tiny_export, tmp_path / "e", "fault-json")
    with steer.behaving(malformed="/api/create"):
        result = invoke("--quiet", "register", export, "--host", steer.url)
    assert_one_line_error(result, f"Ollama at {steer.url} answered the create of fault-json:v1 with something that "
                                  "is not Ollama's JSON", "--host")
    assert_nothing_registered(export, steer.url, "fault-json")


def test_a_model_list_answered_with_broken_json_is_one_line(steer):
    with steer.behaving(malformed="/api/tags"):
        assert_one_line_error(invoke("ls", "--host", steer.url), f"Ollama at {steer.url} answered listing models "
                                                                  "with something that is not Ollama's JSON")


def test_a_timeout_that_is_not_a_number_is_one_line(monkeypatch, tiny_export):
    monkeypatch.setenv("LOCALSERVE_OLLAMA_TIMEOUT", "soon")
    assert_one_line_error(invoke("--quiet", "register", tiny_export, "--host", "http://127.0.0.1:9"),
                          "$LOCALSERVE_OLLAMA_TIMEOUT must be a number of seconds", "'soon'")


# --- evaluation targets -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def on_standin(standin, fresh_tiny_export) -> str:
    from localserve.ollama import register

    tiny_export = fresh_tiny_export()

    name = register(tiny_export, name="fault-chat:v1", host=standin.url).name
    with open_target(f"ollama:{name}", max_tokens=8, ollama_host=standin.url) as target:
        assert target.answer(QUESTION).error is None  # the stand-in has the model loaded from here on
    return name


@pytest.mark.parametrize("fault, says", [
    ({"chat_drop": 2}, "closed the connection during the chat with fault-chat:v1"),
    ({"slow": ("/api/chat", 4.0)}, "did not answer the chat with fault-chat:v1 within 2 s"),
    ({"malformed": "/api/chat"}, "answered the chat with fault-chat:v1 with something that is not Ollama's JSON"),
], ids=["closed mid-stream", "late", "broken json"])
def test_an_ollama_failing_one_answer_gives_that_case_a_one_line_error(steer, on_standin, monkeypatch, fault, says):
    monkeypatch.setenv("LOCALSERVE_OLLAMA_TIMEOUT", "2")
    start = time.monotonic()
    with open_target(f"ollama:{on_standin}", max_tokens=8, ollama_host=steer.url) as target:
        with steer.behaving(**fault):
            failed = target.answer(QUESTION)
        fine = target.answer(QUESTION)
    assert failed.text == "" and failed.error.startswith(f"ollama: Ollama at {steer.url} {says.split(' ', 1)[0]}")
    assert says in failed.error and "\n" not in failed.error and " — " in failed.error  # and the next step
    assert fine.error is None and fine.text
    if "slow" in fault:  # the stand-in answers the question we gave up on before the next test asks
        time.sleep(max(0.0, start + fault["slow"][1] + 1.0 - time.monotonic()))


def test_an_ollama_answering_broken_json_to_the_first_question_is_an_unreachable_target(steer, on_standin):
    with steer.behaving(malformed="/api/show"), pytest.raises(TargetUnreachable) as e:
        open_target(f"ollama:{on_standin}", ollama_host=steer.url)
    assert f"unreachable target 'ollama:{on_standin}': Ollama at {steer.url} answered" in str(e.value)


# --- vLLM dying while an adapter loads -----------------------------------------------------------------

class DyingVllm(BaseHTTPRequestHandler):
    """Loads adapters like vLLM, but `fault` makes it die on a load ("close"), take `delay` seconds
    ("slow"), or list its models as broken JSON ("malformed")."""

    fault = "close"
    delay = 2.0
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b'{"object": "list", "data": [' if self.fault == "malformed" else b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.fault == "close":  # the process died: no status line, the socket closes
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.fault == "slow":
            time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b'"Success"')


@pytest.fixture
def dying_vllm():
    handler = type("Handler", (DyingVllm,), {})
    with serving(handler) as url:
        yield handler, url


def test_vllm_dying_while_an_adapter_loads_is_one_line(dying_vllm):
    handler, url = dying_vllm
    result = invoke("vllm", "load", "tenant", "/adapters/tenant", "--host", url)
    assert_one_line_error(result, f"vLLM at {url} closed the connection during loading adapter 'tenant' from "
                                  "/adapters/tenant", "check its log", f"localserve vllm ls --host {url}")
    assert result.exit_code == VllmError.exit_code


def test_vllm_loading_slower_than_the_timeout_is_one_line(dying_vllm):
    handler, url = dying_vllm
    handler.fault = "slow"
    with pytest.raises(VllmError) as e:
        VllmClient(url, timeout=0.5).load("tenant", "/adapters/tenant")
    assert str(e.value).startswith(f"vLLM at {url} did not answer loading adapter 'tenant' from /adapters/tenant "
                                   "within 0.5 s — ")


def test_vllm_listing_broken_json_is_one_line(dying_vllm):
    handler, url = dying_vllm
    handler.fault = "malformed"
    assert_one_line_error(invoke("vllm", "ls", "--host", url), f"{url}/v1/models did not answer like vLLM")
