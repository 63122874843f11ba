"""KServe: an `InferenceService` (serving.kserve.io/v1beta1) on KServe's Hugging Face runtime, vLLM backend.

`modelFormat: huggingface` selects KServe's huggingfaceserver, which serves with vLLM when it can
(`--backend vllm` makes that explicit) and passes vLLM's own arguments through. The export folder is
on the PersistentVolumeClaim the k8s/ files use; KServe's storage initializer mounts it at /mnt/models,
so the model is /mnt/models/model and each adapter /mnt/models/adapters/NAME. Raw deployment mode
(Deployments, no Knative), which multi-node serving needs: `workerSpec` then spreads pipeline stages
over `pipelineParallelSize` nodes of `tensorParallelSize` GPUs each, on Ray.
"""

from __future__ import annotations

from .base import MANAGED, Deployment, Engine, dump, engine_args, env_list

FILE = "deploy/kserve/inferenceservice.yaml"
MODELS = "/mnt/models"  # where KServe mounts storageUri


def inference_service(d: Deployment) -> dict:
    args = [f"--model_name={d.name}", f"--model_dir={MODELS}/model", "--backend=vllm",
            *engine_args(d.serve, lambda p: f"{MODELS}/{p}", skip=("model", "port", "served-model-name"))]
    model = {"modelFormat": {"name": "huggingface"}, "storageUri": f"pvc://{d.claim}", "args": args,
             "resources": d.resources(d.serve.gpus_per_node if d.serve.multi_node else None)}
    if d.serve.environment:
        model["env"] = env_list(d.serve)
    predictor: dict = {"minReplicas": 1, "maxReplicas": 1, "model": model}
    if d.serve.multi_node:
        predictor["workerSpec"] = {"pipelineParallelSize": d.pp, "tensorParallelSize": d.tp}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": d.slug, "labels": dict(MANAGED),
                         "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
            "spec": {"predictor": predictor}}


def render(d: Deployment) -> dict[str, str]:
    head = d.header("KServe InferenceService", f"The export folder on the PersistentVolumeClaim {d.claim} "
                                              f"(storageUri pvc://{d.claim}, mounted at {MODELS}).")
    return {FILE: head + dump(inference_service(d))}


ENGINE = Engine("kserve", "KServe InferenceService", render,
                "serving.kserve.io/v1beta1 InferenceService (modelFormat huggingface, vLLM backend)")
