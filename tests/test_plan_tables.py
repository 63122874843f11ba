"""User-extendable device and API price tables (--devices/--prices, LOCALSERVE_DEVICES/LOCALSERVE_PRICES):
a user's entry is used, with its own date, and a malformed file is one clear line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.models.embedded import DEFAULT_ID, EMBEDDED

MY_GPU = {"name": "LabCard-20GB", "kind": "gpu", "vendor": "ACME", "memory_gib": 20, "date": "2026-01-02",
          "source": "our lab inventory"}
MY_API = {"name": "house-llm", "provider": "us", "input_per_1m": 0.2, "output_per_1m": 1.0, "date": "2026-03-04",
          "source": "internal rate card"}


@pytest.fixture
def devices_file(tmp_path):
    path = tmp_path / "devices.json"
    path.write_text(json.dumps({"devices": [MY_GPU]}))
    return path


@pytest.fixture
def prices_file(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"prices": [MY_API]}))
    return path


def _plan_devices(args, env=None):
    result = CliRunner().invoke(cli, ["plan", str(EMBEDDED[DEFAULT_ID].gguf_file()), "--ctx", "1024", "--json",
                                      *args], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    return data, {d["device"]: d for d in data["quants"][0]["devices"]}


@pytest.mark.parametrize("how", ["option", "env"])
def test_plan_uses_the_users_extra_device_with_its_date(devices_file, how):
    if how == "option":
        data, by_name = _plan_devices(["--devices", str(devices_file)])
    else:
        data, by_name = _plan_devices([], {"LOCALSERVE_DEVICES": str(devices_file)})
    mine = by_name["LabCard-20GB"]
    assert mine["status"] == "fits" and mine["usable_bytes"] == 20 << 30
    assert mine["date"] == "2026-01-02" and mine["source"] == "our lab inventory"
    assert "T4" in by_name  # the shipped table is extended, not replaced
    assert "2026-01-02" in data["device_table_dates"]


def test_a_users_entry_replaces_the_shipped_one_of_the_same_name(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"devices": [{**MY_GPU, "name": "T4", "memory_gib": 0.05}]}))
    _, by_name = _plan_devices(["--devices", str(path), "--device", "T4"])
    assert by_name["T4"]["usable_bytes"] == int(0.05 * (1 << 30)) and by_name["T4"]["status"] != "fits"


def test_cost_uses_the_users_gpu_and_api_price(devices_file, prices_file):
    result = CliRunner().invoke(cli, ["cost", "--gpu", "LabCard-20GB", "--price", "0.5/h", "--tokens-per-s", "500",
                                      "--api", "house-llm", "--devices", str(devices_file), "--prices",
                                      str(prices_file), "--input-share", "0.5", "--no-chart", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["api"]["name"] == "house-llm" and data["api"]["date"] == "2026-03-04"
    assert data["options"][0]["per_1m"] == pytest.approx(0.5 * 0.2 + 0.5 * 1.0)
    assert data["gpu"]["name"] == "LabCard-20GB" and data["gpu"]["date"] == "2026-01-02"
    assert data["data_dates"]["devices"].startswith("LabCard-20GB: 2026-01-02")


def test_cost_reads_the_price_table_from_the_environment(prices_file):
    result = CliRunner().invoke(cli, ["cost", "--api", "house-llm", "--no-chart", "--json"],
                                env={"LOCALSERVE_PRICES": str(prices_file)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["api"]["source"] == "internal rate card"


BAD = [
    ("not json", "is not valid JSON"),
    (json.dumps({"gpus": []}), "has no 'devices' list"),
    (json.dumps({"devices": ["T4"]}), "entry 'T4' is not an object"),
    (json.dumps({"devices": [{"name": "X", "kind": "gpu", "memory_gib": 8}]}), "entry 'X' lacks date, source"),
    (json.dumps({"devices": [{**MY_GPU, "memory_gib": "lots"}]}), "has memory_gib 'lots', not a number"),
    (json.dumps({"devices": [{**MY_GPU, "kind": "tpu"}]}), "has kind 'tpu'"),
]


@pytest.mark.parametrize("content, needle", BAD)
@pytest.mark.parametrize("command", ["plan", "cost"])
def test_a_malformed_device_file_is_one_clear_line(tmp_path, content, needle, command):
    path = tmp_path / "devices.json"
    path.write_text(content)
    args = (["plan", str(EMBEDDED[DEFAULT_ID].gguf_file()), "--devices", str(path)] if command == "plan" else
            ["cost", "--gpu", "L4", "--price", "1/h", "--tokens-per-s", "10", "--devices", str(path), "--no-chart"])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: ") and needle in line and str(path) in line


@pytest.mark.parametrize("content, needle", [
    ("{", "is not valid JSON"),
    (json.dumps({"prices": [{"name": "p", "input_per_1m": "cheap", "output_per_1m": 1, "date": "d", "source": "s"}]}),
     "has input_per_1m 'cheap', not a number"),
    (json.dumps({"prices": [{**MY_API, "output_per_1m": -1}]}), "has a negative price"),
    (json.dumps({"prices": [{"name": "p", "input_per_1m": 1}]}), "lacks output_per_1m, date, source"),
])
def test_a_malformed_price_file_is_one_clear_line(tmp_path, content, needle):
    path = tmp_path / "prices.json"
    path.write_text(content)
    result = CliRunner().invoke(cli, ["cost", "--no-chart"], env={"LOCALSERVE_PRICES": str(path)})
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: ") and needle in line
