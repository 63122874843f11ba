"""`localserve export --merge RECIPE.yaml`: several fine-tunes to checked GGUFs in one command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mergefixtures import build_finetune

from localserve.cli import cli
from localserve.fsutil import sha256_tree


@pytest.fixture(scope="module")
def merge_export(tiny_base, tiny_adapter, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-export")
    ft = build_finetune(tiny_base, root / "ft", seed=5)
    recipe = root / "recipe.yaml"
    # relative paths are read from the recipe's folder; the adapter is a LoRA on the same base
    recipe.write_text(f"merge_method: ties\nbase_model: {tiny_base}\ndtype: float32\nmodels:\n"
                      f"  - model: ft\n    parameters: {{weight: 1.0, density: 0.5}}\n"
                      f"  - model: {tiny_adapter}\n    parameters: {{weight: 1.0, density: 0.5}}\n")
    out = root / "out"
    result = CliRunner().invoke(cli, ["--quiet", "export", "--merge", str(recipe), "--quant", "Q4_K_M,Q8_0",
                                      "--name", "merged", "--out", str(out), "--no-smoke", "--no-register"])
    assert result.exit_code == 0, result.output
    return {"out": out, "recipe": recipe, "inputs": [tiny_base, ft, tiny_adapter], "tiny_base": tiny_base,
            "lora_base": tiny_base}


def test_export_merge_writes_ggufs_and_a_modelfile(merge_export):
    from gguf import GGUFReader

    out = merge_export["out"]
    for quant in ("Q4_K_M", "Q8_0"):
        reader = GGUFReader(out / f"merged-{quant}.gguf")
        assert reader.fields["general.architecture"].contents() == "llama"
        assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./merged-Q4_K_M.gguf" in modelfile and "<|im_start|>" in modelfile


def test_lineage_records_the_recipe_and_every_inputs_hash(merge_export):
    lineage = json.loads((merge_export["out"] / "localserve.json").read_text())
    merge = lineage["merge"]
    assert merge["recipe"] == str(merge_export["recipe"].resolve())
    assert merge["method"] == "ties"
    recorded = {item["path"]: item["sha256"] for item in merge["inputs"]}
    for path in merge_export["inputs"]:
        assert recorded[str(path.resolve())] == sha256_tree(path)
    assert lineage["adapter"] is None
    assert lineage["chat"]["family"] == "chatml" and lineage["chat"]["parity_ok"] is True
    assert [s["name"] for s in lineage["stages"]][:2] == ["merge", "convert"]


def test_a_rerun_with_the_same_inputs_skips_quantizing(merge_export):
    out = merge_export["out"]
    before = (out / "merged-Q8_0.gguf").stat().st_mtime_ns
    result = CliRunner().invoke(cli, ["--quiet", "export", "--merge", str(merge_export["recipe"]), "--quant", "Q8_0",
                                      "--name", "merged", "--out", str(out), "--no-smoke", "--no-register"])
    assert result.exit_code == 0, result.output
    assert (out / "merged-Q8_0.gguf").stat().st_mtime_ns == before
    stages = {s["name"]: s for s in json.loads((out / "localserve.json").read_text())["stages"]}
    assert stages["quantize:Q8_0"]["skipped"] is True


def test_export_needs_an_adapter_or_a_recipe_not_both(merge_export, tiny_adapter, tmp_path):
    for args in ([], [str(tiny_adapter), "--merge", str(merge_export["recipe"])]):
        result = CliRunner().invoke(cli, ["export", *args, "--out", str(tmp_path / "x"), "--no-register"])
        assert result.exit_code != 0
        assert "either an ADAPTER folder or --merge" in result.stderr


def test_the_recipes_chat_template_is_the_one_served(tiny_base, tmp_path):
    """`chat_template:` in the recipe (mergekit's chatml, worded differently from the base's) reaches the GGUF,
    and the parity check runs on it, not on the base's."""
    from gguf import GGUFReader

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"merge_method: linear\nchat_template: chatml\nmodels:\n  - model: {tiny_base}\n"
                      f"    parameters: {{weight: 1.0}}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--quiet", "export", "--merge", str(recipe), "--quant", "Q8_0",
                                      "--out", str(out), "--no-smoke", "--no-register"])
    assert result.exit_code == 0, result.output
    served = GGUFReader(out / "recipe-Q8_0.gguf").fields["tokenizer.chat_template"].contents()
    base_template = (tiny_base / "chat_template.jinja").read_text()
    assert served.strip() != base_template.strip() and "<|im_start|>" in served
    lineage = json.loads((out / "localserve.json").read_text())
    assert lineage["chat"]["parity_ok"] is True and lineage["chat"]["family"] == "chatml"
