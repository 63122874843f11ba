"""vllm tier: the multi-node path run here. The demo adapter exported for two nodes (TP=1 x PP=2, Ray); its
own launch.sh starts a Ray head and a worker as separate `ray start` processes on loopback (127.0.0.2 and
127.0.0.3, RAY_PORT and RAY_START_ARGS), the head then starts vLLM with --distributed-executor-backend ray.

Measured on vLLM 0.32.0's CPU build with Ray 2.60.0: the two-node cluster forms, and vLLM refuses to place
its workers on it — "ValueError: current platform cpu does not support ray." (vllm/v1/executor/ray_utils.py,
initialize_ray_cluster: CpuPlatform has no ray_device_key, so any layout over Ray, PP or TP, is refused on
CPU). The files still pass vLLM's own argument parser. A vLLM that runs it would answer the probe: then this
test fails and says so, and the README's multi-node note changes with it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from localserve.exports import VllmExportSpec, export_vllm
from localserve.vllm.runtime import CPU_ARGS, CPU_ENV, free_port, parse_with_vllm, vllm_python
from vllmtier import chat, pytestmark  # noqa: F401  (the tier's marks and skip)

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"  # loopback: Ray turns 127.0.0.1 into the host's own address
REFUSAL = "current platform cpu does not support ray"


@pytest.fixture(scope="module")
def two_node_export(demo_adapter, embedded_base, tmp_path_factory):
    """The smallest layout over two one-GPU nodes of 850 MB that holds the model: TP=1 x PP=2."""
    return export_vllm(VllmExportSpec(adapters=(demo_adapter,), name="demo", gpu_memory=850_000_000, gpus=1,
                                      nodes=2, ctx=2048, out=tmp_path_factory.mktemp("vllm") / "two-nodes"))


def test_the_two_node_files_pass_vllms_own_parser(two_node_export):
    parsed = parse_with_vllm(two_node_export.out_dir / "vllm-config.yaml", [*CPU_ARGS, "--host", "127.0.0.1"])
    assert (parsed["tensor_parallel_size"], parsed["pipeline_parallel_size"]) == (1, 2)
    assert parsed["distributed_executor_backend"] == "ray" and parsed["served_model_name"] == ["demo"]


def _wait_for(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout:.0f} s:\n" + "\n".join(log.read_text(errors="replace")
                                                                           .splitlines()[-20:]))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def ray_cluster_from_launch_sh(export_dir: Path, vllm_port: int):
    """`./launch.sh head ...vLLM args` and `./launch.sh worker HEAD`, each in a session of its own; everything
    Ray started is stopped at the end (`ray stop --force`) and both process groups are killed."""
    venv_bin = vllm_python().parent
    tmp = Path(tempfile.mkdtemp(prefix="ls-ray-"))  # short: Ray's socket paths live under it
    port = free_port()
    env = {**os.environ, **CPU_ENV, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
           "VLLM_PYTHON": str(venv_bin / "python"), "TMPDIR": str(tmp), "RAY_PORT": str(port),
           "RAY_USAGE_STATS_ENABLED": "0"}
    logs = {role: tmp / f"{role}.log" for role in ("head", "worker")}
    processes = []

    def start(role: str, args: list[str], ray_args: str) -> subprocess.Popen:
        with open(logs[role], "w") as log:
            process = subprocess.Popen(["bash", str(export_dir / "launch.sh"), role, *args], stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**env, "RAY_START_ARGS": ray_args})
        processes.append(process)
        return process

    try:
        head = start("head", [*CPU_ARGS, "--host", "127.0.0.1", "--port", str(vllm_port)],
                     f"--node-ip-address={HEAD_IP} --num-cpus=1 --include-dashboard=false --disable-usage-stats")
        _wait_for(lambda: "Ray runtime started" in logs["head"].read_text(errors="replace"), 120,
                  "the Ray head", logs["head"])
        start("worker", [HEAD_IP], f"--node-ip-address={WORKER_IP} --num-cpus=1 --disable-usage-stats")
        yield head, logs, f"{HEAD_IP}:{port}", env
    finally:
        subprocess.run([str(venv_bin / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_head_and_a_worker_form_a_ray_cluster_on_loopback_and_vllms_cpu_build_refuses_ray(two_node_export,
                                                                                           demo_adapter):
    url_port = free_port()
    url = f"http://127.0.0.1:{url_port}"
    with ray_cluster_from_launch_sh(two_node_export.out_dir, url_port) as (head, logs, address, env):
        _wait_for(lambda: head.poll() is not None or _healthy(url), 600, "vLLM's start or its exit", logs["head"])
        if head.poll() is None:  # vLLM runs across the two Ray nodes: the fine-tune answers
            probe = json.loads((demo_adapter / "probe.json").read_text())
            answer = chat(url, "demo", probe["question"])["message"]["content"]
            pytest.fail(f"vLLM's CPU build now runs PP=2 over Ray and answered {answer!r} (expected "
                        f"{probe['expected']!r}): assert the probe here and update the README's multi-node note")
        status = subprocess.run([str(Path(env["VLLM_PYTHON"]).parent / "ray"), "status", "--address", address],
                                env=env, capture_output=True, text=True, timeout=120).stdout
        head_log, worker_log = (_plain(logs[role].read_text(errors="replace")) for role in ("head", "worker"))
    # launch.sh waits for both nodes before it starts vLLM, and the cluster outlives vLLM's refusal
    assert status.count(" node_") == 2 and "2.0 CPU" in status, status
    assert f"Local node IP: {HEAD_IP}" in head_log and f"Local node IP: {WORKER_IP}" in worker_log
    assert f"ValueError: {REFUSAL}." in head_log and head.returncode != 0


def _plain(text: str) -> str:
    """Ray's console output without its colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
