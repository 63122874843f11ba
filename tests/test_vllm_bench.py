"""`localserve bench --target vllm` against the real vLLM (CPU build) serving the merged export on
loopback: one short bounded run stores positive numbers, and `cost --model EXPORT` prices with them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from vllmtier import pytestmark  # noqa: F401  (the tier's marks and skip)


@pytest.fixture(scope="module")
def benched(demo_on_vllm):
    export, server = demo_on_vllm[0].out_dir, demo_on_vllm[1]
    result = CliRunner().invoke(cli, ["--quiet", "bench", str(export), "--target", "vllm", "--url", server.url,
                                      "--served-name", "demo", "--concurrency", "2", "--prompt-tokens", "16",
                                      "--max-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    return export, server.url, json.loads(result.output)


def test_bench_against_vllm_stores_positive_numbers(benched):
    export, url, data = benched
    assert data["target"] == "vllm" and data["url"] == url
    assert data["ttft_s"] > 0 and data["decode_tokens_per_s"] > 0 and data["prompt_tokens_per_s"] > 0
    assert data["concurrent"]["requests"] == 2 and data["concurrent"]["aggregate_output_tokens_per_s"] > 0
    assert data["concurrent"]["mode"] == "concurrent"
    assert data["settings"]["end_of_generation_suppressed"] is True
    stored = json.loads((export / "localserve.json").read_text())
    assert stored["bench"][export.name]["vllm"]["decode_tokens_per_s"] == data["decode_tokens_per_s"]
    assert json.loads((export / "bench.json").read_text())["vllm"]["ttft_s"] == data["ttft_s"]


def test_cost_prices_the_gpu_with_the_vllm_measurement(benched):
    export, _, data = benched
    result = CliRunner().invoke(cli, ["cost", "--model", str(export), "--gpu", "L4", "--price", "0.8/h", "--gpus", "1",
                                      "--no-chart", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["throughput"]["target"] == "vllm" and report["throughput"]["measured_at"] == data["measured_at"]
