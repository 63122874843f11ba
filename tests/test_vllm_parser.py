"""Every configuration localserve generates passes vLLM's own argument parser (in the vLLM
virtualenv), including multi-GPU and multi-node layouts this machine cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from localserve.errors import ToolError
from localserve.plan import parallel_layout
from localserve.exports import VllmExportSpec, export_vllm
from localserve.vllm.runtime import parse_many_with_vllm, parse_with_vllm
from localserve.vllm.serve import MOUNT
from vllmtier import pytestmark  # noqa: F401  (the tier's marks and skip)


@pytest.fixture(scope="module")
def exports(tiny_base, tiny_adapter, tmp_path_factory):
    """Name -> export: one GPU merged, one GPU LoRA, TP=4 in one node, and PP=2 across two nodes (Ray)."""
    root = tmp_path_factory.mktemp("vllm-configs")
    config = json.loads((tiny_base / "config.json").read_text())
    need = {pp: parallel_layout(config, 1 << 40, 1, 8, 512, 64, pipeline_parallel_size=pp).per_gpu_bytes
            for pp in (1, 2)}
    between = int((need[1] + need[2]) / 2 / 0.9)  # holds half the model, not all of it
    tp = {n: parallel_layout(config, 1 << 40, 4, 1, 512, 64, tensor_parallel_size=n).per_gpu_bytes for n in (2, 4)}
    specs = {
        "merged": dict(adapters=(tiny_adapter,)),
        "lora": dict(adapters=(tiny_adapter,), lora=True),
        "tp4": dict(adapters=(tiny_adapter,), lora=True, gpu_memory=int((tp[2] + tp[4]) / 2 / 0.9), gpus=4,
                    ctx=512, concurrency=64),
        "ray": dict(adapters=(tiny_adapter,), lora=True, gpu_memory=between, gpus=1, nodes=2, ctx=512,
                    concurrency=64),
    }
    return {name: export_vllm(VllmExportSpec(out=root / name, name="tiny", **spec)) for name, spec in specs.items()}


def container_args(export, manifest):
    """The vLLM arguments a container runs, with the mounted export folder mapped back to its place."""
    return [a.replace(MOUNT, str(export.out_dir)) for a in manifest]


def test_every_generated_configuration_parses_as_written(exports):
    runs, expected = [], []
    for name, export in exports.items():
        written = yaml.safe_load(export.config_file.read_text())
        runs.append((export.config_file, []))
        expected.append((name, written))
        if (export.out_dir / "k8s/deployment.yaml").is_file():
            deployment = yaml.safe_load((export.out_dir / "k8s/deployment.yaml").read_text())
            args = container_args(export, deployment["spec"]["template"]["spec"]["containers"][0]["args"])
            runs.append((export.config_file, args[2:]))  # args[:2] are --config FILE
            expected.append((f"{name} (k8s)", written))
            compose = yaml.safe_load((export.out_dir / "docker-compose.yml").read_text())
            runs.append((export.config_file, container_args(export, compose["services"]["vllm"]["command"])[2:]))
            expected.append((f"{name} (compose)", written))
    for (name, written), parsed in zip(expected, parse_many_with_vllm(runs)):
        assert "error" not in parsed, (name, parsed)
        assert parsed["tensor_parallel_size"] == written["tensor-parallel-size"], name
        assert parsed["pipeline_parallel_size"] == written["pipeline-parallel-size"], name
        assert parsed["served_model_name"] == [written["served-model-name"]], name
        assert parsed["distributed_executor_backend"] == written.get("distributed-executor-backend"), name
        if written.get("enable-lora"):
            assert parsed["enable_lora"] and parsed["max_lora_rank"] == written["max-lora-rank"], name
            assert parsed["max_cpu_loras"] >= parsed["max_loras"] == written["max-loras"], name
            assert parsed["lora_modules"] == dict(m.split("=", 1) for m in written["lora-modules"]), name


def test_the_multi_node_leader_runs_a_command_vllm_parses_after_every_node_joined(exports):
    import re
    import shlex

    export = exports["ray"]
    lws = yaml.safe_load((export.out_dir / "k8s/leaderworkerset.yaml").read_text())
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == export.layout.pipeline_parallel_size == 2  # one pipeline stage per node
    leader_script = template["leaderTemplate"]["spec"]["containers"][0]["args"][0]
    worker_script = template["workerTemplate"]["spec"]["containers"][0]["args"][0]
    head_port = re.search(r"ray start --head --port=(\d+)", leader_script).group(1)
    assert worker_script.endswith(f":{head_port}")  # workers join the leader's Ray head
    assert "-ge 2 ]" in leader_script  # vLLM starts only once both nodes are in the cluster
    command = shlex.split(leader_script.split("exec ", 1)[1])
    assert command[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = [a.replace(MOUNT, str(export.out_dir)) for a in command[3:]]
    assert args[0] == "--config"
    (parsed,) = parse_many_with_vllm([(Path(args[1]), args[2:])])
    assert "error" not in parsed, parsed
    written = yaml.safe_load(export.config_file.read_text())
    assert parsed["distributed_executor_backend"] == written["distributed-executor-backend"] == "ray"
    assert parsed["pipeline_parallel_size"] == 2 and parsed["host"] == "0.0.0.0"


def test_the_layouts_are_the_ones_intended(exports):
    assert exports["tp4"].layout.tensor_parallel_size == 4 and exports["tp4"].layout.pipeline_parallel_size == 1
    assert (exports["ray"].layout.tensor_parallel_size, exports["ray"].layout.pipeline_parallel_size) == (1, 2)


def test_vllms_parser_refuses_what_vllm_would_refuse(exports):
    """The check has teeth: a rank vLLM does not accept, and LoRA limits that contradict each other."""
    config = exports["lora"].config_file
    bad_rank, bad_limits = parse_many_with_vllm([(config, ["--max-lora-rank", "17"]),
                                                 (config, ["--max-loras", "2", "--max-cpu-loras", "1"])])
    assert "invalid choice: 17" in bad_rank["error"]
    assert "max_cpu_loras (1) must be >= max_loras (2)" in bad_limits["error"]


def test_a_refusal_is_a_tool_error_naming_the_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: ./model\ntensor-parallel-size: two\n")
    with pytest.raises(ToolError, match=r"vLLM argument parser: refused .*bad.yaml"):
        parse_with_vllm(bad)
