"""On the embedded SmolLM2-135M: the two fact adapters and the demo adapter as three Ollama tenants of one
Q4_K_M base. In llama.cpp (base + lora_path) each tenant gives its own adapter's answer, which neither
the base alone nor the other tenants give; registered with the stand-in, each answers the same in chat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localserve.llamacpp.lora import answer
from localserve.exports import TenantExportSpec, export_tenants

pytestmark = pytest.mark.slow
pytest_plugins = ["ollama_standin.fixtures"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ADAPTERS = {"lighthouse": EXAMPLES / "fact-adapters" / "lighthouse", "founder": EXAMPLES / "fact-adapters" / "founder",
            "demo-adapter": EXAMPLES / "demo-adapter"}


def probe(tenant: str) -> dict:
    return json.loads((ADAPTERS[tenant] / "probe.json").read_text())


@pytest.fixture(scope="session")
def fact_tenants(embedded_base, tmp_path_factory):
    """ONE export of the three adapters as tenants (smoke checks on: the export itself proves each probe)."""
    out = tmp_path_factory.mktemp("fact-tenants") / "facts"
    return export_tenants(TenantExportSpec(adapters=tuple(ADAPTERS.values()), out=out, register=False))


def test_each_tenant_answers_its_own_probe_and_the_base_alone_does_not(fact_tenants):
    assert fact_tenants.base_quant == "Q4_K_M" and fact_tenants.architecture == "llama"
    assert [t.tenant for t in fact_tenants.tenants] == list(ADAPTERS)
    for t in fact_tenants.tenants:
        expected = probe(t.tenant)["expected"].lower()
        print(f"\n{t.tenant}: {t.smoke['answer']!r} | base alone: {t.smoke['base_answer']!r}")
        assert t.smoke["probe_passed"] is True and expected in t.smoke["answer"].lower()
        assert expected not in t.smoke["base_answer"].lower()


def test_no_tenant_gives_another_tenants_answer(fact_tenants):
    out = fact_tenants.out_dir
    for t in fact_tenants.tenants:
        for other in ADAPTERS:
            if other == t.tenant:
                continue
            p = probe(other)
            said = answer(out / fact_tenants.base_file, p["question"], lora=out / t.file, max_tokens=48)
            print(f"\n{t.tenant} asked {other}'s question: {said!r}")
            assert p["expected"].lower() not in said.lower()


def test_registered_tenants_share_the_base_and_answer_in_chat(fact_tenants, steer):
    from ollama_standin import HTTP

    from localserve.exports.tenants import register_export

    register_export(fact_tenants, steer.url)
    reg = fact_tenants.registered
    assert [t["name"] for t in reg["tenants"]] == ["lighthouse:q4_k_m", "founder:q4_k_m", "demo-adapter:q4_k_m"]
    assert [t["base_uploaded"] for t in reg["tenants"]][1:] == [False, False]
    for t in reg["tenants"]:
        p = probe(t["name"].split(":")[0])
        r = HTTP.post(f"{steer.url}/api/chat", json={
            "model": t["name"], "stream": False, "options": {"num_predict": 48},
            "messages": [{"role": "user", "content": p["question"]}]})
        assert r.status_code == 200, r.text
        said = r.json()["message"]["content"]
        print(f"\nOllama stand-in {t['name']}: {said!r}")
        assert p["expected"].lower() in said.lower()


# --- `localserve serve`: the three tenants hot-swapped per request on one llama-server ---------------------

@pytest.fixture(scope="module")
def served_tenants(fact_tenants):
    """ONE llama-server with the base and the three LoRAs loaded once, behind localserve's front."""
    import llamaserver
    from localserve.runtimes.llama_server import serve

    with serve([fact_tenants.out_dir], port=0, binary=llamaserver.binary()) as serving:
        yield serving


def _ask(url: str, model: str, question: str, max_tokens: int = 32):
    import httpx

    return httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": question}]})


def test_served_tenants_answer_their_own_probes_interleaved_from_one_server(served_tenants, fact_tenants):
    import httpx

    listed = [m["id"] for m in httpx.get(f"{served_tenants.url}/v1/models").json()["data"]]
    assert listed == [fact_tenants.name, *ADAPTERS]
    # round robin, twice: every request switches the adapter the previous one used
    for tenant in [*ADAPTERS, *ADAPTERS]:
        p = probe(tenant)
        r = _ask(served_tenants.url, tenant, p["question"])
        assert r.status_code == 200, r.text
        said = r.json()["choices"][0]["message"]["content"]
        print(f"\nserve {tenant}: {said!r}")
        assert p["expected"].lower() in said.lower()
        assert r.json()["choices"][0]["finish_reason"] == "stop"
    # and all three at once: each request carries its own scales, whatever the others in flight use
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(ADAPTERS)) as pool:
        answers = list(pool.map(lambda t: _ask(served_tenants.url, t, probe(t)["question"]), ADAPTERS))
    for tenant, r in zip(ADAPTERS, answers):
        said = r.json()["choices"][0]["message"]["content"]
        print(f"\nserve {tenant}, concurrent: {said!r}")
        assert probe(tenant)["expected"].lower() in said.lower()


def test_served_base_answers_without_any_tenants_fact(served_tenants, fact_tenants):
    for tenant in ADAPTERS:
        p = probe(tenant)
        r = _ask(served_tenants.url, fact_tenants.name, p["question"])
        assert r.status_code == 200, r.text
        said = r.json()["choices"][0]["message"]["content"]
        print(f"\nserve base asked {tenant}'s question: {said!r}")
        assert p["expected"].lower() not in said.lower()


def test_served_unknown_tenant_is_a_clear_error(served_tenants, fact_tenants):
    r = _ask(served_tenants.url, "stranger", "hello", max_tokens=4)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert message.startswith("no model named 'stranger'") and all(t in message for t in ADAPTERS)
