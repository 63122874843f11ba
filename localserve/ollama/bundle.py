"""Bundles: one tar file that carries a model to an air-gapped host.

Layout (one top folder, plain uncompressed tar because GGUF does not compress):

    <name>/<name>-<QUANT>.gguf ...   the weights
    <name>/Modelfile                  for `ollama create -f` where localserve is not installed
    <name>/localserve.json            template/system/parameters/messages + lineage
    <name>/README.txt                 what an operator does with it
    <name>/SHA256SUMS                 `sha256sum -c` format, every other file listed

`install` trusts nothing in the archive: members must be plain files or folders with relative
paths, every file must be listed in SHA256SUMS and match it, before anything reaches Ollama.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import ChecksumMismatch, InputError, UnsafeArchive
from ..faults import BUNDLE, fault_point
from ..fsutil import atomic_path
from ..lineage import Artifact, ExportRecord
from ..progress import bar, step
from .layers import ModelRecipe, modelfile_text, read_export
from .names import parse_name

SUMS = "SHA256SUMS"

README = """\
{name}: a model bundle made by localserve
==========================================

Files: {files}

Install on a host with localserve (checks every checksum first, never downloads anything):

    localserve install {bundle}                      # through the local Ollama API (`ollama serve` running)
    localserve install {bundle} --store              # straight into $OLLAMA_MODELS or ~/.ollama/models
    localserve install {bundle} --store /usr/share/ollama/.ollama/models   # Linux service install

Without localserve:

    tar -xf {bundle} && cd {name}
    sha256sum -c SHA256SUMS
    ollama create {name} -f Modelfile

Then check it: `ollama run {name}` or `localserve verify {name}:<tag>`.
The store must stay readable by the user Ollama runs as (e.g. `ollama` for the Linux service).
"""


class _Hashing:
    """File wrapper that hashes and counts what tarfile reads from it."""

    def __init__(self, f: BinaryIO, progress):
        self.f, self.progress, self.h = f, progress, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.progress(len(data))
        return data


@dataclass(frozen=True)
class BundleResult:
    path: Path
    name: str
    files: tuple[str, ...]
    size: int


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes, sums: dict[str, str]) -> None:
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, fileobj=_BytesReader(data))
    if arcname.rsplit("/", 1)[-1] != SUMS:
        sums[arcname] = hashlib.sha256(data).hexdigest()


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return out


def _add_file(tar: tarfile.TarFile, arcname: str, src: Path, sums: dict[str, str], expect: str | None) -> None:
    size = src.stat().st_size
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = size, 0o644, int(src.stat().st_mtime)
    with open(src, "rb") as f, bar(size, f"bundle {src.name}") as b:
        reader = _Hashing(f, b.update)
        tar.addfile(info, fileobj=reader)
    digest = reader.h.hexdigest()
    if expect and expect.lower().removeprefix("sha256:") != digest:
        raise ChecksumMismatch(f"{src} has sha256 {digest}, but {expect} was recorded for it",
                               "the file changed after it was written; re-run `localserve export` (or install the model again)")
    sums[arcname] = digest


def _write_bundle(out: Path, name: str, files: list[tuple[str, Path, str | None]], meta: dict,
                  modelfile: str | None) -> BundleResult:
    out = Path(out)
    sums: dict[str, str] = {}
    names = [arc for arc, _, _ in files] + ["localserve.json"] + (["Modelfile"] if modelfile else [])
    readme = README.format(name=name, bundle=out.name, files=", ".join(names + ["README.txt", SUMS]))
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for arc, src, expect in files:
                _add_file(tar, f"{name}/{arc}", src, sums, expect)
                fault_point(BUNDLE)
            _add_bytes(tar, f"{name}/localserve.json",
                       (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode(), sums)
            if modelfile:
                _add_bytes(tar, f"{name}/Modelfile", modelfile.encode(), sums)
            _add_bytes(tar, f"{name}/README.txt", readme.encode(), sums)
            text = "".join(f"{h}  {arc.split('/', 1)[1]}\n" for arc, h in sums.items())
            _add_bytes(tar, f"{name}/{SUMS}", text.encode(), sums)
    step(f"wrote bundle {out}")
    return BundleResult(out, name, tuple(names + ["README.txt", SUMS]), out.stat().st_size)


def make_bundle(output_dir: Path, out: Path, record: ExportRecord | None = None) -> BundleResult:
    """Bundle an export folder (the one `localserve export` wrote, whose record the caller may hold)."""
    info = read_export(output_dir, record)
    files = [(a.file, info.gguf_path(a), a.sha256) for a in info.artifacts]
    modelfile_path = Path(output_dir) / "Modelfile"
    modelfile = modelfile_path.read_text(encoding="utf-8") if modelfile_path.is_file() else _modelfile(
        info.artifacts[0].file, info.recipe)
    return _write_bundle(Path(out), info.name, files, info.raw, modelfile)


def _modelfile(gguf_file: str, recipe: ModelRecipe) -> str | None:
    try:
        return modelfile_text(f"./{gguf_file}", recipe)
    except InputError:
        return None  # a template with \"\"\" cannot be written as a Modelfile; localserve.json carries it


def bundle_from_store(name: str, out: Path, store_root: Path | None = None) -> BundleResult:
    """Bundle a model that is already in an Ollama store (Ollama itself cannot export one)."""
    from .store import ModelStore

    store = ModelStore(store_root)
    n = parse_name(name)
    gguf, recipe, config = store.read_recipe(name)
    quant = str(config.get("file_type") or "unknown")
    base = n.model
    file = f"{base}-{quant}.gguf"
    digest = gguf.name.removeprefix("sha256-")
    meta = {
        "kind": "ollama-store",
        "name": base,
        "artifacts": [{"quant": quant, "file": file, "sha256": digest, "size": gguf.stat().st_size}],
        "modelfile": recipe.to_json(),
        "source": {"ollama_store": str(store.root), "model": n.display,
                   "manifest_digest": store.manifest_digest(name), "config": config},
    }
    return _write_bundle(Path(out), base, [(file, gguf, digest)], meta, _modelfile(file, recipe))


# --- install --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstallResult:
    name: str
    target: str  # "api" or "store"
    where: str  # host URL or store folder
    manifest_digest: str | None


def _check_member(m: tarfile.TarInfo, bundle: Path) -> PurePosixPath:
    p = PurePosixPath(m.name)
    if m.name.startswith(("/", "\\")) or p.is_absolute() or (len(m.name) > 1 and m.name[1] == ":"):
        raise UnsafeArchive(f"{bundle} contains an absolute path {m.name!r}; refusing to install",
                            "only install bundles made by `localserve bundle`")
    if ".." in p.parts or "\\" in m.name:
        raise UnsafeArchive(f"{bundle} contains a path that leaves the bundle: {m.name!r}; refusing to install",
                            "only install bundles made by `localserve bundle`")
    if m.issym() or m.islnk():
        raise UnsafeArchive(f"{bundle} contains a link {m.name!r} -> {m.linkname!r}; refusing to install",
                            "only install bundles made by `localserve bundle`")
    if not (m.isfile() or m.isdir()):
        raise UnsafeArchive(f"{bundle} contains a device, fifo or other special file {m.name!r}; refusing to install",
                            "only install bundles made by `localserve bundle`")
    return p


def _require_bundle(bundle: Path) -> None:
    if not bundle.is_file():
        raise InputError(f"bundle {bundle} does not exist", "pass the .tar written by `localserve bundle`")


def extract_verified(bundle: Path, dest: Path) -> Path:
    """Extract into `dest` (must be empty), verifying SHA256SUMS; returns the folder holding localserve.json."""
    bundle = Path(bundle)
    _require_bundle(bundle)
    try:
        tar = tarfile.open(bundle, "r:*")
    except tarfile.TarError as e:
        raise InputError(f"{bundle} is not a tar archive ({e})", "pass the .tar written by `localserve bundle`") from None
    hashes: dict[PurePosixPath, str] = {}
    with tar:
        members = tar.getmembers()
        paths = [_check_member(m, bundle) for m in members]  # all checked before anything is written
        for m, p in zip(members, paths):
            target = dest.joinpath(*p.parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if p in hashes:
                raise UnsafeArchive(f"{bundle} holds {m.name!r} twice; refusing to install",
                                    "only install bundles made by `localserve bundle`")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            h = hashlib.sha256()
            with open(target, "xb") as f, bar(m.size, f"unpack {p.name}") as b:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
                    b.update(len(chunk))
            hashes[p] = h.hexdigest()
    sums_files = [p for p in hashes if p.name == SUMS]
    if len(sums_files) != 1:
        raise ChecksumMismatch(f"{bundle} has {'no' if not sums_files else 'several'} {SUMS} file",
                               "the bundle is incomplete; make it again with `localserve bundle`")
    root = sums_files[0].parent
    listed: dict[PurePosixPath, str] = {}
    for line in dest.joinpath(*sums_files[0].parts).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, _, rel = line.partition("  ")
        rel = rel.lstrip("*")
        relp = PurePosixPath(rel)
        if not rel or relp.is_absolute() or ".." in relp.parts:
            raise UnsafeArchive(f"{bundle}: {SUMS} names an unsafe path {rel!r}", "only install bundles made by `localserve bundle`")
        listed[root / relp] = digest.strip().lower()
    for p, digest in hashes.items():
        if p == sums_files[0]:
            continue
        if p not in listed:
            raise ChecksumMismatch(f"{bundle}: {p} is not listed in {SUMS}",
                                   "the bundle was altered; make it again with `localserve bundle`")
        if listed[p] != digest:
            raise ChecksumMismatch(f"{bundle}: {p} has sha256 {digest}, {SUMS} says {listed[p]}",
                                   "the bundle is damaged or was altered; copy it again and compare `sha256sum`")
    for p in listed:
        if p not in hashes:
            raise ChecksumMismatch(f"{bundle}: {p} is listed in {SUMS} but missing",
                                   "the bundle is incomplete; copy it again")
    step(f"verified {len(hashes) - 1} checksums in {bundle.name}")
    return dest.joinpath(*root.parts)


def install_bundle(bundle: Path, name: str | None = None, host: str | None = None,
                   store_root: Path | str | None = None, use_store: bool = False,
                   quant: str | None = None) -> InstallResult:
    """Verify a bundle, then register it through the local Ollama API, or (`use_store`) write it
    straight into the on-disk store at `store_root` (default $OLLAMA_MODELS or ~/.ollama/models)."""
    from .client import OllamaServer, server_available
    from .registration import default_name, register
    from .store import ModelStore, _store_error

    if name:
        parse_name(name)
    _require_bundle(Path(bundle))  # before anything is created, in the store or elsewhere
    if use_store or store_root:
        store = ModelStore(store_root)
        # unpack beside the store so the GGUF is renamed into blobs/, never copied twice; under the store's
        # write lock, whose next holder removes what a killed install left there
        with store.writing():
            work = Path(tempfile.mkdtemp(prefix=".localserve-install-", dir=store.root))
            try:
                folder = extract_verified(Path(bundle), work)
                info = read_export(folder)
                artifact: Artifact = info.artifact(quant)
                model_name = parse_name(name or default_name(info.name, artifact.quant)).display
                stored = store.install(info.gguf_path(artifact), model_name, info.recipe, move=True)
            except OSError as e:
                raise _store_error(store.root, e) from None
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return InstallResult(stored.name, "store", str(store.root), stored.digest)
    if not server_available(host):
        with OllamaServer(host) as server:
            server.version()  # raises the full "not reachable ... ollama serve ... --store" error
    work = Path(tempfile.mkdtemp(prefix="localserve-install-"))
    try:
        folder = extract_verified(Path(bundle), work)
        result = register(folder, name=name, host=host, quant=quant)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return InstallResult(result.name, "api", result.host, result.manifest_digest)
