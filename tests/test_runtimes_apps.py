"""`localserve install EXPORT --runtime lmstudio|jan`: the GGUF placed where each app looks (LM Studio:
MODELS/<publisher>/<model>/<file>.gguf; Jan: DATA/llamacpp/models/<id>/model.yml + model.gguf), checked against
the apps' documented rules, then served from the installed folder by llama-server started the way the app
starts it (Jan's llama.cpp extension's arguments, its API key included)."""

from __future__ import annotations


import httpx
import pytest
import yaml
from click.testing import CliRunner

import llamaserver
from localserve.cli import cli
from localserve.errors import InputError
from localserve.llamacpp.server import free_port, stop
from localserve.runtimes.apps import PUBLISHER, install_jan, install_lmstudio, jan_command, lmstudio_models


def _start(args: list[str], port: int):
    import subprocess
    import time

    from localserve.llamacpp.tools import server_binary

    binary = llamaserver.binary() or server_binary()
    process = subprocess.Popen([str(binary), "--host", "127.0.0.1", "--threads", "1", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None, "llama-server exited while starting"
        time.sleep(0.2)
    stop(process)
    raise AssertionError("llama-server did not start")


def test_lmstudio_gets_publisher_model_file_hard_linked(tiny_export, tmp_path):
    models = tmp_path / "lmstudio-models"
    r = install_lmstudio(tiny_export, models)
    expected = models / PUBLISHER / "tiny" / "tiny-Q4_K_M.gguf"
    assert r.gguf == expected and r.how == "hard link" and r.model == f"{PUBLISHER}/tiny"
    assert expected.stat().st_ino == (tiny_export / "tiny-Q4_K_M.gguf").stat().st_ino
    assert lmstudio_models(models) == {f"{PUBLISHER}/tiny": [expected]}  # two folder levels, as LM Studio lists
    assert install_lmstudio(tiny_export, models).how == "already there"


def test_lmstudio_models_folder_comes_from_its_settings(tiny_export, tmp_path, monkeypatch):
    chosen = tmp_path / "elsewhere"
    (tmp_path / "config" / "LM Studio").mkdir(parents=True)
    (tmp_path / "config" / "LM Studio" / "settings.json").write_text(f'{{"downloadsFolder": "{chosen}"}}')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no `lms` here
    assert install_lmstudio(tiny_export).gguf.parent == chosen / PUBLISHER / "tiny"


@pytest.mark.parametrize("name", ["a/b", ".hidden", "x" * 101, " padded", 'q"uote'])
def test_lmstudio_refuses_folder_names_it_would_not_list(tiny_export, tmp_path, name):
    with pytest.raises(InputError, match="LM Studio's model folder"):
        install_lmstudio(tiny_export, tmp_path, name=name)


def test_jan_gets_model_yml_beside_the_gguf(tiny_export, tmp_path):
    data = tmp_path / "jan-data"
    r = install_jan(tiny_export, data)
    folder = data / "llamacpp" / "models" / "tiny-Q4_K_M"
    config = yaml.safe_load((folder / "model.yml").read_text())
    assert config == {"model_path": "llamacpp/models/tiny-Q4_K_M/model.gguf", "name": "tiny-Q4_K_M",
                      "size_bytes": (tiny_export / "tiny-Q4_K_M.gguf").stat().st_size}
    assert r.how == "hard link" and (data / config["model_path"]).samefile(tiny_export / "tiny-Q4_K_M.gguf")


@pytest.mark.parametrize("name", ["../up", "a//b", "sp ace", "é"])
def test_jan_refuses_ids_it_would_refuse(tiny_export, tmp_path, name):
    with pytest.raises(InputError, match="Jan's model id"):
        install_jan(tiny_export, tmp_path, name=name)


def test_an_export_that_is_not_one_gguf_is_not_an_app_model(tiny_export, tmp_path):
    from localserve.lineage import read_record, write_record

    record = read_record(tiny_export)
    write_record(tiny_export, record.replace(kind="merge"))
    with pytest.raises(InputError, match="is a merge export"):
        install_jan(tiny_export, tmp_path)


def test_the_jan_install_serves_as_jan_starts_it(tiny_export, tmp_path):
    data = tmp_path / "jan-data"
    install_jan(tiny_export, data, name="team/tiny")
    port = free_port()
    process = _start(jan_command(data, "team/tiny", port, api_key="k3y", ctx=512), port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k3y"}).json()["data"][0]["id"] \
            == "team/tiny"
        body = {"model": "team/tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401  # Jan always sets a key
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer k3y"}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
    finally:
        stop(process)


def test_the_lmstudio_install_serves_from_its_folder(tiny_export, tmp_path):
    models = tmp_path / "lmstudio-models"
    install_lmstudio(tiny_export, models)
    (key, files), = lmstudio_models(models).items()
    port = free_port()
    process = _start(["--jinja", "-m", str(files[0]), "-a", key, "--port", str(port), "-c", "512"], port)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       json={"model": key, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["model"] == key
    finally:
        stop(process)


def test_cli_installs_for_jan_and_says_where(tiny_export, tmp_path):
    r = CliRunner().invoke(cli, ["install", str(tiny_export), "--runtime", "jan", "--dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "installed tiny-Q4_K_M for jan" in r.output and "model.yml" in r.output


def test_cli_refuses_an_ollama_flag_for_an_app(tiny_export):
    r = CliRunner().invoke(cli, ["install", str(tiny_export), "--runtime", "lmstudio", "--store", "x"])
    assert r.exit_code == 2 and r.output.startswith("error: --store names an Ollama")


def test_cli_says_an_export_folder_is_not_an_ollama_bundle(tiny_export):
    r = CliRunner().invoke(cli, ["install", str(tiny_export)])
    assert r.exit_code == 2 and r.output.startswith(f"error: {tiny_export} is a folder; Ollama installs a bundle")
    assert "localserve register" in r.output
