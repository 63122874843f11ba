"""Ray Serve LLM: a Serve config whose application is `ray.serve.llm:build_openai_app` with one
`LLMConfig`, and the same config as a KubeRay `RayService` (ray.io/v1) on Kubernetes.

The LLMConfig carries the layout and the serve configuration as vLLM engine arguments
(`engine_kwargs`: tensor/pipeline parallel sizes, context, features, LoRA limits); Ray Serve LLM
places each replica's TP x PP workers in a Ray placement group, across the RayService's GPU workers
(one Ray worker pod per node). Adapters are loaded by name from `lora_config.dynamic_lora_loading_path`,
which Ray Serve LLM reads from cloud storage only: copy the export's adapters/ to the --lora-storage
prefix; clients then ask for `model=BASE:ADAPTER`. Run it locally with the export folder at /export:
`serve run deploy/ray-serve/serve-config.yaml`.
"""

from __future__ import annotations

import yaml

from ..serve import MOUNT
from .base import MANAGED, Deployment, Engine, dump, export_volume

SERVE_CONFIG = "deploy/ray-serve/serve-config.yaml"
RAYSERVICE = "deploy/ray-serve/rayservice.yaml"
RAY_VERSION = "2.60.0"  # the Ray whose LLMConfig and Serve schema the tests check these files against
IMAGE = f"rayproject/ray-llm:{RAY_VERSION}-py311-cu128"
# LLMConfig fields say these, or Ray Serve LLM decides them itself.
NOT_ENGINE_KWARGS = ("model", "served-model-name", "port", "lora-modules", "distributed-executor-backend")
CLOUD_PREFIXES = ("s3://", "gs://", "abfss://", "azure://")  # what LoraConfig.dynamic_lora_loading_path accepts


def engine_kwargs(d: Deployment) -> dict:
    kwargs = {}
    for key, value in d.serve.options().items():
        if key in NOT_ENGINE_KWARGS:
            continue
        if isinstance(value, dict):
            value = {k: f"{MOUNT}/{v.removeprefix('./')}" if isinstance(v, str) and v.startswith("./") else v
                     for k, v in value.items()}
        kwargs[key.replace("-", "_")] = value
    return kwargs


def llm_config(d: Deployment) -> dict:
    config = {"model_loading_config": {"model_id": d.name, "model_source": f"{MOUNT}/model"},
              "engine_kwargs": engine_kwargs(d),
              "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}
    if d.serve.environment:
        config["runtime_env"] = {"env_vars": dict(d.serve.environment)}
    if d.serve.lora:
        config["lora_config"] = {"dynamic_lora_loading_path": d.lora_storage,
                                 "max_num_adapters_per_replica": d.serve.max_loras}
    return config


def serve_config(d: Deployment) -> dict:
    return {"applications": [{"name": d.slug, "route_prefix": "/", "import_path": "ray.serve.llm:build_openai_app",
                              "args": {"llm_configs": [llm_config(d)]}}]}


def ray_service(d: Deployment) -> dict:
    volumes, mounts = export_volume(d.claim)
    head = {"name": "ray-head", "image": IMAGE,
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}},
            "ports": [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
                      {"name": "client", "containerPort": 10001}, {"name": "serve", "containerPort": 8000}],
            "volumeMounts": mounts}
    worker = {"name": "ray-worker", "image": IMAGE, "resources": d.resources(d.serve.gpus_per_node),
              "volumeMounts": mounts}
    group = {"groupName": "gpu", "replicas": d.nodes, "minReplicas": d.nodes, "maxReplicas": d.nodes,
             "rayStartParams": {}, "template": {"spec": {"containers": [worker], **volumes}}}
    cluster = {"rayVersion": RAY_VERSION,
               "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
                                 "template": {"spec": {"containers": [head], **volumes}}},
               "workerGroupSpecs": [group]}
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": d.slug, "labels": dict(MANAGED)},
            "spec": {"serveConfigV2": yaml.safe_dump(serve_config(d), sort_keys=False),
                     "rayClusterConfig": cluster}}


def check(d: Deployment) -> None:
    from ...errors import InputError

    if d.serve.lora and not (d.lora_storage or "").startswith(CLOUD_PREFIXES):
        raise InputError("--deploy ray-serve serves the adapters through Ray Serve LLM, which loads them from cloud "
                         f"storage only ({', '.join(CLOUD_PREFIXES)})",
                         "pass --lora-storage s3://BUCKET/PREFIX (and copy the export's adapters/ there), or drop "
                         "ray-serve from --deploy")


def render(d: Deployment) -> dict[str, str]:
    head = d.header("Ray Serve LLM", f"The export folder at {MOUNT} (RayService: the PersistentVolumeClaim {d.claim})."
                    + (f" Adapters from {d.lora_storage}/NAME: copy adapters/ there." if d.serve.lora else ""))
    return {SERVE_CONFIG: head + dump(serve_config(d)), RAYSERVICE: head + dump(ray_service(d))}


ENGINE = Engine("ray-serve", "Ray Serve LLM", render,
                "Serve config with ray.serve.llm LLMConfig; ray.io/v1 RayService (KubeRay)", check)
