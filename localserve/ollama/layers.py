"""What goes into an Ollama model besides the GGUF: typed params, template/system/messages blobs,
the config blob, and the export folder (`localserve.json`) they come from.

Ollama stores params verbatim and checks their JSON types at *every* inference request (docs/ollama.md#parameters),
so a wrong type is found late and breaks every chat. They are typed here, once, before anything
is sent or written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, UnknownName
from ..lineage import Artifact, ExportRecord, read_record, record_path
from ..progress import step

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_TEMPLATE_LEGACY = "application/vnd.ollama.image.prompt"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

# api/types.go Options + Runner fields portable across v0.5..HEAD (docs/ollama.md#parameters), by JSON type.
INT_PARAMS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed",
                        "num_predict", "top_k", "repeat_last_n"})
FLOAT_PARAMS = frozenset({"top_p", "min_p", "typical_p", "temperature", "repeat_penalty",
                          "presence_penalty", "frequency_penalty"})
BOOL_PARAMS = frozenset({"use_mmap"})
LIST_PARAMS = frozenset({"stop"})
DEPRECATED_PARAMS = frozenset({"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only",
                               "use_mlock", "mirostat", "mirostat_tau", "mirostat_eta"})
KNOWN_PARAMS = INT_PARAMS | FLOAT_PARAMS | BOOL_PARAMS | LIST_PARAMS
MESSAGE_ROLES = ("system", "user", "assistant")


def typed_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Params with the JSON types Ollama's `Options.FromMap` demands; bad names/types are errors."""
    out: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if name in DEPRECATED_PARAMS:
            step(f"dropping deprecated Ollama parameter {name!r} (removed in Ollama 0.7)")
            continue
        if name not in KNOWN_PARAMS:
            raise UnknownName("Ollama parameter", name, sorted(KNOWN_PARAMS),
                              "parameter names are case-sensitive")
        out[name] = _typed(name, value)
    return out


def _typed(name: str, value: Any) -> Any:
    bad = InputError(f"Ollama parameter {name!r} has value {value!r} of the wrong type",
                     "use " + ("an integer" if name in INT_PARAMS else "a number" if name in FLOAT_PARAMS
                               else "true/false" if name in BOOL_PARAMS else "a list of strings"))
    if name in LIST_PARAMS:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad
    if name in BOOL_PARAMS:
        if isinstance(value, bool):
            return value
        raise bad
    if isinstance(value, bool):
        raise bad
    if name in INT_PARAMS:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value, 10)
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise bad from None
    raise bad


def typed_messages(messages: list | None) -> list[dict[str, str]]:
    """MESSAGE history as `{"role", "content"}` dicts; `[role, content]` pairs are accepted too."""
    out = []
    for i, m in enumerate(messages or []):
        if isinstance(m, (list, tuple)) and len(m) == 2:
            role, content = m
        elif isinstance(m, dict):
            role, content = m.get("role"), m.get("content")
        else:
            role = content = None
        if role not in MESSAGE_ROLES or not isinstance(content, str):
            raise InputError(f"modelfile message {i} is {m!r}",
                             f"each message needs a role among {', '.join(MESSAGE_ROLES)} (lowercase) and text content")
        out.append({"role": role, "content": content})
    return out


# --- Go encoding/json, byte for byte ----------------------------------------------------------

def go_json(value: Any) -> bytes:
    """Like Go's `json.Encoder`: compact, map keys sorted, `<>&` escaped, trailing newline.

    Matching Ollama's bytes lets a blob written here dedupe with one Ollama wrote (same digest).
    """
    text = json.dumps(_go_floats(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return (text + "\n").encode()


def go_json_ordered(value: Any) -> bytes:
    """Go encoding of a struct: fields keep their declared order (dicts here are built in order)."""
    text = json.dumps(_go_floats(value), separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return (text + "\n").encode()


def _go_floats(value: Any) -> Any:
    # Go writes float64(1) as `1`, Python as `1.0`
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_floats(v) for v in value]
    return value


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- GGUF facts for the config blob (docs/ollama.md#config-blob) ----------------------------------------

@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    file_type: str
    parameter_count: int

    @property
    def model_type(self) -> str:
        return human_number(self.parameter_count)


def human_number(n: int) -> str:
    """Go `format.HumanNumber`: 8.0B, 494.03M, 1B, 12K."""
    for unit, div, decimals in (("B", 1_000_000_000, 1), ("M", 1_000_000, 2)):
        if n >= div:
            x = n / div
            return f"{x:.0f}{unit}" if x == math.floor(x) else f"{x:.{decimals}f}{unit}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def gguf_info(path: Path) -> GGUFInfo:
    """Architecture, file type and parameter count (from the tensors, as Ollama computes it)."""
    import gguf  # lazy: only needed when a config blob is written

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # gguf raises ValueError/struct errors on bad files
        raise InputError(f"{path} is not a readable GGUF file: {e}",
                         "re-run `localserve export`, or point at the .gguf it wrote") from None

    def kv(key: str):
        f = reader.fields.get(key)
        if f is None or not f.data:
            return None
        return f.contents()

    arch = kv("general.architecture")
    arch = arch if isinstance(arch, str) else "unknown"
    ftype = kv("general.file_type")
    ftype_name = "unknown"
    # Ollama requires uint32 and treats 0 (all F32) as unknown (docs/ollama.md#config-blob)
    field_ = reader.fields.get("general.file_type")
    if isinstance(ftype, int) and ftype > 0 and field_ is not None \
            and field_.types and field_.types[0] == gguf.GGUFValueType.UINT32:
        try:
            ftype_name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_")
        except ValueError:
            ftype_name = "unknown"
    count = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFInfo(arch, ftype_name, count)


def config_blob(info: GGUFInfo, layer_digests: list[str] | None = None) -> bytes:
    """ConfigV2 in Go's field order. `layer_digests` adds the pre-0.32.7 `rootfs` (ignored by readers)."""
    cfg: dict[str, Any] = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.model_type,
        "file_type": info.file_type,
        "architecture": "amd64",
        "os": "linux",
    }
    if layer_digests is not None:
        cfg["rootfs"] = {"type": "layers", "diff_ids": layer_digests}
    return go_json_ordered(cfg)


# --- the export folder ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRecipe:
    """Everything an Ollama model is made of besides the weights, typed for the wire."""

    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict | None) -> "ModelRecipe":
        data = data or {}
        template = data.get("template")
        system = data.get("system")
        for key, val in (("template", template), ("system", system)):
            if val is not None and not isinstance(val, str):
                raise InputError(f"modelfile.{key} in localserve.json is not text", "re-run `localserve export`")
        lic = data.get("license") or ()
        lic = (lic,) if isinstance(lic, str) else tuple(lic)
        if not all(isinstance(x, str) for x in lic):
            raise InputError("modelfile.license in localserve.json must be text or a list of texts",
                             "re-run `localserve export`")
        return cls(template=template or None, system=system or None,
                   parameters=typed_params(data.get("parameters")),
                   messages=typed_messages(data.get("messages")), license=tuple(x for x in lic if x))

    def to_json(self) -> dict:
        return {"template": self.template, "system": self.system, "parameters": dict(self.parameters),
                "messages": list(self.messages), "license": list(self.license)}

    def blobs(self) -> list[tuple[str, bytes]]:
        """(media type, bytes) of every non-model layer, in Ollama's layer order."""
        out = []
        if self.template:
            out.append((MEDIA_TEMPLATE, self.template.encode()))
        if self.system:
            out.append((MEDIA_SYSTEM, self.system.encode()))
        out += [(MEDIA_LICENSE, text.encode()) for text in self.license]
        if self.parameters:
            out.append((MEDIA_PARAMS, go_json(self.parameters)))
        if self.messages:
            out.append((MEDIA_MESSAGES, go_json_ordered(self.messages)))
        return out


@dataclass(frozen=True)
class ExportInfo:
    """What Ollama is given of an export folder: its GGUF artifacts and the recipe of the rest."""

    folder: Path
    record: ExportRecord
    recipe: ModelRecipe

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return self.record.artifacts

    @property
    def raw(self) -> dict:
        return self.record.to_json()

    def artifact(self, quant: str | None = None) -> Artifact:
        return self.record.artifact(quant)

    def gguf_path(self, artifact: Artifact) -> Path:
        p = (self.folder / artifact.file)
        if not p.is_file():
            raise InputError(f"{p} is listed in {record_path(self.folder)} but missing",
                             "re-run `localserve export` into this folder")
        return p


def read_export(folder: str | Path, record: ExportRecord | None = None) -> ExportInfo:
    """An export folder as Ollama models: `record` when the caller holds it, else its localserve.json."""
    folder = Path(folder)
    record = record if record is not None else read_record(folder)
    where = record_path(folder)
    if record.kind == "vllm":
        raise InputError(f"{folder} is a vLLM export (Hugging Face safetensors); Ollama loads GGUF files",
                         "export for Ollama without --target vllm")
    for a in record.artifacts:
        if not a.file.endswith(".gguf"):
            raise InputError(f"{where}: artifact entry {a.file!r} has no .gguf file", "re-run `localserve export`")
    if not record.artifacts:
        raise InputError(f"{where} lists no GGUF artifacts", "re-run `localserve export` with --quant")
    if any(a.quant is None for a in record.artifacts):  # a hand-written record: the tag needs a name
        record = record.replace(artifacts=tuple(dataclasses.replace(a, quant=a.quant or "unknown")
                                                for a in record.artifacts))
    return ExportInfo(folder, record, ModelRecipe.from_json(record.modelfile))


# --- the legacy (<= 0.5.4) Modelfile string form ----------------------------------------------------

def modelfile_text(from_: str, recipe: ModelRecipe, adapter: str | None = None) -> str:
    """A Modelfile for `ollama create -f` or a pre-0.5.5 server, rendered by localserve.modelfile.

    Raises InputError when a value cannot be written in Modelfile syntax (e.g. text with \"\"\")."""
    from ..modelfile import ModelfileSpec, render_modelfile

    return render_modelfile(ModelfileSpec(
        from_=from_, adapter=adapter, template=recipe.template or None, system=recipe.system or None,
        parameters=dict(recipe.parameters), messages=tuple((m["role"], m["content"]) for m in recipe.messages),
        license=tuple(recipe.license)))
