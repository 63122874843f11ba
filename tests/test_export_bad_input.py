"""`localserve export` refuses bad input with one clear line, exit != 0, and nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from clihelpers import assert_one_line_error, invoke, run_cli
from localserve import ExportSpec, export
from localserve.cli import cli
from localserve.errors import (AdapterError, BaseModelNotFound, DiskSpaceError, UnknownName, UnsafeWeights,
                               UnsupportedArchitecture)
from localserve.models.resolve import load_adapter, resolve_base


# --- bad input: one clear line, exit != 0, nothing written -----------------------------------------

def test_missing_adapter_folder(tmp_path):
    assert_one_line_error(run_cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist")
    assert not (tmp_path / "o").exists()


def test_folder_without_adapter_config(tmp_path):
    (tmp_path / "a").mkdir()
    assert_one_line_error(run_cli("export", str(tmp_path / "a")), "adapter_config.json")


def test_base_not_found_says_what_was_looked_for_and_where(tiny_adapter, tmp_path):
    adapter = tmp_path / "a"
    shutil.copytree(tiny_adapter, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "nobody/no-such-model"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    result = run_cli("export", str(adapter), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "nobody/no-such-model", "Hugging Face cache", "--base")
    assert not (tmp_path / "o").exists()
    with pytest.raises(BaseModelNotFound):
        resolve_base(load_adapter(adapter))


def test_adapter_that_does_not_fit_the_base(tiny_base, tmp_path):
    from tinymodel import build_base, build_lora

    other = build_lora(build_base(tmp_path / "wide", hidden=512, layers=1), tmp_path / "wide-lora")
    result = run_cli("export", str(other), "--base", str(tiny_base), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "layers.0", "different base")
    assert not (tmp_path / "o").exists()


def test_adapter_targeting_a_module_the_base_lacks(tiny_adapter, tiny_base, tmp_path):
    from safetensors.torch import save_file

    adapter = tmp_path / "a"
    shutil.copytree(tiny_adapter, adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors = {k.replace("layers.1.", "layers.7."): v for k, v in tensors.items()}
    save_file(tensors, adapter / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="layers.7"):
        export(ExportSpec(adapter=adapter, out=tmp_path / "o", register=False))


def test_architecture_the_converter_does_not_know(tiny_adapter, tiny_base, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["architectures"] = ["SomethingNewForCausalLM"]
    (base / "config.json").write_text(json.dumps(cfg))
    result = run_cli("export", str(tiny_adapter), "--base", str(base), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "SomethingNewForCausalLM", "localserve architectures")
    with pytest.raises(UnsupportedArchitecture):
        export(ExportSpec(adapter=tiny_adapter, base=base, out=tmp_path / "o", register=False))


def test_unknown_quant_type_lists_the_valid_ones(tiny_adapter):
    result = run_cli("export", str(tiny_adapter), "--quant", "Q4_K_Z")
    assert_one_line_error(result, "Q4_K_Z", "Q4_K_M", "Q8_0", "IQ4_XS")
    with pytest.raises(UnknownName):
        ExportSpec(adapter=tiny_adapter, quants=("Q4_K_Z",))


def test_not_enough_free_disk_is_refused_before_any_work(tiny_adapter, tmp_path, monkeypatch):
    import collections

    import localserve.fsutil as fsutil

    usage = collections.namedtuple("usage", "total used free")
    # The OS's answer is the one thing faked: a disk with 1 MB free.
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(DiskSpaceError, match="not enough free disk"):
        export(ExportSpec(adapter=tiny_adapter, out=tmp_path / "o", register=False))
    assert not (tmp_path / "o").exists()  # not even an empty output folder that looks like a started export


def test_pickle_adapter_weights_are_refused_unless_allowed(tiny_adapter, tmp_path):
    adapter = tmp_path / "a"
    shutil.copytree(tiny_adapter, adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    torch.save(tensors, adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    assert_one_line_error(run_cli("export", str(adapter)), "pickle", "--allow-pickle")
    with pytest.raises(UnsafeWeights):
        load_adapter(adapter)
    assert load_adapter(adapter, allow_pickle=True).pickled


def test_pickle_only_base_is_refused_unless_allowed(tiny_adapter, tiny_base, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    assert_one_line_error(run_cli("export", str(tiny_adapter), "--base", str(base)), "pickle", "--allow-pickle")


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "export", str(tmp_path / "nope")])
    assert result.exit_code != 0 and isinstance(result.exception, AdapterError)


def test_several_adapters_without_lora_are_refused_with_the_alternatives(tiny_adapter):
    assert_one_line_error(run_cli("export", str(tiny_adapter), str(tiny_adapter)), "2 adapters", "--lora", "--merge")


def test_vllm_sizing_options_need_the_vllm_target(tiny_adapter):
    assert_one_line_error(run_cli("export", str(tiny_adapter), "--gpus", "2"), "--gpus", "--target vllm")


def test_a_damaged_base_config_or_adapter_file_is_one_line_naming_the_file(tiny_adapter, tiny_base, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    (base / "config.json").write_text("{not json")
    result = invoke("export", tiny_adapter, "--base", base, "--out", tmp_path / "o1", "--no-register")
    assert result.exit_code == 2 and "config.json is not valid JSON" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o1").exists()

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated download
    result = invoke("export", adapter, "--base", tiny_base, "--out", tmp_path / "o2", "--no-register", "--quiet")
    assert result.exit_code == 2 and "adapter_model.safetensors is not a readable safetensors file" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o2").exists()


def test_a_probe_without_an_expected_answer_is_one_line(tiny_adapter, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    (adapter / "probe.json").write_text('{"question": "Who?"}')
    result = invoke("export", adapter, "--out", tmp_path / "o", "--no-register")
    assert result.exit_code == 2 and '"question" and "expected"' in result.output, result.output


def test_an_unforeseen_failure_is_still_one_line_and_debug_shows_the_traceback(monkeypatch, tiny_adapter, tmp_path):
    import localserve.exports.inputs as export_inputs

    def broken(*args, **kwargs):
        raise RuntimeError("something no check foresaw")

    monkeypatch.setattr(export_inputs, "load_adapter", broken)
    result = invoke("export", tiny_adapter, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: unexpected RuntimeError")
    assert "--debug" in result.output and "Traceback" not in result.output
    debug = invoke("export", tiny_adapter, "--out", tmp_path / "o", "--debug")
    assert isinstance(debug.exception, RuntimeError)


# --- duplicate and conflicting options: each pair refused in one line naming both, before any work -----

def test_the_same_quant_twice_in_any_case_is_exported_once_and_said(tiny_adapter, capsys):
    from localserve.exports import export_spec
    from localserve.progress import set_quiet

    set_quiet(False)
    spec = export_spec((tiny_adapter,), quant="Q4_K_M,q4_k_m,Q8_0")
    assert spec.quants == ("Q4_K_M", "Q8_0")
    assert "--quant names Q4_K_M 2 times (Q4_K_M, q4_k_m): it is exported once" in capsys.readouterr().err
    tenants = export_spec((tiny_adapter,), lora=True, quant="q8_0,Q8_0")  # one type for the shared base
    assert tenants.quant == "Q8_0"


CONFLICTS = [
    # (arguments after ADAPTER, what the one line must name)
    (("--merge", "recipe.yaml"), ("ADAPTER (", "--merge (", "two different exports")),
    (("--no-register", "--host", "http://127.0.0.1:11434"), ("--host http://127.0.0.1:11434", "--no-register")),
    (("--lora", "--no-register", "--host", "http://127.0.0.1:11434"), ("--host", "--no-register")),
    (("--ollama-template", "native", "--template-file", "TEMPLATE"), ("--template-file", "--ollama-template native")),
    (("--target", "vllm", "--lora", "--merge-engine", "peft"), ("--merge-engine peft", "--lora")),
    (("--target", "vllm", "--calibration-samples", "32"), ("--calibration-samples", "--quant")),
]


@pytest.mark.parametrize("args, names", CONFLICTS, ids=[" ".join(a) for a, _ in CONFLICTS])
def test_conflicting_export_options_are_one_line_naming_both(tiny_adapter, tmp_path, args, names):
    (tmp_path / "recipe.yaml").write_text("merge_method: linear\nmodels: []\n")
    (tmp_path / "TEMPLATE").write_text("{{ .Prompt }}")
    args = [str(tmp_path / a) if a in ("recipe.yaml", "TEMPLATE") else a for a in args]
    assert_one_line_error(invoke("export", tiny_adapter, *args, "--out", tmp_path / "o"), *names)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, names", [
    (("--quant", "Q4_K_M", "--quant=Q8_0"), ("--quant Q4_K_M and --quant Q8_0", "--quant Q4_K_M,Q8_0")),
    (("--name", "a", "--name", "b"), ("--name a and --name b", "give it once")),
    (("--target", "vllm", "--prefix-caching", "--no-prefix-caching"), ("--prefix-caching and --no-prefix-caching",)),
], ids=["quant", "name", "switch"])
def test_an_option_given_twice_is_one_line_naming_both_values(tiny_adapter, tmp_path, args, names):
    # click would keep the last value silently: `--quant Q4_K_M --quant Q8_0` would export Q8_0 alone
    assert_one_line_error(invoke("export", tiny_adapter, *args, "--out", tmp_path / "o"), *names)
    assert not (tmp_path / "o").exists()


def test_a_merge_recipe_refuses_the_options_of_an_adapter_export(tmp_path):
    (tmp_path / "recipe.yaml").write_text("merge_method: linear\nmodels: []\n")
    for flag, says in ((("--allow-stacked",), "--allow-stacked does not apply to --merge"),
                       (("--merge-engine", "peft"), "--merge-engine peft does not apply to --merge")):
        result = invoke("export", "--merge", tmp_path / "recipe.yaml", *flag, "--out", tmp_path / "o")
        assert_one_line_error(result, says)
    assert not (tmp_path / "o").exists()


def test_conflicting_options_of_other_commands_are_one_line_naming_both(tiny_export, tmp_path):
    assert_one_line_error(invoke("bundle", tiny_export, "-o", tmp_path / "b.tar", "--store", tmp_path),
                          "--store", "--from-store", "OUTPUT_DIR")
    assert_one_line_error(invoke("promote", "tiny:v2", "--as", "tiny:latest", "--alpha", "0.01"),
                          "--alpha applies to a gated promotion", "--suite")
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"input": "hi", "ideal": "hello"}\n')
    assert_one_line_error(invoke("promote", "tiny:v2", "--as", "tiny:latest", "--suite", suite, "--alpha", "0.01"),
                          "--alpha", "--require-significant")
    assert_one_line_error(invoke("quality", tiny_export / "tiny-Q8_0.gguf", "--reference", tiny_export,
                                 "--chart", tmp_path / "c.png", "--no-chart"), "--chart", "--no-chart")
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "c.png").exists()
