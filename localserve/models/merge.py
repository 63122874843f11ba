"""Merge a LoRA adapter into its base with peft, in fp32, after checking that it fits."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError
from ..progress import is_quiet, step
from .lora import AdapterFacts, describe, open_safetensors, tokenizer_files, tokenizer_sources
from .resolve import Adapter, BaseModel


@dataclass(frozen=True)
class MergeResult:
    path: Path
    dtype: str
    lora_modules: int


def base_tensor_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers only (no weights read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(base_dir.glob("*.safetensors")):
        with open_safetensors(f) as st:
            for name in st.keys():
                shapes[name] = tuple(st.get_slice(name).get_shape())
    return shapes


def check_compatibility(adapter: Adapter, base: BaseModel) -> int:
    """Every LoRA pair targets a module the base has, with matching in/out widths.

    Returns the number of adapted modules. Done on headers before loading anything, so a
    mismatched adapter fails in a second with the module named, not deep inside peft.
    """
    base_shapes = base_tensor_shapes(base.path)
    if not base_shapes:
        return 0  # pickle-only base (allowed by --allow-pickle): peft checks on load
    facts = describe(adapter, base_shapes)
    check_fits(facts, base_shapes, base.path)
    return len(facts.modules)


def check_fits(facts: AdapterFacts, base_shapes: dict[str, tuple[int, ...]], base_dir: Path) -> None:
    """AdapterError naming the first module of `facts` (described with `base_shapes`) the base cannot take."""
    if not facts.modules:
        raise AdapterError(f"{facts.weights} holds no LoRA tensors", "is this a PEFT LoRA adapter?")
    for m in facts.modules:
        if m.base_weight is None:
            raise AdapterError(
                f"the adapter targets {m.path}, which the base model in {base_dir} does not have",
                "pass --base with the model this adapter was trained on")
        stored = base_shapes[m.base_weight]
        a, b = m.a_shape, m.b_shape
        if not a or not b:
            continue
        if m.kind == "embedding":
            if a[-1] != stored[0] or b[0] != stored[-1]:
                raise AdapterError(f"the adapter's embedding LoRA on {m.path} does not match the base's vocabulary "
                                   f"{stored}", "the adapter was trained with a resized vocabulary; pass its base")
            continue
        if m.kind == "conv":  # (out, in/groups, *kernel)
            out_features, in_features = stored[0], stored[1]
        elif m.fan_in_fan_out:  # stored (in, out)
            out_features, in_features = stored[-1], stored[0]
        else:
            out_features, in_features = stored[0], stored[-1]
        if a[1] != in_features or b[0] != out_features:
            raise AdapterError(
                f"the adapter's {m.path} is {a[1]}->{b[0]} but the base's {m.base_weight} is "
                f"{in_features}->{out_features}", "this adapter was trained on a different base; pass --base")


def saved_dtype(config: dict) -> str:
    """The dtype the base was published in; the merge itself always runs in fp32."""
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def merge_adapter(adapter: Adapter, base: BaseModel, out_dir: Path, trust_remote_code: bool = False) -> MergeResult:
    """Write base + adapter, merged, as a Hugging Face folder at `out_dir` (which must be empty/new)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    n_modules = check_compatibility(adapter, base)
    config = json.loads((base.path / "config.json").read_text())
    dtype = saved_dtype(config)
    step(f"merging {n_modules} LoRA modules into {base.path.name} in float32 (saving as {dtype})")
    # fp32 on CPU: bf16 matmuls are slow on most CPUs, and the low-rank update B·A·scale is
    # often below bf16's resolution for a weight, so merging in bf16 can silently drop the adapter.
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code, low_cpu_mem_usage=True)
    peft_model = PeftModel.from_pretrained(model, adapter.path, is_trainable=False)
    merged = peft_model.merge_and_unload(progressbar=not is_quiet(), safe_merge=True)
    if dtype != "float32":
        merged = merged.to(getattr(torch, dtype))
    merged.save_pretrained(out_dir, safe_serialization=True, max_shard_size="2GB")
    for name, src in tokenizer_sources(tokenizer_files(adapter.path), base.path).items():
        shutil.copyfile(src, out_dir / name)
    own = adapter.path / "generation_config.json"
    generation = own if own.is_file() else base.path / "generation_config.json"
    if generation.is_file():
        shutil.copyfile(generation, out_dir / "generation_config.json")
    return MergeResult(out_dir, dtype, n_modules)
