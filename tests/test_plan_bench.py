"""`localserve bench` on the embedded model in llama.cpp: positive numbers, stored where planning reads them."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.models.embedded import DEFAULT_ID, EMBEDDED


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """An export-like folder holding the embedded GGUF, benchmarked once through the CLI."""
    folder = tmp_path_factory.mktemp("bench") / "demo"
    folder.mkdir()
    model = folder / "demo-Q4_1.gguf"
    shutil.copyfile(EMBEDDED[DEFAULT_ID].gguf_file(), model)
    (folder / "localserve.json").write_text(json.dumps(
        {"name": "demo", "artifacts": [{"quant": "Q4_1", "file": model.name}], "chat": {"family": "chatml"}}))
    result = CliRunner().invoke(cli, ["--quiet", "bench", str(model), "--concurrency", "2", "--prompt-tokens", "16",
                                      "--max-tokens", "6", "--json"])
    assert result.exit_code == 0, result.output
    return model, json.loads(result.output)


def test_bench_measures_positive_numbers(benched):
    _, result = benched
    assert result["target"] == "llama.cpp"
    assert result["ttft_s"] > 0 and result["prompt_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    concurrent = result["concurrent"]
    assert concurrent["requests"] == 2 and concurrent["aggregate_output_tokens_per_s"] > 0
    assert "one after another" in concurrent["how"]  # says what "N concurrent" meant here
    assert result["settings"]["max_tokens"] == 6 and result["settings"]["prompt_tokens"] == 16


def test_bench_stores_results_next_to_the_model_and_in_localserve_json(benched):
    model, result = benched
    stored = json.loads(model.with_name(model.name + ".bench.json").read_text())
    assert stored["llama.cpp"]["decode_tokens_per_s"] == result["decode_tokens_per_s"]
    meta = json.loads((model.parent / "localserve.json").read_text())
    assert meta["chat"] == {"family": "chatml"} and meta["artifacts"][0]["file"] == model.name
    assert meta["bench"][model.name]["llama.cpp"]["ttft_s"] == result["ttft_s"]
    assert not list(model.parent.glob(".*partial"))


def test_plan_and_cost_use_the_measured_throughput(benched, tmp_path):
    model, result = benched
    planned = CliRunner().invoke(cli, ["plan", str(model), "--ctx", "2048", "--device", "T4", "--json"])
    assert planned.exit_code == 0, planned.output
    assert json.loads(planned.output)["measured"]["llama.cpp"]["ttft_s"] == result["ttft_s"]
    chart = tmp_path / "c.png"
    costed = CliRunner().invoke(cli, ["cost", "--model", str(model), "--gpu", "L4", "--price", "0.8/h",
                                      "--tokens-per-day", "1K", "--chart", str(chart), "--json"])
    assert costed.exit_code == 0, costed.output
    data = json.loads(costed.output)
    assert any("measured by `localserve bench --target llama.cpp`" in a for a in data["assumptions"])
    local = next(o for o in data["options"] if o["name"] == "ollama")
    assert local["capacity_per_day"] > 0
    assert chart.is_file()


def test_bench_refuses_servers_off_loopback(benched):
    model, _ = benched
    result = CliRunner().invoke(cli, ["bench", str(model), "--target", "vllm", "--url", "http://192.0.2.7:8000"])
    assert result.exit_code == 2 and "only talks to loopback" in result.output
    result = CliRunner().invoke(cli, ["bench", str(model), "--target", "ollama", "--url", "http://127.0.0.1:9",
                                      "--no-store"])
    assert result.exit_code == 1 and "cannot reach http://127.0.0.1:9" in result.output


@pytest.mark.parametrize("args, needle", [
    (["--max-tokens", "100000"], "--max-tokens must be between 1 and 1024"),
    (["--concurrency", "0"], "--concurrency must be between 1 and 32"),
])
def test_bench_requests_are_bounded(benched, args, needle):
    model, _ = benched
    result = CliRunner().invoke(cli, ["bench", str(model), *args])
    assert result.exit_code == 2 and needle in result.output


def test_bench_in_llama_cpp_needs_a_gguf(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(cli, ["bench", str(tmp_path)])
    assert result.exit_code == 2 and "is not a .gguf file" in result.output
