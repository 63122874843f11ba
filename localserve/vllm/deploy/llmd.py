"""llm-d through KServe: an `LLMInferenceService` (serving.kserve.io/v1alpha2).

KServe's LLMInferenceService is built on llm-d: the controller runs vLLM from its preset (the
well-known LLMInferenceServiceConfig), puts llm-d's inference scheduler (prefix-cache and load aware
routing, Gateway API Inference Extension) in front and routes through a Gateway. The object says what
to serve and how wide: `model.uri` (the export's model/ on the PersistentVolumeClaim), the adapters
(`model.lora`), `parallelism` (tensor, pipeline), `replicas`, and the vLLM container's resources and
flags (`template`, `worker` on several nodes). The rest of the serve configuration goes to vLLM in
VLLM_ADDITIONAL_ARGS, which the preset appends to its `vllm serve` command. v1alpha2 is the version
KServe stores (v1alpha1, the first, is still served and converted).
"""

from __future__ import annotations

import shlex

from .base import MANAGED, Deployment, Engine, dump, engine_args, env_list

FILE = "deploy/llm-d/llminferenceservice.yaml"
MODELS = "/mnt/models"  # where the preset mounts model.uri
# Set by the object's own fields (model.name, parallelism, model.lora) or by the preset (model, port).
FROM_FIELDS = ("model", "port", "served-model-name", "tensor-parallel-size", "pipeline-parallel-size",
               "distributed-executor-backend", "enable-lora", "max-lora-rank", "max-loras", "max-cpu-loras",
               "lora-modules")


def container(d: Deployment) -> dict:
    flags = engine_args(d.serve, lambda p: f"{MODELS}/{p}", skip=FROM_FIELDS)
    env = [*env_list(d.serve), {"name": "VLLM_ADDITIONAL_ARGS", "value": shlex.join(flags)}]
    return {"name": "main", "env": env, "resources": d.resources()}


def llm_inference_service(d: Deployment) -> dict:
    model: dict = {"uri": f"pvc://{d.claim}/model", "name": d.name}
    s = d.serve
    if s.lora:
        model["lora"] = {"adapters": [{"name": n, "uri": f"pvc://{d.claim}/{p}"} for n, p in d.adapters],
                         "maxAdapters": s.max_loras, "maxCpuAdapters": s.max_cpu_loras, "maxRank": s.max_lora_rank}
    spec = {"model": model, "replicas": 1, "parallelism": {"tensor": d.tp, "pipeline": d.pp},
            "router": {"gateway": {}, "route": {}, "scheduler": {}},
            "template": {"containers": [container(d)]}}
    if s.multi_node:
        spec["worker"] = {"containers": [container(d)]}
    return {"apiVersion": "serving.kserve.io/v1alpha2", "kind": "LLMInferenceService",
            "metadata": {"name": d.slug, "labels": dict(MANAGED)}, "spec": spec}


def render(d: Deployment) -> dict[str, str]:
    head = d.header("llm-d (KServe LLMInferenceService)",
                    f"The export folder on the PersistentVolumeClaim {d.claim}; needs KServe's LLMInferenceService "
                    "controller and a Gateway API gateway.")
    return {FILE: head + dump(llm_inference_service(d))}


ENGINE = Engine("llm-d", "llm-d (KServe LLMInferenceService)", render,
                "serving.kserve.io/v1alpha2 LLMInferenceService")
