"""Ollama's on-disk model store (docs/ollama.md#store-layout), read and written directly, without a server.

Writing follows docs/ollama.md#store-writes: blobs first (temp file outside `blobs/`, renamed to `sha256-<hex>`,
mode 0644), the manifest last and atomically. A running Ollama re-reads manifests on every
request, so the model appears without a restart. If anything fails, no manifest is written and the
blobs this call created are removed, because a blob no manifest references is junk the next server
start prunes, and an orphan left on a full disk helps nobody.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..errors import DiskSpaceError, InputError, LocalserveError, OllamaError
from ..faults import STORE_INSTALL, fault_point
from ..fsutil import CHUNK
from ..progress import bar, step
from .layers import (MEDIA_CONFIG, MEDIA_LICENSE, MEDIA_MANIFEST, MEDIA_MESSAGES, MEDIA_MODEL, MEDIA_PARAMS,
                     MEDIA_SYSTEM, MEDIA_TEMPLATE, MEDIA_TEMPLATE_LEGACY, ModelRecipe, config_blob, go_json_ordered,
                     gguf_info)
from .names import ModelName, parse_name

_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def default_store_root() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class StoredModel:
    name: str
    digest: str  # sha256 of the manifest bytes, as /api/tags reports it
    size: int  # sum of the manifest's size fields
    modified_at: str
    manifest_path: Path


class ModelStore:
    """An Ollama models folder (`$OLLAMA_MODELS`): `blobs/` and `manifests/<host>/<ns>/<model>/<tag>`."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root else default_store_root()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"

    # --- reading --------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-")

    def _manifest_files(self) -> Iterator[tuple[ModelName, Path]]:
        # Ollama globs exactly manifests/*/*/*/*; anything deeper or shallower is invisible to it
        if not self.manifests.is_dir():
            return
        for p in sorted(self.manifests.glob("*/*/*/*")):
            if not p.is_file():
                continue
            host, ns, model, tag = p.relative_to(self.manifests).parts
            try:
                yield parse_name(f"{host}/{ns}/{model}:{tag}"), p
            except InputError:
                continue

    def find(self, name: str) -> Path | None:
        want = parse_name(name).key()
        for n, p in self._manifest_files():
            if n.key() == want:
                return p
        return None

    def manifest(self, name: str) -> dict[str, Any]:
        path = self.find(name)
        if path is None:
            raise OllamaError(f"model {parse_name(name).display!r} is not in the store {self.root}",
                              "list the models with `localserve ls --store DIR`")
        try:
            return json.loads(path.read_bytes())
        except ValueError as e:
            raise OllamaError(f"manifest {path} is not valid JSON: {e}",
                              "remove it with `localserve rm NAME --store DIR` and install again") from None

    def models(self) -> list[StoredModel]:
        out = []
        for n, p in self._manifest_files():
            data = p.read_bytes()
            try:
                m = json.loads(data)
                size = int(m["config"]["size"]) + sum(int(layer["size"]) for layer in m["layers"])
            except (ValueError, KeyError, TypeError):
                continue
            if not self.blob_path(m["config"]["digest"]).is_file():
                continue  # Ollama drops models whose config blob is missing (docs/ollama.md#config-blob)
            mtime = datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).isoformat()
            out.append(StoredModel(n.display, hashlib.sha256(data).hexdigest(), size, mtime, p))
        return sorted(out, key=lambda m: m.modified_at, reverse=True)

    def manifest_digest(self, name: str) -> str | None:
        path = self.find(name)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None

    def read_recipe(self, name: str) -> tuple[Path, ModelRecipe, dict[str, Any]]:
        """(model GGUF blob, template/system/params/messages, config) of a stored model."""
        m = self.manifest(name)
        model = None
        parts: dict[str, Any] = {}
        for layer in m.get("layers", []):
            mt, path = layer.get("mediaType"), self.blob_path(layer.get("digest", ""))
            if mt == MEDIA_MODEL:
                model = path  # the last model layer wins, as in Ollama
                continue
            if mt not in (MEDIA_TEMPLATE, MEDIA_TEMPLATE_LEGACY, MEDIA_SYSTEM, MEDIA_PARAMS, MEDIA_MESSAGES,
                          MEDIA_LICENSE):
                continue
            if not path.is_file():
                raise OllamaError(f"{name}: blob {path} is missing from the store", "install the model again")
            text = path.read_text(encoding="utf-8")
            if mt in (MEDIA_TEMPLATE, MEDIA_TEMPLATE_LEGACY):
                parts["template"] = text
            elif mt == MEDIA_SYSTEM:
                parts["system"] = text
            elif mt == MEDIA_LICENSE:
                parts.setdefault("license", []).append(text)
            elif mt == MEDIA_PARAMS:
                parts["parameters"] = json.loads(text)
            else:
                parts["messages"] = json.loads(text)
        if model is None or not model.is_file():
            raise OllamaError(f"{name} in {self.root} has no model (GGUF) blob",
                              "only GGUF models can be bundled; install the model again")
        config: dict[str, Any] = {}
        cfg_path = self.blob_path(m.get("config", {}).get("digest", ""))
        if cfg_path.is_file():
            with contextlib.suppress(ValueError):
                config = json.loads(cfg_path.read_bytes())
        return model, ModelRecipe.from_json(parts), config

    # --- writing --------------------------------------------------------------------------------
    def _adopt(self, path: Path) -> None:
        """Give what we create to the store's owner: a Linux service install runs Ollama as `ollama`,
        which must be able to read our blobs and later remove our manifests and folders."""
        if os.geteuid() != 0:
            return
        st = self.root.stat()
        if st.st_uid != 0 or st.st_gid != 0:
            with contextlib.suppress(OSError):
                os.chown(path, st.st_uid, st.st_gid)

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        p = folder
        while not p.exists() and p != self.root.parent:
            missing.append(p)
            p = p.parent
        folder.mkdir(parents=True, exist_ok=True)
        for d in reversed(missing):
            self._adopt(d)

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._mkdirs(self.blobs)
            self._mkdirs(self.manifests)
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".localserve-probe-")
            probe.close()
        except PermissionError:
            raise InputError(f"the Ollama model store {self.root} is not writable by this user",
                             "run as the user that owns it (e.g. `sudo -u ollama`), or pass --store DIR "
                             "with a folder you can write") from None
        except OSError as e:
            raise _store_error(self.root, e) from None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's write lock (`.localserve.lock` in it) while writing: another localserve run
        writing the same store is waited for. Whoever takes the lock removes what a killed writer left —
        temporary blobs (`.localserve-tmp/`) and unpacked bundles (`.localserve-install-*`) — since no
        other writer can be using them then. A running Ollama never looks at either."""
        from ..fsutil import lock_file

        key = str(self.root.resolve())
        if _HELD.get(key):  # this process holds it already (an install writes its manifest)
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return

        def wait(holder: str) -> None:
            step(f"waiting for another localserve run (pid {holder}) writing the Ollama store {self.root}")

        self._check_writable()
        with lock_file(self.root / ".localserve.lock", wait):
            for stale in [self.root / ".localserve-tmp", *self.root.glob(".localserve-install-*")]:
                shutil.rmtree(stale, ignore_errors=True)
            _HELD[key] = 1
            try:
                yield
            finally:
                _HELD.pop(key, None)

    @contextlib.contextmanager
    def _tmp(self) -> Iterator[Path]:
        # temp files live beside blobs/, not in it: Ollama's startup prune deletes stray files there
        d = self.root / ".localserve-tmp"
        d.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=d, suffix=".partial")
        os.close(fd)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            with contextlib.suppress(OSError):
                d.rmdir()

    def _put_blob(self, tmp: Path, digest: str, created: list[Path]) -> None:
        dest = self.blob_path(digest)
        os.chmod(tmp, 0o644)
        if dest.exists():
            return
        self._adopt(tmp)
        os.replace(tmp, dest)
        created.append(dest)

    def _blob_from_bytes(self, data: bytes, media_type: str, created: list[Path]) -> Layer:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.blob_path(digest).is_file():
            with self._tmp() as tmp:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._put_blob(tmp, digest, created)
        return Layer(media_type, digest, len(data))

    def _blob_from_file(self, src: Path, media_type: str, created: list[Path], move: bool = False) -> Layer:
        size = src.stat().st_size
        if move:
            h = hashlib.sha256()
            with open(src, "rb") as f, bar(size, f"sha256 {src.name}") as b:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    b.update(len(chunk))
            digest = "sha256:" + h.hexdigest()
            if not self.blob_path(digest).is_file():
                os.replace(src, self.blob_path(digest))
                os.chmod(self.blob_path(digest), 0o644)
                self._adopt(self.blob_path(digest))
                created.append(self.blob_path(digest))
            return Layer(media_type, digest, size)
        with self._tmp() as tmp:
            h = hashlib.sha256()
            with open(src, "rb") as fin, open(tmp, "wb") as fout, bar(size, f"store {src.name}") as b:
                while chunk := fin.read(CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
                    b.update(len(chunk))
                fout.flush()
                os.fsync(fout.fileno())
            digest = "sha256:" + h.hexdigest()
            self._put_blob(tmp, digest, created)
        return Layer(media_type, digest, size)

    def write_manifest(self, name: str, config: Layer, layers: list[Layer]) -> Path:
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config.to_json(),
                    "layers": [layer.to_json() for layer in layers]}
        return self.write_manifest_bytes(name, go_json_ordered(manifest))

    def write_manifest_bytes(self, name: str, data: bytes) -> Path:
        """Write `name`'s manifest as exactly these bytes (its digest is their sha256), atomically."""
        n = parse_name(name)
        with self.writing():
            existing = self.find(name)  # names match case-insensitively; keep the stored spelling
            dest = existing or self.root / n.manifest_relpath
            self._mkdirs(dest.parent)
            with self._tmp() as tmp:
                tmp.write_bytes(data)
                os.chmod(tmp, 0o644)
                self._adopt(tmp)
                os.replace(tmp, dest)
        return dest

    def install(self, gguf: Path, name: str, recipe: ModelRecipe, move: bool = False) -> StoredModel:
        """Write the GGUF, the recipe's blobs and the config blob, then the manifest.

        `move=True` renames `gguf` into the store instead of copying (same filesystem only).
        """
        n = parse_name(name)
        gguf = Path(gguf)
        with self.writing():
            return self._install(gguf, n, recipe, move)

    def _install(self, gguf: Path, n: ModelName, recipe: ModelRecipe, move: bool) -> StoredModel:
        created: list[Path] = []
        try:
            layers = [self._blob_from_file(gguf, MEDIA_MODEL, created, move=move)]
            info = _gguf_info(self.blob_path(layers[0].digest), layers[0].digest)
            layers += [self._blob_from_bytes(data, mt, created) for mt, data in recipe.blobs()]
            config = self._blob_from_bytes(config_blob(info), MEDIA_CONFIG, created)
            fault_point(STORE_INSTALL)
            path = self.write_manifest(n.display, config, layers)
        except BaseException as e:
            for p in created:
                with contextlib.suppress(OSError):
                    p.unlink()
            if isinstance(e, OSError):
                raise _store_error(self.root, e) from None
            raise
        step(f"wrote {n.display} into the Ollama store {self.root}")
        data = path.read_bytes()
        return StoredModel(n.display, hashlib.sha256(data).hexdigest(),
                           config.size + sum(layer.size for layer in layers),
                           datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(), path)

    def copy(self, source: str, destination: str) -> None:
        """Like Ollama's copy: only the manifest file is copied."""
        src = self.find(source)
        if src is None:
            raise OllamaError(f"model {source!r} is not in the store {self.root}",
                              "list the models with `localserve ls --store DIR`")
        try:
            with self.writing():
                dest = self.find(destination) or self.root / parse_name(destination).manifest_relpath
                self._mkdirs(dest.parent)
                with self._tmp() as tmp:
                    tmp.write_bytes(src.read_bytes())
                    os.chmod(tmp, 0o644)
                    self._adopt(tmp)
                    os.replace(tmp, dest)
        except OSError as e:
            raise _store_error(self.root, e) from None

    def delete(self, name: str) -> None:
        """Remove the manifest, then only the blobs no other manifest references (docs/ollama.md#store-writes);
        under the write lock, so that no install adopts a blob this is removing."""
        missing = OllamaError(f"model {name!r} is not in the store {self.root}",
                              "list the models with `localserve ls --store DIR`")
        if self.find(name) is None:
            raise missing
        with self.writing():
            path = self.find(name)
            if path is None:
                raise missing
            m = json.loads(path.read_bytes())
            mine = {m["config"]["digest"], *(layer["digest"] for layer in m["layers"])}
            path.unlink()
            for parent in (path.parent, path.parent.parent, path.parent.parent.parent):
                with contextlib.suppress(OSError):
                    parent.rmdir()
            still = set()
            for _, p in self._manifest_files():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    other = json.loads(p.read_bytes())
                    still |= {other["config"]["digest"], *(layer["digest"] for layer in other["layers"])}
            for digest in mine - still:
                with contextlib.suppress(FileNotFoundError):
                    self.blob_path(digest).unlink()


_INFO: dict[str, object] = {}
_HELD: dict[str, int] = {}  # store root -> how deep this process holds its write lock


def _gguf_info(path: Path, digest: str):
    # reading a GGUF's metadata parses its whole vocabulary (seconds); the digest names the content
    if digest not in _INFO:
        _INFO[digest] = gguf_info(path)
    return _INFO[digest]


def _store_error(root: Path, e: OSError) -> LocalserveError:
    if e.errno in _NO_SPACE:
        return DiskSpaceError(f"the disk holding the Ollama store {root} is full ({e.strerror}); "
                              "no manifest was written and the partial blobs were removed",
                              "free some space, or pass --store DIR on a larger disk")
    if isinstance(e, PermissionError):
        return InputError(f"the Ollama model store {root} is not writable ({e.filename}: {e.strerror})",
                          "run as the user that owns it, or pass --store DIR with a folder you can write")
    return OllamaError(f"writing the Ollama store {root} failed: {e}")
