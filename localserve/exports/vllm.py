"""`export --target vllm`: a Hugging Face folder vLLM serves as is, plus its serve configuration.

    VllmExportSpec -> load adapters, resolve the base -> check (LoRA rules, or merge compatibility)
                   -> layout (plan/layout) -> merge (peft) | copy base + adapters
                   -> bounded safetensors shards, tokenizer, exact chat template,
                      generation_config.json with every end-of-turn id
                   -> vllm-config.yaml, launch.sh, docker-compose.yml, k8s/ -> localserve.json

Everything is checked before anything is written; the export folder is built beside its
destination and renamed into place whole.
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
from ..gpuquant.export import CalibrationOptions, QuantResult, plan_quant, quantize_folder
from ..lineage import (RECORD_FILE, AdapterRecord, Artifact, BaseRecord, ExportRecord, now, read_record, tool_versions,
                       write_record)
from ..models.folders import MODEL_DIR
from ..models.lora import describe, tokenizer_files, tokenizer_sources
from ..models.merge import check_compatibility, merge_adapter, merged_tensors, plan_merge
from ..models.tensors import as_stored, write_shards
from ..models.resolve import Adapter, BaseModel, check_base_weights, load_adapter, read_json, resolve_base
from ..plan.layout import Layout, parallel_layout
from ..progress import step
from ..spec import name_from_path
from ..vllm import serve
from ..vllm.lora import LoraPlan, plan_lora
from .checks import check_out
from .spec import VLLM_DTYPE_BYTES, Speculation, VllmExportSpec, speculation

ADAPTERS_DIR = "adapters"
DRAFT_DIR = "draft"  # the --speculative draft model, copied into the export so the serve files stay relative
# The n-grams the ngram proposer looks up in the prompt: two tokens already find the repeats of
# templated or quoted text, four bound the search.
NGRAM_LOOKUP = (2, 4)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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
                "features": list(self.features)}


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


def _write_model_folder(tensors: list, config_from: Path, chat: tuple[dict[str, Path], Path],
                        generation_from: Path, dest: Path, template_family: str | None,
                        shard_bytes: int) -> tuple[int, ...]:
    """Shards of `tensors` (models.tensors.PlannedTensor), config, tokenizer, template and
    generation_config.json; returns the end-of-turn ids."""
    from ..chat.hf import load_hf_chat

    files, template_source = chat
    dest.mkdir(parents=True)
    write_shards(tensors, dest, shard_bytes, f"write {dest.name} shards")
    shutil.copyfile(config_from / "config.json", dest / "config.json")
    for name, source in files.items():
        shutil.copyfile(source, dest / name)
    gen_file = generation_from / "generation_config.json"
    generation = json.loads(gen_file.read_text(encoding="utf-8")) if gen_file.is_file() else {}
    if "eos_token_id" not in generation and isinstance(_read(config_from / "config.json").get("eos_token_id"), (int, list)):
        generation["eos_token_id"] = _read(config_from / "config.json")["eos_token_id"]
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    eot_ids = end_of_turn_ids(dest, template_family)
    generation["eos_token_id"] = list(eot_ids)
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    if load_hf_chat(dest).template != load_hf_chat(template_source).template:
        raise AssertionError(f"the chat template in {dest} differs from {template_source}'s")
    step(f"end-of-turn ids in generation_config.json: {list(eot_ids)}")
    return eot_ids


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


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
    """Refuse to replace a folder that is not an earlier vLLM export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} is a file", "pass a folder path")
    if any(out.iterdir()):
        kind = read_record(out).kind if (out / RECORD_FILE).is_file() else None
        if kind != "vllm":
            raise InputError(f"--out {out} already holds files that are not a vLLM export",
                             "pass an empty or new folder with --out")


def export_vllm(spec: VllmExportSpec) -> VllmExportResult:
    """Run the vLLM export described by `spec`; see the module docstring for the stages. One run at a
    time writes an output folder (its name is known once the base is resolved)."""
    with contextlib.ExitStack() as held:
        return _export_vllm(spec, held)


def _export_vllm(spec: VllmExportSpec, held: contextlib.ExitStack) -> VllmExportResult:

    # --- resolve and check everything before writing anything -----------------------------
    loaded = [load_adapter(a, spec.allow_pickle) for a in spec.adapters]
    pickled = [a.path for a in loaded if a.pickled]
    if pickled and spec.lora:  # merged, --allow-pickle adapters are fine: the output is safetensors
        raise AdapterError(f"{pickled[0]} holds pickle weights (adapter_model.bin); served unmerged, vLLM would "
                           "unpickle them", "re-save the adapter as safetensors, or export it merged (drop --lora)")
    bases = [resolve_base(a, spec.base) for a in loaded]
    base = bases[0]
    # The shipped folder holds safetensors only; unmerged, the base's own weights are what vLLM loads.
    check_base_weights(base, allow_pickle=spec.allow_pickle and not spec.lora)
    config = read_json(base.path / "config.json")
    _check_ctx(spec, config)
    architecture = (config.get("architectures") or ["?"])[0]
    name = spec.name or name_from_path(base.path)
    lora_plan: LoraPlan | None = None
    if spec.lora:
        names = [(name_from_path(a.path), a, b) for a, b in zip(loaded, bases)]
        lora_plan = plan_lora(names, architecture, spec.max_loras, spec.max_cpu_loras)
        if any(a.name == name for a in lora_plan.adapters):
            raise InputError(f"adapter name {name!r} is also the base model's served name",
                             "pass --name with another name for the base")
        _check_shared_chat(loaded, base)
        chat = chat_files(None, base)
        for line in lora_plan.lines():
            step(line)
    else:
        n_modules = check_compatibility(loaded[0], base)
        step(f"base: {base.path} ({base.source}); adapter: {loaded[0].path} ({n_modules} LoRA modules)")
        chat = chat_files(loaded[0], base)
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
    out = spec.out_dir(name)
    draft = [speculate.draft] if speculate is not None and speculate.draft is not None else []
    check_out(out, [*(a.path for a in loaded), base.path, *draft])
    held.enter_context(folder_lock(out, "localserve export"))
    _check_out(out)
    weights = sum(p.stat().st_size for p in base.path.glob("*.safetensors"))
    # the stream writes the merged shards once; peft's merge keeps a merged copy beside them first
    merge_plan = plan_merge(loaded, base) if not spec.lora and spec.merge_engine == "stream" else None
    copies = 3 if not spec.lora and spec.merge_engine == "peft" else 1
    draft_bytes = sum(p.stat().st_size for d in draft for p in _draft_files(d))
    require_free_space(out.parent, weights * copies + draft_bytes + (1 << 26), "the vLLM export")

    # --- write: the whole folder is built beside `out` and renamed into place --------------
    inputs = {"base": sha256_tree(base.path), **{f"adapter:{a.path.name}": sha256_tree(a.path) for a in loaded}}
    quantization = None
    with atomic_dir(out) as tmp:
        model = tmp / MODEL_DIR
        if lora_plan is None:
            own = loaded[0].path / "generation_config.json"
            generation_from = own.parent if own.is_file() else base.path
            if spec.merge_engine == "peft":
                merged = tmp / ".merged"
                step("merging the adapter into the base (peft, fp32)")
                merge_adapter(loaded[0], base, merged, spec.trust_remote_code)
                eot_ids = _write_model_folder(as_stored(merged), merged, chat, generation_from, model,
                                              spec.template_family, spec.shard_bytes)
                shutil.rmtree(merged)
            else:
                step("merging the adapter into the base tensor by tensor, in fp32, as the shards are written")
                eot_ids = _write_model_folder(merged_tensors(merge_plan, base.path), base.path, chat,
                                              generation_from, model, spec.template_family, spec.shard_bytes)
            if quant_plan is not None:
                quantization = quantize_folder(quant_plan, model, tmp, CalibrationOptions(
                    spec.calibration, spec.calibration_samples, spec.calibration_seq_len),
                    _quality_of(quant_plan.format.name, spec.quality_tokens, tmp) if spec.measure_quality else None)
        else:
            step(f"copying the base {base.path.name} and {len(lora_plan.adapters)} adapter(s) unmerged")
            eot_ids = _write_model_folder(as_stored(base.path), base.path, chat, base.path, model, spec.template_family,
                                          spec.shard_bytes)
            for a in lora_plan.adapters:
                dest = tmp / ADAPTERS_DIR / a.name
                dest.mkdir(parents=True)
                for file in ADAPTER_FILES + ("probe.json", "README.md"):
                    if (a.adapter.path / file).is_file():
                        shutil.copyfile(a.adapter.path / file, dest / file)
        if speculate is not None and speculate.draft is not None:
            step(f"copying the draft model {speculate.draft} to {DRAFT_DIR}/")
            (tmp / DRAFT_DIR).mkdir()
            for source in _draft_files(speculate.draft):
                shutil.copyfile(source, tmp / DRAFT_DIR / source.name)
        files = serve.write(serve_config, tmp)
        model_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
        versions = tool_versions(("localserve", "torch", "transformers", "peft", "safetensors"))
        record = ExportRecord(
            kind="vllm", name=name, spec=spec.to_json(), localserve_version=versions.pop("localserve"),
            created_at=now(),
            base=BaseRecord(ref=base.ref, path=str(base.path), source=base.source, sha256=inputs["base"],
                            architecture=architecture),
            adapters=tuple(AdapterRecord(name=n, path=str(a.path.resolve()), sha256=inputs[f"adapter:{a.path.name}"])
                           for n, a in zip(_served_names(loaded, lora_plan), loaded)),
            artifacts=tuple(Artifact(p.relative_to(tmp).as_posix(), size=p.stat().st_size, sha256=sha256_file(p))
                            for p in sorted(model.glob("*.safetensors"))),
            chat={"template_from": str(chat[1]), "files": {n: str(p) for n, p in chat[0].items()},
                  "end_of_turn_ids": list(eot_ids)},
            tools=versions | (quantization.tools if quantization else {}),
            sections={
                "merged": lora_plan is None,
                "quantization": quantization.to_json() if quantization else None,
                "layout": ({"tensor_parallel_size": layout.tensor_parallel_size,
                            "pipeline_parallel_size": layout.pipeline_parallel_size, "nodes": serve_config.nodes,
                            "arithmetic": list(layout.lines)} if layout else None),
                "lora": ({"max_lora_rank": lora_plan.max_lora_rank, "max_loras": lora_plan.max_loras,
                          "max_cpu_loras": lora_plan.max_cpu_loras,
                          "ranks": {a.name: a.rank for a in lora_plan.adapters},
                          "modules": {a.name: list(a.modules) for a in lora_plan.adapters}} if lora_plan else None),
                "serve": {"options": serve_config.options(), "environment": serve_config.environment,
                          "files": [p.relative_to(tmp).as_posix() for p in files]},
                "features": serving_features(spec, speculate, serve_config)})
        write_record(tmp, record)
    step(f"wrote {MODEL_DIR}/ ({human_bytes(model_bytes)}), {serve.CONFIG_FILE} and serve files to {out}")
    return VllmExportResult(
        out_dir=out, name=name, model_dir=out / MODEL_DIR,
        adapters=tuple((a.name, out / ADAPTERS_DIR / a.name) for a in lora_plan.adapters) if lora_plan else (),
        serve_files=tuple(out / p.relative_to(tmp) for p in files), config_file=out / serve.CONFIG_FILE,
        lineage_path=out / RECORD_FILE, end_of_turn_ids=eot_ids, layout=layout, lora=lora_plan,
        model_bytes=model_bytes, quantization=quantization, record=record, features=serve_config.features)


def _quality_of(format_name: str, tokens: int, work: Path):
    """How the quantize stage measures its result: the quality table of the quantized folder against the
    merged model as it was (on `tokens` of the shipped corpus), charted to work/quality.png."""
    def measure_folder(quantized: Path, reference: Path):
        from ..quality import measure

        table = measure([quantized], reference=reference, max_tokens=tokens)
        rows = tuple(dataclasses.replace(r, file=reference.name, path=f"./{reference.name}") for r in table.rows)
        quality = dataclasses.replace(table, rows=rows,
                                      reference={**table.reference, "path": "the merged model before quantizing"})
        quality.write_chart(work / "quality.png", title=f"{format_name}: size against KL")
        step("quality against the merged model:\n" + quality.format())
        return quality

    return measure_folder


def _served_names(loaded: list[Adapter], plan: LoraPlan | None) -> list[str | None]:
    return [a.name for a in plan.adapters] if plan else [None] * len(loaded)


def _check_shared_chat(adapters: list[Adapter], base: BaseModel) -> None:
    """Unmerged adapters share the base's tokenizer: an adapter that brings its own cannot be served so."""
    for a in adapters:
        differing = describe(a).tokenizer.differing_from(base.path)
        if differing:
            raise AdapterError(f"{a.path} brings its own {', '.join(differing)}, but adapters served with --lora share "
                               "the base's tokenizer and chat template", "export this adapter merged (drop --lora)")


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
