"""Merge a LoRA adapter into its base with peft, in fp32, after checking that it fits."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterError, InputError
from ..progress import is_quiet, step
from .resolve import Adapter, BaseModel

# Files that define tokenization and chat formatting. The adapter's own copies win: fine-tuning
# often changes the chat template or adds tokens, and saves them beside the adapter.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$")


@dataclass(frozen=True)
class MergeResult:
    path: Path
    dtype: str
    lora_modules: int


def base_tensor_shapes(base_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers only (no weights read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(base_dir.glob("*.safetensors")):
        with _open_safetensors(f) as st:
            for name in st.keys():
                shapes[name] = tuple(st.get_slice(name).get_shape())
    return shapes


def _open_safetensors(path: Path):
    """safe_open, with a damaged or truncated file reported as bad input naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path} is not a readable safetensors file ({e})",
                         "re-download or re-save it; a truncated copy is the usual cause") from None


def adapter_tensor_shapes(adapter: Adapter) -> dict[str, tuple[int, ...]]:
    if adapter.pickled:
        import torch

        state = torch.load(adapter.weights, map_location="meta", weights_only=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    with _open_safetensors(adapter.weights) as st:
        return {name: tuple(st.get_slice(name).get_shape()) for name in st.keys()}


def check_compatibility(adapter: Adapter, base: BaseModel) -> int:
    """Every LoRA pair targets a module the base has, with matching in/out widths.

    Returns the number of adapted modules. Done on headers before loading anything, so a
    mismatched adapter fails in a second with the module named, not deep inside peft.
    """
    base_shapes = base_tensor_shapes(base.path)
    if not base_shapes:
        return 0  # pickle-only base (allowed by --allow-pickle): peft checks on load
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in adapter_tensor_shapes(adapter).items():
        m = _LORA_KEY.match(key)
        if m:
            pairs.setdefault(m.group("module"), {})[m.group("kind")] = shape
    if not pairs:
        raise AdapterError(f"{adapter.weights} holds no LoRA tensors", "is this a PEFT LoRA adapter?")
    for module, parts in sorted(pairs.items()):
        weight = _find_weight(module, base_shapes)
        if weight is None:
            raise AdapterError(
                f"the adapter targets {module}, which the base model in {base.path} does not have",
                "pass --base with the model this adapter was trained on")
        out_features, in_features = base_shapes[weight][0], base_shapes[weight][-1]
        a, b = parts.get("lora_A"), parts.get("lora_B")
        if a is not None and b is not None and (a[-1] != in_features or b[0] != out_features):
            raise AdapterError(
                f"the adapter's {module} is {a[-1]}->{b[0]} but the base's {weight} is "
                f"{in_features}->{out_features}", "this adapter was trained on a different base; pass --base")
        ea, eb = parts.get("lora_embedding_A"), parts.get("lora_embedding_B")
        if ea is not None and eb is not None and (ea[-1] != base_shapes[weight][0] or eb[0] != base_shapes[weight][-1]):
            raise AdapterError(f"the adapter's embedding LoRA on {module} does not match the base's vocabulary "
                               f"{base_shapes[weight]}", "the adapter was trained with a resized vocabulary; pass its base")
    return len(pairs)


def _find_weight(module: str, shapes: dict[str, tuple[int, ...]]) -> str | None:
    for candidate in (f"{module}.weight", f"{module.removeprefix('model.')}.weight", f"model.{module}.weight"):
        if candidate in shapes:
            return candidate
    if module.endswith("lm_head") and "model.embed_tokens.weight" in shapes:
        return "model.embed_tokens.weight"  # tied embeddings store only the input side
    return None


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
    for name in TOKENIZER_FILES + ("generation_config.json",):
        src = adapter.path / name if (adapter.path / name).is_file() else base.path / name
        if src.is_file():
            shutil.copyfile(src, out_dir / name)
    return MergeResult(out_dir, dtype, n_modules)
