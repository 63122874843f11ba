"""GPU formats for `export --target vllm --quant` (llm-compressor): choosing the group size from the
model, refusing bad option combinations in one line, and saying how to install what is missing.
None of these runs llm-compressor; tests/test_vllm_gpuquant.py does, and serves the results."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.errors import InputError, SetupError, UnknownName
from localserve.gpuquant import choose_group_size, get_format, gpuquant_python, quantized_input_widths
from localserve.exports import VllmExportSpec


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


@pytest.fixture(scope="module")
def narrow_base(tmp_path_factory):
    """A tiny Llama 192 wide (MLP 384): 64 divides every input width, 128 does not."""
    from tinymodel import build_base

    return build_base(tmp_path_factory.mktemp("narrow") / "base", hidden=192)


def test_the_quantized_layers_are_the_linear_ones_without_embeddings_or_lm_head(narrow_base):
    widths = quantized_input_widths(narrow_base)
    assert widths["model.layers.0.mlp.down_proj.weight"] == 384
    assert widths["model.layers.1.self_attn.q_proj.weight"] == 192
    assert not [n for n in widths if "lm_head" in n or "embed" in n or "norm" in n]
    assert len(widths) == 2 * 7  # q, k, v, o, gate, up, down per layer


def test_the_largest_standard_group_size_dividing_every_width_is_chosen_and_explained(narrow_base):
    choice = choose_group_size(quantized_input_widths(narrow_base))
    assert choice.size == 64
    assert choice.reason == "group size 64: divides every quantized input width (192, 384); 128 does not divide 192"


def test_128_when_it_fits_and_32_when_only_it_does():
    assert choose_group_size({"a.weight": 4096, "b.weight": 11008}).size == 128
    assert choose_group_size({"a.weight": 96, "b.weight": 384}).size == 32


def test_group_size_override_is_taken_when_it_divides_every_width(narrow_base):
    widths = quantized_input_widths(narrow_base)
    assert choose_group_size(widths, 32).size == 32
    assert choose_group_size(widths, 48).size == 48  # not standard, but it fits


def test_an_override_that_leaves_a_remainder_names_the_layer_and_a_size_that_fits(narrow_base):
    with pytest.raises(InputError) as e:
        choose_group_size(quantized_input_widths(narrow_base), 128)
    assert "--group-size 128 does not divide the input width 192 of model.layers.0.mlp.gate_proj.weight" in str(e.value)
    assert e.value.hint == "use --group-size 64"


def test_a_model_no_standard_size_fits_is_one_line():
    with pytest.raises(InputError, match=r"no standard group size \(128, 64, 32\) divides every input width \(100\)"):
        choose_group_size({"a.weight": 100})


def test_formats_are_looked_up_by_the_name_users_type_in_any_case():
    assert get_format("GPTQ-W4A16").name == "gptq-w4a16"
    with pytest.raises(UnknownName, match="valid: gptq-w4a16, awq-w4a16, fp8-dynamic, w8a8"):
        get_format("gptq-w3")


def test_awq_is_refused_with_its_measured_reason():
    with pytest.raises(InputError, match="AWQ W4A16 is refused") as e:
        get_format("awq-w4a16")
    assert "gptq-w4a16" in e.value.hint


@pytest.mark.parametrize("options, message", [
    (dict(quant="fp8-dynamic", group_size=64), "--group-size applies to grouped formats"),
    (dict(quant="fp8-dynamic", calibration="data.jsonl"), "fp8-dynamic needs no calibration data"),
    (dict(group_size=64), "--group-size applies to a quantized export"),
    (dict(quant="gptq-w4a16", calibration="missing.jsonl"), "no such calibration file"),
    (dict(quant="gptq-w4a16", calibration_samples=0), "--calibration-samples must be positive"),
])
def test_option_combinations_that_cannot_work_are_refused_before_anything_runs(tiny_adapter, tmp_path, options,
                                                                               message):
    if options.get("calibration") == "data.jsonl":
        (tmp_path / "data.jsonl").write_text("{}\n")
        options = {**options, "calibration": tmp_path / "data.jsonl"}
    with pytest.raises(InputError, match=message):
        VllmExportSpec(adapters=(tiny_adapter,), out=tmp_path / "o", **options)


def test_quantizing_an_unmerged_lora_export_is_refused(tiny_adapter):
    with pytest.raises(InputError, match="quantizes the merged model; --lora keeps the base unmerged"):
        VllmExportSpec(adapters=(tiny_adapter,), lora=True, quant="gptq-w4a16")


def test_a_gguf_type_with_target_vllm_names_both_exports(tiny_adapter, tmp_path):
    result = invoke("export", tiny_adapter, "--target", "vllm", "--quant", "q4_k_m", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "--quant q4_k_m applies to the Ollama export, not --target vllm" in result.output
    assert "vLLM takes gptq-w4a16, fp8-dynamic, w8a8" in result.output


def test_vllm_quant_options_are_refused_for_ollama(tiny_adapter, tmp_path):
    result = invoke("export", tiny_adapter, "--group-size", "64", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--group-size applies to --target vllm only" in result.output


@pytest.fixture
def no_llmcompressor(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("LOCALSERVE_GPUQUANT_VENV", str(tmp_path / "absent-venv"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llmcompressor" else real(name, *a))


def test_missing_llmcompressor_names_the_bootstrap_script_and_the_extra(no_llmcompressor, tmp_path):
    with pytest.raises(SetupError) as e:
        gpuquant_python()
    assert f"no virtualenv at {tmp_path / 'absent-venv'}" in e.value.message
    assert "scripts/bootstrap_gpuquant.sh" in e.value.hint and "localserve[gpu-quant]" in e.value.hint


def test_a_quantized_export_without_llmcompressor_is_one_line_and_writes_nothing(no_llmcompressor, tiny_adapter,
                                                                                tmp_path):
    result = invoke("export", tiny_adapter, "--target", "vllm", "--quant", "gptq-w4a16", "--group-size", "32",
                    "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: llm-compressor is not installed")
    assert not (tmp_path / "o").exists()


def test_quality_refuses_an_unquantized_folder_as_a_model_to_measure(tiny_base):
    result = invoke("quality", tiny_base, "--reference", tiny_base)
    assert result.exit_code != 0
    assert "is not a quantized model" in result.output and "--reference" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


def _qconfig(weights: dict, activations: dict | None = None) -> dict:
    return {"quant_method": "compressed-tensors",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": activations}}}


@pytest.mark.parametrize("weights, activations, name", [
    ({"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}, None, "gptq-w4a16"),
    ({"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 64}, None, "awq-w4a16"),
    ({"num_bits": 8, "type": "float", "strategy": "channel"}, {"num_bits": 8, "type": "float", "dynamic": True},
     "fp8-dynamic"),
    ({"num_bits": 8, "type": "int", "strategy": "channel"}, {"num_bits": 8, "type": "int", "dynamic": True}, "w8a8"),
    ({"num_bits": 2, "type": "int", "strategy": "channel"}, None, "W2A16"),
])
def test_a_quantized_folder_is_named_by_the_format_users_type(weights, activations, name):
    from localserve.gpuquant.formats import format_of

    assert format_of(_qconfig(weights, activations)) == name
