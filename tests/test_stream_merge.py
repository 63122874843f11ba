"""The streaming merge: every base tensor merged on its own, in fp32, as peft merges it — the same
bits as peft's `merge_and_unload`, whether written as safetensors or streamed into llama.cpp's
converter, for every kind of adapter peft saves; and what it cannot merge exactly is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tinymodel import build_adapter

from localserve.errors import AdapterError
from localserve.llamacpp.convert import convert_hf_to_gguf
from localserve.models.merge import merge_to_folder, merged_model_view, plan_merge
from localserve.models.resolve import BaseModel, load_adapter


@pytest.fixture(scope="module")
def bf16_base(tiny_base, tmp_path_factory) -> Path:
    """The tiny model published in bfloat16, as most bases are: the merge runs in fp32, the result is cast back."""
    out = tmp_path_factory.mktemp("bf16") / "base"
    shutil.copytree(tiny_base, out)
    weights = load_file(out / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "bfloat16"
    config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config))
    return out


ADAPTERS = {
    "all-linear": [dict(r=4, lora_alpha=12, target_modules="all-linear")],
    "rslora": [dict(r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "o_proj"])],
    "patterns": [dict(r=4, lora_alpha=8, target_modules="all-linear", rank_pattern={"q_proj": 2},
                      alpha_pattern={r"layers\.0\..*_proj": 3})],
    "embedding": [dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])],
    "modules-to-save": [dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])],
    "dora": [dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], use_dora=True)],
    "two-stacked": [dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                    dict(r=8, lora_alpha=16, target_modules=["q_proj", "down_proj"])],
}


@pytest.fixture(scope="module")
def adapters(bf16_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-adapters")
    return {case: [build_adapter(bf16_base, root / f"{case}-{i}", seed=10 + i, **lora) for i, lora in enumerate(loras)]
            for case, loras in ADAPTERS.items()}


def merged_by_peft(base: Path, adapters: list[Path], out: Path) -> Path:
    """peft's own merge, adapter after adapter on the fp32 model, saved in the base's dtype (what
    `--merge-engine peft` does for one adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload(safe_merge=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copyfile(base / name, out / name)
    return out


def gguf_tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    from gguf import GGUFReader

    return {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def merges(bf16_base, adapters, tmp_path_factory):
    """Per case: (the adapters, the streamed folder, peft's folder)."""
    root = tmp_path_factory.mktemp("merges")
    base = BaseModel(bf16_base, "--base", None)
    out = {}
    for case, paths in adapters.items():
        streamed = merge_to_folder([load_adapter(p) for p in paths], base, root / case / "stream")
        out[case] = (paths, streamed.path, merged_by_peft(bf16_base, paths, root / case / "peft"))
    return out


@pytest.mark.parametrize("case", list(ADAPTERS))
def test_the_streamed_merge_has_peft_s_bits(merges, bf16_base, case):
    _, streamed, peft = merges[case]
    ours, theirs = load_file(streamed / "model.safetensors"), load_file(peft / "model.safetensors")
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype == torch.bfloat16, name
        assert torch.equal(ours[name], tensor), f"{case}: {name} differs from peft's merge"
    base = load_file(bf16_base / "model.safetensors")
    assert any(not torch.equal(base[n], t) for n, t in theirs.items() if n in base), "the adapter changed nothing"


@pytest.mark.parametrize("case", ["all-linear", "embedding", "modules-to-save", "two-stacked"])
def test_the_gguf_converted_in_the_stream_is_the_gguf_of_peft_s_merge(merges, bf16_base, case, tmp_path):
    paths, _, peft = merges[case]
    base = BaseModel(bf16_base, "--base", None)
    adapters = [load_adapter(p) for p in paths]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_merge(adapters, base).to_json()))
    view = merged_model_view(adapters, base, tmp_path / "merged")
    streamed = gguf_tensors(convert_hf_to_gguf(view, tmp_path / "stream.gguf", "f16", merge_plan=plan))
    reference = gguf_tensors(convert_hf_to_gguf(peft, tmp_path / "peft.gguf", "f16"))
    assert set(streamed) == set(reference)
    for name, value in reference.items():
        assert streamed[name] == value, f"{case}: GGUF tensor {name} differs"
    unmerged = gguf_tensors(convert_hf_to_gguf(bf16_base, tmp_path / "base.gguf", "f16"))
    assert any(unmerged[n] != v for n, v in reference.items()), "the adapter changed nothing: the test proves nothing"
