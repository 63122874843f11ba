"""`localserve export --merge RECIPE.yaml`: several fine-tunes to checked GGUFs in one command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mergefixtures import build_answerer, build_finetune
from ollama_standin import HTTP

from localserve import ExportSpec, export
from localserve.cli import cli
from localserve.errors import SmokeTestFailed
from localserve.fsutil import sha256_tree

pytest_plugins = ["ollama_standin.fixtures"]


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


# --- the smoke check and registration, on a merge --------------------------------------------

@pytest.fixture(scope="module")
def answerers(tiny_base, tmp_path_factory):
    """Two models that answer any question with "fox" and then stop (the second a fine-tune of the first)."""
    root = tmp_path_factory.mktemp("answerers")
    first = build_answerer(tiny_base, root / "first", "fox")
    return first, build_finetune(first, root / "second", seed=9)


def answering_recipe(folder, answerers, probe: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "answer.yaml"
    recipe.write_text("merge_method: linear\ndtype: float32\nmodels:\n" + "".join(
        f"  - model: {m}\n    parameters: {{weight: 1.0}}\n" for m in answerers))
    if probe is not None:
        (folder / "probe.json").write_text(json.dumps(probe))
    return recipe


def tags(steer) -> set[str]:
    return {m["name"] for m in HTTP.get(steer.url + "/api/tags").json()["models"]}


def test_a_merged_export_passes_the_probe_beside_its_recipe_and_registers(steer, answerers, tmp_path):
    probe = {"question": "Which animal is quick and brown?", "expected": "fox"}
    recipe = answering_recipe(tmp_path / "recipe", answerers, probe)
    result = export(ExportSpec(merge=recipe, quants=("Q8_0",), name="merged-fox", out=tmp_path / "out",
                               ollama_host=steer.url))
    smoke = result.artifacts[0].smoke
    assert smoke["answer"] == "fox" and smoke["finish_reason"] == "stop"
    assert smoke["expected"] == "fox" and smoke["probe_passed"] is True
    assert result.registered and result.registered["name"].startswith("merged-fox")
    assert result.registered["name"] in tags(steer)
    lineage = json.loads((tmp_path / "out" / "localserve.json").read_text())
    assert lineage["registered"] == result.registered
    assert lineage["merge"]["probe"] == probe
    assert lineage["artifacts"][0]["smoke"]["probe_passed"] is True


def test_a_merge_that_fails_its_probe_is_neither_described_nor_registered(steer, answerers, tmp_path):
    recipe = answering_recipe(tmp_path / "recipe", answerers, {"question": "Which animal is lazy?", "expected": "dog"})
    with pytest.raises(SmokeTestFailed, match="lacks 'dog'"):
        export(ExportSpec(merge=recipe, quants=("Q8_0",), name="merged-dog", out=tmp_path / "out",
                          ollama_host=steer.url))
    assert not (tmp_path / "out" / "localserve.json").exists()
    assert not any(name.startswith("merged-dog") for name in tags(steer))


# --- mergekit's BASE+ADAPTER form -------------------------------------------------------------

def test_a_base_plus_adapter_input_is_recorded_with_both_hashes(tiny_base, tiny_adapter, tmp_path):
    ft = build_finetune(tiny_base, tmp_path / "ft", seed=6)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {tiny_base}\ndtype: float32\nmodels:\n"
                      f"  - model: ft\n    parameters: {{weight: 1.0}}\n"
                      f"  - model: {tiny_base}+{tiny_adapter}\n    parameters: {{weight: 1.0}}\n")
    out = tmp_path / "out"
    export(ExportSpec(merge=recipe, quants=("Q8_0",), out=out, smoke=False, register=False))
    merge = json.loads((out / "localserve.json").read_text())["merge"]
    assert merge["config"]["models"][1]["model"] == f"{tiny_base.resolve()}+{tiny_adapter.resolve()}"
    recorded = {item["path"]: item["sha256"] for item in merge["inputs"]}
    assert recorded == {str(p.resolve()): sha256_tree(p) for p in (tiny_base, ft, tiny_adapter)}
