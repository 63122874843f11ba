"""Targets: the same suite on any stage of a fine-tune, each through the runtime that really serves it. This
module resolves what a spec names; the engines live with their runtimes (localserve/runtimes/).

    with open_target("exports/demo") as target:          # its first GGUF, llama.cpp in process
        answer = target.answer([{"role": "user", "content": "What is the codename?"}])

A spec is resolved in this order:

    ollama:NAME             a model on a running Ollama (/api/chat)
    openai:URL#MODEL        an OpenAI-compatible server such as vLLM (/v1/chat/completions, streamed);
                            vllm:URL#MODEL the same
    llama-server:URL[#MODEL] llama-server (`localserve serve`: MODEL an export or a tenant), the same API;
                            without MODEL, the one model the server lists
    lmstudio:URL#MODEL      LM Studio's server (http://127.0.0.1:1234), the same API
    jan:URL#MODEL           Jan's local API server (http://127.0.0.1:1337), the same API
    store:DIR#NAME:TAG      a model in an Ollama model folder, without a server: its GGUF in llama.cpp,
                            prompted through its stored Go TEMPLATE, stopping on its stored stops
    FILE.gguf               llama.cpp in process, with the GGUF's own chat template
    an export folder        (localserve.json) its first GGUF; a vLLM export's model/ folder (with its
                            first adapter when it serves them unmerged); a merge's folder; for a tenants
                            export, FOLDER#TENANT: the shared base GGUF with that tenant's GGUF LoRA
    an adapter folder       (adapter_config.json) the adapter on its base, unmerged: transformers + peft
    a model folder          (config.json) a merged or any Hugging Face model: transformers

Every engine decodes greedily (temperature 0) with a fixed seed, so two runs give the same answers.
`answer(messages, json_schema=SCHEMA)` asks for an answer constrained to a JSON Schema, through each
engine's own mechanism: vLLM's (OpenAI) `response_format` json_schema, Ollama's `format`, a llama.cpp
grammar made from the schema; transformers has none, and says so in the answer's error.
An engine failing on one case gives an `Answer` with its `error`; a target that cannot be opened at
all raises a LocalserveError (an InputError naming what is wrong when the spec is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fsutil import sha256_file, sha256_tree
from ..lineage import RECORD_FILE, ExportRecord, find_record, read_record
from ..runtimes.chat import Target, TargetUnreachable
from ..runtimes.llamacpp import GgufTarget
from ..runtimes.ollama import OllamaTarget, StoreTarget
from ..runtimes.openai import SERVERS, OpenAITarget
from ..runtimes.transformers import TransformersTarget

FORMS = ("ollama:NAME", "openai:URL#MODEL", "llama-server:URL[#MODEL]", "lmstudio:URL#MODEL", "jan:URL#MODEL",
         "store:DIR#NAME:TAG", "a .gguf file", f"an export folder ({RECORD_FILE})",
         "an adapter folder (adapter_config.json)", "a Hugging Face model folder (config.json)")
FORMS_HINT = "a target is one of: " + ", ".join(FORMS)

# Where a vLLM export that serves its adapters unmerged keeps them (ADAPTERS_DIR of localserve/exports/vllm.py,
# which this layer may not import).
VLLM_ADAPTERS_DIR = "adapters"


# --- opening ----------------------------------------------------------------------------------------

def open_target(spec: str, *, seed: int = 0, max_tokens: int = 128, ollama_host: str | None = None) -> Target:
    """The target `spec` names (see the module docstring for the forms), ready to answer."""
    spec = (spec or "").strip()
    if not spec:
        raise InputError("empty target", FORMS_HINT)
    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, not {max_tokens}")
    if spec.startswith("ollama:"):
        return OllamaTarget(spec, spec.removeprefix("ollama:"), seed, max_tokens, ollama_host)
    runtime, colon, rest = spec.partition(":")
    if colon and runtime in SERVERS:
        return OpenAITarget(spec, rest, seed, max_tokens, runtime=runtime)
    if spec.startswith("store:"):
        return StoreTarget(spec, spec.removeprefix("store:"), seed, max_tokens)
    path = Path(spec).expanduser()
    tenant = None
    if not path.exists() and "#" in spec:
        folder, _, tenant = spec.rpartition("#")
        path = Path(folder).expanduser()
    if not path.exists():
        hint = FORMS_HINT
        if ":" in spec and "/" not in spec:
            hint = f"for a model on Ollama write ollama:{spec}; " + hint
        raise InputError(f"target {spec!r}: no such file or folder", hint)
    if tenant is not None and not (path / RECORD_FILE).is_file():
        raise InputError(f"target {spec!r}: FOLDER#TENANT names a tenant of a tenants export, and {path} is none",
                         FORMS_HINT)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"target {spec!r} is a file but not a .gguf", FORMS_HINT)
        return _gguf_file_target(spec, path, seed, max_tokens)
    if (path / RECORD_FILE).is_file():
        return _export_target(spec, path, tenant, seed, max_tokens)
    if (path / "adapter_config.json").is_file():
        return _adapter_target(spec, path, None, seed, max_tokens)
    if (path / "config.json").is_file():
        return TransformersTarget(spec, path, seed, max_tokens)
    raise InputError(f"target {spec!r} is a folder with no {RECORD_FILE}, adapter_config.json or config.json",
                     FORMS_HINT)


def _gguf_file_target(spec: str, path: Path, seed: int, max_tokens: int) -> "GgufTarget":
    kind = _gguf_type(path)
    if kind == "adapter":
        raise InputError(f"target {spec!r} is a GGUF LoRA adapter, not a model",
                         "evaluate the export folder it belongs to (FOLDER#TENANT for a tenants export), "
                         "or the model on Ollama")
    found = find_record(path)
    info: dict[str, Any] = {"file": str(path.resolve())}
    known = None
    if found is not None:
        folder, record = found
        info["export"] = {"folder": str(folder.resolve()), "name": record.name, "kind": record.kind}
        known = next((a for a in record.artifacts if a.file == path.name), None)
        if known is not None:
            info["quant"] = known.quant
    info["sha256"] = _known_sha256(path, known.sha256 if known else None, known.size if known else None)
    return GgufTarget(spec, path, seed, max_tokens, info)


def _gguf_type(path: Path) -> str | None:
    """general.type of a GGUF ("model", "adapter"), None when the header does not say."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the gguf package raises ValueError, struct and index errors on files that are not GGUF
        raise InputError(f"{path} is not a readable GGUF file ({e})",
                         "point at a GGUF written by `localserve export` or llama.cpp") from None
    field = reader.fields.get("general.type")
    return field.contents() if field is not None and field.data else None


def _known_sha256(path: Path, recorded: str | None, recorded_size: int | None) -> str:
    """The export record's sha256 while the file still has the recorded size; else hashed now."""
    if recorded and recorded_size == path.stat().st_size:
        return recorded
    return sha256_file(path)


def _export_target(spec: str, folder: Path, tenant: str | None, seed: int, max_tokens: int) -> Target:
    record = read_record(folder)
    info = {"export": {"folder": str(folder.resolve()), "name": record.name, "kind": record.kind}}
    if tenant is not None and record.kind != "tenants":
        raise InputError(f"target {spec!r}: {folder} is a {record.kind} export, which has no tenants",
                         f"name the folder alone: {folder}")
    if record.kind in ("gguf", "ollama-store"):
        artifact = next((a for a in record.artifacts if a.file.lower().endswith(".gguf")), None)
        if artifact is None:
            raise InputError(f"the {record.kind} export {folder} lists no GGUF artifact", "re-run `localserve export`")
        gguf = _artifact_path(folder, artifact.file)
        info.update(file=str(gguf.resolve()), quant=artifact.quant,
                    sha256=_known_sha256(gguf, artifact.sha256, artifact.size))
        return GgufTarget(spec, gguf, seed, max_tokens, info)
    if record.kind == "tenants":
        return _tenant_target(spec, folder, record, tenant, seed, max_tokens, info)
    if record.kind == "vllm":
        from ..models.folders import MODEL_DIR

        model = folder / MODEL_DIR
        if not (model / "config.json").is_file():
            raise InputError(f"the vLLM export {folder} has no {MODEL_DIR}/config.json", "re-run `localserve export`")
        if record.sections.get("merged", True) or not record.adapters:
            return TransformersTarget(spec, model, seed, max_tokens, info)
        # served unmerged: the base in model/, each adapter in adapters/NAME; the first is the fine-tune
        adapter = folder / VLLM_ADAPTERS_DIR / (record.adapters[0].name or "")
        return _adapter_target(spec, adapter, model, seed, max_tokens, info)
    if record.kind == "merge":
        return TransformersTarget(spec, folder, seed, max_tokens, info)
    raise InputError(f"target {spec!r}: a {record.kind} export cannot be evaluated", FORMS_HINT)


def _artifact_path(folder: Path, file: str) -> Path:
    path = folder / file
    if not path.is_file():
        raise InputError(f"{path} is listed in {folder / RECORD_FILE} but missing",
                         "re-run `localserve export`, or restore the file")
    return path


def _tenant_target(spec: str, folder: Path, record: ExportRecord, tenant: str | None, seed: int, max_tokens: int,
                   info: dict) -> "GgufTarget":
    names = [t.tenant for t in record.tenants]
    if tenant is None and len(names) == 1:
        tenant = names[0]
    if tenant is None:
        raise InputError(f"target {spec!r}: the tenants export serves {len(names)} adapters ({', '.join(names)})",
                         f"name one: {folder}#TENANT")
    chosen = next((t for t in record.tenants if t.tenant == tenant), None)
    if chosen is None:
        raise InputError(f"target {spec!r}: no tenant {tenant!r} in {folder}; valid: {', '.join(names)}")
    base = record.artifact()
    base_file, lora_file = _artifact_path(folder, base.file), _artifact_path(folder, chosen.file)
    info.update(file=str(base_file.resolve()), quant=base.quant,
                sha256=_known_sha256(base_file, base.sha256, base.size), tenant=tenant, lora=str(lora_file.resolve()),
                lora_sha256=_known_sha256(lora_file, chosen.sha256, chosen.size))
    return GgufTarget(spec, base_file, seed, max_tokens, info, lora=lora_file)


# --- transformers (+ peft) ---------------------------------------------------------------------------

def _adapter_target(spec: str, adapter_dir: Path, base_override: Path | None, seed: int, max_tokens: int,
                    info: dict | None = None) -> "TransformersTarget":
    from ..models.resolve import check_base_weights, load_adapter, resolve_base

    adapter = load_adapter(adapter_dir)
    base = resolve_base(adapter, base_override)
    check_base_weights(base, allow_pickle=False)
    info = {**(info or {}), "adapter": str(adapter.path.resolve()), "adapter_sha256": sha256_tree(adapter.path),
            "base_source": base.source, "base_ref": base.ref}
    return TransformersTarget(spec, base.path, seed, max_tokens, info, adapter=adapter.path)


__all__ = ["FORMS", "GgufTarget", "OllamaTarget", "OpenAITarget", "Target", "TargetUnreachable",
           "TransformersTarget", "open_target"]
