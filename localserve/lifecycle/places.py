"""Where versions live: a running Ollama (through its API) or Ollama's model folder on disk.

Both can register an export under a name, tell a name's manifest digest, copy a name to another,
and restore a name to a manifest digest recorded earlier — exactly, or with one line naming what is
missing. An on-disk store keeps the manifest's bytes (the digest is their sha256), so restoring
writes them back once every blob they reference is present. Ollama's API cannot write a manifest,
so a server restores by creating the model again from the recipe it was first created from (the
same GGUF blob, template and parameters give the same manifest) and checks the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import OllamaError
from ..lineage import ExportRecord
from ..ollama.layers import ModelRecipe
from ..progress import step
from ..ollama.names import parse_name


@dataclass(frozen=True)
class Registered:
    model: str  # as Ollama displays it
    manifest_digest: str
    recipe: dict  # gguf file, blob digest, quant, the Modelfile recipe
    manifest: bytes | None  # where the place can read it


class Place(Protocol):
    id: str  # an Ollama URL, or store:<folder>

    def register(self, export_dir: Path, record: ExportRecord, model: str, quant: str | None) -> Registered: ...

    def manifest_digest(self, name: str) -> str | None: ...

    def manifest(self, name: str) -> bytes | None: ...

    def copy(self, source: str, destination: str) -> None: ...

    def remove(self, name: str) -> None: ...

    def restore(self, name: str, digest: str, recipe: dict, manifest: bytes | None) -> None: ...

    def target_spec(self, name: str) -> str:
        """How lifecycle.targets opens this model for evaluation."""


class ServerPlace:
    def __init__(self, host: str | None = None):
        from ..ollama.client import OllamaServer, resolve_host

        self.host = resolve_host(host)
        self.server = OllamaServer(self.host)
        self.id = self.server.host

    def register(self, export_dir: Path, record: ExportRecord, model: str, quant: str | None) -> Registered:
        from ..ollama.registration import register

        r = register(export_dir, name=model, host=self.host, quant=quant, record=record)
        artifact = record.artifact(r.quant)
        recipe = {"gguf": artifact.file, "quant": r.quant, "blob": r.model_digest,
                  "modelfile": record.modelfile or {}, "server_version": r.server_version,
                  "prompt_path": r.prompt_path}
        return Registered(r.name, r.manifest_digest, recipe, None)

    def manifest_digest(self, name: str) -> str | None:
        return self.server.manifest_digest(name)

    def manifest(self, name: str) -> bytes | None:
        return None  # Ollama's API does not hand out manifests

    def copy(self, source: str, destination: str) -> None:
        self.server.copy(source, destination)

    def remove(self, name: str) -> None:
        self.server.delete(name)

    def restore(self, name: str, digest: str, recipe: dict, manifest: bytes | None) -> None:
        blob = recipe.get("blob")
        if not blob or not self.server.has_blob(blob):
            raise OllamaError(f"cannot restore {name} to {digest[:19]} on {self.id}: its model blob {blob} is gone "
                              "from the server", "register the version again (`localserve register EXPORT_DIR`)")
        self.server.create(name, recipe["gguf"], blob, ModelRecipe.from_json(recipe.get("modelfile")))
        now = self.manifest_digest(name)
        if now != digest:
            raise OllamaError(f"re-created {name} on {self.id} from its recorded blob and recipe, but the server gives "
                              f"manifest {now} instead of {digest} (its version may write models differently since "
                              f"{recipe.get('server_version')})", "promote the version you want explicitly")

    def target_spec(self, name: str) -> str:
        return f"ollama:{name}"


class StorePlace:
    def __init__(self, root: str | Path | None = None):
        from ..ollama.store import ModelStore

        self.store = ModelStore(root or None)
        self.id = f"store:{self.store.root.resolve()}"

    def register(self, export_dir: Path, record: ExportRecord, model: str, quant: str | None) -> Registered:
        from ..ollama.layers import read_export

        info = read_export(export_dir, record)
        artifact = info.artifact(quant)
        step(f"registering {parse_name(model).display} into the Ollama store {self.store.root}")
        stored = self.store.install(info.gguf_path(artifact), model, info.recipe)
        manifest = stored.manifest_path.read_bytes()
        m = json.loads(manifest)
        blob = next(layer["digest"] for layer in m["layers"] if layer["mediaType"].endswith(".model"))
        recipe = {"gguf": artifact.file, "quant": artifact.quant, "blob": blob, "modelfile": record.modelfile or {}}
        return Registered(parse_name(model).display, stored.digest, recipe, manifest)

    def manifest_digest(self, name: str) -> str | None:
        return self.store.manifest_digest(name)

    def manifest(self, name: str) -> bytes | None:
        path = self.store.find(name)
        return path.read_bytes() if path else None

    def copy(self, source: str, destination: str) -> None:
        self.store.copy(source, destination)

    def remove(self, name: str) -> None:
        self.store.delete(name)

    def restore(self, name: str, digest: str, recipe: dict, manifest: bytes | None) -> None:
        if manifest is None or hashlib.sha256(manifest).hexdigest() != digest:
            raise OllamaError(f"cannot restore {name} to {digest[:19]} in {self.store.root}: its manifest was not "
                              "recorded", "promote the version you want explicitly")
        m = json.loads(manifest)
        missing = [d for d in [m["config"]["digest"], *(layer["digest"] for layer in m["layers"])]
                   if not self.store.blob_path(d).is_file()]
        if missing:
            raise OllamaError(f"cannot restore {name} to {digest[:19]} in {self.store.root}: blobs "
                              f"{', '.join(missing)} are gone", "install the version again, then promote it")
        self.store.write_manifest_bytes(name, manifest)

    def target_spec(self, name: str) -> str:
        return f"store:{self.store.root}#{parse_name(name).display}"


def open_place(host: str | None = None, store: str | os.PathLike | None = None) -> Place:
    """A running Ollama (host, default $OLLAMA_HOST) or, with `store` ('' for the default folder), a store."""
    from ..errors import InputError

    if host and store is not None:
        raise InputError("--host and --store name two different places", "pass one of them")
    return StorePlace(store) if store is not None else ServerPlace(host)
