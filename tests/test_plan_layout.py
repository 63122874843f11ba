"""The vLLM tensor/pipeline-parallel layout: vLLM's divisibility rules and the per-GPU memory."""

from __future__ import annotations

import json

import pytest

from localserve.errors import InputError
from localserve.plan import Overhead, parallel_layout

GIB = 1 << 30

# Hyperparameters as published in Qwen/Qwen2.5-7B-Instruct's config.json: 28 attention heads
# share 4 KV heads, so TP may be 1, 2 or 4, never 3 or 8.
QWEN_7B = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
           "num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 28,
           "vocab_size": 152064, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "attention_bias": True}


@pytest.fixture(scope="module")
def smollm_config(embedded_base):
    return json.loads((embedded_base / "config.json").read_text())


def test_a_small_model_takes_one_gpu(smollm_config):
    layout = parallel_layout(smollm_config, 24 * GIB, gpus_per_node=8, nodes=1, ctx=8192, concurrency=4)
    assert (layout.tensor_parallel_size, layout.pipeline_parallel_size) == (1, 1)
    assert layout.per_gpu_bytes <= layout.budget_bytes == int(24 * GIB * 0.9)
    assert any("KV cache per GPU" in line for line in layout.lines)


def test_the_smallest_layout_wins_and_every_smaller_one_is_refused_with_a_reason():
    layout = parallel_layout(QWEN_7B, 16 * GIB, gpus_per_node=8, nodes=1, ctx=32768, concurrency=16)
    assert layout.per_gpu_bytes <= layout.budget_bytes
    assert 28 % layout.tensor_parallel_size == 0 and 4 % layout.tensor_parallel_size == 0
    refused = [line for line in layout.lines if line.startswith("not fewer GPUs")]
    assert refused, layout.lines
    assert layout.gpus > 3
    assert any("28 attention heads are not divisible by 3" in line for line in refused)
    assert all("needs" in line or "divisible" in line or "multiple" in line for line in refused)


def test_tensor_parallel_must_divide_the_attention_heads():
    with pytest.raises(InputError, match="28 attention heads are not divisible by 8"):
        parallel_layout(QWEN_7B, 80 * GIB, 8, 1, 4096, 1, tensor_parallel_size=8)


def test_kv_heads_are_replicated_only_evenly(smollm_config):
    # SmolLM2: 9 attention heads, 3 KV heads. TP=9 replicates each KV head 3 times: allowed.
    layout = parallel_layout(smollm_config, 24 * GIB, 16, 1, 2048, 1, tensor_parallel_size=9)
    assert layout.tensor_parallel_size == 9
    with pytest.raises(InputError, match="not divisible by 2"):
        parallel_layout(smollm_config, 24 * GIB, 16, 1, 2048, 1, tensor_parallel_size=2)


def test_pipeline_stages_cannot_outnumber_layers(smollm_config):
    with pytest.raises(InputError, match="only 30 layers to split into 31 stages"):
        parallel_layout(smollm_config, 24 * GIB, 1, 31, 2048, 1, pipeline_parallel_size=31)


def test_tensor_parallel_splits_weights_and_kv_cache_evenly(smollm_config):
    fixed = Overhead(fixed_bytes=0, fraction=0.0)
    one = parallel_layout(smollm_config, 24 * GIB, 8, 1, 8192, 3, overhead=fixed, tensor_parallel_size=1)
    three = parallel_layout(smollm_config, 24 * GIB, 8, 1, 8192, 3, overhead=fixed, tensor_parallel_size=3)
    assert abs(one.per_gpu_bytes / three.per_gpu_bytes - 3) < 1e-3


def test_no_layout_is_an_error_naming_the_reasons():
    with pytest.raises(InputError) as err:
        parallel_layout(QWEN_7B, 4 * GIB, gpus_per_node=2, nodes=1, ctx=4096, concurrency=1)
    assert "no vLLM layout" in err.value.message and "per GPU" in err.value.message
    with pytest.raises(InputError, match="GPUs per node must be positive"):
        parallel_layout(QWEN_7B, 80 * GIB, 0, 1, 4096, 1)


def test_a_config_folder_a_config_dict_and_a_planned_gguf_give_the_same_layout(embedded_base, smollm_config):
    from localserve.models.embedded import DEFAULT_ID, EMBEDDED
    from localserve.plan import load_model

    args = (16 * GIB, 8, 1, 8192, 4)
    layouts = [parallel_layout(c, *args) for c in (embedded_base, smollm_config,
                                                   load_model(EMBEDDED[DEFAULT_ID].gguf_file()))]
    assert len({(l.tensor_parallel_size, l.pipeline_parallel_size, l.per_gpu_bytes) for l in layouts}) == 1
