"""Bundles and the on-disk store: what an air-gapped install does, and every way it must refuse."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from ollama_standin import HTTP
import pytest

from localserve.errors import ChecksumMismatch, DiskSpaceError, InputError, UnsafeArchive
from localserve.ollama.bundle import bundle_from_store, install_bundle, make_bundle
from localserve.ollama.store import ModelStore

pytest_plugins = ["ollama_standin.fixtures"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fake_export) -> Path:
    return make_bundle(fake_export, tmp_path_factory.mktemp("bundle") / "demo.tar").path


def _rewrite_tar(src: Path, dst: Path, change) -> Path:
    """Copy a tar member by member; `change(info, data)` returns (info, data) or None to drop it."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            out = change(m, data)
            if out is None:
                continue
            info, data = out
            if data is not None:
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    return dst


def test_bundle_holds_weights_recipe_checksums_and_readme(bundle, fake_export):
    with tarfile.open(bundle) as t:
        names = t.getnames()
        sums = t.extractfile("demo/SHA256SUMS").read().decode()
        readme = t.extractfile("demo/README.txt").read().decode()
    assert sorted(names) == ["demo/Modelfile", "demo/README.txt", "demo/SHA256SUMS", "demo/demo-Q4_1.gguf",
                             "demo/localserve.json"]
    listed = {line.split("  ")[1] for line in sums.splitlines()}
    assert listed == {"Modelfile", "README.txt", "demo-Q4_1.gguf", "localserve.json"}
    assert "localserve install demo.tar --store" in readme and "sha256sum -c SHA256SUMS" in readme


@pytest.mark.parametrize("version", ["0.30.0", "0.5.4"])
def test_install_into_the_store_matches_what_the_api_creates(steer, smollm_gguf, tmp_path, version):
    from localserve.ollama import register
    from ollama_standin.fixtures import write_export
    from ollama_standin.server import Name

    # every layer kind an export can carry; messages as the [role, content] pairs export writes
    export = write_export(tmp_path / "full", smollm_gguf, system="You are terse & <exact>.",
                          license=["MIT", "Apache-2.0\nsecond line"],
                          messages=[["user", "hi"], ["assistant", "hello <there>"]],
                          parameters={"stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0.2, "num_ctx": 2048})
    with steer.behaving(version=version):  # neither rewrites the GGUF, so the layers can match exactly
        register(export, name=f"same-manifest:{version}", host=steer.url)
    api = json.loads(steer.store.find(Name.parse(f"same-manifest:{version}")).read_bytes())
    bundle = make_bundle(export, tmp_path / "full.tar").path

    store = ModelStore(tmp_path / "models")
    result = install_bundle(bundle, name=f"same-manifest:{version}", store_root=store.root)
    disk = store.manifest(f"same-manifest:{version}")

    assert result.target == "store"
    assert disk["layers"] == api["layers"]
    config = lambda m, root: json.loads((root / "blobs" / m["config"]["digest"].replace(":", "-")).read_bytes())
    api_cfg = config(api, steer.store.root)
    api_cfg.pop("rootfs")  # written before v0.32.7 only; readers ignore it
    assert config(disk, store.root) == api_cfg
    for layer in disk["layers"] + [disk["config"]]:
        blob = store.blob_path(layer["digest"])
        assert blob.stat().st_size == layer["size"] and oct(blob.stat().st_mode & 0o777) == "0o644"
    assert not list((store.root).glob(".localserve*")), "temp files left in the store"


def test_installed_store_model_is_listed_and_served_without_restart(steer, bundle):
    result = install_bundle(bundle, name="offline:v1", store_root=steer.store.root)
    tags = {t["name"]: t for t in HTTP.get(steer.url + "/api/tags").json()["models"]}
    assert tags["offline:v1"]["digest"] == result.manifest_digest
    r = HTTP.post(steer.url + "/api/chat", timeout=120, json={
        "model": "offline:v1", "stream": False, "options": {"num_predict": 48},
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"].strip() and r.json()["done_reason"] == "stop"


def test_bundle_from_store_round_trips(tmp_path, bundle):
    store = ModelStore(tmp_path / "a")
    install_bundle(bundle, name="me/trip:v1", store_root=store.root)
    back = bundle_from_store("me/trip:v1", tmp_path / "trip.tar", store.root)
    other = ModelStore(tmp_path / "b")
    install_bundle(back.path, name="me/trip:v1", store_root=other.root)
    assert other.manifest("me/trip:v1") == store.manifest("me/trip:v1")
    with tarfile.open(back.path) as t:
        meta = json.loads(t.extractfile("trip/localserve.json").read())
    assert meta["modelfile"]["parameters"] == {"stop": ["<|im_end|>"], "num_ctx": 2048}
    assert meta["source"]["model"] == "me/trip:v1"


def test_checksum_mismatch_is_refused_and_nothing_is_installed(bundle, tmp_path):
    def tamper(info, data):
        if info.name.endswith("localserve.json"):
            data = data.replace(b'"num_ctx": 2048', b'"num_ctx": 9999')
        return info, data

    bad = _rewrite_tar(bundle, tmp_path / "tampered.tar", tamper)
    with pytest.raises(ChecksumMismatch, match="localserve.json"):
        install_bundle(bad, store_root=tmp_path / "models")
    assert not list((tmp_path / "models").rglob("sha256-*"))
    assert not list((tmp_path / "models").glob("manifests/*/*/*/*"))


def test_unlisted_file_is_refused(bundle, tmp_path):
    def add_extra(info, data):
        return info, data

    bad = _rewrite_tar(bundle, tmp_path / "extra.tar", add_extra)
    with tarfile.open(bad, "a") as t:
        info = tarfile.TarInfo("demo/extra.sh")
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    with pytest.raises(ChecksumMismatch, match="extra.sh"):
        install_bundle(bad, store_root=tmp_path / "models")


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "hardlink", "chardev", "fifo"])
def test_malicious_archive_is_refused_before_anything_is_written(tmp_path, kind):
    evil = tmp_path / f"{kind}.tar"
    with tarfile.open(evil, "w") as t:
        ok = tarfile.TarInfo("demo/SHA256SUMS")
        ok.size = 0
        t.addfile(ok, io.BytesIO(b""))
        info = tarfile.TarInfo({"absolute": "/tmp/localserve-evil", "dotdot": "demo/../../evil"}.get(kind, "demo/x"))
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "demo/SHA256SUMS"
        elif kind == "chardev":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            info.type = tarfile.FIFOTYPE
        data = b"evil" if kind in ("absolute", "dotdot") else None
        info.size = len(data) if data else 0
        t.addfile(info, io.BytesIO(data) if data else None)
    models = tmp_path / "models"
    with pytest.raises(UnsafeArchive):
        install_bundle(evil, store_root=models)
    assert not Path("/tmp/localserve-evil").exists() and not (tmp_path.parent / "evil").exists()
    assert not [p for p in models.rglob("*") if p.is_file()]


def test_disk_full_while_writing_blobs_leaves_no_manifest_and_no_partial_blobs(fake_export, tmp_path, monkeypatch):
    from localserve.ollama.layers import read_export

    store = ModelStore(tmp_path / "models")
    real = ModelStore._blob_from_bytes

    def full_at_config(self, data, media_type, created):
        if media_type.endswith("container.image.v1+json"):  # the last blob: the model blob already landed
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, media_type, created)

    monkeypatch.setattr(ModelStore, "_blob_from_bytes", full_at_config)
    info = read_export(fake_export)
    with pytest.raises(DiskSpaceError, match="no manifest was written"):
        store.install(info.gguf_path(info.artifacts[0]), "full:v1", info.recipe)
    assert not list(store.root.rglob("sha256-*"))
    assert not list(store.root.glob("manifests/*/*/*/*"))


def _cli(args: list[str], preexec: str = "", wrapper: list[str] | None = None, env=None) -> subprocess.CompletedProcess:
    code = f"{preexec}\nfrom localserve.cli import main\nimport sys\nsys.argv = ['localserve'] + {args!r}\nmain()"
    return subprocess.run([*(wrapper or []), sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=300)


def test_disk_full_during_install_is_one_line_and_leaves_the_store_clean(bundle, tmp_path):
    # RLIMIT_FSIZE makes every write past 20 MB fail with EFBIG, as a full disk would
    limit = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000_000, 20_000_000))")
    models = tmp_path / "models"
    r = _cli(["-q", "install", str(bundle), "--store", str(models)], preexec=limit)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "full" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not [p for p in models.rglob("*") if p.is_file()]


def test_store_path_not_writable(bundle, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    wrapper = None
    if os.geteuid() == 0:  # root ignores modes; drop the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv")
        wrapper = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    r = _cli(["install", str(bundle), "--store", str(ro / "models")], wrapper=wrapper)
    assert r.returncode == 2, r.stderr
    assert "not writable" in r.stderr and "Traceback" not in r.stderr


def test_install_without_a_server_or_store_says_how_to_proceed(bundle, tmp_path):
    from localserve.errors import OllamaUnreachable

    with pytest.raises(OllamaUnreachable, match="--store"):
        install_bundle(bundle, host="http://127.0.0.1:9")


def test_install_through_the_api_when_a_server_runs(steer, bundle):
    result = install_bundle(bundle, name="via-api:v1", host=steer.url)
    assert result.target == "api"
    assert "via-api:v1" in [t["name"] for t in HTTP.get(steer.url + "/api/tags").json()["models"]]


def test_not_a_bundle(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match="not a tar"):
        install_bundle(junk, store_root=tmp_path / "models")


def test_a_file_that_is_not_gguf_is_refused_and_the_store_stays_clean(tmp_path):
    from ollama_standin.fixtures import write_export

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a GGUF file" * 1000)
    export = write_export(tmp_path / "bad", junk)
    tar = make_bundle(export, tmp_path / "bad.tar").path
    models = tmp_path / "models"
    with pytest.raises(InputError, match="not a readable GGUF"):
        install_bundle(tar, store_root=models)
    assert not [p for p in models.rglob("*") if p.is_file()]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_files_written_as_root_belong_to_the_store_owner(bundle, tmp_path):
    models = tmp_path / "service-models"
    models.mkdir()
    os.chown(models, 65534, 65534)  # like /usr/share/ollama/.ollama/models owned by `ollama`
    install_bundle(bundle, name="owned:v1", store_root=models)
    created = [p for p in models.rglob("*")]
    assert created and all(p.stat().st_uid == 65534 for p in created), [
        (str(p), p.stat().st_uid) for p in created if p.stat().st_uid != 65534]
