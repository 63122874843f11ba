"""The demo's console, as a new user sees it (`make demo`): our step lines and the result, nothing from
the libraries underneath; with --quiet, the result alone. Golden files in tests/golden/console/ with
paths and timings masked; regenerate after an intended change with LOCALSERVE_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "console"
pytestmark = pytest.mark.slow


def _masked(text: str, out: Path, adapter: Path) -> str:
    text = text.replace(str(out), "<OUT>").replace(str(adapter), "<ADAPTER>")
    text = re.sub(r"/\S*/models/SmolLM2-135M-Instruct", "<CACHE>/models/SmolLM2-135M-Instruct", text)
    return re.sub(r"\d+(\.\d+)? tokens/s", "<N> tokens/s", text)


def _run(demo_adapter: Path, out: Path, *flags: str) -> str:
    # what `make demo` runs, in a process of its own (as a user's shell would), no Ollama answering
    cmd = [sys.executable, "-m", "localserve", *flags, "export", str(demo_adapter), "--quant", "Q4_K_M", "--out",
           str(out), "--name", "demo"]
    env = {**os.environ, "OLLAMA_HOST": "http://127.0.0.1:9"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return _masked(done.stderr + done.stdout, out, demo_adapter)


def _check(console: str, name: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("LOCALSERVE_UPDATE_GOLDEN"):
        golden.write_text(console, encoding="utf-8")
    assert console == golden.read_text(encoding="utf-8")


def test_the_demo_prints_our_lines_only_and_quiet_prints_the_result_alone(demo_adapter, embedded_base, tmp_path):
    out = tmp_path / "demo"
    _check(_run(demo_adapter, out), "demo-default.txt")
    # the re-run skips every stage (cached), so it is quick; --quiet leaves the result only
    _check(_run(demo_adapter, out, "--quiet"), "demo-quiet.txt")


def test_the_first_materialisation_prints_our_line_only_and_a_run_started_meanwhile_waits_for_it(tmp_path):
    # on a fresh machine the demo first turns the packaged GGUF into a Hugging Face folder; transformers'
    # loader draws its own bar for that unless told not to. A second run started meanwhile (a second
    # export, a second test worker) waits for the first instead of writing the same folder.
    code = ("from localserve.progress import set_debug; set_debug(False)\n"
            "from localserve.models.embedded import embedded_base; print(embedded_base())")
    env = {**os.environ, "LOCALSERVE_HOME": str(tmp_path)}
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    lock = tmp_path / "models" / ".SmolLM2-135M-Instruct.lock"
    deadline = time.monotonic() + 300
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    out, err = first.communicate(timeout=600)
    model = str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    assert first.returncode == 0, err
    assert err.splitlines() == [line for line in err.splitlines()
                                if line.startswith("localserve: materialising ")] != [], err
    assert out.strip() == model
    assert second.returncode == 0, second.stderr
    assert second.stderr.splitlines() == [f"localserve: waiting for pid {first.pid}, which is materialising "
                                          f"HuggingFaceTB/SmolLM2-135M-Instruct into {model}"], second.stderr
    assert second.stdout.strip() == model
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["SmolLM2-135M-Instruct"]
