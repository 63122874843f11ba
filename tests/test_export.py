"""`localserve export` on a tiny random Llama: the merge, every stage, re-runs and their records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from localserve import ExportSpec, export
from localserve.cli import cli
from localserve.errors import InputError, ToolError
from localserve.models.merge import merge_adapter
from localserve.models.resolve import load_adapter, resolve_base


# --- merge ---------------------------------------------------------------------------------------

def test_merged_weight_is_base_plus_scaled_B_times_A(tiny_base, tiny_adapter, tmp_path):
    adapter = load_adapter(tiny_adapter)
    merge_adapter(adapter, resolve_base(adapter), tmp_path / "merged")
    base = load_file(tiny_base / "model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    lora = load_file(tiny_adapter / "adapter_model.safetensors")
    cfg = json.loads((tiny_adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        a = lora[f"base_model.model.{module}.lora_A.weight"]
        b = lora[f"base_model.model.{module}.lora_B.weight"]
        expected = base[f"{module}.weight"] + scale * (b @ a)
        assert not torch.allclose(expected, base[f"{module}.weight"], atol=1e-4), "the adapter must change weights"
        torch.testing.assert_close(merged[f"{module}.weight"], expected, atol=1e-6, rtol=1e-5)
    # modules the adapter does not target are untouched
    torch.testing.assert_close(merged["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.k_proj.weight"])


# --- the whole export ------------------------------------------------------------------------------

def test_export_writes_one_gguf_per_quant_with_the_models_chat_template(tiny_export, tiny_base):
    from gguf import GGUFReader, LlamaFileType

    for quant, ftype in (("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M), ("Q8_0", LlamaFileType.MOSTLY_Q8_0)):
        reader = GGUFReader(tiny_export / f"tiny-{quant}.gguf")
        fields = reader.fields
        assert fields["general.file_type"].contents() == ftype
        assert fields["tokenizer.chat_template"].contents() == (tiny_base / "chat_template.jinja").read_text()
        tokens = fields["tokenizer.ggml.tokens"].contents()
        eos = fields["tokenizer.ggml.eos_token_id"].contents()
        assert tokens[eos] == "<|im_end|>"


def test_export_records_a_complete_lineage(tiny_export, tiny_adapter, tiny_base):
    from localserve.fsutil import sha256_file, sha256_tree

    lineage = json.loads((tiny_export / "localserve.json").read_text())
    assert lineage["base"]["sha256"] == sha256_tree(tiny_base)
    assert lineage["adapter"]["sha256"] == sha256_tree(tiny_adapter)
    assert lineage["spec"]["quants"] == ["Q4_K_M", "Q8_0"]
    for key in ("transformers", "peft", "gguf", "llama-cpp-python", "llama_cpp_commit"):
        assert lineage["tools"][key], key
    assert [a["quant"] for a in lineage["artifacts"]] == ["Q4_K_M", "Q8_0"]
    for art in lineage["artifacts"]:
        path = tiny_export / art["file"]
        assert art["size"] == path.stat().st_size and art["sha256"] == sha256_file(path)
    stages = {s["name"]: s for s in lineage["stages"]}
    # the stream merges inside the converter: no merged folder is ever written
    assert {"convert", "quantize:Q4_K_M", "quantize:Q8_0"} <= set(stages) and "merge" not in stages
    assert stages["convert"]["info"]["merge_engine"] == lineage["spec"]["merge_engine"] == "stream"
    assert all(s["seconds"] >= 0 for s in stages.values())
    assert lineage["chat"]["family"] == "chatml" and lineage["chat"]["parity_ok"] is True


def test_intermediates_are_removed_unless_asked_to_keep(tiny_export):
    assert not (tiny_export / ".localserve" / "work").exists()
    assert sorted(p.name for p in tiny_export.glob("*.gguf")) == ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"]
    assert not list(tiny_export.rglob("*.partial"))


def test_modelfile_points_at_the_first_quant_and_carries_template_and_stops(tiny_export):
    from localserve.modelfile import parse_modelfile

    mf = parse_modelfile((tiny_export / "Modelfile").read_text())
    assert mf.from_ == "./tiny-Q4_K_M.gguf"
    assert "<|im_end|>" in mf.parameters["stop"]
    assert mf.template and ".Messages" in mf.template
    assert parse_modelfile((tiny_export / "Modelfile.Q8_0").read_text()).from_ == "./tiny-Q8_0.gguf"


def test_rerun_with_the_same_inputs_skips_every_stage(tiny_export, tiny_adapter):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_export.glob("*.gguf")}
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q4_K_M", "Q8_0"), name="tiny", out=tiny_export,
                               smoke=False, register=False))
    assert all(s["skipped"] for s in result.stages if s["name"].startswith("quantize"))
    assert not any(s["name"] in ("merge", "convert") for s in result.stages), "nothing upstream was needed"
    assert {p.name: p.stat().st_mtime_ns for p in tiny_export.glob("*.gguf")} == before


def test_a_new_quant_reuses_the_cached_conversion_when_intermediates_are_kept(tiny_adapter, tmp_path):
    out = tmp_path / "keep"
    export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), out=out, smoke=False, register=False,
                      keep_intermediate=True))
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0", "Q4_0"), out=out, smoke=False,
                               register=False, keep_intermediate=True))
    by_name = {s["name"]: s for s in result.stages}
    assert by_name["convert"]["skipped"] and by_name["quantize:Q8_0"]["skipped"]
    assert not by_name["quantize:Q4_0"]["skipped"]
    assert (out / ".localserve" / "work" / f"{result.name}-F16.gguf").is_file()


def test_a_failed_quantization_leaves_no_file_behind(tmp_path):
    from localserve.llamacpp.quantize import quantize

    not_a_gguf = tmp_path / "broken.gguf"
    not_a_gguf.write_bytes(b"this is not a GGUF file" * 100)
    with pytest.raises(ToolError, match="quantize"):
        quantize(not_a_gguf, tmp_path / "out-Q4_K_M.gguf", "Q4_K_M")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]


# --- quant names -----------------------------------------------------------------------------------

def test_quant_names_are_case_insensitive_and_deduplicated():
    from localserve.llamacpp.quantize import canonical_quants

    assert canonical_quants(["q4_k_m", "Q8_0", "Q4_K_M", "bf16"]) == ("Q4_K_M", "Q8_0", "BF16")


def test_iq_types_need_an_importance_matrix():
    from localserve.llamacpp.quantize import canonical_quants

    with pytest.raises(InputError, match="importance matrix"):
        canonical_quants(["IQ3_XXS"])
    assert canonical_quants(["iq4_xs"], have_imatrix=True) == ("IQ4_XS",)


def test_export_bundle_writes_one_verified_archive(tiny_export, tiny_adapter, tmp_path):
    import tarfile

    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q4_K_M", "Q8_0"), name="tiny", out=tiny_export,
                               smoke=False, register=False, bundle=tmp_path / "tiny.tar"))
    with tarfile.open(result.bundle) as tar:
        names = {Path(m.name).name for m in tar.getmembers() if m.isfile()}
    assert {"tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "Modelfile", "localserve.json", "SHA256SUMS"} <= names


def test_json_prints_the_result_alone_for_machines(tiny_export):
    # Re-running into a finished folder skips every stage: the JSON describes the files already there.
    result = CliRunner().invoke(cli, ["--quiet", "export", str(_adapter_of(tiny_export)), "--quant", "Q4_K_M,Q8_0",
                                      "--name", "tiny", "--out", str(tiny_export), "--no-smoke", "--no-register",
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [a["quant"] for a in data["artifacts"]] == ["Q4_K_M", "Q8_0"]
    assert all((tiny_export / a["file"]).is_file() for a in data["artifacts"])
    assert data["lineage"] == str(tiny_export / "localserve.json")


def _adapter_of(export_dir: Path) -> Path:
    return Path(json.loads((export_dir / "localserve.json").read_text())["adapter"]["path"])


def test_f32_and_bf16_come_from_the_merged_model_not_from_the_f16_intermediate(tiny_adapter, tiny_base, tmp_path):
    import gguf
    import numpy as np

    result = export(ExportSpec(adapter=tiny_adapter, quants=("F32", "BF16"), name="t", out=tmp_path / "o",
                               smoke=False, register=False))
    adapter = load_adapter(tiny_adapter)
    merge_adapter(adapter, resolve_base(adapter, tiny_base), tmp_path / "peft")  # the reference merge
    merged = load_file(str(tmp_path / "peft" / "model.safetensors"))
    want = merged["model.layers.0.mlp.down_proj.weight"].numpy()
    assert not np.array_equal(want, want.astype(np.float16).astype(np.float32))  # F16 would lose bits here

    def tensor(file: str, name: str):
        reader = gguf.GGUFReader(str(tmp_path / "o" / file))
        return next(t for t in reader.tensors if t.name == name)

    f32 = tensor("t-F32.gguf", "blk.0.ffn_down.weight")
    assert f32.tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(np.asarray(f32.data).reshape(want.shape), want)
    assert tensor("t-BF16.gguf", "blk.0.ffn_down.weight").tensor_type == gguf.GGMLQuantizationType.BF16
    assert [a.quant for a in result.artifacts] == ["F32", "BF16"]
