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
    # llama-cpp-python decodes one sequence per context: the N-request figure is labelled sequential
    assert concurrent["mode"] == "sequential" and concurrent["label"] == "sequential, llama.cpp single context"
    assert "one after another" in concurrent["how"] and "not decoded in parallel" in concurrent["how"]
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


def test_bench_output_and_stored_record_label_the_n_requests_sequential(benched):
    model, _ = benched
    result = CliRunner().invoke(cli, ["--quiet", "bench", str(model), "--concurrency", "2", "--prompt-tokens", "8",
                                      "--max-tokens", "3", "--no-store"])
    assert result.exit_code == 0, result.output
    assert "decode, 2 requests" in result.output and "(sequential, llama.cpp single context)" in result.output
    stored = json.loads(model.with_name(model.name + ".bench.json").read_text())["llama.cpp"]["concurrent"]
    assert stored["mode"] == "sequential"


def test_plan_and_cost_of_the_export_folder_use_the_measurement_and_name_it(benched, tmp_path):
    model, result = benched
    folder = model.parent
    planned = CliRunner().invoke(cli, ["plan", str(folder), "--ctx", "2048", "--device", "T4", "--json"])
    assert planned.exit_code == 0, planned.output
    data = json.loads(planned.output)
    assert data["measured"]["llama.cpp"]["decode_tokens_per_s"] == result["decode_tokens_per_s"]
    [m] = data["measurements"]  # the per-file json and localserve.json hold the same run: counted once
    assert m["model_file"] == model.name and m["measured_at"] == result["measured_at"]
    text = CliRunner().invoke(cli, ["plan", str(folder), "--ctx", "2048", "--device", "T4"])
    assert f"{model.name} on llama.cpp, {result['measured_at']}" in text.output

    costed = CliRunner().invoke(cli, ["cost", "--model", str(folder), "--gpu", "L4", "--price", "0.8/h",
                                      "--tokens-per-day", "1K", "--no-chart", "--json"])
    assert costed.exit_code == 0, costed.output
    report = json.loads(costed.output)
    assert report["throughput"]["model_file"] == model.name
    assert report["throughput"]["measured_at"] == result["measured_at"]
    assert report["local_throughput"]["model_file"] == model.name
    how = next(a for a in report["assumptions"] if a.startswith("throughput:"))
    assert f"of {model.name} on {result['measured_at']}" in how
    vllm = next(o for o in report["options"] if o["name"] == "vllm")
    assert vllm["capacity_per_day"] > 0


@pytest.mark.parametrize("keep", ["localserve.json", "demo-Q4_1.gguf.bench.json"])
def test_a_folder_measurement_is_found_in_either_record(benched, tmp_path, keep):
    """Only localserve.json's bench record, or only the per-file bench json: both are found, and the
    report names the one it read."""
    model, result = benched
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copyfile(model.parent / keep, folder / keep)
    costed = CliRunner().invoke(cli, ["cost", "--model", str(folder), "--gpu", "L4", "--price", "0.8/h",
                                      "--gpus", "1", "--no-chart", "--json"])
    assert costed.exit_code == 0, costed.output
    used = json.loads(costed.output)["throughput"]
    assert used["source"] == str(folder / keep) and used["measured_at"] == result["measured_at"]


def test_an_unbenchmarked_folder_says_how_to_measure_it(tmp_path):
    (tmp_path / "x-Q4_1.gguf").symlink_to(EMBEDDED[DEFAULT_ID].gguf_file())
    (tmp_path / "localserve.json").write_text(json.dumps({"name": "x", "artifacts": [{"file": "x-Q4_1.gguf"}]}))
    result = CliRunner().invoke(cli, ["cost", "--model", str(tmp_path), "--gpu", "L4", "--price", "1/h", "--no-chart"])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "has no `localserve bench` measurement" in line and "--tokens-per-s N" in line


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
