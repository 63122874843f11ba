"""The experiment's split for the engines that serve at scale, rewritten whenever the weights change.

    render(experiment, Path("deploy"))   -> deploy/httproute.yaml, deploy/virtualservice.yaml, deploy/litellm.yaml

- Gateway API `HTTPRoute`: weighted `backendRefs` to each version's vLLM Service — the one a vLLM
  export named NAME-vN writes in its k8s/ (`export --target vllm --name demo-v3`), so two such exports
  are the two Deployments behind the route.
- Istio `VirtualService`: the same split as weighted `route` destinations (weights summing to 100).
- LiteLLM router config: one `model_list` entry per arm under the experiment's name, with its
  `weight` (LiteLLM's simple-shuffle routing picks deployments in proportion to it).

Weights are written as whole percentages (largest remainders, summing to 100). None of these is
sticky per user like the local router: the cluster splits request by request.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..fsutil import write_text
from .arms import Arm

VLLM_PORT = 8000
FILES = ("httproute.yaml", "virtualservice.yaml", "litellm.yaml")


def percentages(arms: list[Arm]) -> dict[str, int]:
    """Whole percentages summing to 100, by largest remainder (an arm at weight 0 stays at 0)."""
    total = sum(a.weight for a in arms)
    exact = {a.version: 100 * a.weight / total for a in arms}
    out = {v: math.floor(x) for v, x in exact.items()}
    for v in sorted(exact, key=lambda v: exact[v] - out[v], reverse=True)[:100 - sum(out.values())]:
        out[v] += 1
    return out


def service_name(version: str) -> str:
    """The Kubernetes Service of a vLLM export named after the version (demo:v3 -> vllm-demo-v3)."""
    from ..vllm.serve import _slug  # the one naming rule of the vLLM export's k8s/ files

    return _slug(version.replace(":", "-"))


def route_name(name: str) -> str:
    return service_name(name).removeprefix("vllm-") + "-ab"


def httproute(experiment, gateway: str = "inference-gateway") -> dict:
    weights = percentages(experiment.arms)
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": route_name(experiment.name),
                         "labels": {"app.kubernetes.io/managed-by": "localserve"}},
            "spec": {"parentRefs": [{"name": gateway}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                                "backendRefs": [{"name": service_name(a.version), "port": VLLM_PORT,
                                                 "weight": weights[a.version]} for a in experiment.arms]}]}}


def virtual_service(experiment) -> dict:
    weights = percentages(experiment.arms)
    host = route_name(experiment.name).removesuffix("-ab")
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": route_name(experiment.name),
                         "labels": {"app.kubernetes.io/managed-by": "localserve"}},
            "spec": {"hosts": [host],
                     "http": [{"match": [{"uri": {"prefix": "/v1"}}],
                               "route": [{"destination": {"host": service_name(a.version),
                                                          "port": {"number": VLLM_PORT}},
                                          "weight": weights[a.version]} for a in experiment.arms]}]}}


def litellm(experiment) -> dict:
    weights = percentages(experiment.arms)
    models = []
    for a in experiment.arms:
        if a.engine == "openai":
            params = {"model": f"hosted_vllm/{a.model}", "api_base": f"{a.url}/v1"}
        else:
            params = {"model": f"ollama_chat/{a.model}", "api_base": a.url}
        models.append({"model_name": experiment.name, "litellm_params": {**params, "weight": weights[a.version]},
                       "model_info": {"id": a.version}})
    return {"model_list": models, "router_settings": {"routing_strategy": "simple-shuffle"}}


def render(experiment, out: Path, gateway: str = "inference-gateway") -> list[Path]:
    """Write the three files into `out` (each atomically); returns their paths."""
    import yaml

    out = Path(out)
    split = ", ".join(f"{v} {p}%" for v, p in percentages(experiment.arms).items())
    head = f"# {experiment.name}: {split} (written by `localserve ab set --render`)\n"
    docs = {"httproute.yaml": httproute(experiment, gateway), "virtualservice.yaml": virtual_service(experiment),
            "litellm.yaml": litellm(experiment)}
    return [write_text(out / name, head + yaml.safe_dump(doc, sort_keys=False)) for name, doc in docs.items()]
