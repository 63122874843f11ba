"""`localserve export A1 A2 ... --lora` for Ollama, on tiny random Llamas: one shared base GGUF, one GGUF
LoRA per tenant, a Modelfile per tenant (FROM base, ADAPTER lora), and registration that stores the
base once (docs/ollama.md#create-api `adapters`, #manifest adapter layers, #adapters which versions load them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.errors import AdapterError, InputError
from localserve.modelfile import parse_modelfile
from localserve.ollama.client import ServerTooOld
from localserve.ollama.layers import MEDIA_ADAPTER, MEDIA_MODEL, ModelRecipe
from localserve.ollama.tenants import Tenant, adapter_support, register_tenants
from localserve.exports import TenantExportSpec, export_tenants

pytest_plugins = ["ollama_standin.fixtures"]


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _gguf_kv(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path), "r")
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.") and len(f.data) <= 5}


def _tensor_names(path: Path) -> list[str]:
    import gguf

    return [t.name for t in gguf.GGUFReader(str(path), "r").tensors]


def _edit_config(src: Path, dest: Path, **changes) -> Path:
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "adapter_config.json").read_text())
    cfg.update(changes)
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    return dest


@pytest.fixture(scope="module")
def second_adapter(tiny_base, tmp_path_factory) -> Path:
    from tinymodel import build_lora

    return build_lora(tiny_base, tmp_path_factory.mktemp("tenants") / "beta", seed=7, r=4, alpha=8,
                      targets=("q_proj", "o_proj"))


@pytest.fixture(scope="module")
def first_adapter(tiny_adapter, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("tenants") / "alpha"
    shutil.copytree(tiny_adapter, dest)
    return dest


@pytest.fixture(scope="module")
def tenant_export(first_adapter, second_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("tenant-export") / "tiny"
    return export_tenants(TenantExportSpec(adapters=(first_adapter, second_adapter), quant="q8_0", out=out,
                                           smoke=False, register=False))


# --- the export -------------------------------------------------------------------------------

def test_one_base_gguf_and_one_gguf_lora_per_adapter(tenant_export, tiny_base):
    out = tenant_export.out_dir
    assert sorted(p.name for p in out.glob("*.gguf")) == ["alpha-lora-F16.gguf", "base-Q8_0.gguf",
                                                          "beta-lora-F16.gguf"]
    assert tenant_export.base_file == "base-Q8_0.gguf" and tenant_export.architecture == "llama"
    base_kv = _gguf_kv(out / "base-Q8_0.gguf")
    assert base_kv.get("general.type") in (None, "model")
    for t, rank, alpha in zip(tenant_export.tenants, (8, 4), (16, 8)):
        kv = _gguf_kv(out / t.file)
        assert kv["general.type"] == "adapter" and kv["adapter.type"] == "lora"
        assert kv["adapter.lora.alpha"] == alpha and (t.rank, t.alpha) == (rank, alpha)
        assert kv["general.architecture"] == base_kv["general.architecture"] == "llama"
        names = _tensor_names(out / t.file)
        assert names and all(n.endswith((".lora_a", ".lora_b")) for n in names)
        assert {n.removesuffix(".lora_a").removesuffix(".lora_b") for n in names} <= set(_tensor_names(out / "base-Q8_0.gguf"))
    assert not (out / ".localserve" / "work").exists(), "the 16-bit base is intermediate"


def test_each_tenant_gets_a_modelfile_from_the_shared_base_with_its_adapter(tenant_export):
    out = tenant_export.out_dir
    for t in tenant_export.tenants:
        mf = parse_modelfile((out / f"Modelfile.{t.tenant}").read_text())
        assert mf.from_ == "./base-Q8_0.gguf" and mf.adapter == f"./{t.tenant}-lora-F16.gguf"
        assert "<|im_start|>" in mf.template and "<|im_end|>" in mf.parameters["stop"]
        assert (out / mf.from_).is_file() and (out / mf.adapter).is_file()


def test_lineage_records_every_tenant_its_hashes_and_the_ollama_support(tenant_export, first_adapter):
    from localserve.fsutil import sha256_file, sha256_tree

    meta = json.loads(tenant_export.lineage_path.read_text())
    assert meta["kind"] == "tenants" and meta["artifacts"][0]["file"] == "base-Q8_0.gguf"
    assert meta["artifacts"][0]["sha256"] == sha256_file(tenant_export.out_dir / "base-Q8_0.gguf")
    assert [t["tenant"] for t in meta["tenants"]] == ["alpha", "beta"]
    alpha = meta["tenants"][0]
    assert alpha["sha256"] == sha256_file(tenant_export.out_dir / alpha["file"])
    assert alpha["adapter_sha256"] == sha256_tree(first_adapter) and alpha["ollama_name"] == "alpha:q8_0"
    assert meta["base"]["gguf_architecture"] == "llama"
    assert meta["ollama_adapter_support"]["go_engine"] is False
    assert "every version" in meta["ollama_adapter_support"]["message"]


def test_rerun_converts_nothing_again(tenant_export, first_adapter, second_adapter):
    again = export_tenants(TenantExportSpec(adapters=(first_adapter, second_adapter), quant="Q8_0",
                                            out=tenant_export.out_dir, smoke=False, register=False))
    assert again.stages and all(s["skipped"] for s in again.stages)


def test_tenant_names_come_from_folders_or_the_name_prefix(first_adapter, second_adapter):
    assert TenantExportSpec(adapters=(first_adapter, second_adapter)).tenant_names == ("alpha", "beta")
    spec = TenantExportSpec(adapters=(first_adapter, second_adapter), name="acme")
    assert spec.tenant_names == ("acme-alpha", "acme-beta") and spec.out_dir == Path("exports/acme-lora")


def test_two_adapters_with_the_same_folder_name_are_refused(first_adapter, tmp_path):
    twin = shutil.copytree(first_adapter, tmp_path / "alpha")
    with pytest.raises(InputError, match="both be tenant 'alpha'"):
        TenantExportSpec(adapters=(first_adapter, twin))


# --- refused before any work --------------------------------------------------------------------

def test_adapters_on_different_bases_name_the_odd_one_out(first_adapter, second_adapter, tiny_base, tmp_path):
    other_base = shutil.copytree(tiny_base, tmp_path / "other-base")
    odd = _edit_config(second_adapter, tmp_path / "odd", base_model_name_or_path=str(other_base))
    out = tmp_path / "out"
    with pytest.raises(AdapterError, match=r"must share one base: .*odd is on .*other-base"):
        export_tenants(TenantExportSpec(adapters=(first_adapter, second_adapter, odd), out=out, register=False))
    assert not out.exists()


@pytest.mark.parametrize("changes, message", [
    ({"modules_to_save": ["lm_head"]}, r"modules_to_save: lm_head"),
    ({"use_dora": True}, "DoRA"),
    ({"rank_pattern": {"q_proj": 16}}, "rank_pattern"),
])
def test_what_a_gguf_lora_cannot_carry_is_refused(first_adapter, tmp_path, changes, message):
    bad = _edit_config(first_adapter, tmp_path / "bad", **changes)
    with pytest.raises(AdapterError, match=message):
        export_tenants(TenantExportSpec(adapters=(first_adapter, bad), out=tmp_path / "out", register=False))
    assert not (tmp_path / "out").exists()


def test_rslora_is_written_with_the_alpha_that_gives_llama_cpp_the_same_scale(first_adapter, tiny_base, tmp_path):
    from localserve.llamacpp.lora import convert_lora_to_gguf
    from localserve.models.resolve import load_adapter
    from localserve.exports.tenants import _as_plain_lora, gguf_alpha

    rs = load_adapter(_edit_config(first_adapter, tmp_path / "rs", use_rslora=True))
    assert gguf_alpha(rs.config) == pytest.approx(16 * 8 ** 0.5)  # llama.cpp: alpha/r == PEFT: 16/sqrt(8)
    with _as_plain_lora(rs, tmp_path / "scratch") as source:
        convert_lora_to_gguf(source, tiny_base, tmp_path / "rs.gguf")
    assert _gguf_kv(tmp_path / "rs.gguf")["adapter.lora.alpha"] == pytest.approx(16 * 8 ** 0.5)
    assert json.loads((rs.path / "adapter_config.json").read_text())["use_rslora"] is True, "the input is untouched"
    assert not list((tmp_path / "scratch").iterdir())


def test_saved_lm_head_weights_are_refused_even_if_the_config_does_not_say(first_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _edit_config(first_adapter, tmp_path / "headful")
    weights = load_file(bad / "adapter_model.safetensors")
    weights["base_model.model.lm_head.weight"] = weights[next(iter(weights))].clone()
    save_file(weights, bad / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"saves whole modules .*lm_head"):
        export_tenants(TenantExportSpec(adapters=(bad,), out=tmp_path / "out", register=False))


def test_trained_base_biases_are_refused(first_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    biased = _edit_config(first_adapter, tmp_path / "biased", bias="lora_only")
    weights = load_file(biased / "adapter_model.safetensors")
    q_proj = "base_model.model.model.layers.0.self_attn.q_proj"
    weights[f"{q_proj}.base_layer.bias"] = weights[f"{q_proj}.lora_B.weight"][:, 0].clone()
    save_file(weights, biased / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"trains biases of the base \(bias: lora_only: .*q_proj"):
        export_tenants(TenantExportSpec(adapters=(biased,), out=tmp_path / "out", register=False))


def test_an_adapter_with_its_own_chat_template_is_refused(first_adapter, tmp_path):
    own = _edit_config(first_adapter, tmp_path / "own")
    (own / "chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(AdapterError, match="ships its own chat_template.jinja"):
        export_tenants(TenantExportSpec(adapters=(own,), out=tmp_path / "out", register=False))


def test_cli_refuses_options_that_do_not_apply_in_one_line(first_adapter, second_adapter):
    for extra, flag in ((["--quant", "Q4_K_M,Q8_0"], "one type"), (["--max-kl", "0.1"], "--max-kl"),
                        (["--trust-remote-code"], "--trust-remote-code"), (["--max-size", "1GB"], "--max-size")):
        result = run_cli("export", str(first_adapter), str(second_adapter), "--lora", *extra)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0]


def test_cli_exports_tenants_and_prints_where_they_are(first_adapter, second_adapter, tmp_path):
    result = run_cli("export", str(first_adapter), str(second_adapter), "--lora", "--quant", "Q8_0",
                     "--out", str(tmp_path / "cli"), "--no-smoke", "--no-register", "--name", "acme")
    assert result.exit_code == 0, result.output
    assert "tenant acme-alpha" in result.output and "tenant acme-beta" in result.output
    assert "Ollama:  Ollama loads LoRA adapters on llama bases" in result.output
    assert (tmp_path / "cli" / "Modelfile.acme-beta").is_file()


# --- which Ollama versions load adapters (docs/ollama.md#adapters) --------------------------------------

def test_adapter_support_by_architecture_and_version():
    llama, qwen3 = adapter_support("llama"), adapter_support("qwen3")
    assert all(llama.loads_on(v) for v in ("0.5.4", "0.12.0", "0.24.0", "0.33.0-rc2"))
    assert qwen3.go_engine and "loras are not yet implemented" in qwen3.message
    assert qwen3.loads_on("0.6.8") and qwen3.loads_on("0.30.0") and qwen3.loads_on("0.33.0-rc2")
    assert not qwen3.loads_on("0.7.0") and not qwen3.loads_on("0.24.0")
    assert adapter_support("nemotron_h_moe").go_engine


# --- registration against the strict stand-in ------------------------------------------------------

def _tenants(export) -> list[Tenant]:
    return [Tenant(f"reg-{t.tenant}:q8_0", export.out_dir / t.file, t.sha256) for t in export.tenants]


def _manifest(steer, name: str) -> dict:
    from ollama_standin.server import Name

    return json.loads(steer.store.find(Name.parse(name)).read_bytes())


@pytest.mark.parametrize("version, form", [("0.33.0-rc2", "json"), ("0.12.0", "json"), ("0.5.4", "modelfile")])
def test_registration_stores_the_base_once_with_one_adapter_layer_per_tenant(steer, tenant_export, version, form):
    out = tenant_export.out_dir
    tenants = [Tenant(f"reg{version.replace('.', '')[:4]}-{t.tenant}:q8_0", out / t.file, t.sha256)
               for t in tenant_export.tenants]
    steer.requests.clear()
    with steer.behaving(version=version):
        reg = register_tenants(out / tenant_export.base_file, tenant_export.base_sha256, tenants,
                               ModelRecipe(template="{{ .Prompt }}", parameters={"stop": ["<|im_end|>"]}),
                               adapter_support("llama"), steer.url)
    assert reg.create_form == form and [t.name for t in reg.tenants] == [t.name for t in tenants]
    base_blob = f"/api/blobs/{reg.base_digest}"
    calls = [(m, p) for m, p, _ in steer.requests]
    assert calls.count(("HEAD", base_blob)) == len(tenants)
    assert calls.count(("POST", base_blob)) <= 1, "the base is uploaded once at most"
    assert [t.base_uploaded for t in reg.tenants][1:] == [False] * (len(tenants) - 1)
    manifests = [_manifest(steer, t.name) for t in tenants]
    model_layers = {tuple(la["digest"] for la in m["layers"] if la["mediaType"] == MEDIA_MODEL) for m in manifests}
    assert len(model_layers) == 1 and len(next(iter(model_layers))) == 1, "every tenant shares one model layer"
    adapter_layers = [[la["digest"] for la in m["layers"] if la["mediaType"] == MEDIA_ADAPTER] for m in manifests]
    assert adapter_layers == [[f"sha256:{t.sha256}"] for t in tenant_export.tenants]
    if form == "json":
        bodies = [b for m, p, b in steer.requests if p == "/api/create"]
        assert [b["adapters"] for b in bodies] == [{t.file: f"sha256:{t.sha256}"} for t in tenant_export.tenants]
        assert all("from" not in b for b in bodies)


def test_a_server_that_cannot_load_adapters_on_the_architecture_is_refused_before_upload(steer, tenant_export):
    steer.requests.clear()
    with steer.behaving(version="0.20.0"), pytest.raises(ServerTooOld, match="qwen3.*0.30"):
        register_tenants(tenant_export.out_dir / tenant_export.base_file, tenant_export.base_sha256,
                         _tenants(tenant_export), ModelRecipe(), adapter_support("qwen3"), steer.url)
    assert not [r for r in steer.requests if r[0] == "POST"]


def test_the_standin_takes_one_gguf_adapter_per_create(steer, tenant_export):
    from ollama_standin import HTTP

    from localserve.ollama.client import OllamaServer

    out = tenant_export.out_dir
    with OllamaServer(steer.url) as server:
        base = server.push_blob(out / tenant_export.base_file)
        loras = {t.file: server.push_blob(out / t.file).digest for t in tenant_export.tenants}
    r = HTTP.post(f"{steer.url}/api/create", json={"model": "two-adapters", "files": {"base.gguf": base.digest},
                                                   "adapters": loras, "stream": False})
    assert r.status_code == 400 and r.json() == {"error": "only one adapter is currently supported"}


def test_export_registers_every_tenant_when_ollama_answers(steer, first_adapter, second_adapter, tenant_export):
    result = export_tenants(TenantExportSpec(adapters=(first_adapter, second_adapter), quant="Q8_0",
                                             out=tenant_export.out_dir, smoke=False, ollama_host=steer.url))
    assert [t["name"] for t in result.registered["tenants"]] == ["alpha:q8_0", "beta:q8_0"]
    meta = json.loads(result.lineage_path.read_text())
    assert meta["registered"]["base_digest"] == f"sha256:{result.base_sha256}"


# --- a LoRA that does not fit is an error, never a crash (llama-cpp-python would segfault) ----------

def _misfit_lora(path: Path, arch: str = "llama") -> Path:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 16.0)
    w.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 100), dtype=np.float32))  # ne [100, 4]: in=100
    w.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((256, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_lora_that_does_not_fit_the_base_is_refused_before_llama_cpp_loads_it(tenant_export, tmp_path):
    from localserve.errors import SmokeTestFailed
    from localserve.llamacpp.lora import answer

    base = tenant_export.out_dir / tenant_export.base_file
    with pytest.raises(SmokeTestFailed, match=r"blk.0.attn_q.weight is \[256, 256\] but its LoRA pair is \[100, 4\]"):
        answer(base, "hello", lora=_misfit_lora(tmp_path / "misfit.gguf"))
    with pytest.raises(SmokeTestFailed, match="arch mismatch"):
        answer(base, "hello", lora=_misfit_lora(tmp_path / "qwen.gguf", "qwen2"))
    with pytest.raises(SmokeTestFailed, match="not a LoRA adapter"):
        answer(base, "hello", lora=base)


def test_the_standin_answers_500_for_a_tenant_whose_adapter_does_not_fit(steer, tenant_export, tmp_path):
    from ollama_standin import HTTP

    from localserve.fsutil import sha256_file

    misfit = _misfit_lora(tmp_path / "misfit.gguf")
    register_tenants(tenant_export.out_dir / tenant_export.base_file, tenant_export.base_sha256,
                     [Tenant("misfit:q8_0", misfit, sha256_file(misfit))], ModelRecipe(template="{{ .Prompt }}"),
                     adapter_support("llama"), steer.url)
    r = HTTP.post(f"{steer.url}/api/generate", json={"model": "misfit:q8_0", "prompt": "hi", "stream": False,
                                                     "options": {"num_predict": 8}})
    assert r.status_code == 500 and "llama runner process has terminated" in r.json()["error"]


def test_localserve_register_registers_every_tenant_of_the_folder(steer, tenant_export):
    out = str(tenant_export.out_dir)
    result = run_cli("register", out, "--host", steer.url)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("registered alpha:q8_0, beta:q8_0 on Ollama")
    refused = run_cli("register", out, "--name", "x:y", "--host", steer.url)
    assert refused.exit_code == 2 and "--name does not apply to the multi-tenant export" in refused.output


# --- Ollama >= 0.34.1 creates no model with an adapter (docs/ollama.md#adapters) -------------------------

def test_a_server_from_0_34_1_is_refused_before_upload_with_what_to_do_instead(steer, tenant_export):
    out = str(tenant_export.out_dir)
    steer.requests.clear()
    with steer.behaving(version="0.34.1"):
        result = CliRunner().invoke(cli, ["register", out, "--host", steer.url])
    assert result.exit_code != 0 and not [r for r in steer.requests if r[0] == "POST"]
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: Ollama 0.34.1 at {steer.url} no longer creates models with a LoRA ADAPTER")
    assert "`localserve export ADAPTER`, one per tenant" in line and "--lora --target vllm" in line


def test_a_server_refusing_adapters_under_an_older_version_is_understood_by_its_answer(steer, tenant_export):
    from localserve.ollama.tenants import AdapterModelsRefused

    # behaves as 0.34.1 and says 0.33.0-rc2, as a build from source between the two may
    with steer.behaving(version="0.34.1", reported_version="0.33.0-rc2"), pytest.raises(AdapterModelsRefused) as e:
        register_tenants(tenant_export.out_dir / tenant_export.base_file, tenant_export.base_sha256,
                         _tenants(tenant_export)[:1], ModelRecipe(template="{{ .Prompt }}"), adapter_support("llama"),
                         steer.url)
    assert "it answered: LoRA adapters are no longer supported" in e.value.message
    assert "one per tenant" in e.value.hint


def test_from_0_34_1_the_standin_refuses_adapters_and_still_serves_models_made_with_them(steer, tenant_export):
    from ollama_standin import HTTP

    from localserve.ollama.client import OllamaServer

    out = tenant_export.out_dir
    made = register_tenants(out / tenant_export.base_file, tenant_export.base_sha256, _tenants(tenant_export)[:1],
                            ModelRecipe(template="{{ .Prompt }}"), adapter_support("llama"), steer.url)
    with OllamaServer(steer.url) as server:
        base = server.push_blob(out / tenant_export.base_file)
        lora = server.push_blob(out / tenant_export.tenants[0].file)
    with steer.behaving(version="0.34.1"):
        r = HTTP.post(f"{steer.url}/api/create", json={"model": "refused:v1", "files": {"base.gguf": base.digest},
                                                       "adapters": {"a.gguf": lora.digest}, "stream": False})
        assert r.status_code == 400 and r.json() == {"error": "LoRA adapters are no longer supported"}
        r = HTTP.post(f"{steer.url}/api/create", json={"model": "refused:v1", "files": {"a.gguf": lora.digest}})
        lines = [json.loads(line) for line in r.text.splitlines()]  # found reading the file: in the stream
        assert lines[-1] == {"error": "LoRA adapters are no longer supported: a.gguf is a LoRA adapter"}
        r = HTTP.post(f"{steer.url}/api/generate", json={"model": made.tenants[0].name, "prompt": "hi",
                                                         "stream": False, "options": {"num_predict": 4}})
        assert r.status_code == 200 and r.json()["done"]
