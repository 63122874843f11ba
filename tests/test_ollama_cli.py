"""The Ollama commands as a user types them: ls/show/rm, promote and rollback with their history,
and bad input as one line with a non-zero exit."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from localserve.cli import cli

pytest_plugins = ["ollama_standin.fixtures"]


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["-q", *args])
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def store_with_two_versions(tmp_path_factory, fake_export):
    from localserve.ollama.bundle import make_bundle

    root = tmp_path_factory.mktemp("cli-store") / "models"
    tar = make_bundle(fake_export, tmp_path_factory.mktemp("cli-bundle") / "demo.tar").path
    for tag in ("v1", "v2"):
        code, out, err = run("install", str(tar), "--name", f"demo:{tag}", "--store", str(root))
        assert code == 0, err
    return root


def test_ls_and_show_read_the_store(store_with_two_versions, isolated_home):
    code, out, _ = run("ls", "--store", str(store_with_two_versions), "--json")
    assert code == 0
    assert {m["name"] for m in json.loads(out)} >= {"demo:v1", "demo:v2"}
    code, out, _ = run("show", "demo:v1", "--store", str(store_with_two_versions))
    shown = json.loads(out)
    assert shown["parameters"] == {"num_ctx": 2048, "stop": ["<|im_end|>"]}
    assert shown["template"].startswith("{{- range .Messages }}")


def test_promote_then_rollback_on_the_store(store_with_two_versions, isolated_home):
    from localserve.ollama.store import ModelStore

    store = ModelStore(store_with_two_versions)
    s = str(store_with_two_versions)
    assert run("promote", "demo:v1", "--as", "demo:latest", "--store", s)[0] == 0
    code, out, _ = run("promote", "demo:v2", "--as", "demo:latest", "--store", s, "--note", "better KL")
    assert code == 0 and "was demo:v1" in out
    assert store.manifest_digest("demo:latest") == store.manifest_digest("demo:v2")

    code, out, _ = run("rollback", "demo", "--store", s)
    assert code == 0 and "demo:latest -> demo:v1" in out
    assert store.manifest_digest("demo:latest") == store.manifest_digest("demo:v1")

    history = json.loads((isolated_home / "localserve-home" / "history.json").read_text())
    (events,) = [a["events"] for a in history["aliases"].values()]
    assert [e["action"] for e in events] == ["promote", "promote", "rollback"]
    assert events[1]["rolled_back_at"] and events[1]["note"] == "better KL"

    code, _, err = run("rollback", "demo", "--store", s)
    assert code == 2 and "no earlier promoted version" in err


def test_promote_and_rollback_through_the_api(steer, fake_export, isolated_home):
    with steer.behaving(version="0.30.0"):
        _promote_and_rollback_through_the_api(steer, fake_export, isolated_home)


def _promote_and_rollback_through_the_api(steer, fake_export, isolated_home):
    from localserve.ollama import register
    from localserve.ollama.client import OllamaServer

    for tag in ("a", "b"):
        register(fake_export, name=f"life:{tag}", host=steer.url)
    # the two versions differ (as two exports would), so the alias's content tells which one it is
    run("rm", "life:b", "--host", steer.url)
    from ollama_standin.fixtures import write_export
    other = write_export(isolated_home / "other", fake_export / "demo-Q4_1.gguf", system="Be brief.")
    register(other, name="life:b", host=steer.url)

    server = OllamaServer(steer.url)
    assert run("promote", "life:a", "--as", "life:latest", "--host", steer.url)[0] == 0
    assert run("promote", "life:b", "--as", "life:latest", "--host", steer.url)[0] == 0
    assert server.manifest_digest("life:latest") == server.manifest_digest("life:b")
    assert run("rollback", "life", "--host", steer.url)[0] == 0
    assert server.manifest_digest("life:latest") == server.manifest_digest("life:a")


def test_rm_removes_the_model_and_its_unshared_blobs(tmp_path, fake_export, isolated_home):
    from localserve.ollama.layers import read_export
    from localserve.ollama.store import ModelStore

    store = ModelStore(tmp_path / "models")
    info = read_export(fake_export)
    store.install(info.gguf_path(info.artifacts[0]), "keep:v1", info.recipe)
    store.install(info.gguf_path(info.artifacts[0]), "drop:v1", info.recipe.__class__(system="only here"))
    system_blob = next(store.blob_path(layer["digest"]) for layer in store.manifest("drop:v1")["layers"]
                       if layer["mediaType"].endswith("system"))
    assert run("rm", "drop:v1", "--store", str(store.root))[0] == 0
    assert not system_blob.exists()
    assert store.find("drop:v1") is None
    assert store.blob_path(store.manifest("keep:v1")["layers"][0]["digest"]).exists()  # shared GGUF stays


@pytest.mark.parametrize("args, code, words", [
    (["ls", "--host", "http://127.0.0.1:9"], 3, ["not reachable", "ollama serve", "--store"]),
    (["ls", "--host", "http://127.0.0.1:9", "--store"], 2, ["--host and --store"]),
    (["install", "no-such.tar", "--store", "x"], 2, ["does not exist"]),
    (["show", "bad name!", "--store", "x"], 2, ["invalid Ollama model name", "rules"]),
    (["register", "no-such-dir"], 2, ["no localserve.json"]),
    (["bundle", "-o", "x.tar"], 2, ["OUTPUT_DIR or --from-store"]),
    (["verify", "demo:v1", "--client", "curl", "--host", "http://127.0.0.1:9"], 2, ["unknown client 'curl'"]),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(args, code, words, isolated_home):
    got, out, err = run(*args)
    assert got == code, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0]
