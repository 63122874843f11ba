"""Register an export folder with a running Ollama through its HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..faults import SERVER_REGISTRATION, fault_point
from ..lineage import ExportRecord
from ..progress import step
from .client import OllamaServer, ServerTooOld, parse_version
from .layers import ModelRecipe, read_export
from .names import parse_name
from .prompt_path import path_in_use


@dataclass(frozen=True)
class RegisterResult:
    name: str  # as Ollama displays it, e.g. "demo:q4_k_m"
    host: str
    server_version: str
    create_form: str  # "json" (>= 0.5.5) or "modelfile" (older servers)
    quant: str
    gguf: Path
    model_digest: str  # sha256 of the uploaded GGUF (0.31.2+ stores a rewritten copy, docs/ollama.md#gguf)
    uploaded: bool  # False when the server already had the GGUF blob
    manifest_digest: str | None  # the /api/tags digest after create
    # The template the server builds this model's prompts with (ollama.prompt_path), as it says after create,
    # and the built-in template it added when the export had none ("chatml"), if it did
    prompt_path: dict | None = None

    def to_json(self) -> dict:
        return {**self.__dict__, "gguf": str(self.gguf)}


def default_name(export_name: str, quant: str) -> str:
    """`<export name>:<quant>`, e.g. demo:q4_k_m; `promote` points `demo:latest` at one of them."""
    return f"{export_name}:{quant.lower()}"


# Before this version a model without TEMPLATE gets {{ .Prompt }} (docs/ollama.md#template-selection).
NATIVE_TEMPLATE_SINCE = (0, 30, 0)


def require_template_support(recipe: ModelRecipe, version: str, host: str) -> None:
    """Refuse a model without a Go TEMPLATE (export --ollama-template native) on a server that cannot
    apply the GGUF's own chat template: it would send every prompt unformatted."""
    v = parse_version(version)
    if recipe.template is None and (0, 0, 0) < v < NATIVE_TEMPLATE_SINCE:
        raise ServerTooOld(f"this export has no TEMPLATE and relies on the GGUF's own chat template "
                           f"(--ollama-template native), which Ollama applies from 0.30 on; {host} runs {version} "
                           "and would send prompts unformatted",
                           "upgrade Ollama to 0.30 or newer, or re-export with --ollama-template go")


def register(output_dir: Path, name: str | None = None, host: str | None = None,
             quant: str | None = None, record: ExportRecord | None = None) -> RegisterResult:
    """Upload the export's GGUF (if the server lacks it) and create the model from localserve.json.

    `name` defaults to `<export name>:<quant>`; `quant` picks an artifact (default: the first listed).
    """
    info = read_export(output_dir, record)
    artifact = info.artifact(quant)
    gguf = info.gguf_path(artifact)
    model_name = parse_name(name or default_name(info.name, artifact.quant)).display
    with OllamaServer(host) as server:
        version = server.version()
        require_template_support(info.recipe, version, server.host)
        step(f"registering {model_name} with Ollama {version} at {server.host}")
        digest = f"sha256:{artifact.sha256.lower()}" if artifact.sha256 else None
        blob = server.push_blob(gguf, digest)
        fault_point(SERVER_REGISTRATION)
        statuses: list[str] = []
        form = server.create(model_name, artifact.file.split("/")[-1], blob.digest, info.recipe,
                             on_status=lambda part: statuses.append(part.get("status") or ""))
        manifest_digest = server.manifest_digest(model_name)
        prompt = served_prompt_path(server, model_name, version, statuses)
    return RegisterResult(model_name, server.host, version, form, artifact.quant, gguf, blob.digest,
                          blob.uploaded, manifest_digest, prompt)


AUTODETECTED = "using autodetected template "  # create's status line when Ollama adds a built-in template


def served_prompt_path(server: OllamaServer, model: str, version: str, statuses: list[str]) -> dict:
    """Which template `server` builds `model`'s prompts with (docs/ollama.md#template-selection), as its
    /api/show says, and the built-in template its create added from the GGUF's, if it did (says so)."""
    path = path_in_use(server.show(model), parse_version(version))
    builtin = next((s.removeprefix(AUTODETECTED) for s in statuses if s.startswith(AUTODETECTED)), None)
    if builtin:
        step(f"Ollama {version} recognised the GGUF's chat template as its built-in {builtin!r} and renders "
             f"{model} with that Go template, not the GGUF's own")
    return {**path.to_json(), "builtin_template": builtin}
