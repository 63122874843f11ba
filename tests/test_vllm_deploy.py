"""`export --target vllm --deploy ENGINE,...`: each engine's files, rendered from the export's own layout,
pass that engine's published schema, offline (tests/deployschemas.py; the schemas, their source,
version and licence: tests/data/schemas/*/SOURCE.md). Three tiny exports: merged on one GPU, two
adapters unmerged (tenants), and tenants on two nodes."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from clihelpers import assert_one_line_error, invoke
from deployschemas import (missing_sglang_parser, problems, ray_serve_problems, sglang_problems)
from localserve.errors import InputError
from localserve.exports import VllmExportSpec, export_vllm
from localserve.plan import parallel_layout
from localserve.vllm.deploy import ENGINES
from localserve.vllm.deploy.base import GIB, RUNTIME_HOST_BYTES
from vllmtier import MISSING as MISSING_VLLM_VENV

ALL = tuple(ENGINES)
STORAGE = "s3://models/tiny-adapters"


@pytest.fixture(scope="module")
def exports(tiny_base, tiny_adapter, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    second = shutil.copytree(tiny_adapter, root / "inputs" / "tenant-b")
    config = json.loads((tiny_base / "config.json").read_text())
    need = {pp: parallel_layout(config, 1 << 40, 1, 8, 512, 64, pipeline_parallel_size=pp).per_gpu_bytes for pp in (1, 2)}
    half = int((need[1] + need[2]) / 2 / 0.9)  # a GPU that holds half the model, not all of it: two nodes
    tenants = dict(adapters=(tiny_adapter, second), lora=True, name="tiny-base", lora_storage=STORAGE)
    specs = {"merged": dict(adapters=(tiny_adapter,), name="tiny"),
             "tenants": tenants,
             "two-nodes": dict(tenants, gpu_memory=half, gpus=1, nodes=2, ctx=512, concurrency=64)}
    return {case: export_vllm(VllmExportSpec(out=root / case, deploy=",".join(ALL), **spec))
            for case, spec in specs.items()}


def engine_files(export, engine: str):
    return [p for p in export.deploy_files if p.relative_to(export.out_dir).parts[1] == engine]


def load(export, relative: str):
    return yaml.safe_load((export.out_dir / relative).read_text())


@pytest.mark.parametrize("engine", ALL)
def test_every_file_of_the_engine_passes_its_published_schema(exports, engine):
    for case, export in exports.items():
        files = engine_files(export, engine)
        assert files, (case, engine)
        for path in files:
            if path.suffix == ".yaml":
                assert problems(path, export.out_dir) == [], (case, path)
            else:
                subprocess.run(["bash", "-n", str(path)], check=True)


def test_the_serve_files_kubernetes_objects_pass_kubernetes_and_the_lws_schema(exports):
    for export in exports.values():
        for path in (export.out_dir / "k8s").glob("*.yaml"):
            assert problems(path, export.out_dir) == [], path


def test_the_engines_serve_the_layout_plan_computed(exports):
    export = exports["two-nodes"]
    assert (export.layout.tensor_parallel_size, export.layout.pipeline_parallel_size) == (1, 2)
    isvc = load(export, "deploy/kserve/inferenceservice.yaml")["spec"]["predictor"]
    assert isvc["workerSpec"] == {"pipelineParallelSize": 2, "tensorParallelSize": 1}
    lws = load(export, "deploy/lws/leaderworkerset.yaml")["spec"]["leaderWorkerTemplate"]
    assert lws["size"] == 2 and "--config /export/vllm-config.yaml" in lws["leaderTemplate"]["spec"]["containers"][0]["args"][0]
    assert load(export, "deploy/llm-d/llminferenceservice.yaml")["spec"]["parallelism"] == {"tensor": 1, "pipeline": 2}
    stack = load(export, "deploy/production-stack/values.yaml")["servingEngineSpec"]["modelSpec"][0]
    assert stack["replicaCount"] == 1 and stack["requestGPU"] == 1 and "raySpec" in stack  # head + one worker
    assert stack["vllmConfig"]["extraArgs"][stack["vllmConfig"]["extraArgs"].index("--pipeline-parallel-size") + 1] == "2"
    workers = load(export, "deploy/ray-serve/rayservice.yaml")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2
    kwargs = load(export, "deploy/ray-serve/serve-config.yaml")["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (1, 2)
    sglang = load(export, "deploy/sglang/leaderworkerset.yaml")["spec"]["leaderWorkerTemplate"]
    leader = sglang["leaderTemplate"]["spec"]["containers"][0]["args"][0]
    assert sglang["size"] == 2 and "--pp-size 2" in leader and "--nnodes 2" in leader and "--node-rank 0" in leader


def test_memory_and_gpu_requests_come_from_the_sized_model(exports):
    for case, export in exports.items():
        nodes = export.layout.pipeline_parallel_size if export.layout else 1
        memory = f"{-(-(-(-export.model_bytes // nodes) + RUNTIME_HOST_BYTES) // GIB)}Gi"
        requests = load(export, "deploy/lws/leaderworkerset.yaml")["spec"]["leaderWorkerTemplate"]["workerTemplate"][
            "spec"]["containers"][0]["resources"]["requests"]
        assert requests["memory"] == memory and requests["nvidia.com/gpu"] == "1", case
        assert load(export, "deploy/production-stack/values.yaml")["servingEngineSpec"]["modelSpec"][0][
            "requestMemory"] == memory, case


def test_the_serving_features_of_the_config_reach_every_engine(exports):
    export = exports["merged"]
    config = yaml.safe_load(export.config_file.read_text())
    assert config["enable-prefix-caching"] is True
    assert load(export, "deploy/production-stack/values.yaml")["servingEngineSpec"]["modelSpec"][0]["vllmConfig"][
        "enablePrefixCaching"] is True
    kwargs = load(export, "deploy/ray-serve/serve-config.yaml")["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"]
    assert kwargs["enable_prefix_caching"] is True and kwargs["structured_outputs_config"] == {"backend": "auto"}
    args = load(export, "deploy/kserve/inferenceservice.yaml")["spec"]["predictor"]["model"]["args"]
    assert "--enable-prefix-caching" in args and args[args.index("--structured-outputs-config") + 1] == '{"backend":"auto"}'
    for path in export.deploy_files:
        assert "prefix caching: on" in path.read_text(), path  # every file says what it serves


def test_each_engine_finds_the_adapters_where_it_expects_them(exports):
    export = exports["tenants"]
    names = [name for name, _ in export.adapters]
    assert names == ["adapter", "tenant-b"]
    claim = "vllm-tiny-base-export"
    kserve = load(export, "deploy/kserve/inferenceservice.yaml")["spec"]["predictor"]["model"]
    llmd = load(export, "deploy/llm-d/llminferenceservice.yaml")["spec"]["model"]["lora"]
    stack = load(export, "deploy/production-stack/values.yaml")["servingEngineSpec"]["modelSpec"][0]
    ray = load(export, "deploy/ray-serve/serve-config.yaml")["applications"][0]["args"]["llm_configs"][0]
    sglang = load(export, "deploy/sglang/deployment.yaml")["spec"]["template"]["spec"]["containers"][0]["args"]
    for name in names:
        assert (export.out_dir / "adapters" / name / "adapter_config.json").is_file()
        assert f"{name}=/mnt/models/adapters/{name}" in kserve["args"]  # KServe mounts the claim at /mnt/models
        assert {"name": name, "uri": f"pvc://{claim}/adapters/{name}"} in llmd["adapters"]
        assert f"{name}=/data/adapters/{name}" in stack["vllmConfig"]["extraArgs"]  # the chart's volume at /data
        assert f"{name}=/export/adapters/{name}" in sglang
    assert stack["enableLoRA"] is True and llmd["maxRank"] == export.lora.max_lora_rank
    assert ray["lora_config"] == {"dynamic_lora_loading_path": STORAGE,
                                  "max_num_adapters_per_replica": export.lora.max_loras}


def test_the_record_names_every_engine_and_what_it_wrote(exports):
    export = exports["tenants"]
    record = json.loads(export.lineage_path.read_text())
    assert record["spec"]["deploy"] == list(ALL) and record["spec"]["lora_storage"] == STORAGE
    assert list(record["deploy"]["engines"]) == list(ALL)
    written = [f for e in record["deploy"]["engines"].values() for f in e["files"]]
    assert sorted(written) == sorted(p.relative_to(export.out_dir).as_posix() for p in export.deploy_files)
    assert record["deploy"]["per_pod"]["gpus"] == 1 and record["deploy"]["claim"] == "vllm-tiny-base-export"


# --- a wrong value: one line naming the file, the object and the field -------------------------------

def _set(path: list, value):
    def change(doc):
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


@pytest.mark.parametrize("relative, change, where", [
    ("deploy/llm-d/llminferenceservice.yaml", _set(["spec", "replicas"], -1),
     "LLMInferenceService vllm-tiny: spec.replicas: -1 is less than the minimum of 0"),
    ("deploy/kserve/inferenceservice.yaml", _set(["spec", "predictor", "minReplicas"], "one"),
     "InferenceService vllm-tiny: spec.predictor.minReplicas: 'one' is not of type 'integer'"),
    ("deploy/lws/leaderworkerset.yaml", _set(["spec", "leaderWorkerTemplate", "size"], "2"),
     "LeaderWorkerSet vllm-tiny: spec.leaderWorkerTemplate.size: '2' is not of type 'integer'"),
    ("deploy/ray-serve/rayservice.yaml", _set(["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"], 2 ** 31),
     "RayService vllm-tiny: spec.rayClusterConfig.workerGroupSpecs.0.replicas: 2147483648 is greater than the maximum"),
    ("deploy/production-stack/values.yaml", _set(["servingEngineSpec", "modelSpec", 0, "replicaCount"], "1"),
     "values: servingEngineSpec.modelSpec.0.replicaCount: '1' is not of type 'integer'"),
    ("deploy/sglang/deployment.yaml", _set(["spec", "replicas"], "two"),
     "Deployment vllm-tiny-sglang: spec.replicas: 'two' is not of type"),
    ("deploy/kserve/inferenceservice.yaml", _set(["spec", "predictor", "model", "storageUrl"], "pvc://x"),
     "InferenceService vllm-tiny: spec.predictor.model.storageUrl: unknown field 'storageUrl'"),
])
def test_a_wrong_value_is_one_line_naming_the_file_the_object_and_the_field(exports, tmp_path, relative, change, where):
    source = exports["merged"]
    doc = load(source, relative)
    change(doc)
    (tmp_path / relative).parent.mkdir(parents=True)
    (tmp_path / relative).write_text(yaml.safe_dump(doc))
    (line,) = problems(tmp_path / relative, tmp_path)
    assert line.startswith(f"{relative}: {where}"), line


def test_a_field_the_stored_extract_lacks_is_refused_naming_its_source(exports, tmp_path):
    relative = "deploy/kserve/inferenceservice.yaml"
    doc = load(exports["merged"], relative)
    doc["spec"]["predictor"]["sklearn"] = {"storageUri": "pvc://x"}
    (tmp_path / relative).parent.mkdir(parents=True)
    (tmp_path / relative).write_text(yaml.safe_dump(doc))
    (line,) = problems(tmp_path / relative, tmp_path)
    assert "spec.predictor.sklearn: field 'sklearn' is not in the stored extract of the CRD" in line
    assert "kserve/serving.kserve.io_inferenceservices.yaml" in line


# --- refusals -------------------------------------------------------------------------------------

def test_an_unknown_engine_is_refused_listing_the_valid_ones(tiny_adapter, tmp_path):
    result = invoke("export", tiny_adapter, "--target", "vllm", "--deploy", "kserve,kserv", "--out", tmp_path / "o")
    assert_one_line_error(result, "unknown --deploy engine 'kserv'", "valid: " + ", ".join(ALL))
    assert not (tmp_path / "o").exists()


def test_ray_serve_with_adapters_needs_their_cloud_storage_before_anything_is_written(tiny_adapter, tmp_path):
    with pytest.raises(InputError, match=r"Ray Serve LLM, which loads them from cloud storage only") as refused:
        export_vllm(VllmExportSpec(adapters=(tiny_adapter,), lora=True, deploy="ray-serve", out=tmp_path / "o"))
    assert "--lora-storage s3://BUCKET/PREFIX" in refused.value.hint
    assert not (tmp_path / "o").exists()


def test_lora_storage_without_ray_serve_is_refused():
    with pytest.raises(InputError, match="--lora-storage is where Ray Serve LLM loads the adapters.*no ray-serve"):
        VllmExportSpec(adapters=("a",), lora=True, deploy="kserve", lora_storage=STORAGE)


# --- the runner's stages: a re-run redoes only what changed ------------------------------------------

def test_a_rerun_with_other_engines_rewrites_only_the_serve_files(tiny_adapter, tmp_path):
    out = tmp_path / "again"
    first = export_vllm(VllmExportSpec(adapters=(tiny_adapter,), out=out, deploy="kserve,lws"))
    shards = {p.name: p.stat().st_mtime_ns for p in first.model_dir.glob("*.safetensors")}
    second = export_vllm(VllmExportSpec(adapters=(tiny_adapter,), out=out, deploy="sglang"))
    stages = {s["name"]: s for s in second.stages}
    assert stages["weights"]["skipped"] and not stages["serve"]["skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in second.model_dir.glob("*.safetensors")} == shards
    assert sorted(p.relative_to(out).parts[1] for p in second.deploy_files) == ["sglang", "sglang"]
    assert not (out / "deploy" / "kserve").exists() and not (out / "deploy" / "lws").exists()
    record = json.loads((out / "localserve.json").read_text())
    assert list(record["deploy"]["engines"]) == ["sglang"] and [s["name"] for s in record["stages"]] == ["weights", "serve"]


# --- Ray Serve LLM and SGLang, checked by their own code (the vLLM virtualenv) -------------------------

needs_vllm_venv = pytest.mark.skipif(MISSING_VLLM_VENV is not None, reason=MISSING_VLLM_VENV or "")


@needs_vllm_venv
def test_ray_serve_configs_pass_rays_own_schema_and_llmconfig_and_vllms_parser(exports):
    runs = []
    for case, export in exports.items():
        served = load(export, "deploy/ray-serve/serve-config.yaml")
        on_k8s = yaml.safe_load(load(export, "deploy/ray-serve/rayservice.yaml")["spec"]["serveConfigV2"])
        assert on_k8s == served  # the RayService runs the same Serve config
        runs.append((case, served, export.model_dir))
    bad = json.loads(json.dumps(runs[0][1]))
    bad["applications"][0]["args"]["llm_configs"][0]["deployment_config"]["autoscaling_config"]["min_replicas"] = -1
    answers = ray_serve_problems(runs + [("negative replicas", bad, exports["merged"].model_dir)])
    assert {case: answers[case] for case in exports} == dict.fromkeys(exports)
    assert "Invalid deployment config" in answers["negative replicas"]


def _argv_dumper(tmp_path):
    """A stand-in Python for launch.sh: prints the arguments it was given, as JSON."""
    dumper = tmp_path / "python-argv"
    dumper.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    dumper.chmod(0o755)
    return dumper


@needs_vllm_venv
@pytest.mark.skipif(missing_sglang_parser() is not None, reason=missing_sglang_parser() or "")
def test_sglang_arguments_pass_sglangs_own_parser(exports, tmp_path):
    runs = []
    for case, export in exports.items():
        launch = export.out_dir / "deploy/sglang/launch.sh"
        roles = [["1", "10.0.0.1"]] if export.layout else [[]]
        ran = subprocess.run([str(launch), *roles[0]], capture_output=True, text=True, check=True,
                             env={"SGLANG_PYTHON": str(_argv_dumper(tmp_path)), "PATH": "/usr/bin:/bin"})
        argv = json.loads(ran.stdout)
        assert argv[:2] == ["-m", "sglang.launch_server"]
        assert argv[argv.index("--model-path") + 1] == str(export.model_dir.resolve())
        if export.adapters:  # each NAME=PATH names the adapter's folder in this export
            given = dict(p.split("=", 1) for p in argv[argv.index("--lora-paths") + 1:][:len(export.adapters)])
            assert given == {name: str(folder.resolve()) for name, folder in export.adapters}
        runs.append((f"{case} launch.sh", argv[2:]))
        if export.layout:
            script = load(export, "deploy/sglang/leaderworkerset.yaml")["spec"]["leaderWorkerTemplate"][
                "workerTemplate"]["spec"]["containers"][0]["args"][0]
            script = re.sub(r"\$\(LWS_WORKER_INDEX\)", "1", re.sub(r"\$\(LWS_LEADER_ADDRESS\)", "10.0.0.1", script))
            runs.append((f"{case} k8s", shlex.split(script.removeprefix("exec "))[3:]))
        else:
            runs.append((f"{case} k8s", load(export, "deploy/sglang/deployment.yaml")["spec"]["template"]["spec"][
                "containers"][0]["args"]))
    answers = sglang_problems(runs + [("wrong type", ["--model-path", "/m", "--tp-size", "two"])])
    assert {label: answers[label] for label, _ in runs} == {label: None for label, _ in runs}
    assert "--tp-size/--tensor-parallel-size: invalid int value: 'two'" in answers["wrong type"]
