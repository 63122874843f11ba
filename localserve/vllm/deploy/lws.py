"""LeaderWorkerSet (leaderworkerset.x-k8s.io/v1): one model over one group of pods, the leader serving.

vLLM's own multi-node documentation deploys with it: every pod of the group mounts the export, the
leader starts a Ray head and, once every node has joined, vLLM from the export's vllm-config.yaml
(`--distributed-executor-backend ray`, pipeline stages across the nodes); the workers join the
leader's Ray head. A one-node layout is a group of one: the leader runs vLLM alone.
"""

from __future__ import annotations

from ..serve import CONFIG_FILE, MOUNT, RAY_PORT
from .base import MANAGED, Deployment, Engine, dump, env_list, export_volume

FILES = ("deploy/lws/leaderworkerset.yaml", "deploy/lws/service.yaml")


def leader_script(d: Deployment) -> str:
    serve = f"exec python3 -m vllm.entrypoints.openai.api_server --config {MOUNT}/{CONFIG_FILE} --host 0.0.0.0"
    if not d.serve.multi_node:
        return serve
    # vLLM places its pipeline stages once every node has joined the Ray cluster.
    return (f"ray start --head --port={RAY_PORT} && "
            f"until [ \"$(ray status 2>/dev/null | grep -c ' node_')\" -ge {d.nodes} ]; do sleep 5; done && {serve}")


def worker_script() -> str:
    return f"ray start --block --address=$(LWS_LEADER_ADDRESS):{RAY_PORT}"


def leaderworkerset(d: Deployment) -> dict:
    volumes, mounts = export_volume(d.claim)
    leader = {"name": "vllm-leader", "image": d.image, "workingDir": MOUNT, "command": ["bash", "-c"],
              "args": [leader_script(d)], "env": env_list(d.serve), "ports": [{"containerPort": d.serve.port}],
              "resources": d.resources(),
              "readinessProbe": {"httpGet": {"path": "/health", "port": d.serve.port}, "initialDelaySeconds": 60,
                                 "periodSeconds": 10},
              "volumeMounts": mounts}
    if not leader["env"]:
        del leader["env"]
    worker = {"name": "vllm-worker", "image": d.image, "command": ["bash", "-c"], "args": [worker_script()],
              "resources": d.resources(), "volumeMounts": mounts}
    template = {"size": d.nodes, "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {"metadata": {"labels": {"role": "leader"}}, "spec": {"containers": [leader], **volumes}},
                "workerTemplate": {"spec": {"containers": [worker], **volumes}}}
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": d.slug, "labels": dict(MANAGED)},
            "spec": {"replicas": 1, "startupPolicy": "LeaderCreated", "leaderWorkerTemplate": template}}


def service(d: Deployment) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": d.slug, "labels": dict(MANAGED)},
            "spec": {"selector": {"leaderworkerset.sigs.k8s.io/name": d.slug, "role": "leader"},
                     "ports": [{"name": "http", "port": d.serve.port, "targetPort": d.serve.port}]}}


def render(d: Deployment) -> dict[str, str]:
    head = d.header("LeaderWorkerSet", f"Needs the LeaderWorkerSet controller; the export folder on the "
                                       f"ReadOnlyMany PersistentVolumeClaim {d.claim}, mounted at {MOUNT} on every pod.")
    return {FILES[0]: head + dump(leaderworkerset(d)), FILES[1]: head + dump(service(d))}


ENGINE = Engine("lws", "LeaderWorkerSet", render, "leaderworkerset.x-k8s.io/v1 LeaderWorkerSet + v1 Service")
