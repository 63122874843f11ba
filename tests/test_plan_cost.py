"""Cost arithmetic on hand-computed cases, the crossover, the decision, the chart, and bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.errors import InputError
from localserve.plan import Assumptions, CostSpec, cost, crossover, self_hosted_per_1m
from localserve.plan.cost import DAYS_PER_MONTH, HOURS_PER_MONTH, api_monthly, parse_volume, self_hosted_monthly

NO_ENG = Assumptions(utilisation=1.0, input_share=0.5, eng_hours_per_month=0)


def test_self_hosted_cost_per_million_tokens():
    # $2/h, 1000 tokens/s at 50% busy: 1.8M tokens an hour -> $1.111 per 1M
    assert self_hosted_per_1m(2.0, 1000, 0.5) == pytest.approx(2.0 / 1.8)
    assert self_hosted_per_1m(2.0, 1000, 1.0) == pytest.approx(2.0 / 3.6)


def test_api_cost_prices_input_and_output_separately():
    report = cost(CostSpec(tokens_per_day="10M", api="gpt-4o-mini", api_input_price=1.0, api_output_price=3.0,
                           assumptions=Assumptions(input_share=0.75)))
    api = report.options[0]
    assert api.per_1m == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)
    assert api.monthly == pytest.approx(10 * 1.5 * DAYS_PER_MONTH)
    assert report.api.date == "given"


def test_monthly_self_hosted_cost_rents_whole_replicas():
    # one replica serves 1M tokens/day; 2.5M tokens/day needs three
    assert self_hosted_monthly(2.5e6, 1.0, 1e6) == pytest.approx(3 * HOURS_PER_MONTH)
    assert self_hosted_monthly(0, 1.0, 1e6, fixed_monthly=100) == pytest.approx(HOURS_PER_MONTH + 100)


def test_crossover_on_a_hand_computed_case():
    # $1/h around the clock against an API at $1 per 1M tokens: break-even at 24M tokens/day
    assert crossover(1.0, capacity_per_day=1e9, api_per_1m=1.0) == pytest.approx(24e6)
    # engineering time adds to the fixed cost: $730.5 + $730.5 per month -> twice the volume
    assert crossover(1.0, 1e9, 1.0, fixed_monthly=HOURS_PER_MONTH) == pytest.approx(48e6)
    # a GPU whose token costs more than the API's never breaks even
    assert crossover(1.0, capacity_per_day=1e6, api_per_1m=1.0) is None


def test_crossover_grows_with_the_gpu_price_and_shrinks_with_the_api_price():
    gpu_prices = [0.5, 0.8, 1.1, 2.0, 4.0, 8.0]
    by_gpu = [crossover(p, 5e8, 0.6, fixed_monthly=800) for p in gpu_prices]
    assert all(v is not None for v in by_gpu)
    assert by_gpu == sorted(by_gpu) and len(set(by_gpu)) == len(by_gpu)
    api_prices = [0.3, 0.6, 1.2, 5.0, 10.0]
    by_api = [crossover(1.1, 5e8, p, fixed_monthly=800) for p in api_prices]
    assert by_api == sorted(by_api, reverse=True)


def test_crossover_is_where_the_monthly_bills_meet():
    report = cost(CostSpec(tokens_per_day="1M", gpu="L4", price_per_hour="0.80/h", tokens_per_s=400,
                           api="gpt-4o", chart=None))
    x = report.crossover_tokens_per_day
    vllm = next(o for o in report.options if o.name == "vllm")
    eng = report.spec.assumptions.eng_monthly
    api_per_1m = report.options[0].per_1m
    assert self_hosted_monthly(x, 0.80, vllm.capacity_per_day, eng) == pytest.approx(api_monthly(x, api_per_1m))
    assert self_hosted_monthly(x * 0.9, 0.80, vllm.capacity_per_day, eng) > api_monthly(x * 0.9, api_per_1m)


def test_decision_follows_volume_and_stated_requirements():
    base = dict(gpu="A100-80GB", price_per_hour=1.10, tokens_per_s=2000, api="gpt-4o", chart=None)
    low = cost(CostSpec(tokens_per_day="100K", **base))
    high = cost(CostSpec(tokens_per_day="2B", **base))
    assert low.decision == "api" and high.decision == "vllm"
    assert any("below" in r for r in low.reasons) and any("above" in r for r in high.reasons)
    assert any("engineering time" in r for r in low.reasons)
    private = cost(CostSpec(tokens_per_day="100K", private=True, **base))
    assert private.decision == "vllm" and any("privacy" in r for r in private.reasons)
    assert cost(CostSpec(tokens_per_day="2B", frontier=True, **base)).decision == "api"
    assert cost(CostSpec(tokens_per_day="100K", development=True, **base)).decision == "ollama"


def test_multi_tenant_lora_uses_the_adapters_real_size(tmp_path):
    import torch
    from safetensors.torch import save_file

    adapter = tmp_path / "tenant-a"
    adapter.mkdir()
    save_file({"lora_A": torch.zeros(8, 576), "lora_B": torch.zeros(576, 8)}, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text("{}")
    size = (adapter / "adapter_model.safetensors").stat().st_size
    report = cost(CostSpec(tokens_per_day="50M", gpu="L4", price_per_hour=0.8, tokens_per_s=1500, tenants=10,
                           adapter=adapter, chart=None))
    t = report.tenancy
    assert t["adapter_bytes"] == size
    assert t["monthly_separate"] > t["monthly_shared"]


def test_volumes_are_read_with_suffixes_and_never_negative():
    assert parse_volume("20M") == 20e6 and parse_volume("1.5B") == 1.5e9 and parse_volume("500k") == 5e5
    with pytest.raises(InputError, match="must not be negative"):
        parse_volume("-5M")


def test_cost_cli_writes_json_and_the_chart(tmp_path):
    chart = tmp_path / "cost.png"
    result = CliRunner().invoke(cli, ["cost", "--tokens-per-day", "30M", "--gpu", "L4", "--price", "0.8/h",
                                      "--tokens-per-s", "400", "--api", "gpt-4o", "--chart", str(chart), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["decision"] == "vllm" and data["crossover_tokens_per_day"] < 30e6
    assert data["api"]["date"] and data["api"]["source"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and data["chart"] == str(chart)


@pytest.mark.parametrize("args, needle", [
    (["--tokens-per-day", "-5M"], "tokens per day must not be negative"),
    (["--gpu", "Z80-1KB", "--price", "1/h", "--tokens-per-s", "10"], "unknown device 'Z80-1KB'"),
    (["--api", "gpt-99"], "unknown API model 'gpt-99'"),
    (["--gpu", "L4"], "no hourly price for L4"),
])
def test_bad_input_is_one_clear_line(args, needle, tmp_path):
    result = CliRunner().invoke(cli, ["cost", "--no-chart", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error:")
    assert "Traceback" not in result.output


def test_multi_tenant_memory_counts_one_base_instead_of_n(tmp_path):
    from localserve.models.embedded import DEFAULT_ID, EMBEDDED
    from localserve.plan import load_model

    gguf = EMBEDDED[DEFAULT_ID].gguf_file()
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"\0" * 123_456)
    report = cost(CostSpec(tokens_per_day="1M", tenants=4, adapter=adapter, model=gguf, chart=None))
    t = report.tenancy
    base = 2 * sum(tc.n for tc in load_model(gguf).tensors)
    assert t["base_weights_bytes"] == base and t["adapter_bytes"] == 123_456
    assert t["memory_separate_bytes"] == 4 * (base + 123_456)
    assert t["memory_shared_bytes"] == base + 4 * 123_456


def test_the_issues_own_example_says_exactly_what_to_pass():
    """No throughput is invented: without --model or --tokens-per-s the line names both ways to give one."""
    result = CliRunner().invoke(cli, ["cost", "--tokens-per-day", "20M", "--gpu", "A100-80GB", "--price", "1.10/h",
                                      "--api", "gpt-4o-mini", "--no-chart"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: no throughput")
    assert "--model EXPORT_DIR" in line and "`localserve bench`" in line and "--tokens-per-s N" in line
    given = CliRunner().invoke(cli, ["cost", "--tokens-per-day", "20M", "--gpu", "A100-80GB", "--price", "1.10/h",
                                     "--api", "gpt-4o-mini", "--tokens-per-s", "1000", "--no-chart"])
    assert given.exit_code == 0, given.output


def test_cost_states_the_date_of_the_device_figure_and_of_the_api_price():
    from localserve.plan.tables import api_price, device

    a100, mini = device("A100-80GB"), api_price("gpt-4o-mini")
    result = CliRunner().invoke(cli, ["cost", "--gpu", "A100-80GB", "--price", "1.10/h", "--tokens-per-s", "1000",
                                      "--no-chart"])
    assert result.exit_code == 0, result.output
    [data_line] = [line for line in result.output.splitlines() if line.startswith("data dated:")]
    assert f"devices A100-80GB: {a100.date} ({a100.source})" in data_line
    assert f"api_prices gpt-4o-mini: {mini.date}" in data_line
    assert f"device table dated {a100.date}" in result.output and "your price (--price)" in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["cost", "--gpu", "A100-80GB", "--price", "1.10/h",
                                                  "--tokens-per-s", "1000", "--no-chart", "--json"]).output)
    assert as_json["gpu"]["date"] == a100.date and as_json["gpu"]["source"] == a100.source
    assert as_json["gpu"]["price_source"] == "given (--price)"
    assert set(as_json["data_dates"]) == {"api_prices", "devices"}
