"""`export A1 A2 ... --lora` for Ollama: one shared base GGUF plus one GGUF LoRA per adapter (tenant).

    TenantExportSpec -> check adapters (one base, LoRA only) -> chat template of the base
        -> convert the base once -> quantize it -> convert each adapter (convert_lora_to_gguf.py)
        -> smoke each tenant in llama.cpp (base + lora_path) -> Modelfile per tenant
        -> localserve.json (the ExportRecord) -> register each tenant with Ollama if one answers

Every tenant's Modelfile says `FROM ./<base>.gguf` and `ADAPTER ./<tenant>.gguf`; registered, each
tenant is an Ollama model whose model layer is the same blob, stored once (see ollama/tenants.py
for which Ollama versions can load adapters on which architectures). Stages run under `Pipeline`
exactly as in the GGUF export, so re-running with one new adapter converts only that adapter.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AdapterError, InputError, SmokeTestFailed
from ..fsutil import atomic_path, folder_lock, human_bytes, sha256_file, sha256_tree, write_text
from ..lineage import Artifact, BaseRecord, ExportRecord, TenantRecord, now, read_record, tool_versions, write_record
from ..models.lora import describe, plain_alpha
from ..models.resolve import Adapter, BaseModel, check_base_weights, load_adapter, read_json
from ..pipeline import Pipeline, content_key
from ..progress import step
from ..spec import name_from_path
from .checks import chat_template_record, check_chat, check_out, require_export_space
from .inputs import check_shared_base, convert_merged, read_probe
from .spec import TenantExportSpec



@dataclass
class TenantExportResult:
    out_dir: Path
    name: str
    base_file: str
    base_quant: str
    base_size: int
    base_sha256: str
    architecture: str  # the GGUF general.architecture of base and adapters
    support: dict  # which Ollama versions load adapters on this architecture (ollama.tenants)
    tenants: list[TenantRecord]
    lineage_path: Path
    record: ExportRecord
    registered: dict | None = None
    register_hint: str | None = None
    stages: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"out_dir": str(self.out_dir), "name": self.name,
                "base": {"file": self.base_file, "quant": self.base_quant, "size": self.base_size,
                         "sha256": self.base_sha256, "architecture": self.architecture},
                "ollama_adapter_support": self.support, "tenants": [t.to_json() for t in self.tenants],
                "lineage": str(self.lineage_path), "registered": self.registered,
                "register_hint": self.register_hint, "stages": self.stages}


# --- checks -------------------------------------------------------------------------------------

def check_gguf_lora(adapter: Adapter) -> None:
    """Refuse what a GGUF LoRA cannot carry: whole saved modules, DoRA, biases, per-module rank or alpha."""
    facts = describe(adapter)
    where = f"adapter {adapter.path}"
    if facts.use_dora:
        raise AdapterError(f"{where} is a DoRA adapter (use_dora); llama.cpp's GGUF LoRA has no magnitude vectors",
                           "export it merged (`localserve export ADAPTER`)")
    if facts.lora_bias:
        raise AdapterError(f"{where} trains a bias in lora_B (lora_bias); a GGUF LoRA holds only the A and B matrices",
                           "export it merged (`localserve export ADAPTER`)")
    saved = facts.saved_modules
    if saved:
        raise AdapterError(f"{where} saves whole modules beside its LoRA (modules_to_save: {', '.join(saved[:4])}); "
                           "a GGUF LoRA holds only low-rank pairs, so a tenant cannot carry them",
                           "export this adapter merged (`localserve export ADAPTER`), or retrain it without "
                           "modules_to_save")
    if facts.biases:
        raise AdapterError(f"{where} trains biases of the base (bias: {facts.bias}: {facts.biases[0].key}, ...); "
                           "a GGUF LoRA holds only the A and B matrices",
                           "export it merged (`localserve export ADAPTER`)")
    for key in ("rank_pattern", "alpha_pattern"):
        if getattr(facts, key):
            raise AdapterError(f"{where} sets {key}; a GGUF LoRA has one rank and one alpha for every module",
                               "export it merged (`localserve export ADAPTER`)")


def gguf_alpha(config: dict) -> float | None:
    """The alpha to write into the GGUF so that llama.cpp's scale alpha/r equals PEFT's.

    rsLoRA scales by alpha/sqrt(r); llama.cpp always divides by r, so alpha*sqrt(r) gives the same
    update. The converter copies lora_alpha as it finds it, hence _as_plain_lora.
    """
    return plain_alpha(config.get("lora_alpha"), config.get("r"), bool(config.get("use_rslora")))


@contextlib.contextmanager
def _as_plain_lora(adapter: Adapter, scratch: Path):
    """The adapter folder the converter should read: itself, or for rsLoRA a view with the alpha
    rescaled (links to the same weights, a rewritten adapter_config.json) inside `scratch`."""
    if not adapter.config.get("use_rslora"):
        yield adapter.path
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="rslora-") as tmp:
        view = Path(tmp) / adapter.path.name
        view.mkdir()
        view.joinpath(adapter.weights.name).symlink_to(adapter.weights.resolve())
        config = {**adapter.config, "lora_alpha": gguf_alpha(adapter.config), "use_rslora": False}
        view.joinpath("adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
        step(f"{adapter.path.name}: rsLoRA, written with alpha {config['lora_alpha']:g} so llama.cpp's alpha/r "
             "matches PEFT's alpha/sqrt(r)")
        yield view


def check_adapters(spec: TenantExportSpec) -> tuple[list[Adapter], BaseModel, list[int]]:
    """Everything checked before any work: each adapter loads, is GGUF-LoRA-able, fits the one base."""
    from ..models.merge import check_compatibility

    adapters = [load_adapter(a, spec.allow_pickle) for a in spec.adapters]
    for a in adapters:
        check_gguf_lora(a)
    base = check_shared_base(adapters, spec.base, "a tenant is served",
                             "export this adapter merged (`localserve export ADAPTER`), or remove them if they are "
                             "meant to be the base's")
    check_base_weights(base, spec.allow_pickle)
    counts = []
    for a in adapters:
        try:
            counts.append(check_compatibility(a, base))
        except AdapterError as e:
            raise AdapterError(f"adapter {a.path}: {e.message}", e.hint) from None
    return adapters, base, counts


# --- the export ---------------------------------------------------------------------------------

def export_tenants(spec: TenantExportSpec) -> TenantExportResult:
    """Run the multi-tenant export described by `spec`; see the module docstring for the stages. One
    run at a time writes an output folder."""
    check_out(spec.out_dir, [*spec.adapters, *([spec.base] if spec.base else [])])
    with folder_lock(spec.out_dir, "localserve export"):
        return _export_tenants(spec)


def _export_tenants(spec: TenantExportSpec) -> TenantExportResult:
    from ..llamacpp import convert, quantize as quant
    from ..llamacpp.lora import ADAPTER_OUTTYPE, answer, convert_lora_to_gguf
    from ..llamacpp.smoke import smoke_test
    from ..llamacpp.vendor import locate
    from ..modelfile import ModelfileSpec, render_modelfile
    from ..ollama.layers import gguf_info
    from ..ollama.registration import default_name
    from ..ollama.tenants import adapter_support

    adapters, base, n_modules = check_adapters(spec)
    config = read_json(base.path / "config.json")
    hf_architecture = convert.check_architecture(config)
    step(f"base: {base.path} ({base.source}); {len(adapters)} tenants: "
         + ", ".join(f"{t} ({a.path})" for t, a in zip(spec.tenant_names, adapters)))
    setup, parity = check_chat(base.path, spec.template_family, spec.template_file, spec.force)
    probes = [read_probe(a.path) for a in adapters]

    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".localserve" / "work"
    pipe = Pipeline(out)
    tree = locate()
    versions = tool_versions()
    base_hash = sha256_tree(base.path)
    chosen = () if setup.chat_template is None else (setup.chat_template,)  # a base without a template of its own
    convert_key = content_key("convert", base_hash, tree.commit, "f16", *chosen)
    quant_key = content_key("quantize", convert_key, spec.quant, None)
    f16_path = work / "base-F16.gguf"
    base_file = f"{name_from_path(base.path)}-{spec.quant}.gguf"
    base_path = out / base_file

    def run_quant() -> dict:
        if spec.quant == "F16":
            with atomic_path(base_path) as tmp:
                shutil.copyfile(f16_path, tmp)
        else:
            quant.quantize(f16_path, base_path, spec.quant)
        return {"size": base_path.stat().st_size, "sha256": sha256_file(base_path)}

    def run_convert() -> dict:
        convert_merged(base.path, f16_path, "f16", tree, work / "chat", setup.chat_template)
        return {"size": f16_path.stat().st_size}

    pipe.stage("convert", convert_key, [f16_path], run_convert,
               "converting the shared base to a 16-bit GGUF (llama.cpp's converter)")
    pipe.stage(f"quantize:{spec.quant}", quant_key, [base_path], run_quant,
               f"quantizing the shared base to {spec.quant}", needs=("convert",))
    if not pipe.is_fresh(f"quantize:{spec.quant}"):
        require_export_space(out, base.path, config, (spec.quant,), merged=False,
                             what=f"converting the base and quantizing it to {spec.quant}")
    base_info = pipe.need(f"quantize:{spec.quant}").info
    if not spec.keep_intermediate and work.exists():
        shutil.rmtree(work)
        pipe.forget("convert")
    architecture = gguf_info(base_path).architecture
    support = adapter_support(architecture)
    step(support.message)

    # --- one GGUF LoRA per tenant, smoked on the shared base -----------------------------------
    tenants: list[TenantRecord] = []
    for tenant, adapter, probe, n in zip(spec.tenant_names, adapters, probes, n_modules):
        adapter_hash = sha256_tree(adapter.path)
        lora_key = content_key("lora", adapter_hash, sha256_file(base.path / "config.json"), tree.commit,
                               ADAPTER_OUTTYPE)
        lora_path = out / f"{tenant}-lora-{ADAPTER_OUTTYPE.upper()}.gguf"

        def run_lora(adapter=adapter, lora_path=lora_path) -> dict:
            with _as_plain_lora(adapter, out / ".localserve") as source:
                convert_lora_to_gguf(source, base.path, lora_path, ADAPTER_OUTTYPE, tree)
            lora_arch = gguf_info(lora_path).architecture
            if lora_arch != architecture:  # llama.cpp would only say so when it loads the pair
                raise AdapterError(f"{lora_path.name} has architecture {lora_arch}, the base {architecture}",
                                   "the adapter was not trained on this base")
            return {"size": lora_path.stat().st_size, "sha256": sha256_file(lora_path)}

        pipe.stage(f"lora:{tenant}", lora_key, [lora_path], run_lora,
                   f"converting {adapter.path} to a GGUF LoRA (convert_lora_to_gguf.py)")
        facts = pipe.need(f"lora:{tenant}").info

        smoke = None
        if spec.smoke:
            def run_smoke(probe=probe, lora_path=lora_path) -> dict:
                result = smoke_test(base_path, probe.get("question"), probe.get("expected"), lora=lora_path).to_json()
                if probe:
                    # the probe proves the adapter is applied only if the base alone does not know it
                    plain = answer(base_path, probe["question"])
                    result["base_answer"] = plain
                    if probe["expected"].lower() in plain.lower():
                        raise SmokeTestFailed(
                            f"{base_path.name} answers {probe['question']!r} with {probe['expected']!r} even "
                            f"without the adapter {lora_path.name}, so the probe cannot tell whether it is applied",
                            "put a question in probe.json that only the fine-tune answers, or pass --no-smoke")
                return result

            pipe.stage(f"smoke:{tenant}", content_key("smoke", quant_key, lora_key, probe), [base_path, lora_path],
                       run_smoke, f"smoke test of {tenant}: {base_path.name} + {lora_path.name} in llama.cpp")
            smoke = pipe.need(f"smoke:{tenant}").info
            step(f"{tenant}: {smoke['answer']!r}" + (f" (base alone: {smoke['base_answer']!r})"
                                                     if "base_answer" in smoke else ""))
        tenants.append(TenantRecord(
            tenant=tenant, ollama_name=default_name(tenant, spec.quant), adapter=str(adapter.path.resolve()),
            adapter_sha256=adapter_hash, file=lora_path.name, size=facts["size"], sha256=facts["sha256"],
            modelfile=f"Modelfile.{tenant}", rank=adapter.config.get("r"), alpha=adapter.config.get("lora_alpha"),
            lora_modules=n, probe=probe or None, smoke=smoke, gguf_alpha=gguf_alpha(adapter.config)))

    # --- Modelfiles and the record ----------------------------------------------------------------
    parameters = {**setup.parameters, "stop": list(setup.stop)}
    system = spec.system or getattr(setup, "system", None)
    template = setup.template if spec.ollama_template == "go" else None
    for t in tenants:
        write_text(out / t.modelfile, render_modelfile(ModelfileSpec(
            from_=f"./{base_file}", adapter=f"./{t.file}", template=template, system=system, parameters=parameters)))

    record = ExportRecord(
        kind="tenants", name=spec.export_name, spec=spec.to_json(), localserve_version=versions["localserve"],
        created_at=now(),
        base=BaseRecord(ref=base.ref, path=str(base.path), source=base.source, sha256=base_hash,
                        architecture=hf_architecture, gguf_architecture=architecture),
        tenants=tuple(tenants),
        tools={**versions, "llama_cpp_commit": tree.commit, "converter": str(tree.convert_hf),
               "lora_converter": str(tree.convert_lora)},
        chat={"family": setup.family, "source": str(base.path), **chat_template_record(setup), "parity_ok": parity.ok,
              "forced": bool(spec.force and not parity.ok), "parity": parity.to_json()},
        # the shared base, in the shape `localserve register/bundle` read (it registers the base alone)
        modelfile={"template": template, "system": system, "parameters": parameters, "messages": [], "license": [],
                   "ollama_template": spec.ollama_template},
        artifacts=(Artifact(base_file, spec.quant, base_info["size"], base_info["sha256"]),),
        stages=tuple(r.to_json() for r in pipe.records),
        sections={"ollama_adapter_support": support.to_json()})
    lineage_path = write_record(out, record)
    total = base_info["size"] + sum(t.size for t in tenants)
    step(f"wrote 1 base GGUF + {len(tenants)} GGUF LoRA ({human_bytes(total)}), Modelfiles and "
         f"{lineage_path.name} to {out}")

    result = TenantExportResult(out, spec.export_name, base_file, spec.quant, base_info["size"], base_info["sha256"],
                                architecture, support.to_json(), tenants, lineage_path, record,
                                stages=[r.to_json() for r in pipe.records])
    if spec.register:
        from ..ollama.client import resolve_host, server_available

        if server_available(spec.ollama_host):
            register_export(result, spec.ollama_host)
        else:
            later = "; ".join(f"`ollama create {t.ollama_name} -f {out / t.modelfile}`" for t in tenants[:2])
            result.register_hint = (f"no Ollama server answered at {resolve_host(spec.ollama_host)}; register later "
                                    f"with {later}" + ("; …" if len(tenants) > 2 else ""))
    return result


def register_export(result: TenantExportResult, host: str | None = None) -> dict:
    """Register every tenant of a finished export with the Ollama at `host`; recorded in localserve.json."""
    result.registered = register_record(result.out_dir, result.record, host)
    result.record = result.record.replace(registered=result.registered)
    return result.registered


def register_record(folder: Path, record: ExportRecord, host: str | None = None) -> dict:
    """Register every tenant of the tenants export `record` (in `folder`); the record is updated on disk."""
    from ..ollama.layers import ModelRecipe
    from ..ollama.tenants import Tenant, adapter_support, register_tenants

    folder = Path(folder)
    base = record.artifact()
    tenants = [Tenant(t.ollama_name, folder / t.file, t.sha256) for t in record.tenants]
    missing = [str(p) for p in [folder / base.file, *(t.adapter_gguf for t in tenants)] if not p.is_file()]
    if missing:
        raise InputError(f"{folder / 'localserve.json'} lists files that are not there: {', '.join(missing)}",
                         "re-run `localserve export ... --lora` into this folder")
    reg = register_tenants(folder / base.file, base.sha256, tenants, ModelRecipe.from_json(record.modelfile),
                           adapter_support(record.base.gguf_architecture), host)
    write_record(folder, record.replace(registered=reg.to_json()))
    return reg.to_json()


def register_folder(folder: Path, host: str | None = None) -> dict:
    """Register every tenant of the `export --lora` folder `folder`, from its localserve.json."""
    return register_record(folder, read_record(folder), host)
