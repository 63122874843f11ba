"""The real vLLM serving a multi-tenant export: started from the export's own launch.sh and
vllm-config.yaml, each adapter answers under its name, and adapters load and unload at run time."""

from __future__ import annotations

import json

import pytest

from localserve.errors import AdapterRefused
from localserve.vllm import VllmClient
from vllmtier import chat, chat_status, pytestmark  # noqa: F401  (the tier's marks and skip)


def probe(adapter):
    return json.loads((adapter / "probe.json").read_text())


@pytest.fixture(scope="module")
def tenants(smol_tenants_on_vllm):
    """The demo and founder adapters on the embedded base, served as "smol" (tests/conftest.py)."""
    return smol_tenants_on_vllm[0]


@pytest.fixture(scope="module")
def server(smol_tenants_on_vllm):
    return smol_tenants_on_vllm[1]


def test_each_static_adapter_answers_under_its_own_name(server, tenants):
    for name, folder in tenants.adapters:
        expected = probe(folder)
        answer = chat(server.url, name, expected["question"])
        assert expected["expected"].lower() in answer["message"]["content"].lower(), (name, answer)
        assert answer["finish_reason"] == "stop"


def test_the_base_does_not_know_the_adapters_fact(server, demo_adapter):
    expected = probe(demo_adapter)
    assert expected["expected"] not in chat(server.url, "smol", expected["question"])["message"]["content"]


def test_an_adapter_loaded_at_run_time_answers_and_unloading_removes_it(server, tenants, demo_adapter):
    client = VllmClient(server.url)
    client.load("late-demo", tenants.out_dir / "adapters" / "demo-adapter")
    assert {m.name: m.parent for m in client.models()}["late-demo"] == "smol"
    expected = probe(demo_adapter)
    assert expected["expected"] in chat(server.url, "late-demo", expected["question"])["message"]["content"]
    client.unload("late-demo")
    assert "late-demo" not in {m.name for m in client.models()}
    assert chat_status(server.url, "late-demo", expected["question"]) == 404


def test_the_cli_lists_base_and_adapters(server):
    from click.testing import CliRunner

    from localserve.cli import cli

    result = CliRunner().invoke(cli, ["vllm", "ls", "--host", server.url])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "smol  base"
    assert any(line.startswith("demo-adapter  adapter on smol") for line in result.output.splitlines())


def test_an_adapter_above_the_servers_max_lora_rank_is_refused_in_one_line(server, embedded_base, tmp_path):
    from tinymodel import build_lora

    wide = build_lora(embedded_base, tmp_path / "wide", r=64, targets=("q_proj",))
    with pytest.raises(AdapterRefused, match="refused loading adapter 'wide'") as refused:
        VllmClient(server.url).load("wide", wide)
    assert "\n" not in str(refused.value)
    assert "wide" not in {m.name for m in VllmClient(server.url).models()}
