"""`export --target vllm` on tiny models: the folder vLLM serves, and the configuration beside it."""

from __future__ import annotations

import json

import pytest
import yaml

from localserve.errors import InputError
from localserve.plan import parallel_layout
from localserve.exports import VllmExportSpec, export_vllm

SHARD = 400_000  # bytes: the tiny model (~2 MB in float32) must come out in several shards


@pytest.fixture(scope="module")
def merged(tiny_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "merged"
    return export_vllm(VllmExportSpec(adapters=(tiny_adapter,), out=out, name="tiny", shard_bytes=SHARD))


def test_merged_weights_are_sharded_within_the_bound_and_indexed(merged):
    shards = sorted(merged.model_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((merged.model_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    from safetensors import safe_open

    for shard in shards:
        with safe_open(str(shard), framework="pt") as st:
            payload = sum(4 * _numel(st.get_slice(k).get_shape()) for k in st.keys())  # float32
            assert payload <= SHARD or len(list(st.keys())) == 1, shard.name


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_the_merged_folder_computes_what_peft_computes(merged, tiny_base, tiny_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    exported = AutoModelForCausalLM.from_pretrained(merged.model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32),
                                          tiny_adapter)
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_tokenizer_and_the_exact_chat_template_are_served(merged, tiny_base):
    assert (merged.model_dir / "chat_template.jinja").read_text() == (tiny_base / "chat_template.jinja").read_text()
    assert (merged.model_dir / "tokenizer.json").read_bytes() == (tiny_base / "tokenizer.json").read_bytes()


def test_an_adapters_own_chat_template_is_served_over_the_bases(tiny_adapter, tmp_path):
    import shutil

    adapter = shutil.copytree(tiny_adapter, tmp_path / "own")
    own = "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
    (adapter / "tokenizer_config.json").write_text(json.dumps({"chat_template": own, "eos_token": "<|im_end|>"}))
    result = export_vllm(VllmExportSpec(adapters=(adapter,), out=tmp_path / "out"))
    assert not (result.model_dir / "chat_template.jinja").exists()  # the base's would shadow the adapter's
    assert json.loads((result.model_dir / "tokenizer_config.json").read_text())["chat_template"] == own
    assert (result.model_dir / "tokenizer.json").is_file()  # the rest of the tokenizer comes from the base


def test_generation_config_carries_every_end_of_turn_id(merged):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged.model_dir)
    eos = json.loads((merged.model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert isinstance(eos, list)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert list(merged.end_of_turn_ids) == eos


def test_the_serve_config_names_the_model_folder_relative_to_the_export(merged):
    config = yaml.safe_load(merged.config_file.read_text())
    assert config["model"] == "./model" and config["served-model-name"] == "tiny"
    assert config["tensor-parallel-size"] == 1 and config["pipeline-parallel-size"] == 1
    assert "enable-lora" not in config and "trust-remote-code" not in config  # never unless asked
    launch = (merged.out_dir / "launch.sh").read_text()
    assert "--config vllm-config.yaml" in launch and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in launch
    lineage = json.loads(merged.lineage_path.read_text())
    assert lineage["kind"] == "vllm" and lineage["merged"] is True


def test_every_generated_file_parses_as_yaml_or_shell(merged):
    import subprocess

    for path in merged.serve_files:
        if path.suffix in (".yaml", ".yml"):
            assert list(yaml.safe_load_all(path.read_text())), path
        elif path.suffix == ".sh":
            subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.fixture(scope="module")
def multi_tenant(tiny_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "lora"
    return export_vllm(VllmExportSpec(adapters=(tiny_adapter,), lora=True, out=out, name="tiny-base"))


def test_lora_config_enables_runtime_updating_and_lists_each_adapter(multi_tenant):
    config = yaml.safe_load(multi_tenant.config_file.read_text())
    assert config["served-model-name"] == multi_tenant.name == "tiny-base"
    assert config["enable-lora"] is True and config["max-lora-rank"] == 8
    assert config["max-loras"] == 1 and config["max-cpu-loras"] == 1
    assert config["lora-modules"] == ["adapter=./adapters/adapter"]
    for name in ("launch.sh", "docker-compose.yml", "k8s/deployment.yaml"):
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in (multi_tenant.out_dir / name).read_text(), name
    compose = yaml.safe_load((multi_tenant.out_dir / "docker-compose.yml").read_text())
    assert compose["services"]["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_the_base_is_copied_unmerged(multi_tenant, tiny_base):
    from safetensors.torch import load_file

    exported = load_file(multi_tenant.model_dir / "model.safetensors")
    original = load_file(tiny_base / "model.safetensors")
    assert exported.keys() == original.keys()
    assert all((exported[k] == original[k]).all() for k in original)


# --- layout: plan/layout's arithmetic, written into the config -------------------------------------

def per_gpu_need(config, pp):
    return parallel_layout(config, 1 << 40, 1, 8, 512, 64, pipeline_parallel_size=pp).per_gpu_bytes


def test_a_model_too_big_for_one_gpu_is_pipelined_across_nodes_on_ray(tiny_adapter, tiny_base, tmp_path):
    config = json.loads((tiny_base / "config.json").read_text())
    # A GPU that holds half the model but not all of it: two pipeline stages on two nodes.
    gpu = int((per_gpu_need(config, 1) + per_gpu_need(config, 2)) / 2 / 0.9)
    result = export_vllm(VllmExportSpec(adapters=(tiny_adapter,), lora=True, out=tmp_path / "ray", name="tiny-base",
                                        gpu_memory=gpu, gpus=1, nodes=2, ctx=512, concurrency=64))
    assert (result.layout.tensor_parallel_size, result.layout.pipeline_parallel_size) == (1, 2)
    served = yaml.safe_load(result.config_file.read_text())
    assert served["pipeline-parallel-size"] == 2 and served["distributed-executor-backend"] == "ray"
    assert served["max-model-len"] == 512 and served["max-num-seqs"] == 64
    lws = yaml.safe_load((result.out_dir / "k8s/leaderworkerset.yaml").read_text())
    assert lws["kind"] == "LeaderWorkerSet" and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert not (result.out_dir / "docker-compose.yml").exists()
    text = result.config_file.read_text()
    assert "# Layout arithmetic:" in text and "not fewer GPUs: TP=1 x PP=1: needs" in text
    assert "launch.sh head" in (result.out_dir / "launch.sh").read_text()


def test_tensor_parallel_stays_inside_a_node(tiny_adapter, tiny_base, tmp_path):
    config = json.loads((tiny_base / "config.json").read_text())
    gpu = int((per_gpu_need(config, 1) + per_gpu_need(config, 2)) / 2 / 0.9)
    result = export_vllm(VllmExportSpec(adapters=(tiny_adapter,), out=tmp_path / "tp", gpu_memory=gpu, gpus=2,
                                        ctx=512, concurrency=64))
    assert (result.layout.tensor_parallel_size, result.layout.pipeline_parallel_size) == (2, 1)
    assert "distributed-executor-backend" not in yaml.safe_load(result.config_file.read_text())
    deployment = yaml.safe_load((result.out_dir / "k8s/deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_an_impossible_layout_is_refused_with_the_reason_and_nothing_is_written(tiny_adapter, tmp_path):
    with pytest.raises(InputError, match=r"no vLLM layout on 1 node\(s\) x 3 GPU\(s\).*not divisible by 3"):
        export_vllm(VllmExportSpec(adapters=(tiny_adapter,), out=tmp_path / "no", gpu_memory=10**6, gpus=3))
    assert not (tmp_path / "no").exists()


def test_sizing_without_gpu_memory_is_refused():
    with pytest.raises(InputError, match="--gpus sizes the layout.*--gpu-memory"):
        VllmExportSpec(adapters=("a",), gpus=8)


def test_an_unknown_template_family_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown .*'chatmel'.*chatml"):
        VllmExportSpec(adapters=("a",), template_family="chatmel")


def test_several_adapters_without_lora_are_refused():
    with pytest.raises(InputError, match="2 adapters given.*add --lora"):
        VllmExportSpec(adapters=("a", "b"))


def test_an_ollama_export_folder_is_not_replaced(tiny_adapter, tmp_path):
    (tmp_path / "ollama").mkdir()
    (tmp_path / "ollama" / "localserve.json").write_text('{"name": "x"}')
    with pytest.raises(InputError, match="not a vLLM export"):
        export_vllm(VllmExportSpec(adapters=(tiny_adapter,), out=tmp_path / "ollama"))
