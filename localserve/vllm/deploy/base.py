"""What every `--deploy` renderer reads: one description of the served layout, and the shared pieces.

A renderer is a function `render(deployment) -> {path inside the export folder: text}`; it never
writes, never checks a file system, and builds its objects as Python data (dumped as YAML), so a
number stays a number. Paths in the objects are where each engine mounts the export folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import yaml

from ..serve import IMAGE, MOUNT, ServeConfig, _slug

GIB = 1 << 30
# Host memory a vLLM pod needs beyond the weights it loads: the Python runtime, the tokenizer, the API
# server and the CUDA context's host side. An assumption, stated in every file that uses it.
RUNTIME_HOST_BYTES = 4 * GIB
# CPUs per pod: vLLM runs the API server, the engine core and one worker process per GPU.
CPUS_BASE, CPUS_PER_GPU = 2, 2
DEPLOY_DIR = "deploy"
MANAGED = {"app.kubernetes.io/managed-by": "localserve"}


@dataclass(frozen=True)
class Deployment:
    """One served model as the export lays it out: the serve configuration (layout, LoRA, features)
    and the sizes the engines request resources by."""

    serve: ServeConfig
    weight_bytes: int  # the model folder's safetensors
    export_bytes: int  # everything a server reads from the export folder: model, adapters, draft
    lora_storage: str | None = None  # the cloud prefix Ray Serve LLM loads adapters from

    @property
    def name(self) -> str:
        return self.serve.name

    @property
    def slug(self) -> str:
        return _slug(self.serve.name)

    @property
    def claim(self) -> str:
        """The PersistentVolumeClaim holding the export folder (the same one k8s/ mounts)."""
        return f"{self.slug}-export"

    @property
    def image(self) -> str:
        return IMAGE

    @property
    def vllm_version(self) -> str:
        return IMAGE.rsplit(":v", 1)[1]

    @property
    def tp(self) -> int:
        return self.serve.tensor_parallel_size

    @property
    def pp(self) -> int:
        return self.serve.pipeline_parallel_size

    @property
    def nodes(self) -> int:
        return self.serve.nodes

    @property
    def gpus_per_pod(self) -> int:
        """GPUs each pod asks for: a node's share on Ray, else the whole layout."""
        return self.serve.gpus_per_node if self.serve.multi_node else self.tp * self.pp

    @property
    def memory_per_pod(self) -> str:
        """Host memory per pod: the weights the pod loads (its share of the pipeline stages) plus
        RUNTIME_HOST_BYTES, rounded up to whole GiB."""
        share = -(-self.weight_bytes // self.nodes)
        return f"{-(-(share + RUNTIME_HOST_BYTES) // GIB)}Gi"

    @property
    def cpus_per_pod(self) -> int:
        return CPUS_BASE + CPUS_PER_GPU * self.gpus_per_pod

    @property
    def storage(self) -> str:
        """Size of a volume that holds the export folder, with a tenth to spare."""
        return f"{max(1, -(-(self.export_bytes * 11 // 10) // GIB))}Gi"

    @property
    def adapters(self) -> tuple[tuple[str, str], ...]:
        """(served name, folder relative to the export folder) of every LoRA adapter."""
        return tuple((name, path.removeprefix("./")) for name, path in self.serve.lora_modules)

    @property
    def sized(self) -> bool:
        """Whether the model's size is known (the serve files alone render without it)."""
        return self.weight_bytes > 0

    def resources(self, gpus: int | None = None) -> dict:
        """A container's requests and limits (Kubernetes quantities); memory only when sized."""
        gpus = self.gpus_per_pod if gpus is None else gpus
        requests = {"cpu": str(self.cpus_per_pod)}
        limits = {}
        if self.sized:
            requests["memory"] = limits["memory"] = self.memory_per_pod
        if gpus:
            requests["nvidia.com/gpu"] = str(gpus)
            limits["nvidia.com/gpu"] = str(gpus)
        return {"requests": requests, **({"limits": limits} if limits else {})}

    def header(self, engine: str, *lines: str) -> str:
        """The comment every rendered file starts with: what it is, the layout, the features."""
        layout = (f"tensor parallel {self.tp} x pipeline parallel {self.pp} on {self.nodes} node(s) of "
                  f"{self.serve.gpus_per_node} GPU(s)")
        memory = (f"; host memory per pod {self.memory_per_pod} (the weights it loads + "
                  f"{RUNTIME_HOST_BYTES // GIB} GiB runtime, assumed)" if self.sized else "")
        text = [f"{engine}: vLLM serving {self.name} (written by localserve `export --target vllm`).",
                f"Layout: {layout}{memory}.",
                *lines, f"Serving features: {'; '.join(self.serve.features)}."]
        return "".join(f"# {line}\n" if line else "#\n" for line in text)


@dataclass(frozen=True)
class Engine:
    """One `--deploy` name: what it writes and which published shape it follows."""

    name: str  # what users type
    title: str
    render: Callable[[Deployment], dict[str, str]]
    shape: str  # the upstream object or file, for the help and the record
    check: Callable[[Deployment], None] | None = None  # refuses, before anything is written, what it cannot serve


class _Dumper(yaml.SafeDumper):
    """Writes a shared object (the pods' common volumes) out in full: readers need no YAML anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump(*documents: dict) -> str:
    """YAML of the documents, keys in the order written, separated by `---`."""
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in documents)


def engine_args(serve: ServeConfig, paths: Callable[[str], str], skip: tuple[str, ...] = ("model", "port")) -> list[str]:
    """vLLM's command-line arguments for `serve`, its paths mapped through `paths` (relative to the
    export folder -> where the engine mounts it). A mapping is passed as JSON, as vLLM reads it."""
    args: list[str] = []
    for key, value in serve.options().items():
        if key in skip:
            continue
        if key == "lora-modules":
            args += [f"--{key}", *(f"{n}={paths(p.removeprefix('./'))}" for n, p in serve.lora_modules)]
        elif isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, dict):
            value = {k: paths(v.removeprefix("./")) if isinstance(v, str) and v.startswith("./") else v
                     for k, v in value.items()}
            args += [f"--{key}", json.dumps(value, separators=(",", ":"))]
        else:
            args += [f"--{key}", str(value)]
    return args


def mounted(path: str, mount: str = MOUNT) -> str:
    """A path relative to the export folder, as seen where the folder is mounted."""
    return f"{mount}/{path}" if path else mount


def env_list(serve: ServeConfig) -> list[dict]:
    return [{"name": k, "value": v} for k, v in serve.environment.items()]


def export_volume(claim: str, mount: str = MOUNT) -> tuple[dict, list[dict]]:
    """The pod volumes for the export folder (read-only claim) and /dev/shm, and their mounts."""
    volumes = [{"name": "export", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
               {"name": "shm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "export", "mountPath": mount, "readOnly": True}, {"name": "shm", "mountPath": "/dev/shm"}]
    return {"volumes": volumes}, mounts
