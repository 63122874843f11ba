"""`localserve merge`: both forms work, and every bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from mergefixtures import build_finetune, tensors

from localserve.cli import cli


@pytest.fixture(scope="module")
def models(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-cli")
    a = build_finetune(tiny_base, root / "a", seed=1)
    b = build_finetune(tiny_base, root / "b", seed=2)
    other_arch = root / "other-arch"
    shutil.copytree(a, other_arch)
    cfg = json.loads((other_arch / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (other_arch / "config.json").write_text(json.dumps(cfg))
    other_shape = root / "other-shape"
    shutil.copytree(a, other_shape)
    from safetensors.torch import load_file, save_file

    w = load_file(other_shape / "model.safetensors")
    w["lm_head.weight"] = torch.zeros(w["lm_head.weight"].shape[0] + 8, w["lm_head.weight"].shape[1])
    save_file(w, other_shape / "model.safetensors", metadata={"format": "pt"})
    return {"base": tiny_base, "a": a, "b": b, "other_arch": other_arch, "other_shape": other_shape, "root": root}


def invoke(*args):
    return CliRunner().invoke(cli, ["--quiet", *map(str, args)])


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_shorthand_writes_the_model_and_the_equivalent_yaml(models, tmp_path):
    out = tmp_path / "slerped"
    result = invoke("merge", "--method", "slerp", "--t", "0.5", models["a"], models["b"], "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "chat_template.jinja").read_text() == (models["base"] / "chat_template.jinja").read_text()
    recipe = tmp_path / "slerped.yaml"
    assert recipe.is_file()
    # the YAML is a mergekit config that reproduces the shorthand's merge exactly
    again = tmp_path / "from-yaml"
    result = invoke("merge", recipe, "-o", again)
    assert result.exit_code == 0, result.output
    first, second = tensors(out), tensors(again)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=0, rtol=0)


def test_different_architectures(models, tmp_path):
    line = one_line_error(invoke("merge", "--method", "linear", models["a"], models["other_arch"], "-o", tmp_path / "x"))
    assert "MistralForCausalLM" in line and "LlamaForCausalLM" in line and "architectures" in line


def test_different_shapes(models, tmp_path):
    line = one_line_error(invoke("merge", "--method", "linear", models["a"], models["other_shape"], "-o", tmp_path / "x"))
    assert "lm_head.weight" in line and "shape" in line


def test_base_missing_for_a_method_that_needs_one(models, tmp_path):
    line = one_line_error(invoke("merge", "--method", "ties", "--density", "0.5", models["a"], models["b"],
                                 "-o", tmp_path / "x"))
    assert "ties needs a base model" in line and "--base" in line


def test_unknown_method_lists_the_valid_ones(models, tmp_path):
    line = one_line_error(invoke("merge", "--method", "frobnicate", models["a"], models["b"], "-o", tmp_path / "x"))
    assert "frobnicate" in line
    for name in ("linear", "slerp", "ties", "dare_ties", "task_arithmetic", "model_stock"):
        assert name in line


@pytest.mark.parametrize("t", ["-0.1", "1.5"])
def test_t_outside_0_1(models, tmp_path, t):
    line = one_line_error(invoke("merge", "--method", "slerp", "--t", t, models["a"], models["b"], "-o", tmp_path / "x"))
    assert f"t = {float(t)}" in line and "[0, 1]" in line


@pytest.mark.parametrize("density", ["0", "1.2"])
def test_density_outside_0_1(models, tmp_path, density):
    line = one_line_error(invoke("merge", "--method", "ties", "--density", density, "--base", models["base"],
                                 models["a"], models["b"], "-o", tmp_path / "x"))
    assert f"density = {float(density)}" in line and "(0, 1]" in line


def test_unreadable_yaml_names_the_line(models, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"merge_method: linear\nmodels:\n  - model: {models['a']}\n   parameters: {{weight: 1}}\n")
    line = one_line_error(invoke("merge", bad, "-o", tmp_path / "x"))
    assert str(bad) in line and "line 4" in line


def test_yaml_density_out_of_range_in_a_models_parameters(models, tmp_path):
    cfg = tmp_path / "ties.yaml"
    cfg.write_text(f"merge_method: ties\nbase_model: {models['base']}\nmodels:\n"
                   f"  - model: {models['a']}\n    parameters: {{weight: 1, density: 1.5}}\n"
                   f"  - model: {models['b']}\n    parameters: {{weight: 1, density: 0.5}}\n")
    line = one_line_error(invoke("merge", cfg, "-o", tmp_path / "x"))
    assert "density = 1.5" in line and "a" in line


def test_yaml_unknown_method_and_missing_base(models, tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(f"merge_method: avg\nmodels:\n  - model: {models['a']}\n")
    assert "unknown merge method 'avg'" in one_line_error(invoke("merge", unknown, "-o", tmp_path / "x"))
    no_base = tmp_path / "no-base.yaml"
    no_base.write_text(f"merge_method: task_arithmetic\nmodels:\n  - model: {models['a']}\n"
                       f"    parameters: {{weight: 1}}\n")
    assert "needs a base model" in one_line_error(invoke("merge", no_base, "-o", tmp_path / "x"))


def test_a_model_that_is_not_local(models, tmp_path):
    line = one_line_error(invoke("merge", "--method", "linear", models["a"], "someone/some-model", "-o", tmp_path / "x"))
    assert "someone/some-model" in line and "local" in line
    assert not (tmp_path / "x").exists()


def test_output_shards_are_bounded(models, tmp_path):
    out = tmp_path / "sharded"
    result = invoke("merge", "--method", "linear", models["a"], models["b"], "-o", out, "--shard-size", "0.5MB")
    assert result.exit_code == 0, result.output
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    largest_tensor = max(v.numel() * v.element_size() for v in tensors(models["a"]).values())
    assert all(s.stat().st_size <= 500_000 + largest_tensor for s in shards)
    a, b, merged = tensors(models["a"]), tensors(models["b"]), tensors(out)
    torch.testing.assert_close(merged["lm_head.weight"], (a["lm_head.weight"] + b["lm_head.weight"]) / 2)


def test_yaml_missing_a_required_parameter_or_malformed(models, tmp_path):
    no_t = tmp_path / "no-t.yaml"
    no_t.write_text(f"merge_method: slerp\nbase_model: {models['a']}\nmodels:\n"
                    f"  - model: {models['a']}\n  - model: {models['b']}\n")
    line = one_line_error(invoke("merge", no_t, "-o", tmp_path / "x"))
    assert "slerp needs parameter t" in line and "--t" in line
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text(f"merge_method: linear\nslices: 3\nmodels:\n  - model: {models['a']}\n")
    line = one_line_error(invoke("merge", malformed, "-o", tmp_path / "x"))
    assert "not a valid mergekit configuration" in line and "slices" in line


def test_progress_is_shown_unless_quiet(models, tmp_path):
    args = ["merge", "--method", "linear", str(models["a"]), str(models["b"])]
    shown = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "shown")])
    assert shown.exit_code == 0, shown.output
    assert "merging 2 inputs with linear" in shown.stderr
    assert "Executing graph" in shown.stderr and "100%" in shown.stderr  # mergekit's own per-tensor bar
    quiet = invoke(*args, "-o", tmp_path / "quiet")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
