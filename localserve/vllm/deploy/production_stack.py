"""vLLM production-stack: the values for its Helm chart (`helm install -f values.yaml vllm vllm/vllm-stack`).

One `servingEngineSpec.modelSpec[]` entry, in the shape the chart's values.schema.json publishes. The
chart runs `vllm serve MODEL_URL` on a volume of `pvcStorage` mounted at /data: copy the export folder
there (model/ and adapters/), and the entry points at /data/model and /data/adapters/NAME. What the
chart maps itself goes in vllmConfig (maxModelLen, dtype, tensorParallelSize, maxNumSeqs,
gpuMemoryUtilization, maxLoras, enablePrefixCaching); the rest of the serve configuration goes in
vllmConfig.extraArgs, as vLLM's own flags. Several nodes: the chart's `raySpec` (a KubeRay cluster:
the head node plus replicaCount workers).
"""

from __future__ import annotations

from .base import Deployment, Engine, dump, engine_args

VALUES = "deploy/production-stack/values.yaml"
DATA = "/data"  # where the chart mounts the modelSpec's volume
# Options the chart turns into flags itself (values.schema.json + templates/deployment-vllm-multi.yaml).
CHART_OPTIONS = {"max-model-len": "maxModelLen", "dtype": "dtype", "tensor-parallel-size": "tensorParallelSize",
                 "max-num-seqs": "maxNumSeqs", "gpu-memory-utilization": "gpuMemoryUtilization",
                 "max-loras": "maxLoras", "enable-prefix-caching": "enablePrefixCaching"}


def model_spec(d: Deployment) -> dict:
    options = d.serve.options()
    config = {field: options[key] for key, field in CHART_OPTIONS.items() if key in options}
    skip = ("model", "port", "enable-lora", *CHART_OPTIONS)
    config["extraArgs"] = engine_args(d.serve, lambda p: f"{DATA}/{p}", skip=skip)
    gpus = d.gpus_per_pod
    spec = {"name": d.slug.removeprefix("vllm-"), "repository": d.image.rsplit(":", 1)[0],
            "tag": d.image.rsplit(":", 1)[1], "modelURL": f"{DATA}/model",
            "replicaCount": d.nodes - 1 if d.serve.multi_node else 1,
            "requestCPU": d.cpus_per_pod, "requestMemory": d.memory_per_pod, "requestGPU": gpus,
            "pvcStorage": d.storage, "vllmConfig": config}
    if d.serve.lora:
        spec["enableLoRA"] = True  # read by the chart's template (not in its schema, which allows more keys)
    if d.serve.environment:
        spec["env"] = [{"name": k, "value": v} for k, v in d.serve.environment.items()]
    if d.serve.multi_node:
        spec["raySpec"] = {"headNode": {"requestCPU": d.cpus_per_pod, "requestMemory": d.memory_per_pod,
                                        "requestGPU": gpus}}
    return spec


def values(d: Deployment) -> dict:
    return {"servingEngineSpec": {"modelSpec": [model_spec(d)]}}


def render(d: Deployment) -> dict[str, str]:
    head = d.header("vLLM production-stack (Helm values)",
                    "helm repo add vllm https://vllm-project.github.io/production-stack && "
                    "helm install vllm vllm/vllm-stack -f values.yaml",
                    f"Copy the export folder's model/ and adapters/ into the engine's volume ({DATA}) before the first "
                    "request; the router serves the model under its name.")
    return {VALUES: head + dump(values(d))}


ENGINE = Engine("production-stack", "vLLM production-stack", render,
                "Helm values: servingEngineSpec.modelSpec[] (values.schema.json)")
