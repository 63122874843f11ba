"""The published schemas every `export --target vllm --deploy` file is checked against, offline.

- core Kubernetes kinds (Deployment, Service...): kubernetes-validate's schemas of Kubernetes
  K8S_VERSION, strict (an unknown field is an error, as `kubectl apply`'s default field validation has it);
- custom resources: their CRD's openAPIV3Schema (tests/data/schemas/ENGINE/*.yaml, each with a
  SOURCE.md), turned into JSON Schema the way the API server reads it: an object's unknown fields are
  refused unless x-kubernetes-preserve-unknown-fields, int32/int64 are ranges, nullable allows null;
  the extracts' markers are resolved here (x-localserve-core: an embedded core type, checked by
  kubernetes-validate's definition of it; x-localserve-core-properties: a core type's fields inlined;
  x-localserve-not-stored: a field upstream has that the extract does not, refused by name);
- production-stack's Helm values: the chart's own values.schema.json;
- Ray Serve LLM's config: Ray's own ServeDeploySchema and LLMConfig, and vLLM's argument parser for the
  engine_kwargs, in the vLLM virtualenv (which has Ray Serve; scripts/bootstrap_vllm.sh);
- SGLang's arguments: SGLang's own ServerArgs parser, in the same virtualenv with the sglang package
  on the path (it imports on CPU: see scripts/bootstrap_vllm.sh).

Every problem is one line: `FILE: KIND NAME: FIELD.PATH: what is wrong`.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource

K8S_VERSION = "1.33"  # the Kubernetes release the core kinds are checked at (kubernetes-validate 1.37 ships 1.25-1.37)
SCHEMAS = Path(__file__).parent / "data" / "schemas"
CRDS = {  # (apiVersion, kind) -> the CRD extract
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "lws/leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve/serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io/v1alpha2", "LLMInferenceService"): "kserve/serving.kserve.io_llminferenceservices.yaml",
    ("ray.io/v1", "RayService"): "kuberay/ray.io_rayservices.yaml",
}
HELM_VALUES = {"deploy/production-stack/values.yaml": "production-stack/values.schema.json"}
RAY_SERVE_CONFIGS = ("deploy/ray-serve/serve-config.yaml",)
INT_RANGES = {"int32": (-(2 ** 31), 2 ** 31 - 1), "int64": (-(2 ** 63), 2 ** 63 - 1)}


# --- Kubernetes objects and Helm values ---------------------------------------------------------

def problems(path: Path, root: Path) -> list[str]:
    """One line per object of the YAML file `path` (relative to `root` in the message) that its schema refuses."""
    name = path.relative_to(root).as_posix()
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    if name in HELM_VALUES:
        schema = json.loads((SCHEMAS / HELM_VALUES[name]).read_text(encoding="utf-8"))
        return [line for doc in docs for line in _errors(jsonschema.Draft202012Validator(schema), doc, name, "values")]
    if name in RAY_SERVE_CONFIGS:
        return []  # checked by Ray's own classes, in the vLLM virtualenv (ray_serve_problems)
    found = []
    for doc in docs:
        what = f"{doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
        crd = CRDS.get((doc.get("apiVersion"), doc.get("kind")))
        if crd is not None:
            found += _errors(crd_validator(crd, doc["apiVersion"].rsplit("/", 1)[1]), doc, name, what)
        else:
            found += _core_errors(doc, name, what)
    return found


def _errors(validator, doc, name: str, what: str) -> list[str]:
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is None:
        return []
    field = ".".join(str(p) for p in error.absolute_path) or "(the object)"
    return [f"{name}: {what}: {field}: {error.message}"]


def _core_errors(doc: dict, name: str, what: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        field = ".".join(str(p) for p in e.absolute_path) or "(the object)"
        return [f"{name}: {what}: {field}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{name}: {what}: no published schema: {e.message}"]
    return []


# --- CRD openAPIV3Schema -> JSON Schema ----------------------------------------------------------

DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"


@lru_cache(maxsize=1)
def core_definitions() -> dict:
    import importlib.resources

    import kubernetes_validate.utils as kv

    version = [v for v in kv.all_versions() if kv.major_minor(v) == K8S_VERSION][-1]
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((folder / "_definitions.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def crd_validator(crd_file: str, version: str):
    crd = yaml.safe_load((SCHEMAS / crd_file).read_text(encoding="utf-8"))
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _convert(served["schema"]["openAPIV3Schema"], crd_file)
    schema["properties"]["metadata"] = {"$ref": f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    registry = Registry().with_resource(DEFINITIONS_ID, Resource.from_contents(core_definitions()))
    return _CRDValidator(schema, registry=registry)


def _convert(node: dict, source: str) -> dict:
    """One node of a structural schema (OpenAPI v3 as Kubernetes reads it) as JSON Schema 2020-12."""
    if "x-localserve-core" in node:
        return {"$ref": f"{DEFINITIONS_ID}#/$defs/{node['x-localserve-core']}"}
    out: dict = {}
    for key in ("type", "enum", "required", "pattern", "minimum", "maximum", "minLength", "maxLength",
                "minItems", "maxItems", "minProperties", "maxProperties", "default"):
        if key in node:
            out[key] = node[key]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("format") in INT_RANGES:
        low, high = INT_RANGES[node["format"]]
        out["minimum"], out["maximum"] = max(low, out.get("minimum", low)), min(high, out.get("maximum", high))
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [_convert(n, source) for n in node[key]]
    if "items" in node:
        out["items"] = _convert(node["items"], source)
    properties = {k: _convert(v, source) for k, v in node.get("properties", {}).items()}
    inlined = node.get("x-localserve-core-properties")
    if inlined:
        core = core_definitions()["$defs"][inlined]["properties"]
        properties = {**{p: {"$ref": f"{DEFINITIONS_ID}#/$defs/{inlined}/properties/{p}"} for p in core}, **properties}
    if properties:
        out["properties"] = properties
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"], source)
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    elif (properties or node.get("x-localserve-not-stored")) and not node.get("x-kubernetes-preserve-unknown-fields"):
        # The API server prunes unknown fields and kubectl's strict field validation refuses them.
        out["knownFields"] = {"stored": not node.get("x-localserve-not-stored"), "source": source}
    return out


def _known_fields(validator, rule, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for field in instance:
        if field in schema.get("properties", {}):
            continue
        if rule["stored"]:
            yield jsonschema.ValidationError(f"unknown field {field!r}", path=[field])
        else:
            yield jsonschema.ValidationError(
                f"field {field!r} is not in the stored extract of the CRD (tests/data/schemas/{rule['source']}; "
                "see SOURCE.md beside it)", path=[field])


_CRDValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"knownFields": _known_fields})


# --- Ray Serve LLM and SGLang, by their own code in the vLLM virtualenv -------------------------------

_RAY_CHECK = r"""
import contextlib, io, json, os, sys, warnings
warnings.simplefilter("ignore")
from ray.serve.schema import ServeDeploySchema
from ray.serve.llm import LLMConfig
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.engine.arg_utils import AsyncEngineArgs

def engine_args(kwargs):
    argv = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv

for label, config, model in json.loads(sys.argv[1]):
    try:
        ServeDeploySchema.model_validate(config)
        for app in config["applications"]:
            for i, llm in enumerate(app["args"]["llm_configs"]):
                LLMConfig.model_validate(llm)
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err):
                        args = make_arg_parser(FlexibleArgumentParser()).parse_args(
                            ["--model", model, *engine_args(llm["engine_kwargs"])])
                        AsyncEngineArgs.from_cli_args(args)
                except SystemExit:
                    raise ValueError(f"llm_configs.{i}.engine_kwargs: vLLM's parser: "
                                     + (err.getvalue().strip().splitlines() or ["refused"])[-1])
        answer = None
    except Exception as e:
        answer = " ".join(str(e).split())[:400]
    print("LOCALSERVE-CHECK " + json.dumps([label, answer]), flush=True)
"""

_SGLANG_CHECK = r"""
import argparse, contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")
from sglang.srt.server_args import ServerArgs

for label, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    try:
        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
        # SGLang's own cross-checks (its __post_init__) run on this machine's device: CPU, no CUDA here.
        args.device = "cpu"
        ServerArgs.from_cli_args(args)
        answer = None
    except SystemExit:
        answer = (err.getvalue().strip().splitlines() or ["refused"])[-1]
    except Exception as e:
        answer = f"{type(e).__name__}: " + " ".join(str(e).split())[:300]
    print("LOCALSERVE-CHECK " + json.dumps([label, answer]), flush=True)
"""


def sglang_parser_dir() -> Path:
    from localserve.paths import home

    return Path(os.environ.get("LOCALSERVE_SGLANG_PARSER") or home() / "sglang-parser")


def missing_sglang_parser() -> str | None:
    folder = sglang_parser_dir()
    if not (folder / "sglang" / "srt" / "server_args.py").is_file():
        return f"no SGLang parser at {folder}: build it with `make bootstrap-vllm`"
    return None


def ray_serve_problems(configs: list[tuple[str, dict, Path]]) -> dict[str, str | None]:
    """label -> Ray's (or vLLM's) refusal of the Serve config, None when it passes; `model` is the folder
    the engine_kwargs are parsed against."""
    return _run(_RAY_CHECK, [(label, config, str(model)) for label, config, model in configs], {})


def sglang_problems(runs: list[tuple[str, list[str]]]) -> dict[str, str | None]:
    """label -> SGLang's refusal of the server arguments, None when they pass."""
    return _run(_SGLANG_CHECK, runs, {"PYTHONPATH": str(sglang_parser_dir())})


def _run(script: str, batch: list, env: dict) -> dict[str, str | None]:
    from localserve.vllm.runtime import vllm_python

    proc = subprocess.run([str(vllm_python()), "-c", script, json.dumps(batch)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "RAY_USAGE_STATS_ENABLED": "0",
                                            **env})
    answers = dict(json.loads(line.removeprefix("LOCALSERVE-CHECK ")) for line in proc.stdout.splitlines()
                   if line.startswith("LOCALSERVE-CHECK "))
    if len(answers) != len(batch):
        raise AssertionError(f"the check stopped after {len(answers)} of {len(batch)}:\n" + proc.stderr[-2000:])
    return answers
