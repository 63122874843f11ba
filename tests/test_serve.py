"""`localserve serve`: exports behind llama-server, on tiny random models. One llama-server in router mode
serves a GGUF export and a tenants export at once; the front lists every name, sends every adapter's scale
with every request (what llama-server echoes back in `generation_settings.lora` proves it), and refuses what
it cannot serve in llama-server's own error shape. Answers are noise (random weights): only their shape and
the scales matter here; tests/test_tenants_embedded.py proves the tenants' answers on the embedded model.
The same server is then reached as every other runtime is: an eval target, a `bench` target, router arms."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import llamaserver
from localserve.cli import cli
from localserve.errors import InputError
from localserve.exports import TenantExportSpec, export_tenants
from localserve.lifecycle.targets import open_target
from localserve.lineage import read_record, write_record
from localserve.llamacpp.server import Client, ServerModel, lora_scales, preset_ini
from localserve.plan.bench import BenchSpec, bench
from localserve.runtimes.llama_server import plan, serve


@pytest.fixture(scope="module")
def tiny_tenants(tiny_base, tiny_adapter, tmp_path_factory) -> Path:
    from tinymodel import build_lora

    root = tmp_path_factory.mktemp("serve-tenants")
    alpha = root / "alpha"
    shutil.copytree(tiny_adapter, alpha)
    beta = build_lora(tiny_base, root / "beta", seed=7, r=4, alpha=8, targets=("q_proj", "o_proj"))
    out = root / "team"
    export_tenants(TenantExportSpec(adapters=(alpha, beta), quant="q8_0", name="team", out=out, smoke=False,
                                    register=False))
    return out


@pytest.fixture(scope="module")
def merged(fresh_tiny_export) -> Path:
    return fresh_tiny_export()


@pytest.fixture(scope="module")
def serving(merged, tiny_tenants):
    """ONE llama-server (router mode: a child per export) behind the front, for the whole module."""
    with serve([merged, tiny_tenants], port=0, threads=1, binary=llamaserver.binary()) as running:
        yield running


def chat(url: str, model, max_tokens: int = 4, **extra) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, "temperature": 0, **extra}
    if model is not None:
        body["model"] = model
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_every_export_and_tenant_is_listed_by_name(serving, tiny_tenants):
    data = httpx.get(f"{serving.url}/v1/models").json()["data"]
    listed = {m["id"]: m["meta"] for m in data}
    tenants = [t.tenant for t in read_record(tiny_tenants).tenants]
    assert set(listed) == {"tiny", "team", *tenants}
    assert listed["tiny"]["kind"] == "gguf" and listed["team"]["tenant"] is None
    assert {listed[t]["upstream"] for t in tenants} == {"team"}  # one base serves every tenant


def test_each_request_carries_every_adapters_scale(serving, tiny_tenants):
    tenants = [t.tenant for t in read_record(tiny_tenants).tenants]
    for i, tenant in enumerate([*tenants, "team"]):
        r = httpx.post(f"{serving.url}/completion", json={"model": tenant, "prompt": "hello", "n_predict": 2},
                       timeout=120)
        assert r.status_code == 200, r.text
        applied = {a["id"]: a["scale"] for a in r.json()["generation_settings"]["lora"]}
        expected = {k: (1.0 if k == i else 0.0) for k in range(len(tenants))}  # "team" (the base): all 0
        assert applied == expected, tenant


def test_adapters_are_loaded_at_global_scale_zero(serving):
    # a request that reaches llama-server without scales must get the base, not every adapter at once
    with Client(serving.upstream.url, model="team") as upstream:
        adapters = upstream.lora_adapters()
    assert len(adapters) == 2 and {a["scale"] for a in adapters} == {0.0}


def test_a_merged_export_answers_bounded_and_streams(serving):
    r = chat(serving.url, "tiny", max_tokens=4)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 4
    with httpx.stream("POST", f"{serving.url}/v1/chat/completions", timeout=120,
                      json={"model": "tiny", "stream": True, "max_tokens": 3,
                            "messages": [{"role": "user", "content": "hi"}]}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [line for line in s.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]" and len(events) >= 2


def test_an_unknown_model_is_a_404_naming_what_is_served(serving):
    r = chat(serving.url, "nobody")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "'nobody'" in message and "tiny" in message and "team" in message


def test_a_request_may_not_choose_adapters_itself(serving):
    r = chat(serving.url, "team", lora=[{"id": 0, "scale": 1.0}])
    assert r.status_code == 400 and "lora" in r.json()["error"]["message"]


def test_a_request_without_a_model_is_refused_when_several_are_served(serving):
    r = chat(serving.url, None)
    assert r.status_code == 404 and "no `model`" in r.json()["error"]["message"]


def test_other_routes_pass_through(serving):
    assert httpx.get(f"{serving.url}/health").status_code == 200


def test_a_port_in_use_is_refused_before_anything_starts(merged):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} .* in use"):
            with serve([merged], port=port, binary=llamaserver.binary()):
                pass


def test_two_exports_with_one_name_are_refused(merged, fresh_tiny_export):
    with pytest.raises(InputError, match="two served models would be named 'tiny'"):
        plan([merged, fresh_tiny_export()])


def test_a_tenant_named_like_another_export_is_refused(merged, tiny_tenants, tmp_path):
    clash = tmp_path / "clash"
    shutil.copytree(merged, clash)
    record = read_record(clash)
    write_record(clash, record.replace(name=read_record(tiny_tenants).tenants[0].tenant))
    with pytest.raises(InputError, match="two served models would be named"):
        plan([clash, tiny_tenants])


def test_the_scales_and_the_router_preset_say_every_adapter(tmp_path):
    assert lora_scales(3, 1) == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}, {"id": 2, "scale": 0.0}]
    assert lora_scales(2, None) == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]
    ini = preset_ini([ServerModel("a", tmp_path / "a.gguf", loras=(tmp_path / "x.gguf",), ctx=512)])
    assert "[a]" in ini and f"lora-scaled = {tmp_path / 'x.gguf'}:0" in ini and "ctx-size = 512" in ini
    assert "lora-init-without-apply = true" in ini and "load-on-startup = true" in ini


def test_serve_refuses_a_folder_that_is_not_an_export(tmp_path):
    r = CliRunner().invoke(cli, ["serve", str(tmp_path), "--port", "0"])
    assert r.exit_code != 0 and r.output.startswith("error: ") and "localserve.json" in r.output


# --- the served names as a runtime: eval target, bench target, router arm ----------------------------------

def test_an_eval_target_names_a_tenant_on_the_server(serving, tiny_tenants):
    tenant = read_record(tiny_tenants).tenants[0].tenant
    with open_target(f"llama-server:{serving.url}/v1#{tenant}", max_tokens=3) as target:
        answer = target.answer([{"role": "user", "content": "hello"}])
        assert target.info == {"engine": "llama-server", "url": serving.url, "model": tenant}
    assert answer.error is None and 1 <= answer.completion_tokens <= 3 and answer.ttft_s <= answer.latency_s
    # without #MODEL only a server with one model will do; LM Studio and Jan always need it
    with pytest.raises(InputError, match="name one: llama-server:"):
        open_target(f"llama-server:{serving.url}")
    with pytest.raises(InputError, match="lacks URL#MODEL"):
        open_target("lmstudio:http://127.0.0.1:1234")


def test_bench_times_the_server_through_the_front(serving, merged):
    gguf = merged / read_record(merged).artifact().file
    result = bench(BenchSpec(gguf, target="llama-server", url=serving.url, concurrency=2, prompt_tokens=16,
                             max_tokens=4, store=False))
    assert result["served_name"] == "tiny" and result["settings"]["end_of_generation_suppressed"]
    assert result["decode_tokens_per_s"] > 0 and result["concurrent"]["decode_tokens_per_s"] > 0
    assert result["concurrent"]["ttft_s"] > 0 and result["settings"]["prompt_tokens"] > 0


def test_router_arms_on_the_server_get_their_own_model(serving, tiny_tenants):
    from localserve.router.arms import assign
    from routerhelpers import running_router

    tenant = read_record(tiny_tenants).tenants[0].tenant
    arms = [f"served:v1=50@llama-server:{serving.url}#tiny", f"served:v2=50@llama-server:{serving.url}#{tenant}"]
    with running_router("served", arms, "http://127.0.0.1:9") as router:
        assert [(a.runtime, a.engine, a.model) for a in router.arms] == [("llama-server", "openai", "tiny"),
                                                                          ("llama-server", "openai", tenant)]
        for version in ("served:v1", "served:v2"):
            user = next(u for u in (f"u{i}" for i in range(200)) if assign("served", u, router.arms).version == version)
            r = httpx.post(f"{router.url}/v1/chat/completions", timeout=120, json={
                "model": "served", "user": user, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert r.headers["x-localserve-arm"] == version and r.json()["usage"]["completion_tokens"] <= 3
