"""`export --target vllm`: a Hugging Face folder vLLM serves as is, plus its serve configuration.

    VllmExportSpec -> resolve and check: the adapter and its base (MergeSource), or under --lora the
                      adapters on their one shared base (vLLM's LoRA rules); the chat template, the
                      draft's vocabulary, the layout (plan/layout), what each --deploy engine needs
                   -> stages (pipeline.py: resumable, timed, keyed by content):
                      weights   model/: merged tensor by tensor into bounded safetensors shards (or the base
                                as stored under --lora), tokenizer, exact chat template,
                                generation_config.json with every end-of-turn id; --quant: llm-compressor
                      adapters  adapters/NAME/ (--lora)      draft  draft/ (--speculative draft:PATH)
                      serve     vllm-config.yaml, launch.sh, docker-compose.yml, k8s/, deploy/ENGINE/
                   -> localserve.json, written last

Everything is checked before anything is written. Each stage writes its outputs atomically and a re-run
redoes only the stages whose inputs changed; an interrupted run leaves no localserve.json (and, when
it made the folder and finished no stage, no folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, InputError, TemplateMismatch
from ..fsutil import atomic_dir, folder_lock, human_bytes, require_free_space, sha256_file, sha256_tree
from ..gpuquant.export import CalibrationOptions, QuantPlan, QuantResult, plan_quant, quantize_folder
from ..lineage import (RECORD_FILE, AdapterRecord, Artifact, BaseRecord, ExportRecord, now, read_record, tool_versions,
                       write_record)
from ..models.folders import MODEL_DIR
from ..models.lora import tokenizer_files, tokenizer_sources
from ..models.merge import copy_chat_files
from ..models.tensors import as_stored, write_shards
from ..models.resolve import Adapter, BaseModel, check_base_weights, load_adapter, read_json
from ..pipeline import Pipeline, content_key
from ..plan.layout import Layout, parallel_layout
from ..progress import step
from ..spec import name_from_path
from ..vllm import deploy, serve
from ..vllm.lora import LoraPlan, plan_lora
from .checks import check_out
from .inputs import AdapterSource, adapter_source, check_shared_base
from .spec import VLLM_DTYPE_BYTES, Speculation, VllmExportSpec, speculation

ADAPTERS_DIR = "adapters"
DRAFT_DIR = "draft"  # the --speculative draft model, copied into the export so the serve files stay relative
# The n-grams the ngram proposer looks up in the prompt: two tokens already find the repeats of
# templated or quoted text, four bound the search.
NGRAM_LOOKUP = (2, 4)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Files a serve stage writes that a later run with other options may not: removed before it writes.
SERVE_FOLDERS = (serve.K8S_DIR, deploy.DEPLOY_DIR)


@dataclass(frozen=True)
class VllmExportResult:
    out_dir: Path
    name: str
    model_dir: Path
    adapters: tuple[tuple[str, Path], ...]  # (served name, folder) under --lora
    serve_files: tuple[Path, ...]
    config_file: Path
    lineage_path: Path
    end_of_turn_ids: tuple[int, ...]
    layout: Layout | None
    lora: LoraPlan | None
    model_bytes: int
    quantization: QuantResult | None = None
    record: ExportRecord | None = None
    features: tuple[str, ...] = ()  # prefix caching, speculative decoding, structured outputs: one line each
    deploy_files: tuple[Path, ...] = ()  # deploy/ENGINE/... of every --deploy engine
    stages: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        return {"out_dir": str(self.out_dir), "name": self.name, "model_dir": str(self.model_dir),
                "adapters": {n: str(p) for n, p in self.adapters}, "config": str(self.config_file),
                "files": [str(p) for p in self.serve_files], "lineage": str(self.lineage_path),
                "end_of_turn_ids": list(self.end_of_turn_ids), "model_bytes": self.model_bytes,
                "tensor_parallel_size": self.layout.tensor_parallel_size if self.layout else 1,
                "pipeline_parallel_size": self.layout.pipeline_parallel_size if self.layout else 1,
                "arithmetic": list(self.layout.lines) if self.layout else [],
                "lora": self.lora.lines() if self.lora else None,
                "quantization": self.quantization.to_json() if self.quantization else None,
                "features": list(self.features), "deploy": [str(p) for p in self.deploy_files],
                "stages": list(self.stages)}


def chat_files(adapter: Adapter | None, base: BaseModel) -> tuple[dict[str, Path], Path]:
    """(file name -> source) of the tokenizer and chat template to serve, and the folder whose template it is.

    The adapter's own files win (fine-tuning often changes the template or adds tokens), each file
    falling back to the base's; a template the adapter carries is never shadowed by the base's
    chat_template.jinja, which transformers would prefer.
    """
    own = tokenizer_files(adapter.path) if adapter is not None else None
    files = tokenizer_sources(own, base.path)
    return files, (adapter.path if own is not None and own.template is not None else base.path)


def end_of_turn_ids(chat_dir: Path, template_family: str | None = None) -> tuple[int, ...]:
    """Every token id that ends a turn: EOS, generation_config's eos ids, the family's end markers.

    vLLM stops on the ids in generation_config.json's eos_token_id; a model whose template ends
    turns with a marker other than EOS (e.g. <|eot_id|> beside <|end_of_text|>) rambles without them.
    """
    from transformers import AutoTokenizer

    from ..chat import stop_tokens
    from ..chat.families import get_family
    from ..chat.hf import load_hf_chat
    from ..chat import detect_family

    hf = load_hf_chat(chat_dir)
    if template_family:
        family_stops = get_family(template_family).stop
    else:
        try:
            family_stops = detect_family(hf).stop
        except (InputError, TemplateMismatch):
            family_stops = ()  # a template of no known family: EOS and generation_config's ids still apply
    tokenizer = AutoTokenizer.from_pretrained(str(chat_dir), trust_remote_code=False)
    ids: list[int] = list(hf.generation_eos_ids)
    for text in stop_tokens(hf, family_stops):
        token_id = tokenizer.convert_tokens_to_ids(text)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.append(token_id)
    if tokenizer.eos_token_id is not None:
        ids.insert(0, tokenizer.eos_token_id)
    return tuple(dict.fromkeys(ids))


def _finish_model_folder(dest: Path, config: dict, template_source: Path, template_family: str | None) -> tuple[int, ...]:
    """Write every end-of-turn id into dest/generation_config.json and prove the served template is the
    chat source's, byte for byte; returns the ids."""
    from ..chat.hf import load_hf_chat

    gen_file = dest / "generation_config.json"
    generation = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else {}
    if "eos_token_id" not in generation and isinstance(config.get("eos_token_id"), (int, list)):
        generation["eos_token_id"] = config["eos_token_id"]
    gen_file.write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    eot_ids = end_of_turn_ids(dest, template_family)
    generation["eos_token_id"] = list(eot_ids)
    gen_file.write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    if load_hf_chat(dest).template != load_hf_chat(template_source).template:
        raise AssertionError(f"the chat template in {dest} differs from {template_source}'s")
    step(f"end-of-turn ids in generation_config.json: {list(eot_ids)}")
    return eot_ids


def _check_ctx(spec: VllmExportSpec, config: dict) -> None:
    trained = config.get("max_position_embeddings")
    if spec.ctx and isinstance(trained, int) and spec.ctx > trained:  # vLLM itself refuses it at start
        raise InputError(f"--ctx {spec.ctx} is above the {trained} tokens of context the model was trained for "
                         "(max_position_embeddings)", f"pass --ctx {trained} or less")


def _layout(spec: VllmExportSpec, config: dict, base_dir: Path) -> Layout | None:
    if spec.gpu_memory is None:
        return None
    ctx = spec.ctx or config.get("max_position_embeddings") or 4096
    return parallel_layout(base_dir / "config.json", spec.gpu_memory, spec.gpus or 1, spec.nodes or 1, ctx, spec.concurrency or 1,
                           gpu_memory_utilization=spec.gpu_memory_utilization,
                           dtype_bytes=VLLM_DTYPE_BYTES[spec.dtype] if spec.dtype != "auto" else None)


def _check_out(out: Path) -> None:
    """Refuse to write into a folder that is not a vLLM export (finished, or interrupted: its stage state
    names the weights stage)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file", "pass a folder path")
    if any(out.iterdir()):
        kind = read_record(out).kind if (out / RECORD_FILE).is_file() else None
        if kind is None and "weights" in Pipeline(out).state:
            kind = "vllm"
        if kind != "vllm":
            raise InputError(f"--out {out} already holds files that are not a vLLM export",
                             "pass an empty or new folder with --out")


@dataclass
class _Plan:
    """What the checks resolved, before anything is written."""

    name: str
    base: BaseModel
    adapters: list[Adapter]
    source: AdapterSource | None  # the merged export's adapter on its base; None under --lora
    lora: LoraPlan | None
    chat: tuple[dict[str, Path], Path]
    config: dict
    architecture: str
    layout: Layout | None
    quant: QuantPlan | None
    speculate: Speculation | None
    serve: serve.ServeConfig


def export_vllm(spec: VllmExportSpec) -> VllmExportResult:
    """Run the vLLM export described by `spec`; see the module docstring for the stages. One run at a
    time writes an output folder (its name is known once the base is resolved)."""
    with contextlib.ExitStack() as held:
        return _export_vllm(spec, held)


def _resolve(spec: VllmExportSpec) -> _Plan:
    """Load and check every input, the layout and what every --deploy engine needs."""
    loaded = [load_adapter(a, spec.allow_pickle) for a in spec.adapters]
    pickled = [a.path for a in loaded if a.pickled]
    if pickled and spec.lora:  # merged, --allow-pickle adapters are fine: the output is safetensors
        raise AdapterError(f"{pickled[0]} holds pickle weights (adapter_model.bin); served unmerged, vLLM would "
                           "unpickle them", "re-save the adapter as safetensors, or export it merged (drop --lora)")
    source: AdapterSource | None = None
    lora_plan: LoraPlan | None = None
    if spec.lora:
        base = check_shared_base(loaded, spec.base, "adapters served with --lora are served",
                                 "export this adapter merged (drop --lora)")
        check_base_weights(base, allow_pickle=False)  # unmerged, the base's own weights are what vLLM loads
    else:
        source = adapter_source(spec.adapters[0], spec.base, spec.allow_pickle, spec.merge_engine)
        base = source.base
    config = read_json(base.path / "config.json")
    _check_ctx(spec, config)  # before any progress line: a refused --ctx is the run's only line
    if source is not None:
        step(source.describe())
    architecture = (config.get("architectures") or ["?"])[0]
    name = spec.name or name_from_path(base.path)
    if spec.lora:
        lora_plan = plan_lora([(name_from_path(a.path), a, base) for a in loaded], architecture, spec.max_loras,
                              spec.max_cpu_loras)
        if any(a.name == name for a in lora_plan.adapters):
            raise InputError(f"adapter name {name!r} is also the base model's served name",
                             "pass --name with another name for the base")
        for line in lora_plan.lines():
            step(line)
    chat = chat_files(None if spec.lora else source.adapter, base)
    from ..chat.hf import load_hf_chat

    load_hf_chat(chat[1])  # no template to serve: refused here, before anything is written
    speculate = speculation(spec.speculative) if spec.speculative else None
    if speculate is not None and speculate.method == "draft":
        check_draft_vocabulary(speculate.draft, chat[0], config, name)
    layout = _layout(spec, config, base.path)
    if layout is not None:
        step("layout:\n  " + "\n  ".join(layout.lines))
    quant_plan = plan_quant(spec.quant, base.path, spec.group_size) if spec.quant else None
    serve_config = serve.ServeConfig(
        name=name, model=f"./{MODEL_DIR}", max_model_len=spec.ctx,
        dtype=quant_plan.format.serve_dtype if quant_plan and spec.dtype == "auto" else spec.dtype,
        quantization="compressed-tensors" if quant_plan else None,
        notes=quant_plan.serve_notes if quant_plan else (),
        max_num_seqs=spec.concurrency,
        tensor_parallel_size=layout.tensor_parallel_size if layout else 1,
        pipeline_parallel_size=layout.pipeline_parallel_size if layout else 1,
        nodes=-(-layout.gpus // (spec.gpus or 1)) if layout else 1, gpus_per_node=spec.gpus or 1,
        gpu_memory_utilization=spec.gpu_memory_utilization, port=spec.port, trust_remote_code=spec.trust_remote_code,
        lora_modules=tuple((a.name, f"./{ADAPTERS_DIR}/{a.name}") for a in lora_plan.adapters) if lora_plan else (),
        max_lora_rank=lora_plan.max_lora_rank if lora_plan else None,
        max_loras=lora_plan.max_loras if lora_plan else None,
        max_cpu_loras=lora_plan.max_cpu_loras if lora_plan else None,
        prefix_caching=spec.prefix_caching, speculative=speculative_config(speculate),
        structured_output_backend=spec.structured_output_backend,
        arithmetic=layout.lines if layout else ())
    deploy.check(spec.deploy, deploy.Deployment(serve_config, 0, 0, spec.lora_storage))
    return _Plan(name, base, loaded, source, lora_plan, chat, config, architecture, layout, quant_plan, speculate,
                 serve_config)


def _export_vllm(spec: VllmExportSpec, held: contextlib.ExitStack) -> VllmExportResult:
    plan = _resolve(spec)
    out = spec.out_dir(plan.name)
    draft = [plan.speculate.draft] if plan.speculate is not None and plan.speculate.draft is not None else []
    check_out(out, [*(a.path for a in plan.adapters), plan.base.path, *draft])
    held.enter_context(folder_lock(out, "localserve export"))
    _check_out(out)
    created = not out.exists()
    try:
        return _run_stages(spec, plan, out, draft)
    except BaseException:
        if created and out.is_dir() and not Pipeline(out).state:  # it made the folder and finished no stage
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_stages(spec: VllmExportSpec, plan: _Plan, out: Path, draft: list[Path]) -> VllmExportResult:
    pipe = Pipeline(out)
    versions = tool_versions(("localserve", "torch", "transformers", "peft", "safetensors"))
    if plan.source is not None:
        inputs = plan.source.hashes()
        merge_key = plan.source.merge_key(versions)
    else:
        inputs = {"base": sha256_tree(plan.base.path)}
        merge_key = content_key("vllm base", inputs["base"], versions["safetensors"])
    adapter_hashes = ({f"adapter:{a.path.name}": sha256_tree(a.path) for a in plan.adapters} if plan.lora
                      else {f"adapter:{plan.source.adapter.path.name}": inputs["adapter"]})
    quant_key = None if plan.quant is None else (
        plan.quant.format.name, plan.quant.group.size if plan.quant.group else None,
        sha256_file(spec.calibration) if spec.calibration else None, spec.calibration_samples,
        spec.calibration_seq_len, spec.measure_quality, spec.quality_tokens)
    weights_key = content_key("vllm weights", merge_key, spec.shard_bytes, spec.template_family,
                              {n: sha256_file(p) for n, p in sorted(plan.chat[0].items())}, quant_key)
    model = out / MODEL_DIR
    pipe.stage("weights", weights_key, [model], lambda: _weights(spec, plan, out),
               "merging the adapter into the base tensor by tensor, in fp32, as the shards are written"
               if plan.source is not None and spec.merge_engine == "stream" else
               "merging the adapter into the base (peft, fp32)" if plan.source is not None else
               f"copying the base {plan.base.path.name} unmerged")
    stages = ["weights"]
    if plan.lora is not None:
        names = [(a.name, adapter_hashes[f"adapter:{a.adapter.path.name}"]) for a in plan.lora.adapters]
        pipe.stage("adapters", content_key("vllm adapters", names), [out / ADAPTERS_DIR],
                   lambda: _copy_adapters(plan.lora, out / ADAPTERS_DIR),
                   f"copying {len(plan.lora.adapters)} adapter(s) unmerged")
        stages.append("adapters")
    if draft:
        pipe.stage("draft", content_key("vllm draft", sha256_tree(draft[0])), [out / DRAFT_DIR],
                   lambda: _copy_draft(draft[0], out / DRAFT_DIR), f"copying the draft model {draft[0]} to {DRAFT_DIR}/")
        stages.append("draft")
    if not pipe.is_fresh("weights"):
        weights = sum(p.stat().st_size for p in plan.base.path.glob("*.safetensors"))
        # the stream writes the merged shards once; peft's merge keeps a merged copy beside them first
        copies = 3 if plan.source is not None and spec.merge_engine == "peft" else 1
        draft_bytes = sum(p.stat().st_size for d in draft for p in _draft_files(d))
        require_free_space(out.parent, weights * copies + draft_bytes + (1 << 26), "the vLLM export")
    (out / RECORD_FILE).unlink(missing_ok=True)  # a re-run is not complete until its own record is written
    for name in stages:
        pipe.need(name)
    for stale, wanted in ((ADAPTERS_DIR, plan.lora is not None), (DRAFT_DIR, bool(draft))):
        if not wanted and (out / stale).exists():  # left by an earlier export into this folder
            shutil.rmtree(out / stale)
            pipe.forget(stale)
    facts = pipe.info("weights")
    eot_ids = tuple(facts["end_of_turn_ids"])
    quantization = _quant_result(facts.get("quantization"))
    model_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    export_bytes = sum(p.stat().st_size for d in (model, out / ADAPTERS_DIR, out / DRAFT_DIR) if d.is_dir()
                       for p in d.rglob("*") if p.is_file())
    deployment = deploy.Deployment(plan.serve, model_bytes, export_bytes, spec.lora_storage)
    rendered = {**serve.render(plan.serve, deployment), **deploy.render(spec.deploy, deployment)}
    pipe.stage("serve", content_key("vllm serve", rendered), [out / p for p in rendered],
               lambda: _write_serve_files(rendered, out), "writing the serve files"
               + (f" and deploy/ for {', '.join(spec.deploy)}" if spec.deploy else ""))
    pipe.need("serve")
    files = [out / p for p in rendered if not p.startswith(f"{deploy.DEPLOY_DIR}/")]
    deploy_files = [out / p for p in rendered if p.startswith(f"{deploy.DEPLOY_DIR}/")]

    record = ExportRecord(
        kind="vllm", name=plan.name, spec=spec.to_json(), localserve_version=versions.pop("localserve"),
        created_at=now(),
        base=BaseRecord(ref=plan.base.ref, path=str(plan.base.path), source=plan.base.source, sha256=inputs["base"],
                        architecture=plan.architecture),
        adapters=tuple(AdapterRecord(name=n, path=str(a.path.resolve()), sha256=adapter_hashes[f"adapter:{a.path.name}"])
                       for n, a in zip(_served_names(plan.adapters, plan.lora), plan.adapters)),
        artifacts=tuple(Artifact(p.relative_to(out).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
                        for p in sorted(model.glob("*.safetensors"))),
        chat={"template_from": str(plan.chat[1]), "files": {n: str(p) for n, p in plan.chat[0].items()},
              "end_of_turn_ids": list(eot_ids)},
        tools=versions | (facts.get("quantization_tools") or {}),
        stages=tuple(r.to_json() for r in pipe.records),
        sections={
            "merged": plan.lora is None,
            "quantization": facts.get("quantization"),
            "layout": ({"tensor_parallel_size": plan.layout.tensor_parallel_size,
                        "pipeline_parallel_size": plan.layout.pipeline_parallel_size, "nodes": plan.serve.nodes,
                        "arithmetic": list(plan.layout.lines)} if plan.layout else None),
            "lora": ({"max_lora_rank": plan.lora.max_lora_rank, "max_loras": plan.lora.max_loras,
                      "max_cpu_loras": plan.lora.max_cpu_loras,
                      "ranks": {a.name: a.rank for a in plan.lora.adapters},
                      "modules": {a.name: list(a.modules) for a in plan.lora.adapters}} if plan.lora else None),
            "serve": {"options": plan.serve.options(), "environment": plan.serve.environment,
                      "files": [p.relative_to(out).as_posix() for p in files]},
            "deploy": deploy_record(spec.deploy, deployment, out, deploy_files),
            "features": serving_features(spec, plan.speculate, plan.serve)})
    write_record(out, record)
    step(f"wrote {MODEL_DIR}/ ({human_bytes(model_bytes)}), {serve.CONFIG_FILE} and serve files to {out}")
    return VllmExportResult(
        out_dir=out, name=plan.name, model_dir=model,
        adapters=tuple((a.name, out / ADAPTERS_DIR / a.name) for a in plan.lora.adapters) if plan.lora else (),
        serve_files=tuple(files), config_file=out / serve.CONFIG_FILE,
        lineage_path=out / RECORD_FILE, end_of_turn_ids=eot_ids, layout=plan.layout, lora=plan.lora,
        model_bytes=model_bytes, quantization=quantization, record=record, features=plan.serve.features,
        deploy_files=tuple(deploy_files), stages=tuple(r.to_json() for r in pipe.records))


def _weights(spec: VllmExportSpec, plan: _Plan, out: Path) -> dict:
    """The weights stage: model/ written whole (merged, or the base as stored), finished, quantized."""
    quantization = None
    with atomic_dir(out / MODEL_DIR) as tmp:
        if plan.source is not None:
            plan.source.merge(tmp, spec.trust_remote_code, spec.shard_bytes)
            template_source = plan.chat[1]
        else:
            tmp.mkdir(parents=True, exist_ok=True)
            write_shards(as_stored(plan.base.path), tmp, spec.shard_bytes, f"write {MODEL_DIR} shards")
            shutil.copyfile(plan.base.path / "config.json", tmp / "config.json")
            copy_chat_files(None, plan.base.path, tmp)
            template_source = plan.base.path
        eot_ids = _finish_model_folder(tmp, plan.config, template_source, spec.template_family)
        if plan.quant is not None:
            work = out / ".localserve" / "work"
            work.mkdir(parents=True, exist_ok=True)
            quantization = quantize_folder(plan.quant, tmp, work, CalibrationOptions(
                spec.calibration, spec.calibration_samples, spec.calibration_seq_len),
                _quality_of(plan.quant.format.name, spec.quality_tokens, out) if spec.measure_quality else None)
    return {"end_of_turn_ids": list(eot_ids),
            "quantization": quantization.to_json() if quantization else None,
            "quantization_tools": quantization.tools if quantization else None}


def _quant_result(facts: dict | None) -> QuantResult | None:
    """The quantize step's result as the weights stage recorded it (a skipped stage keeps no quality table)."""
    if not facts:
        return None
    return QuantResult(facts["format"], facts["group_size"], facts["group_reason"], facts["calibration"],
                       facts["seconds"], None, {})


def _copy_adapters(lora: LoraPlan, dest: Path) -> dict:
    with atomic_dir(dest) as tmp:
        for a in lora.adapters:
            (tmp / a.name).mkdir(parents=True)
            for file in ADAPTER_FILES + ("probe.json", "README.md"):
                if (a.adapter.path / file).is_file():
                    shutil.copyfile(a.adapter.path / file, tmp / a.name / file)
    return {"adapters": [a.name for a in lora.adapters]}


def _copy_draft(draft: Path, dest: Path) -> dict:
    with atomic_dir(dest) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        for source in _draft_files(draft):
            shutil.copyfile(source, tmp / source.name)
    return {"from": str(draft.resolve())}


def _write_serve_files(rendered: dict[str, str], out: Path) -> dict:
    from ..fsutil import write_text

    for folder in SERVE_FOLDERS:  # an earlier run's engines or layout may have written other files here
        shutil.rmtree(out / folder, ignore_errors=True)
    (out / serve.COMPOSE_FILE).unlink(missing_ok=True)
    for name, text in rendered.items():
        path = write_text(out / name, text)
        if name.endswith(".sh"):
            path.chmod(0o755)
    return {"files": sorted(rendered)}


def deploy_record(names: tuple[str, ...], deployment: deploy.Deployment, out: Path, files: list[Path]) -> dict | None:
    """The record's account of the --deploy engines: what each wrote, and the sizes they request."""
    if not names:
        return None
    return {"engines": {n: {"shape": deploy.ENGINES[n].shape,
                            "files": [p.relative_to(out).as_posix() for p in files
                                      if p.relative_to(out).parts[1] == n]} for n in names},
            "per_pod": {"gpus": deployment.gpus_per_pod, "memory": deployment.memory_per_pod,
                        "cpus": deployment.cpus_per_pod},
            "storage": deployment.storage, "claim": deployment.claim,
            "lora_storage": deployment.lora_storage}


def _quality_of(format_name: str, tokens: int, chart_dir: Path):
    """How the quantize stage measures its result: the quality table of the quantized folder against the
    merged model as it was (on `tokens` of the shipped corpus), charted to chart_dir/quality.png."""
    def measure_folder(quantized: Path, reference: Path):
        from ..quality import measure

        table = measure([quantized], reference=reference, max_tokens=tokens)
        # the reference is model/ being written (a temporary name until the stage ends)
        rows = tuple(dataclasses.replace(r, file=MODEL_DIR, path=f"./{MODEL_DIR}") for r in table.rows)
        quality = dataclasses.replace(table, rows=rows,
                                      reference={**table.reference, "path": "the merged model before quantizing"})
        quality.write_chart(chart_dir / "quality.png", title=f"{format_name}: size against KL")
        step("quality against the merged model:\n" + quality.format())
        return quality

    return measure_folder


def _served_names(loaded: list[Adapter], plan: LoraPlan | None) -> list[str | None]:
    return [a.name for a in plan.adapters] if plan else [None] * len(loaded)


# --- serving features: prefix caching, speculative decoding, structured outputs -----------------------

def speculative_config(speculate: Speculation | None) -> tuple[tuple[str, object], ...] | None:
    """vLLM's speculative_config for `speculate`, with a draft model at its place in the export."""
    if speculate is None:
        return None
    if speculate.method == "ngram":
        return (("method", "ngram"), ("num_speculative_tokens", speculate.tokens),
                ("prompt_lookup_min", NGRAM_LOOKUP[0]), ("prompt_lookup_max", NGRAM_LOOKUP[1]))
    return (("method", "draft_model"), ("model", f"./{DRAFT_DIR}"), ("num_speculative_tokens", speculate.tokens))


def serving_features(spec: VllmExportSpec, speculate: Speculation | None, config: serve.ServeConfig) -> dict:
    """The record's account of the serving features: what was asked, what vLLM would do unasked, what is written."""
    return {
        "prefix_caching": {"enabled": spec.prefix_caching, "vllm_default": serve.VLLM_PREFIX_CACHING_DEFAULT},
        "speculative": None if speculate is None else {
            "method": speculate.method, "num_speculative_tokens": speculate.tokens,
            "draft": None if speculate.draft is None else {"from": str(speculate.draft.resolve()),
                                                           "sha256": sha256_tree(speculate.draft),
                                                           "path": f"./{DRAFT_DIR}"},
            "speculative_config": dict(config.speculative or ())},
        "structured_output_backend": spec.structured_output_backend,
        "lines": list(config.features)}


# What a draft folder contributes to the export: weights as safetensors, config, tokenizer.
_DRAFT_NAMES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def _draft_files(draft: Path) -> list[Path]:
    from ..models.lora import TOKENIZER_FILES

    files = sorted(p for p in draft.iterdir() if p.is_file() and (
        p.suffix == ".safetensors" or p.name in _DRAFT_NAMES or p.name in TOKENIZER_FILES))
    if not any(p.suffix == ".safetensors" for p in files):
        raise InputError(f"the draft model {draft} has no *.safetensors weights",
                         "save it with safe_serialization=True (pickle weights are not copied into an export)")
    return files


def check_draft_vocabulary(draft: Path, served_tokenizer: dict[str, Path], served_config: dict, name: str) -> None:
    """Refuse, in one line, a draft model whose tokens are not the served model's.

    vLLM verifies the draft's proposals token id by token id, so the two must agree on every id:
    the config's vocab_size (vLLM's own check, at start-up), the tokenizer's vocabulary and its
    special tokens (which vLLM does not check: a mismatch there serves wrong text, not an error).
    """
    import tempfile

    from transformers import AutoTokenizer

    draft_config = read_json(draft / "config.json")
    hint = "a draft model must share the served model's tokenizer: a smaller model of the same family"
    ours, theirs = served_config.get("vocab_size"), draft_config.get("vocab_size")
    if ours != theirs:
        raise InputError(f"--speculative draft:{draft}: its vocab_size is {theirs}, {name}'s is {ours}", hint)
    with tempfile.TemporaryDirectory(prefix="localserve-tokenizer-") as scratch:
        for file, source in served_tokenizer.items():
            (Path(scratch) / file).symlink_to(source.resolve())
        (Path(scratch) / "config.json").write_text(json.dumps(served_config), encoding="utf-8")  # the model type
        try:
            served = AutoTokenizer.from_pretrained(scratch, trust_remote_code=False)
            drafted = AutoTokenizer.from_pretrained(str(draft), trust_remote_code=False)
        except (OSError, ValueError) as e:
            why = " ".join(str(e).split())[:200]
            raise InputError(f"--speculative draft:{draft}: its tokenizer does not load ({why})", hint) from None
    difference = vocabulary_difference(served, drafted)
    if difference:
        raise InputError(f"--speculative draft:{draft}: its tokenizer differs from {name}'s: {difference}", hint)


def vocabulary_difference(served, drafted) -> str | None:
    """The first way two tokenizers disagree on token ids, in words; None when they agree."""
    a, b = served.get_vocab(), drafted.get_vocab()
    if len(a) != len(b):
        return f"{len(b)} tokens, not {len(a)}"
    for token, token_id in sorted(a.items(), key=lambda item: item[1]):
        if b.get(token) != token_id:
            found = "missing" if token not in b else f"id {b[token]}"
            return f"token {token!r} is id {token_id} in the served model, {found} in the draft"
    for role in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(served, role) != getattr(drafted, role):
            return f"{role} is {getattr(drafted, role)!r}, not {getattr(served, role)!r}"
    if set(served.all_special_tokens) != set(drafted.all_special_tokens):
        extra = sorted(set(served.all_special_tokens) ^ set(drafted.all_special_tokens))
        return f"special tokens differ: {', '.join(map(repr, extra[:3]))}"
    return None
