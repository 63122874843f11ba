"""Ollama models that share one base GGUF, each with its own LoRA ADAPTER layer (multi-tenancy).

Which Ollama versions load a GGUF LoRA for which architecture (docs/ollama.md#adapters):
  v0.30+       every GGUF runs in upstream llama-server, which gets each adapter layer as `--lora`:
               any architecture that llama.cpp build supports.
  v0.7–v0.29   architectures on Ollama's own Go engine ("ollamarunner": qwen3, gemma3, mistral3, …)
               fail at load time with "loras are not yet implemented"; the others (llama, qwen2, …)
               run in the vendored llama.cpp, which applies the adapter. The Go-engine list was
               read at v0.24.0; the engine was removed in v0.30, so v0.25–v0.29 are assumed alike.
  < v0.7       no Go engine: the vendored llama.cpp applies the adapter.
`create` succeeds either way — the failure only shows when the model loads — so it is checked here,
before anything is created.

From v0.34.1 Ollama creates no model with an adapter at all (`LoRA adapters are no longer supported`:
its CLI refuses a Modelfile with ADAPTER, its create API the `adapters` field; models created earlier
still serve). That is refused here too, by the server's version before any upload, and by its answer
when a server that reports an older version refuses anyway.

Storage: the base is uploaded once (HEAD answers 200 for every later tenant) and every tenant's
manifest points at the same model layer; only the adapter layer differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import OllamaError
from ..progress import step
from .client import OllamaServer, ServerTooOld, parse_version
from .layers import ModelRecipe
from .names import parse_name
from .registration import require_template_support

GO_ENGINE_FROM = (0, 7, 0)
GO_ENGINE_REMOVED = (0, 30, 0)
# Ollama PR 14969 (reported in generative-computing/mellea issue 1651; docs/ollama.md#adapters)
ADAPTER_CREATE_REMOVED = (0, 34, 1)
ADAPTERS_REFUSED = "lora adapters are no longer supported"  # the create error, lowercased
# What to do instead; one place, so the runtimes that serve adapters join it as they come
INSTEAD_OF_ADAPTER_MODELS = ("export each tenant merged into its own model (`localserve export ADAPTER`, one per "
                             "tenant), or serve the adapters unmerged with vLLM (`localserve export ADAPTERS... "
                             "--lora --target vllm`)")


class AdapterModelsRefused(OllamaError):
    """The Ollama server creates no model with a LoRA ADAPTER layer (0.34.1 and later)."""


def refuse_adapter_models(version: str, host: str, answer: str | None = None) -> AdapterModelsRefused:
    said = f" (it answered: {answer})" if answer else ""
    return AdapterModelsRefused(f"Ollama {version} at {host} no longer creates models with a LoRA ADAPTER{said}; "
                                "models created by Ollama before 0.34.1 still serve", INSTEAD_OF_ADAPTER_MODELS)


def creates_adapter_models(version: str) -> bool:
    """Whether Ollama `version` still creates models with an ADAPTER layer (before 0.34.1)."""
    return parse_version(version) < ADAPTER_CREATE_REMOVED
# fs/ggml/ggml.go OllamaEngineRequired at v0.24.0, as GGUF general.architecture values (docs/ollama.md#adapters;
# the list as read ends in "…", so this is what is known, not everything).
GO_ENGINE_ARCHITECTURES = frozenset({
    "bert", "deepseek2", "gemma3", "gemma3n", "gemma4", "gptoss", "gpt-oss", "llama4", "mistral3", "mllama",
    "qwen25vl", "qwen3", "qwen3moe", "qwen35", "qwen35moe", "qwen3next", "qwen3vl", "qwen3vlmoe", "olmo3",
    "lfm2", "glm4moelite",
})


@dataclass(frozen=True)
class AdapterSupport:
    """Which Ollama versions load a GGUF LoRA on a base of `architecture`."""

    architecture: str
    go_engine: bool  # on Ollama's Go engine in v0.7–v0.29, which cannot load LoRA adapters
    versions: str  # human summary, e.g. ">= 0.30 only" or "all versions"

    @property
    def message(self) -> str:
        if self.go_engine:
            return (f"Ollama loads LoRA adapters on {self.architecture} bases from v0.30 on (and before v0.7); "
                    f"v0.7–v0.29 run {self.architecture} on their Go engine, which fails with "
                    "'loras are not yet implemented'")
        return (f"Ollama loads LoRA adapters on {self.architecture} bases in every version that knows the "
                "architecture (llama.cpp applies them)")

    def loads_on(self, version: str) -> bool:
        v = parse_version(version)
        return not (self.go_engine and GO_ENGINE_FROM <= v < GO_ENGINE_REMOVED)

    def to_json(self) -> dict:
        return {**asdict(self), "message": self.message}


def adapter_support(architecture: str) -> AdapterSupport:
    """docs/ollama.md#adapters for one GGUF `general.architecture` (e.g. "llama", "qwen3")."""
    go = architecture in GO_ENGINE_ARCHITECTURES or architecture.startswith("nemotron_h")
    return AdapterSupport(architecture, go, ">=0.30 or <0.7" if go else "all")


@dataclass(frozen=True)
class Tenant:
    """One Ollama model to create: the shared base plus this tenant's adapter."""

    name: str  # Ollama model name, e.g. "founder:q4_k_m"
    adapter_gguf: Path
    adapter_sha256: str


@dataclass(frozen=True)
class TenantRegistration:
    name: str
    adapter_digest: str
    adapter_uploaded: bool
    base_uploaded: bool  # True only for the tenant that first brought the base to the server
    manifest_digest: str | None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TenantsRegistered:
    host: str
    server_version: str
    create_form: str
    base_digest: str
    tenants: tuple[TenantRegistration, ...]

    def to_json(self) -> dict:
        return {"host": self.host, "server_version": self.server_version, "create_form": self.create_form,
                "base_digest": self.base_digest, "tenants": [t.to_json() for t in self.tenants]}


def register_tenants(base_gguf: Path, base_sha256: str, tenants: list[Tenant], recipe: ModelRecipe,
                     support: AdapterSupport, host: str | None = None) -> TenantsRegistered:
    """Upload the base once and each adapter, then create one model per tenant (docs/ollama.md#create-api `adapters`).

    Refused before any upload when this server's version cannot load adapters for the base's
    architecture (see the module docstring).
    """
    for t in tenants:
        parse_name(t.name)
    base_gguf = Path(base_gguf)
    with OllamaServer(host) as server:
        version = server.version()
        if not creates_adapter_models(version):
            raise refuse_adapter_models(version, server.host)
        if not support.loads_on(version):
            raise ServerTooOld(f"Ollama {version} at {server.host} cannot load LoRA adapters on "
                               f"{support.architecture}: {support.message}",
                               "upgrade Ollama to 0.30 or newer, or export each adapter merged "
                               "(`localserve export ADAPTER`)")
        require_template_support(recipe, version, server.host)
        base_digest = f"sha256:{base_sha256.lower()}"
        done: list[TenantRegistration] = []
        form = "json"
        for t in tenants:
            step(f"registering {t.name} (base {base_gguf.name} + adapter {t.adapter_gguf.name}) "
                 f"with Ollama {version} at {server.host}")
            # HEAD per tenant: the base is sent by the first and found by every later one.
            base = server.push_blob(base_gguf, base_digest)
            adapter = server.push_blob(t.adapter_gguf, f"sha256:{t.adapter_sha256.lower()}")
            try:
                form = server.create(t.name, base_gguf.name, base.digest, recipe,
                                     adapter=(t.adapter_gguf.name, adapter.digest))
            except OllamaError as e:
                if ADAPTERS_REFUSED in e.message.lower():  # a server newer than the version it reports
                    raise refuse_adapter_models(version, server.host, e.message.rpartition(" failed: ")[2]) from None
                raise
            done.append(TenantRegistration(parse_name(t.name).display, adapter.digest, adapter.uploaded,
                                           base.uploaded, server.manifest_digest(t.name)))
    return TenantsRegistered(server.host, version, form, base_digest, tuple(done))
