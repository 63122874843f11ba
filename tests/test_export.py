"""`localserve export` on a tiny random Llama: every stage, re-runs, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from localserve import ExportSpec, export
from localserve.cli import cli
from localserve.errors import (AdapterError, BaseModelNotFound, DiskSpaceError, InputError, ToolError,
                               UnknownName, UnsafeWeights, UnsupportedArchitecture)
from localserve.models.merge import merge_adapter
from localserve.models.resolve import load_adapter, resolve_base


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_export(tiny_adapter, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-export") / "tiny"
    export(ExportSpec(adapter=tiny_adapter, quants=("q4_k_m", "Q8_0"), name="tiny", out=out, smoke=False,
                      register=False))
    return out


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
    assert {"merge", "convert", "quantize:Q4_K_M", "quantize:Q8_0"} <= set(stages)
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


# --- bad input: one clear line, exit != 0, nothing written -----------------------------------------

def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_missing_adapter_folder(tmp_path):
    _assert_one_line_error(run_cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), "does not exist")
    assert not (tmp_path / "o").exists()


def test_folder_without_adapter_config(tmp_path):
    (tmp_path / "a").mkdir()
    _assert_one_line_error(run_cli("export", str(tmp_path / "a")), "adapter_config.json")


def test_base_not_found_says_what_was_looked_for_and_where(tiny_adapter, tmp_path):
    adapter = tmp_path / "a"
    shutil.copytree(tiny_adapter, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "nobody/no-such-model"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    result = run_cli("export", str(adapter), "--out", str(tmp_path / "o"))
    _assert_one_line_error(result, "nobody/no-such-model", "Hugging Face cache", "--base")
    assert not (tmp_path / "o").exists()
    with pytest.raises(BaseModelNotFound):
        resolve_base(load_adapter(adapter))


def test_adapter_that_does_not_fit_the_base(tiny_base, tmp_path):
    from tinymodel import build_base, build_lora

    other = build_lora(build_base(tmp_path / "wide", hidden=512, layers=1), tmp_path / "wide-lora")
    result = run_cli("export", str(other), "--base", str(tiny_base), "--out", str(tmp_path / "o"))
    _assert_one_line_error(result, "layers.0", "different base")
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
    _assert_one_line_error(result, "SomethingNewForCausalLM", "localserve architectures")
    with pytest.raises(UnsupportedArchitecture):
        export(ExportSpec(adapter=tiny_adapter, base=base, out=tmp_path / "o", register=False))


def test_unknown_quant_type_lists_the_valid_ones(tiny_adapter):
    result = run_cli("export", str(tiny_adapter), "--quant", "Q4_K_Z")
    _assert_one_line_error(result, "Q4_K_Z", "Q4_K_M", "Q8_0", "IQ4_XS")
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
    _assert_one_line_error(run_cli("export", str(adapter)), "pickle", "--allow-pickle")
    with pytest.raises(UnsafeWeights):
        load_adapter(adapter)
    assert load_adapter(adapter, allow_pickle=True).pickled


def test_pickle_only_base_is_refused_unless_allowed(tiny_adapter, tiny_base, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    _assert_one_line_error(run_cli("export", str(tiny_adapter), "--base", str(base)), "pickle", "--allow-pickle")


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "export", str(tmp_path / "nope")])
    assert result.exit_code != 0 and isinstance(result.exception, AdapterError)


# --- quality gate inside export ------------------------------------------------------------------

@pytest.fixture(scope="module")
def auto_exports(tiny_adapter, tmp_path_factory):
    """--quant auto twice on one folder: a loose bound, then a tight one (candidates are reused)."""
    out = tmp_path_factory.mktemp("auto") / "tiny"
    common = dict(adapter=tiny_adapter, quants=("auto",), name="tiny", out=out, smoke=False, register=False,
                  keep_intermediate=True)
    loose = export(ExportSpec(max_kl=0.05, **common))
    loose_lineage = json.loads((out / "localserve.json").read_text())
    tight = export(ExportSpec(max_kl=0.0008, **common))
    tight_lineage = json.loads((out / "localserve.json").read_text())
    return loose, loose_lineage, tight, tight_lineage


def test_quant_auto_picks_a_larger_quant_when_the_bound_is_tighter(auto_exports):
    loose, loose_lineage, tight, tight_lineage = auto_exports
    (loose_art,), (tight_art,) = loose.artifacts, tight.artifacts
    assert tight_art.size > loose_art.size, (loose_art.quant, tight_art.quant)
    rows = {r["quant"]: r for r in tight_lineage["quality"]["rows"]}
    assert rows[tight_art.quant]["kl_mean"] <= 0.0008
    smaller = [r for r in rows.values() if r["size"] < rows[tight_art.quant]["size"]]
    assert smaller and all(r["kl_mean"] > 0.0008 for r in smaller), "the smallest quant meeting the bound wins"
    assert loose_lineage["quality"]["max_kl"] == 0.05 and len(loose_lineage["quality"]["rows"]) >= 6


def test_quant_auto_writes_the_quality_chart(auto_exports):
    loose = auto_exports[0]
    png = loose.out_dir / "quality.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_requested_quant_that_misses_the_bound_is_an_error_showing_the_table(tiny_adapter, tmp_path):
    from localserve.errors import QualityBoundNotMet

    with pytest.raises(QualityBoundNotMet) as info:
        export(ExportSpec(adapter=tiny_adapter, quants=("Q2_K",), out=tmp_path / "o", smoke=False,
                          register=False, max_kl=1e-7))
    assert "Q2_K" in str(info.value) and "KL mean" in str(info.value)
    assert not (tmp_path / "o" / "localserve.json").exists()


def test_quant_auto_needs_a_bound(tiny_adapter):
    result = run_cli("export", str(tiny_adapter), "--quant", "auto")
    _assert_one_line_error(result, "--max-kl")


def test_a_size_bound_alone_measures_the_quants_that_fit_and_keeps_the_most_faithful(auto_exports):
    loose, loose_lineage = auto_exports[0], auto_exports[1]
    sizes = {r["quant"]: r["size"] for r in loose_lineage["quality"]["rows"]}
    limit = sizes["Q4_K_M"]  # Q5_K_M, Q6_K and Q8_0 are larger
    result = export(ExportSpec(adapter=loose_lineage["adapter"]["path"], quants=("auto",), name="tiny",
                               out=loose.out_dir, smoke=False, register=False, keep_intermediate=True,
                               max_size=limit))
    quality = json.loads((loose.out_dir / "localserve.json").read_text())["quality"]
    rows = {r["quant"]: r for r in quality["rows"]}
    assert set(rows) == {q for q, n in sizes.items() if n <= limit}, "every candidate that fits is measured"
    assert quality["over_size"] == {q: n for q, n in sizes.items() if n > limit}
    (art,) = result.artifacts
    assert art.quant == quality["chosen"] == min(rows, key=lambda q: rows[q]["kl_mean"])
    assert quality["max_size"] == limit and quality["max_kl"] is None


def test_a_size_bound_no_candidate_fits_is_an_error_naming_their_sizes(auto_exports):
    from localserve.errors import QualityBoundNotMet

    loose, loose_lineage = auto_exports[0], auto_exports[1]
    with pytest.raises(QualityBoundNotMet, match=r"no candidate quant fits --max-size 1.00 KB \(Q2_K "):
        export(ExportSpec(adapter=loose_lineage["adapter"]["path"], quants=("auto",), name="tiny",
                          out=loose.out_dir, smoke=False, register=False, keep_intermediate=True, max_size=1000))


def test_both_bounds_keep_the_smallest_quant_meeting_both(auto_exports):
    loose, loose_lineage = auto_exports[0], auto_exports[1]
    sizes = {r["quant"]: r["size"] for r in loose_lineage["quality"]["rows"]}
    limit = sizes["Q6_K"]
    result = export(ExportSpec(adapter=loose_lineage["adapter"]["path"], quants=("auto",), name="tiny",
                               out=loose.out_dir, smoke=False, register=False, keep_intermediate=True,
                               max_kl=0.05, max_size=limit))
    rows = json.loads((loose.out_dir / "localserve.json").read_text())["quality"]["rows"]
    meeting = [r for r in rows if r["kl_mean"] <= 0.05 and r["size"] <= limit]
    assert result.artifacts[0].quant == min(meeting, key=lambda r: r["size"])["quant"]
    assert "Q8_0" not in {r["quant"] for r in rows}, "a candidate over --max-size is not measured"


def test_a_requested_quant_over_the_size_bound_is_an_error_showing_the_table(tiny_adapter, tmp_path):
    out = tmp_path / "o"
    result = run_cli("--quiet", "export", str(tiny_adapter), "--quant", "Q8_0", "--max-size", "1MB",
                     "--out", str(out), "--no-smoke", "--no-register")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert lines[error].startswith("error: Q8_0 (") and "misses --max-size 1.00 MB" in lines[error], result.output
    table = lines[error + 1:]
    assert table[0].startswith("quant ") and "KL mean" in table[0], "the measured table is shown"
    assert table[2].startswith("Q8_0 ")
    assert lines[-1].endswith("pick a smaller quant, use --quant auto, or loosen the bound")
    assert not (out / "localserve.json").exists()


def _chat_jsonl(path: Path) -> Path:
    from tinymodel import WORDS

    records = [{"messages": [{"role": "user", "content": " ".join(WORDS[i:i + 6])},
                             {"role": "assistant", "content": " ".join(reversed(WORDS[i:i + 9]))}]}
               for i in range(0, 20, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_quality_data_is_what_the_gate_measures_on_rendered_through_the_chat_template(auto_exports, tmp_path):
    from localserve.fsutil import sha256_file
    from localserve.llamacpp import evaluate
    from localserve.quality.text import load_chat_jsonl

    loose, loose_lineage = auto_exports[0], auto_exports[1]
    chat = _chat_jsonl(tmp_path / "chat.jsonl")
    result = run_cli("--quiet", "export", loose_lineage["adapter"]["path"], "--name", "tiny", "--out",
                     str(loose.out_dir), "--quant", "auto", "--max-kl", "0.05", "--quality-data", str(chat),
                     "--keep-intermediate", "--no-smoke", "--no-register")
    assert result.exit_code == 0, result.output
    lineage = json.loads((loose.out_dir / "localserve.json").read_text())
    text = lineage["quality"]["text"]
    assert text["source"] == str(chat) and text["sha256"] == sha256_file(chat)
    assert lineage["spec"]["quality_data"] == str(chat.resolve())
    gguf = loose.out_dir / ".localserve" / "work" / "candidates" / "tiny-Q8_0.gguf"
    rendered = load_chat_jsonl(chat, evaluate.chat_template(gguf))
    assert "<|im_start|>assistant" in rendered.texts[0]
    assert text["n_tokens"] == len(evaluate.tokenize(gguf, rendered.texts, special=True).ids)
    assert text["n_tokens"] != loose_lineage["quality"]["text"]["n_tokens"]


def test_quality_data_needs_a_bound_and_a_gguf_export(tiny_adapter, tmp_path):
    chat = _chat_jsonl(tmp_path / "chat.jsonl")
    _assert_one_line_error(run_cli("export", str(tiny_adapter), "--quality-data", str(chat)), "--quality-data",
                           "--max-kl")
    _assert_one_line_error(run_cli("export", str(tiny_adapter), "--target", "vllm", "--quality-data", str(chat)),
                           "--quality-data")


# --- importance matrix inside export --------------------------------------------------------------

@pytest.fixture(scope="module")
def imatrix_export(tiny_adapter, tmp_path_factory) -> tuple[Path, Path]:
    """(export folder of IQ4_XS + Q4_K_M with an importance matrix, the text it came from)."""
    import random

    from tinymodel import WORDS

    folder = tmp_path_factory.mktemp("imatrix")
    rng = random.Random(3)
    data = folder / "domain.txt"
    data.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60)))
    out = folder / "tiny"
    result = run_cli("--quiet", "export", str(tiny_adapter), "--name", "tiny", "--out", str(out),
                     "--quant", "iq4_xs,Q4_K_M", "--imatrix-data", str(data), "--keep-intermediate",
                     "--no-smoke", "--no-register")
    assert result.exit_code == 0, result.output
    return out, data


def test_imatrix_data_keeps_the_matrix_under_llama_cpps_name_and_records_it(imatrix_export):
    from gguf import GGUFReader

    from localserve.fsutil import sha256_file

    out, data = imatrix_export
    matrix = out / "imatrix.gguf"  # llama-imatrix's default name, as `localserve quality` writes it
    assert GGUFReader(matrix).fields["general.type"].contents() == "imatrix"
    assert not list(out.glob("*.imatrix"))
    lineage = json.loads((out / "localserve.json").read_text())
    assert lineage["imatrix"] == {"file": "imatrix.gguf", "data": str(data.resolve()),
                                  "data_sha256": sha256_file(data), "sha256": sha256_file(matrix)}
    assert "imatrix" in {s["name"] for s in lineage["stages"]}


def test_an_iq_type_exports_with_the_imatrix_and_every_quant_uses_it(imatrix_export):
    from gguf import GGUFReader, LlamaFileType

    from localserve.llamacpp import evaluate

    out, _ = imatrix_export
    assert GGUFReader(out / "tiny-IQ4_XS.gguf").fields["general.file_type"].contents() == LlamaFileType.MOSTLY_IQ4_XS
    for quant in ("IQ4_XS", "Q4_K_M"):
        assert evaluate.gguf_info(out / f"tiny-{quant}.gguf").imatrix is not None, quant


def test_an_iq_type_without_an_imatrix_is_refused_in_one_line(tiny_adapter, tmp_path):
    _assert_one_line_error(run_cli("export", str(tiny_adapter), "--quant", "IQ4_XS", "--out", str(tmp_path / "o")),
                           "IQ4_XS", "--imatrix-data")
    assert not (tmp_path / "o").exists()


def test_quality_never_replaces_the_imatrix_an_export_recorded(imatrix_export, tiny_export):
    from localserve.quality.variants import with_imatrix

    out, data = imatrix_export
    before = (out / "imatrix.gguf").read_bytes()
    plain = shutil.copy(tiny_export / "tiny-Q8_0.gguf", out / "plain-Q8_0.gguf")
    with pytest.raises(InputError, match="localserve.json records"):
        with_imatrix([plain], out / ".localserve" / "work" / "tiny-F16.gguf", data, out)
    assert (out / "imatrix.gguf").read_bytes() == before


def test_export_bundle_writes_one_verified_archive(tiny_export, tiny_adapter, tmp_path):
    import tarfile

    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q4_K_M", "Q8_0"), name="tiny", out=tiny_export,
                               smoke=False, register=False, bundle=tmp_path / "tiny.tar"))
    with tarfile.open(result.bundle) as tar:
        names = {Path(m.name).name for m in tar.getmembers() if m.isfile()}
    assert {"tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "Modelfile", "localserve.json", "SHA256SUMS"} <= names


def test_several_adapters_without_lora_are_refused_with_the_alternatives(tiny_adapter):
    _assert_one_line_error(run_cli("export", str(tiny_adapter), str(tiny_adapter)), "2 adapters", "--lora", "--merge")


def test_vllm_sizing_options_need_the_vllm_target(tiny_adapter):
    _assert_one_line_error(run_cli("export", str(tiny_adapter), "--gpus", "2"), "--gpus", "--target vllm")


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_damaged_base_config_or_adapter_file_is_one_line_naming_the_file(tiny_adapter, tiny_base, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    (base / "config.json").write_text("{not json")
    result = _invoke("export", tiny_adapter, "--base", base, "--out", tmp_path / "o1", "--no-register")
    assert result.exit_code == 2 and "config.json is not valid JSON" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o1").exists()

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated download
    result = _invoke("export", adapter, "--base", tiny_base, "--out", tmp_path / "o2", "--no-register", "--quiet")
    assert result.exit_code == 2 and "adapter_model.safetensors is not a readable safetensors file" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o2").exists()


def test_a_probe_without_an_expected_answer_is_one_line(tiny_adapter, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    (adapter / "probe.json").write_text('{"question": "Who?"}')
    result = _invoke("export", adapter, "--out", tmp_path / "o", "--no-register")
    assert result.exit_code == 2 and '"question" and "expected"' in result.output, result.output


def test_an_unforeseen_failure_is_still_one_line_and_debug_shows_the_traceback(monkeypatch, tiny_adapter, tmp_path):
    import localserve.exports.inputs as export_inputs

    def broken(*args, **kwargs):
        raise RuntimeError("something no check foresaw")

    monkeypatch.setattr(export_inputs, "load_adapter", broken)
    result = _invoke("export", tiny_adapter, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: unexpected RuntimeError")
    assert "--debug" in result.output and "Traceback" not in result.output
    debug = _invoke("export", tiny_adapter, "--out", tmp_path / "o", "--debug")
    assert isinstance(debug.exception, RuntimeError)


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


# --- the Modelfile options of export -------------------------------------------------------------

def test_force_exports_a_mismatching_template_and_records_that_it_was_forced(tiny_adapter, tmp_path):
    from localserve.errors import TemplateMismatch

    with pytest.raises(TemplateMismatch):
        export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), template_family="phi3", out=tmp_path / "refused",
                          smoke=False, register=False))
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), template_family="phi3", force=True,
                               out=tmp_path / "o", smoke=False, register=False))
    chat = json.loads(result.lineage_path.read_text())["chat"]
    assert chat["family"] == "phi3" and chat["parity_ok"] is False and chat["forced"] is True


def test_a_users_modelfile_is_merged_into_the_export(tiny_adapter, tmp_path):
    from localserve.modelfile import parse_modelfile

    mine = tmp_path / "Modelfile.mine"
    mine.write_text('FROM ignored\nPARAMETER temperature 0.2\nPARAMETER stop "<|x|>"\nSYSTEM """Be brief.\n'
                    'Very brief."""\nMESSAGE user Hi\nMESSAGE assistant Hello.\nLICENSE """MIT"""\n')
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), modelfile=mine, out=tmp_path / "o",
                               smoke=False, register=False))
    written = parse_modelfile(result.modelfile_path.read_text())
    assert written.from_ == f"./{result.artifacts[0].file}"  # our FROM, not the user's
    assert written.parameters["temperature"] == 0.2
    assert "<|x|>" in written.parameters["stop"] and "<|im_end|>" in written.parameters["stop"]  # merged, not replaced
    assert written.system == "Be brief.\nVery brief."
    assert [tuple(m) for m in written.messages] == [("user", "Hi"), ("assistant", "Hello.")]
    assert written.license == ("MIT",) and written.template  # the verified TEMPLATE stays


def test_native_template_mode_writes_no_template_and_says_which_servers_need_it(tiny_adapter, tmp_path):
    result = export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), ollama_template="native", out=tmp_path / "o",
                               smoke=False, register=False))
    assert "TEMPLATE" not in result.modelfile_path.read_text()
    modelfile = json.loads(result.lineage_path.read_text())["modelfile"]
    assert modelfile["template"] is None and modelfile["ollama_template"] == "native"


def test_f32_and_bf16_come_from_the_merged_model_not_from_the_f16_intermediate(tiny_adapter, tmp_path):
    import gguf
    import numpy as np

    result = export(ExportSpec(adapter=tiny_adapter, quants=("F32", "BF16"), name="t", out=tmp_path / "o",
                               smoke=False, register=False, keep_intermediate=True))
    merged = load_file(str(tmp_path / "o" / ".localserve" / "work" / "merged" / "model.safetensors"))
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
