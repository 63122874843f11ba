"""The vLLM commands: export --target vllm refuses Ollama-only options; `localserve vllm` talks to a
server and turns each failure into one line (a stand-in HTTP server on loopback plays vLLM here;
tests/test_vllm_serving_lora.py does the same against the real one)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from loopback import serving


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


@pytest.mark.parametrize("option", [["--quant", "Q8_0"], ["--bundle", "x.tar"], ["--max-size", "1GB"],
                                    ["--host", "http://127.0.0.1:11434"], ["--ollama-template", "native"]])
def test_ollama_only_options_are_refused_with_target_vllm(tiny_adapter, tmp_path, option):
    result = invoke("export", tiny_adapter, "--target", "vllm", "--out", tmp_path / "o", *option)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "applies to the Ollama export, not --target vllm" in result.output
    assert not (tmp_path / "o").exists()


def test_export_prints_the_layout_arithmetic(tiny_adapter, tmp_path):
    result = invoke("export", tiny_adapter, "--target", "vllm", "--lora", "--out", tmp_path / "o",
                    "--gpu-memory", "24GB", "--gpus", "2", "--ctx", "512", "--concurrency", "4")
    assert result.exit_code == 0, result.output
    assert "layout: tensor_parallel_size 1 x pipeline_parallel_size 1" in result.output
    assert "KV cache per GPU" in result.output and "max_lora_rank 8" in result.output
    assert "config:  " in result.output and (tmp_path / "o" / "vllm-config.yaml").is_file()


def test_an_impossible_layout_is_one_line(tiny_adapter, tmp_path):
    result = invoke("export", tiny_adapter, "--target", "vllm", "--out", tmp_path / "o", "--gpu-memory", "1MB")
    assert result.exit_code == 2 and result.output.startswith("error: no vLLM layout")
    assert result.output.count("\n") == 1


class StandIn(BaseHTTPRequestHandler):
    """Answers like vLLM 0.32: with runtime updating off the routes do not exist (FastAPI's 404)."""

    runtime_updates = True
    loaded = {"tenant"}

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        models = [{"id": "base", "root": "./model", "parent": None}]
        models += [{"id": n, "root": f"/adapters/{n}", "parent": "base"} for n in sorted(self.loaded)]
        self.reply(200, {"object": "list", "data": models})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.runtime_updates:
            return self.reply(404, {"detail": "Not Found"})
        if self.path == "/v1/load_lora_adapter":
            if "wide" in body["lora_path"]:
                return self.reply(400, {"error": {"message": "LoRA rank 64 is greater than max_lora_rank 16.",
                                                  "type": "BadRequestError", "code": 400}})
            self.loaded.add(body["lora_name"])
            return self.reply(200, "Success")
        if body["lora_name"] not in self.loaded:
            return self.reply(404, {"error": {"message": f"The lora adapter '{body['lora_name']}' cannot be found.",
                                              "type": "NotFoundError", "code": 404}})
        self.loaded.discard(body["lora_name"])
        self.reply(200, "Success")


@pytest.fixture
def stand_in():
    handler = type("Handler", (StandIn,), {"loaded": {"tenant"}})
    with serving(handler) as url:
        yield handler, url


def test_load_ls_unload(stand_in):
    _, url = stand_in
    assert invoke("vllm", "load", "other", "/adapters/other", "--host", url).exit_code == 0
    listed = invoke("vllm", "ls", "--host", url)
    assert listed.output.splitlines() == ["base  base", "other  adapter on base  (/adapters/other)",
                                          "tenant  adapter on base  (/adapters/tenant)"]
    unloaded = invoke("vllm", "unload", "other", "--host", url)
    assert unloaded.exit_code == 0 and unloaded.output.startswith("unloaded other")


def test_an_unreachable_server_is_one_line():
    result = invoke("vllm", "ls", "--host", "http://127.0.0.1:9")
    assert result.exit_code == 3
    assert result.output.startswith("error: vLLM is not reachable at http://127.0.0.1:9")
    assert "launch.sh" in result.output and result.output.count("\n") == 1


def test_runtime_updating_disabled_says_how_to_enable_it(stand_in):
    handler, url = stand_in
    handler.runtime_updates = False
    result = invoke("vllm", "load", "x", "/adapters/x", "--host", url)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "runtime LoRA updating is disabled" in result.output
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in result.output


def test_an_incompatible_adapter_gives_vllms_reason(stand_in):
    _, url = stand_in
    result = invoke("vllm", "load", "big", "/adapters/wide", "--host", url)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "refused loading adapter 'big'" in result.output and "greater than max_lora_rank 16" in result.output


def test_unloading_an_unknown_adapter_names_it(stand_in):
    _, url = stand_in
    result = invoke("vllm", "unload", "ghost", "--host", url)
    assert result.exit_code == 1 and "'ghost' cannot be found" in result.output
