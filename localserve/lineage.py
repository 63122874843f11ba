"""The export record: `localserve.json`, one typed description of what an export wrote and from what.

Every export (a GGUF for Ollama, LoRA tenants on a shared base, a vLLM folder, a merged model)
ends by writing one `ExportRecord` beside its files, last, so a folder with a record is complete.
Everything that later reads an export folder — registration, bundles, plan, bench, quality, the
version store — reads it through `read_record`/`find_record`, never as loose JSON.

A record is immutable; `replace()` returns a changed copy (`registered`, `bench`) and
`write_record` writes it atomically. Keys this version does not know are kept in `sections` and
written back unchanged, so an older localserve never drops what a newer one recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import InputError
from .fsutil import write_json

RECORD_FILE = "localserve.json"

# What wrote the folder. "gguf": one merged model (from an adapter or a merge recipe) as GGUF files
# for Ollama; "tenants": a shared base GGUF plus one GGUF LoRA per adapter; "vllm": a Hugging Face
# folder with its vLLM serve files; "merge": a merged Hugging Face folder (`localserve merge`);
# "ollama-store": a model bundled from an Ollama store.
KINDS = ("gguf", "tenants", "vllm", "merge", "ollama-store")
_LEGACY_KINDS = {"lora-tenants": "tenants"}

_TOOL_PACKAGES = ("localserve", "torch", "transformers", "peft", "safetensors", "gguf", "llama-cpp-python",
                  "mergekit")


def tool_versions(packages: tuple[str, ...] = _TOOL_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape an export's bytes, and Python's."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    return versions


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Artifact:
    """A file the export wrote, relative to the export folder."""

    file: str
    quant: str | None = None
    size: int | None = None
    sha256: str | None = None
    smoke: dict | None = None  # the llama.cpp check of this file (localserve.llamacpp.smoke)

    def to_json(self) -> dict:
        data = {"quant": self.quant, "file": self.file, "size": self.size, "sha256": self.sha256}
        if self.quant is None:
            del data["quant"]
        return {**data, **({"smoke": self.smoke} if self.smoke else {})}


@dataclass(frozen=True)
class BaseRecord:
    """The base model the export started from."""

    path: str
    sha256: str | None = None
    ref: str | None = None  # what the adapter (or --base) asked for
    source: str | None = None  # "--base", "path", "hf-cache", "embedded", "merge recipe"
    architecture: str | None = None  # config.json's architecture
    gguf_architecture: str | None = None  # general.architecture of the GGUF (tenants)

    def to_json(self) -> dict:
        data = {"ref": self.ref, "path": self.path, "source": self.source, "sha256": self.sha256,
                "architecture": self.architecture}
        return {**data, **({"gguf_architecture": self.gguf_architecture} if self.gguf_architecture else {})}


@dataclass(frozen=True)
class AdapterRecord:
    """A LoRA adapter the export merged or serves."""

    path: str
    sha256: str | None = None
    name: str | None = None  # the name clients select it by (vLLM --lora)
    lora_modules: int | None = None
    probe: dict | None = None  # probe.json: the question only the fine-tune answers

    def to_json(self) -> dict:
        data: dict[str, Any] = {"path": self.path, "sha256": self.sha256}
        if self.name is not None:
            data = {"name": self.name, **data}
        if self.lora_modules is not None:
            data["lora_modules"] = self.lora_modules
            data["probe"] = self.probe
        return data


@dataclass(frozen=True)
class TenantRecord:
    """One adapter of a tenants export: a GGUF LoRA served on the shared base."""

    tenant: str  # tenant name (the adapter folder's, or NAME-folder)
    ollama_name: str  # e.g. founder:q4_k_m
    adapter: str  # the PEFT adapter folder
    adapter_sha256: str
    file: str  # the GGUF LoRA, relative to the export folder
    size: int
    sha256: str
    modelfile: str
    rank: int | None
    alpha: float | None
    lora_modules: int
    probe: dict | None = None
    smoke: dict | None = None
    gguf_alpha: float | None = None  # adapter.lora.alpha in the GGUF (differs from alpha under rsLoRA)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ImatrixRecord:
    file: str
    data: str
    data_sha256: str
    sha256: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExportRecord:
    """What `localserve.json` holds. See the module docstring."""

    kind: str
    name: str
    spec: dict = field(default_factory=dict)  # the fully resolved spec (spec_to_json)
    base: BaseRecord | None = None
    adapters: tuple[AdapterRecord, ...] = ()
    artifacts: tuple[Artifact, ...] = ()
    tenants: tuple[TenantRecord, ...] = ()
    merge: dict | None = None  # the mergekit recipe and its inputs' hashes
    chat: dict | None = None  # template family, parity proof (GGUF); template source, end-of-turn ids (vLLM)
    modelfile: dict | None = None  # template, system, parameters, messages, license, ollama_template
    imatrix: ImatrixRecord | None = None
    quality: dict | None = None  # the quality gate's table and decision
    tools: dict = field(default_factory=dict)
    stages: tuple[dict, ...] = ()
    registered: dict | None = None
    bench: dict | None = None  # file -> target -> measurement (localserve.plan.bench)
    created_at: str | None = None
    localserve_version: str | None = None
    sections: dict = field(default_factory=dict)  # kind-specific sections (vLLM serving, …) and unknown keys

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown export kind {self.kind!r}; valid: {', '.join(KINDS)}")

    # --- reading ------------------------------------------------------------------------------
    @property
    def adapter(self) -> AdapterRecord | None:
        """The one adapter of a merged export (None for a merge recipe)."""
        return self.adapters[0] if len(self.adapters) == 1 else None

    def artifact(self, quant: str | None = None) -> Artifact:
        """The artifact of `quant` (any case), or the first one."""
        from .errors import UnknownName

        if not self.artifacts:
            raise InputError(f"the {self.kind} export {self.name!r} lists no artifacts", "re-run `localserve export`")
        if quant is None:
            return self.artifacts[0]
        for a in self.artifacts:
            if (a.quant or "").lower() == quant.lower():
                return a
        raise UnknownName("quant in this export", quant, [a.quant or a.file for a in self.artifacts])

    def replace(self, **changes: Any) -> "ExportRecord":
        return dataclasses.replace(self, **changes)

    # --- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        data: dict[str, Any] = {
            "kind": self.kind,
            "localserve_version": self.localserve_version,
            "created_at": self.created_at,
            "name": self.name,
            "spec": self.spec,
        }
        if self.base is not None:
            data["base"] = self.base.to_json()
        if self.kind == "gguf":  # one adapter, or None for a merge recipe
            data["adapter"] = self.adapter.to_json() if self.adapter else None
        elif self.adapters:
            data["adapters"] = [a.to_json() for a in self.adapters]
        if self.merge is not None:
            data["merge"] = self.merge
        if self.tenants:
            data["tenants"] = [t.to_json() for t in self.tenants]
        for key in ("tools", "chat", "modelfile"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["artifacts"] = [a.to_json() for a in self.artifacts]
        if self.kind == "gguf":
            data["imatrix"] = self.imatrix.to_json() if self.imatrix else None
            data["quality"] = self.quality
        elif self.quality is not None:
            data["quality"] = self.quality
        data.update(self.sections)
        if self.stages:
            data["stages"] = list(self.stages)
        for key in ("registered", "bench"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = RECORD_FILE) -> "ExportRecord":
        """A record from JSON someone else may have written (a bundle): every path checked."""
        if not isinstance(data, dict):
            raise InputError(f"{where} holds a JSON {type(data).__name__}, not an object", "re-run `localserve export`")
        data = dict(data)
        kind = _kind(data)
        known = ({f.name for f in dataclasses.fields(cls)} - {"sections"}) | {"adapter", "target"}
        sections = {k: v for k, v in data.items() if k not in known}
        adapters = data.get("adapters") if "adapters" in data else ([data["adapter"]] if data.get("adapter") else [])
        try:
            return cls(
                kind=kind, name=str(data.get("name") or "model"), spec=_obj(data, "spec", where) or {},
                base=_typed(BaseRecord, data.get("base"), "base", where),
                adapters=tuple(_typed(AdapterRecord, a, "adapters", where) for a in _list(adapters, "adapters", where)),
                artifacts=tuple(_artifact(a, where) for a in _list(data.get("artifacts"), "artifacts", where)),
                tenants=tuple(_tenant(t, where) for t in _list(data.get("tenants"), "tenants", where)),
                merge=_obj(data, "merge", where), chat=_obj(data, "chat", where),
                modelfile=_obj(data, "modelfile", where),
                imatrix=_typed(ImatrixRecord, data.get("imatrix"), "imatrix", where),
                quality=_obj(data, "quality", where), tools=_obj(data, "tools", where) or {},
                stages=tuple(_list(data.get("stages"), "stages", where)),
                registered=_obj(data, "registered", where), bench=_obj(data, "bench", where),
                created_at=data.get("created_at"), localserve_version=data.get("localserve_version"),
                sections=sections)
        except TypeError as e:  # a section with keys its type does not have
            raise InputError(f"{where} does not describe an export ({e})", "re-run `localserve export`") from None


def _kind(data: dict) -> str:
    kind = data.get("kind")
    if kind is None:
        if data.get("target") == "vllm":
            return "vllm"
        return "ollama-store" if isinstance(data.get("source"), dict) and "ollama_store" in data["source"] else "gguf"
    return _LEGACY_KINDS.get(kind, kind)


def _obj(data: dict, key: str, where: str) -> dict | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise InputError(f"{where}: {key!r} must be an object", "re-run `localserve export`")
    return value


def _list(value: Any, key: str, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{where}: {key!r} must be a list", "re-run `localserve export`")
    return value


def _typed(cls, value: Any, key: str, where: str):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError(f"{where}: {key!r} must be an object", "re-run `localserve export`")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in value.items() if k in names})


def relative_file(file: Any, where: str) -> str:
    """A file name from a record, refused unless it stays inside the export folder."""
    if not isinstance(file, str) or not file:
        raise InputError(f"{where}: an entry has no file name", "re-run `localserve export`")
    p = PurePosixPath(file)
    if p.is_absolute() or ".." in p.parts or "\\" in file or Path(file).is_absolute():
        raise InputError(f"{where}: file {file!r} must be a plain relative path", "re-run `localserve export`")
    return file


def _artifact(value: Any, where: str) -> Artifact:
    if not isinstance(value, dict):
        raise InputError(f"{where}: artifact entry {value!r} is not an object", "re-run `localserve export`")
    return Artifact(file=relative_file(value.get("file"), where), quant=value.get("quant"), size=value.get("size"),
                    sha256=value.get("sha256"), smoke=value.get("smoke"))


def _tenant(value: Any, where: str) -> TenantRecord:
    tenant = _typed(TenantRecord, value, "tenants", where)
    relative_file(tenant.file, where)
    return tenant


# --- files ------------------------------------------------------------------------------------

def record_path(folder: str | Path) -> Path:
    return Path(folder) / RECORD_FILE


def write_record(folder: str | Path, record: ExportRecord) -> Path:
    """Write `record` as FOLDER/localserve.json, atomically."""
    return write_json(record_path(folder), record.to_json())


def read_record(folder: str | Path) -> ExportRecord:
    """The record of an export folder; InputError naming the file when it is missing or not a record."""
    path = record_path(folder)
    if not path.is_file():
        raise InputError(f"{folder} has no {RECORD_FILE}",
                         "point at a folder written by `localserve export` (or an extracted bundle)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}", "re-run `localserve export`") from None
    return ExportRecord.from_json(data, str(path))


def find_record(model: str | Path) -> tuple[Path, ExportRecord] | None:
    """(folder, record) of the export a GGUF file or an export folder belongs to; None when there is
    none or it cannot be read (callers that only enrich their output with it go on without)."""
    model = Path(model)
    folder = model if model.is_dir() else model.parent
    if not record_path(folder).is_file():
        return None
    try:
        return folder, read_record(folder)
    except InputError:
        return None
