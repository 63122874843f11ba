"""The streamed merge on every architecture localserve exports, MoE included: for a tiny random model
of each (tests/tinyarch.py, bf16, 2 layers) and a random all-linear LoRA, the F16 GGUF the converter
writes with the adapter merged in its stream is peft's `merge_and_unload` + the converter, tensor for
tensor, and `export --target vllm` writes peft's merged model's `save_pretrained`, tensor for tensor.

On transformers 5 MoE models (Qwen3-MoE, Mixtral, OLMoE) all-linear also adapts the fused experts and
the router (peft's target_parameters), while the checkpoint stores one tensor per expert (and Mixtral
under other names): each stored tensor gets its expert's share of peft's update. A Qwen3-MoE stored
with its experts fused is converted too (there the converter splits gate_up_proj, where it stacks the
per-expert tensors otherwise), and GPT-OSS, whose experts are stored fused as (experts, in, out).

The GGUFs of the whole file are written by one converter process (tests/gguf_batch.py), through the
function `export`'s converter child runs; tests/test_stream_merge.py and the CLI test below go through
the child process itself.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clihelpers import assert_one_line_error, invoke
from gguf_batch import convert_all
from tinyarch import ARCHITECTURES, build_architecture
from tinymodel import build_adapter

from localserve.exports import VllmExportSpec, export_vllm
from localserve.llamacpp.convert import supported_architectures
from localserve.models.merge import merged_model_view, plan_merge
from localserve.models.resolve import BaseModel, load_adapter

FUSED = "qwen3-moe (experts stored fused)"
CASES = [*ARCHITECTURES, FUSED]


def lacking(name: str) -> str | None:
    """Why this test run cannot build or convert the architecture, if it cannot."""
    import transformers

    arch = ARCHITECTURES[name]
    if not hasattr(transformers, arch.config_class):
        return f"transformers {transformers.__version__} has no {arch.config_class}"
    if arch.model_class not in supported_architectures():
        return f"the vendored llama.cpp converter has no {arch.model_class}"
    return None


@dataclass(frozen=True)
class Case:
    base: Path
    adapter: Path
    peft: Path  # peft's merge_and_unload of the adapter, saved as the base's dtype


def merged_by_peft(base: Path, adapter: Path, out: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload(safe_merge=True)
    model.to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copyfile(base / name, out / name)
    return out


def store_fused(base: Path) -> Path:
    """Rewrite `base` with its parameters stored as the model holds them (fused experts), as a
    checkpoint saved by other tools is."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    save_file(state, base / "model.safetensors", metadata={"format": "pt"})
    return base


@pytest.fixture(scope="module")
def cases(embedded_base, tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("architectures")
    built = {}
    for seed, name in enumerate(CASES):
        arch = "qwen3-moe" if name == FUSED else name
        if lacking(arch):
            continue
        folder = root / f"case{seed}"
        base = build_architecture(arch, folder / "base", embedded_base, seed=seed)
        if name == FUSED:
            store_fused(base)
        adapter = build_adapter(base, folder / "adapter", seed=100 + seed, r=4, lora_alpha=8,
                                **ARCHITECTURES[arch].lora)
        # the merged folders are all named "model": the converter names the GGUF after its folder
        built[name] = Case(base, adapter, merged_by_peft(base, adapter, folder / "peft" / "model"))
    return built


def case_of(cases, name) -> Case:
    reason = lacking("qwen3-moe" if name == FUSED else name)
    if reason:
        pytest.skip(reason)
    return cases[name]


@pytest.fixture(scope="module")
def ggufs(cases, tmp_path_factory):
    """Per case: (the streamed GGUF, peft's GGUF, an error the stream raised while planning or None)."""
    root = tmp_path_factory.mktemp("ggufs")
    jobs, out, planning = [], {}, {}
    for i, (name, case) in enumerate(cases.items()):
        folder = root / f"case{i}"
        folder.mkdir()
        adapters, base = [load_adapter(case.adapter)], BaseModel(case.base, "--base", None)
        try:
            plan = plan_merge(adapters, base)
        except Exception as e:  # noqa: BLE001 - reported by the case's own test
            planning[name] = e
            continue
        (folder / "plan.json").write_text(json.dumps(plan.to_json()))
        view = merged_model_view(adapters, base, folder / "stream" / "model")
        out[name] = (folder / "stream.gguf", folder / "peft.gguf")
        jobs += [dict(model=view, outfile=folder / "stream.gguf", plan=folder / "plan.json"),
                 dict(model=case.peft, outfile=folder / "peft.gguf", plan=None)]
    errors = convert_all(jobs, root)
    return {name: (*files, errors) for name, files in out.items()}, planning


def gguf_tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    from gguf import GGUFReader

    return {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in GGUFReader(path).tensors}


def safetensors_of(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.mark.parametrize("name", CASES)
def test_the_stream_changes_exactly_the_tensors_peft_s_merge_changes(cases, name):
    case = case_of(cases, name)
    plan = plan_merge([load_adapter(case.adapter)], BaseModel(case.base, "--base", None))
    base, merged = safetensors_of(case.base), safetensors_of(case.peft)
    assert set(base) == set(merged)  # saved as the base stores it: per expert, or fused
    changed = {n for n, t in merged.items() if not torch.equal(base[n], t)}
    assert changed == set(plan.steps)
    if ARCHITECTURES["qwen3-moe" if name == FUSED else name].moe:
        assert {n for n in changed if ".experts." in n}, "all-linear left the experts alone: the MoE case proves nothing"
        assert {n for n in changed if n.endswith((".gate.weight", ".router.weight"))}, "the router was left alone"


@pytest.mark.parametrize("name", CASES)
def test_the_streamed_gguf_is_the_gguf_of_peft_s_merge(cases, ggufs, name):
    case_of(cases, name)
    converted, planning = ggufs
    if name in planning:
        raise planning[name]
    streamed, reference, errors = converted[name]
    for path in (streamed, reference):
        assert str(path) not in errors, errors[str(path)]
    if streamed.read_bytes() == reference.read_bytes():  # metadata and every tensor
        return
    ours, theirs = gguf_tensors(streamed), gguf_tensors(reference)
    assert set(ours) == set(theirs)
    for tensor, value in theirs.items():
        assert ours[tensor] == value, f"{name}: GGUF tensor {tensor} differs from peft's"
    pytest.fail(f"{name}: the GGUFs hold the same tensors but differ in their metadata")


@pytest.mark.parametrize("name", CASES)
def test_the_vllm_export_holds_peft_s_merged_model(cases, name, tmp_path):
    case = case_of(cases, name)
    result = export_vllm(VllmExportSpec(adapters=(case.adapter,), base=case.base, out=tmp_path / "out", name="m"))
    ours, theirs = safetensors_of(result.model_dir), safetensors_of(case.peft)
    assert set(ours) == set(theirs)
    for tensor, value in theirs.items():
        assert ours[tensor].dtype == value.dtype and torch.equal(ours[tensor], value), f"{name}: {tensor} differs"


@pytest.mark.parametrize("name", [n for n in CASES if n == FUSED or ARCHITECTURES[n].moe])
def test_peft_s_own_engine_exports_the_moe_adapters_too(cases, name, tmp_path):
    case = case_of(cases, name)
    result = export_vllm(VllmExportSpec(adapters=(case.adapter,), base=case.base, out=tmp_path / "out", name="m",
                                        merge_engine="peft"))
    ours, theirs = safetensors_of(result.model_dir), safetensors_of(case.peft)
    assert set(ours) == set(theirs) and all(torch.equal(ours[n], t) for n, t in theirs.items())


def test_localserve_export_of_an_all_linear_qwen3_moe_adapter_writes_peft_s_gguf(cases, ggufs, tmp_path):
    """The issue's report, as a user runs it: the export no longer stops at the fused experts, and its F16
    GGUF, converted in the converter's own child process, is peft's."""
    case = case_of(cases, "qwen3-moe")
    result = invoke("export", case.adapter, "--base", case.base, "--quant", "F16", "--no-register", "--no-smoke",
                    "--name", "model", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    exported, reference = gguf_tensors(tmp_path / "out" / "model-F16.gguf"), gguf_tensors(ggufs[0]["qwen3-moe"][1])
    assert set(exported) == set(reference) and all(exported[n] == v for n, v in reference.items())


def lora_on_a_norm(base: Path, out: Path) -> Path:
    """An adapter whose LoRA targets a 1-D parameter (a norm's weight) through target_parameters: peft
    refuses to build one, so it is written by hand."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    width = load_file(base / "model.safetensors")["model.layers.0.input_layernorm.weight"].shape[0]
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": [],
        "target_parameters": ["model.layers.0.input_layernorm.weight"], "base_model_name_or_path": str(base)}))
    prefix = "base_model.model.model.layers.0.input_layernorm"
    save_file({f"{prefix}.lora_A.weight": torch.randn(4, width), f"{prefix}.lora_B.weight": torch.randn(width, 4)},
              out / "adapter_model.safetensors")
    return out


def test_a_lora_peft_cannot_merge_either_is_refused_in_one_line_naming_it(cases, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    case = case_of(cases, "qwen3")
    adapter = lora_on_a_norm(case.base, tmp_path / "norm-lora")
    with pytest.raises(ValueError):  # what peft itself does with it
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(case.base), adapter)
    for engine in ("stream", "peft"):
        result = invoke("export", adapter, "--base", case.base, "--quant", "Q8_0", "--merge-engine", engine,
                        "--no-register", "--no-smoke", "--out", tmp_path / engine)
        assert_one_line_error(result, "model.layers.0.input_layernorm.weight", "1-D parameter",
                              "peft wraps only 2-D and 3-D parameters")
        assert not (tmp_path / engine).exists()
