"""SGLang serving the same Hugging Face folder, with the same layout, adapters and features.

SGLang reads the export's `model/` as it is (`--model-path`) and serves unmerged adapters by name
(`--enable-lora --lora-paths NAME=PATH`, clients pass `model=NAME`). vLLM's options map to SGLang's:
tensor/pipeline parallel -> --tp-size/--pp-size (nodes: --nnodes/--node-rank/--dist-init-addr),
max-model-len -> --context-length, max-num-seqs -> --max-running-requests, gpu-memory-utilization ->
--mem-fraction-static, prefix caching off -> --disable-radix-cache (SGLang's radix cache is on by
default), the structured-output backend -> --grammar-backend, ngram / draft-model speculation ->
--speculative-algorithm NGRAM / STANDALONE.
"""

from __future__ import annotations

import shlex

from ..serve import MOUNT
from .base import MANAGED, Deployment, Engine, dump, env_list, export_volume

LAUNCH = "deploy/sglang/launch.sh"
IMAGE = "lmsysorg/sglang:v0.5.23"  # the release whose argument parser the tests check these files against
DIST_PORT = 20000  # the leader's torch.distributed rendezvous port (--dist-init-addr HOST:PORT)
# vLLM's structured-output backend -> SGLang's --grammar-backend ("auto": SGLang's own default).
GRAMMAR_BACKENDS = {"xgrammar": "xgrammar", "guidance": "llguidance", "outlines": "outlines"}


def sglang_args(d: Deployment, root: str) -> list[str]:
    """SGLang's server arguments for the export folder at `root` (without the multi-node rank)."""
    s = d.serve
    args = ["--model-path", f"{root}/model", "--served-model-name", s.name, "--host", "0.0.0.0",
            "--port", str(s.port), "--tp-size", str(d.tp), "--pp-size", str(d.pp),
            "--dtype", s.dtype, "--mem-fraction-static", str(s.gpu_memory_utilization)]
    if s.max_model_len:
        args += ["--context-length", str(s.max_model_len)]
    if s.max_num_seqs:
        args += ["--max-running-requests", str(s.max_num_seqs)]
    if s.trust_remote_code:
        args.append("--trust-remote-code")
    if s.quantization:
        args += ["--quantization", s.quantization]
    if not s.prefix_caching:
        args.append("--disable-radix-cache")
    if s.structured_output_backend in GRAMMAR_BACKENDS:
        args += ["--grammar-backend", GRAMMAR_BACKENDS[s.structured_output_backend]]
    speculative = dict(s.speculative or ())
    if speculative.get("method") == "ngram":
        args += ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens",
                 str(speculative["num_speculative_tokens"])]
    elif speculative:
        args += ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path",
                 f"{root}/{str(speculative['model']).removeprefix('./')}",
                 "--speculative-num-draft-tokens", str(speculative["num_speculative_tokens"])]
    if s.lora:
        args += ["--enable-lora", "--max-lora-rank", str(s.max_lora_rank), "--max-loras-per-batch",
                 str(s.max_loras), "--max-loaded-loras", str(s.max_cpu_loras)]
        if d.adapters:
            args += ["--lora-paths", *(f"{n}={root}/{p}" for n, p in d.adapters)]
    if d.serve.multi_node:
        args += ["--nnodes", str(d.nodes)]
    return args


def launch_script(d: Deployment) -> str:
    lines = ["#!/usr/bin/env bash",
             d.header("SGLang", "Run from anywhere: the export folder is this file's grandparent. SGLANG_PYTHON selects "
                                "the Python that has SGLang (default: python3).").rstrip("\n")]
    if d.serve.multi_node:
        lines.append(f"# {d.nodes} nodes: on the first  ./launch.sh 0 FIRST_NODE_ADDRESS, on node i  "
                     "./launch.sh i FIRST_NODE_ADDRESS")
    lines += ["set -euo pipefail", 'EXPORT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"',
              'PY="${SGLANG_PYTHON:-python3}"']
    lines += [f"export {k}=\"${{{k}:-{v}}}\"" for k, v in d.serve.environment.items()]
    words = [_shell_word(a) for a in sglang_args(d, _ROOT)]
    if d.serve.multi_node:
        lines += ['rank="${1:?usage: ./launch.sh NODE_RANK FIRST_NODE_ADDRESS}"',
                  'head="${2:?usage: ./launch.sh NODE_RANK FIRST_NODE_ADDRESS}"']
        words += ["--node-rank", '"$rank"', "--dist-init-addr", f'"$head:{DIST_PORT}"']
    lines.append('exec "$PY" -m sglang.launch_server \\\n  ' + " \\\n  ".join(_flag_lines(words)))
    return "\n".join(lines) + "\n"


_ROOT = "\0EXPORT"  # where the export folder goes in launch.sh's arguments: "$EXPORT", expanded at run time


def _shell_word(arg: str) -> str:
    """`arg` as one shell word; the export folder becomes "$EXPORT" inside double quotes."""
    if _ROOT not in arg:
        return shlex.quote(arg)
    escaped = "".join("\\" + c if c in '"\\$`' else c for c in arg)
    return '"' + escaped.replace(_ROOT, "$EXPORT") + '"'


def _flag_lines(words: list[str]) -> list[str]:
    """A flag and the values that follow it on one line."""
    lines: list[list[str]] = []
    for word in words:
        if word.startswith("--") or not lines:
            lines.append([word])
        else:
            lines[-1].append(word)
    return [" ".join(line) for line in lines]


def deployment(d: Deployment) -> dict:
    volumes, mounts = export_volume(d.claim)
    container = {"name": "sglang", "image": IMAGE, "command": ["python3", "-m", "sglang.launch_server"],
                 "args": sglang_args(d, MOUNT), "ports": [{"containerPort": d.serve.port}],
                 "resources": d.resources(),
                 "readinessProbe": {"httpGet": {"path": "/health", "port": d.serve.port}, "initialDelaySeconds": 60,
                                    "periodSeconds": 10},
                 "volumeMounts": mounts}
    if d.serve.environment:
        container["env"] = env_list(d.serve)
    labels = {"app": f"{d.slug}-sglang"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{d.slug}-sglang", "labels": {**labels, **MANAGED}},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [container], **volumes}}}}


def leaderworkerset(d: Deployment) -> dict:
    """Several nodes: one LeaderWorkerSet group, each pod running SGLang with its rank."""
    volumes, mounts = export_volume(d.claim)
    command = " ".join(["python3", "-m", "sglang.launch_server", *map(shlex.quote, sglang_args(d, MOUNT))])

    def pod(rank: str, role: str) -> dict:
        container = {"name": f"sglang-{role}", "image": IMAGE, "command": ["bash", "-c"],
                     "args": [f"exec {command} --node-rank {rank} --dist-init-addr $(LWS_LEADER_ADDRESS):{DIST_PORT}"],
                     "resources": d.resources(), "volumeMounts": mounts}
        if role == "leader":
            container["ports"] = [{"containerPort": d.serve.port}]
        if d.serve.environment:
            container["env"] = env_list(d.serve)
        return {"spec": {"containers": [container], **volumes}}

    leader, worker = pod("0", "leader"), pod("$(LWS_WORKER_INDEX)", "worker")
    leader["metadata"] = {"labels": {"role": "leader"}}
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": f"{d.slug}-sglang", "labels": dict(MANAGED)},
            "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": d.nodes, "leaderTemplate": leader,
                                                              "workerTemplate": worker}}}


def render(d: Deployment) -> dict[str, str]:
    head = d.header("SGLang", f"The export folder on the PersistentVolumeClaim {d.claim}, mounted at {MOUNT}.")
    files = {LAUNCH: launch_script(d)}
    if d.serve.multi_node:
        files["deploy/sglang/leaderworkerset.yaml"] = head + dump(leaderworkerset(d))
    else:
        files["deploy/sglang/deployment.yaml"] = head + dump(deployment(d))
    return files


ENGINE = Engine("sglang", "SGLang", render, "python -m sglang.launch_server arguments; apps/v1 Deployment or LeaderWorkerSet")
