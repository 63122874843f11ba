"""`localserve bench --target ollama` over loopback HTTP, against the Ollama stand-in.

The stand-in (tests/ollama_standin) is a real HTTP server that runs the stored GGUF with
llama.cpp and streams OpenAI-compatible /v1/chat/completions chunks, as Ollama does. The vLLM
target speaks the same protocol (plus vLLM's `ignore_eos`); no vLLM server can run here.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from localserve.cli import cli
from localserve.ollama import register

pytest_plugins = ["ollama_standin.fixtures"]


def test_bench_over_ollamas_openai_api_times_a_streamed_chat(standin, smollm_gguf, tmp_path):
    from ollama_standin.fixtures import write_export

    export = write_export(tmp_path / "demo", smollm_gguf, name="benchdemo")
    register(export, name="benchdemo:latest", host=standin.url)
    model = export / "benchdemo-Q4_1.gguf"
    result = CliRunner().invoke(cli, ["--quiet", "bench", str(model), "--target", "ollama", "--url", standin.url,
                                      "--served-name", "benchdemo:latest", "--concurrency", "2",
                                      "--prompt-tokens", "16", "--max-tokens", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["target"] == "ollama" and data["url"] == standin.url
    assert data["ttft_s"] > 0 and data["decode_tokens_per_s"] > 0
    assert data["concurrent"]["requests"] == 2 and data["concurrent"]["aggregate_output_tokens_per_s"] > 0
    assert data["settings"]["prompt_tokens"] > 0  # from the server's usage report
    stored = json.loads((export / "localserve.json").read_text())
    assert stored["bench"][model.name]["ollama"]["ttft_s"] == data["ttft_s"]
    assert stored["modelfile"]["parameters"]["stop"] == ["<|im_end|>"]  # other keys kept


def test_bench_names_the_missing_model_on_the_server(standin, smollm_gguf, tmp_path):
    from ollama_standin.fixtures import write_export

    export = write_export(tmp_path / "demo", smollm_gguf, name="unregistered")
    result = CliRunner().invoke(cli, ["bench", str(export / "unregistered-Q4_1.gguf"), "--target", "ollama",
                                      "--url", standin.url, "--no-store"])
    assert result.exit_code == 1
    assert "answered 404" in result.output and "'unregistered'" in result.output
