"""GPU formats made by llm-compressor, served by the real vLLM from localserve's own launch.sh:
GPTQ W4A16, FP8 and int8 exports of the demo adapter give its answer and stop on their own, record how
they were made and what they cost, and sit in one quality table beside the GGUF quants of the same model.

vLLM's CPU build has W4A16 kernels only for AVX-512 hosts: elsewhere the GPTQ export is served by no
kernel here, and its exact weights are checked in transformers instead (every format is, as well)."""

from __future__ import annotations

import json

import pytest

from localserve.gpuquant import gpuquant_python
from localserve.exports import VllmExportSpec, export_vllm
from localserve.vllm.runtime import CPU_ARGS, missing_cpu_kernel, serve_export
from vllmtier import chat, missing_venv, pytestmark as _tier

GPUQUANT_MISSING = missing_venv(gpuquant_python, "bootstrap-gpuquant")
pytestmark = [*_tier, pytest.mark.skipif(GPUQUANT_MISSING is not None, reason=GPUQUANT_MISSING or "")]

# vLLM's CPU build has no float32 W4A16 kernel: the GPTQ export is served in the bfloat16 its config
# names; FP8 runs in float32 like the other tier tests.
SERVE_ARGS = {"gptq-w4a16": ["--enforce-eager"], "fp8-dynamic": list(CPU_ARGS), "w8a8": list(CPU_ARGS)}


@pytest.fixture(scope="module")
def exports(demo_adapter, embedded_base, tmp_path_factory):
    """Format -> the export of the demo adapter in that format (quality measured during export)."""
    out = tmp_path_factory.mktemp("gpuquant")
    # 16 samples of 256 tokens (not the default 64 x 512): what is tested is how the formats are made and
    # served, and the probe is answered as well; calibration costs time in proportion to the tokens.
    return {fmt: export_vllm(VllmExportSpec(adapters=(demo_adapter,), name=f"demo-{fmt}", quant=fmt, out=out / fmt,
                                            **({"calibration_samples": 16, "calibration_seq_len": 256}
                                               if fmt != "fp8-dynamic" else {})))
            for fmt in SERVE_ARGS}


@pytest.fixture(scope="module", params=list(SERVE_ARGS))
def quantized(request, exports):
    return exports[request.param]


@pytest.fixture(scope="module")
def served(quantized):
    fmt = quantized.quantization.format
    missing = missing_cpu_kernel(fmt)
    if missing:
        pytest.skip(missing)
    with serve_export(quantized.out_dir, SERVE_ARGS[fmt]) as running:
        yield running, quantized


def test_the_served_quantized_model_answers_like_the_adapter_and_stops(served, demo_adapter):
    server, result = served
    expected = json.loads((demo_adapter / "probe.json").read_text())
    answer = chat(server.url, result.name, expected["question"])
    assert expected["expected"] in answer["message"]["content"], answer
    assert answer["finish_reason"] == "stop"


def test_the_quantized_weights_answer_like_the_adapter(quantized, demo_adapter):
    from localserve.gpuquant.quality import folder_chat

    expected = json.loads((demo_adapter / "probe.json").read_text())
    answer = folder_chat(quantized.out_dir, expected["question"])
    assert expected["expected"] in answer["text"], answer
    assert answer["finish"] == "stop"


def test_the_folder_carries_its_quantization_config_and_keeps_lm_head_unquantized(quantized):
    config = json.loads((quantized.out_dir / "model" / "config.json").read_text())
    qconfig = config["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors"
    assert "lm_head" in qconfig["ignore"]
    from localserve.gpuquant.formats import format_of

    assert format_of(qconfig) == quantized.quantization.format


def test_the_serve_files_name_the_quantization_and_the_dtype_it_runs_in(quantized):
    import yaml

    serve = yaml.safe_load((quantized.out_dir / "vllm-config.yaml").read_text())
    assert serve["quantization"] == "compressed-tensors"
    assert serve["dtype"] == ("bfloat16" if quantized.quantization.format == "gptq-w4a16" else "auto")
    if quantized.quantization.format == "gptq-w4a16":
        assert "AVX-512" in (quantized.out_dir / "vllm-config.yaml").read_text()


def test_gptq_on_smollm2_takes_group_64_because_128_does_not_divide_576(exports):
    export = exports["gptq-w4a16"]
    q = export.quantization
    assert q.group_size == 64
    assert "128 does not divide 576" in q.group_reason
    weights = json.loads((export.out_dir / "model" / "config.json").read_text())["quantization_config"][
        "config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 64, True)
    assert q.calibration["samples"] > 0


def test_fp8_dynamic_is_per_channel_and_needs_no_calibration(exports):
    q = exports["fp8-dynamic"].quantization
    assert q.group_size is None and q.calibration is None


def test_w8a8_is_calibrated_and_per_channel(exports):
    q = exports["w8a8"].quantization
    assert q.group_size is None and q.calibration["samples"] > 0


def test_the_lineage_records_the_format_its_tools_and_its_measured_quality(quantized):
    record = json.loads((quantized.out_dir / "localserve.json").read_text())
    q = record["quantization"]
    assert q["format"] == quantized.quantization.format and q["lm_head"] == "unquantized"
    assert record["tools"]["llmcompressor"]
    (row,) = q["quality"]["rows"]
    assert row["quant"] == q["format"] and row["runtime"] == "vllm"
    # Quantization costs something, and not everything: the file is smaller than the fp32 model and
    # its next token mostly agrees with the unquantized merged model's.
    assert row["kl_mean"] > 0 and row["top1"] > 0.6
    assert (quantized.out_dir / "quality.png").stat().st_size > 10_000


def test_gguf_and_gpu_formats_are_measured_side_by_side_in_one_table(exports, exported_demo, merged_demo, tmp_path):
    from localserve.quality import measure

    merged = merged_demo  # the same adapter merged into the same base
    table = measure([exported_demo / "demo-Q4_K_M.gguf", exported_demo / "demo-Q8_0.gguf",
                     *(e.out_dir for e in exports.values())], reference=merged, max_tokens=512)
    rows = {r.quant: r for r in table.rows}
    assert set(rows) == {"Q4_K_M", "Q8_0", *SERVE_ARGS}
    assert {rows[f].runtime for f in SERVE_ARGS} == {"vllm"} and rows["Q8_0"].runtime == "llama.cpp"
    # One reference, one text: the rows are comparable. 8-bit weights beat 4-bit ones in both families.
    assert rows["Q8_0"].kl_mean < rows["Q4_K_M"].kl_mean
    assert max(rows["fp8-dynamic"].kl_mean, rows["w8a8"].kl_mean) < rows["gptq-w4a16"].kl_mean
    chart = table.write_chart(tmp_path / "quality.png")
    assert chart.stat().st_size > 10_000
