"""The GPU quantization formats `export --target vllm --quant` accepts, keyed by the name users type.

All are written by llm-compressor in the compressed-tensors format, which vLLM reads from the
folder's config.json (`quantization_config`) and serves as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, UnknownName

GROUP_SIZES = (128, 64, 32)  # the standard sizes, largest (smallest scale overhead) first


@dataclass(frozen=True)
class GpuFormat:
    name: str  # what the user types
    display: str
    modifier: str  # the llm-compressor recipe the child builds (see _child.py)
    weight_bits: int
    grouped: bool  # weights scaled per group of input columns (needs a group size)
    calibrated: bool  # needs calibration samples
    serve_dtype: str  # what vLLM runs it in; W4A16 has no fp32 CPU kernel ("cpu_gemm_wna16 not implemented for 'Float'")
    refused: str | None = None  # why localserve will not write it (measured), or None


_AWQ_REFUSED = ("AWQ W4A16 is refused until proven in vLLM: an earlier CPU run (llm-compressor 0.14) lost the "
                "adapter's answer; with fp32 calibration and the pin_memory fix it kept it in transformers, but "
                "took 12 min and is not yet checked in vLLM")

FORMATS: dict[str, GpuFormat] = {f.name: f for f in (
    GpuFormat("gptq-w4a16", "GPTQ int4 weights, 16-bit activations", "gptq", 4, True, True, "bfloat16"),
    GpuFormat("awq-w4a16", "AWQ int4 weights (asymmetric), 16-bit activations", "awq", 4, True, True,
              "bfloat16", refused=_AWQ_REFUSED),
    GpuFormat("fp8-dynamic", "FP8 weights per channel, FP8 activations per token (dynamic)", "fp8-dynamic", 8,
              False, False, "auto"),
    GpuFormat("w8a8", "GPTQ int8 weights per channel, int8 activations per token (dynamic)", "w8a8", 8, False,
              True, "auto"),
)}


def get_format(name: str) -> GpuFormat:
    """The format registered under `name` (any case); UnknownName lists them, InputError when refused."""
    key = name.strip().lower()
    if key not in FORMATS:
        raise UnknownName("vLLM quant format", name, list(FORMATS),
                          "GGUF types (Q4_K_M, ...) are for the Ollama export: drop --target vllm")
    fmt = FORMATS[key]
    if fmt.refused:
        raise InputError(fmt.refused, "use --quant gptq-w4a16 for 4-bit weights")
    return fmt


# Linear layers llm-compressor quantizes: every 2-D weight except embeddings and the output head
# (lm_head stays unquantized: it is where 4-bit error costs the most per parameter).
_NOT_LINEAR = re.compile(r"(^|\.)(embed_tokens|embed_in|wte|wpe|lm_head|embed_out|output)\.weight$")


def quantized_input_widths(model_dir: Path) -> dict[str, int]:
    """Layer weight name -> input width (columns) of every layer that will be quantized."""
    from ..models.merge import base_tensor_shapes

    return {name: shape[1] for name, shape in base_tensor_shapes(Path(model_dir)).items()
            if len(shape) == 2 and name.endswith(".weight") and not _NOT_LINEAR.search(name)}


@dataclass(frozen=True)
class GroupChoice:
    size: int
    reason: str


def choose_group_size(widths: dict[str, int], override: int | None = None) -> GroupChoice:
    """The largest of 128, 64, 32 that divides every quantized layer's input width, or `override`.

    A group never straddles two rows' columns, so a size that leaves a remainder in any layer cannot
    be written; InputError names the first such layer.
    """
    if not widths:
        raise InputError("the model has no linear layers to quantize")
    distinct = sorted(set(widths.values()))
    if override is not None:
        if override <= 0:
            raise InputError(f"--group-size must be positive, not {override}")
        bad = next((n for n, w in widths.items() if w % override), None)
        if bad is not None:
            fits = [g for g in GROUP_SIZES if all(w % g == 0 for w in distinct)]
            raise InputError(f"--group-size {override} does not divide the input width {widths[bad]} of {bad}",
                             f"use --group-size {fits[0]}" if fits else "pick a size that divides "
                             + ", ".join(map(str, distinct)))
        return GroupChoice(override, f"--group-size {override} (divides every input width: {_list(distinct)})")
    for size in GROUP_SIZES:
        if all(w % size == 0 for w in distinct):
            skipped = [g for g in GROUP_SIZES if g > size]
            why = f"group size {size}: divides every quantized input width ({_list(distinct)})"
            if skipped:
                odd = next(w for w in distinct if w % skipped[-1])
                why += f"; {skipped[-1]} does not divide {odd}"
            return GroupChoice(size, why)
    raise InputError(f"no standard group size ({_list(GROUP_SIZES)}) divides every input width ({_list(distinct)})",
                     "pass --group-size N with N dividing all of them, or use --quant fp8-dynamic (per channel)")


def _list(xs) -> str:
    return ", ".join(map(str, xs))


def format_of(quantization_config: dict) -> str:
    """The name users type for a compressed-tensors `quantization_config` (config.json) — "gptq-w4a16",
    "fp8-dynamic", ... — or a generic "W4A16" style label for a scheme localserve does not write."""
    groups = list((quantization_config.get("config_groups") or {}).values())
    if len(groups) != 1:
        return str(quantization_config.get("format") or quantization_config.get("quant_method") or "quantized")
    weights = groups[0].get("weights") or {}
    acts = groups[0].get("input_activations") or {}
    w_bits, w_type = weights.get("num_bits"), weights.get("type")
    a_bits = acts.get("num_bits", 16)
    if w_bits == 8 and w_type == "float" and acts.get("type") == "float" and acts.get("dynamic"):
        return "fp8-dynamic"
    if w_bits == 8 and w_type == "int" and a_bits == 8 and acts.get("dynamic"):
        return "w8a8"
    if w_bits == 4 and w_type == "int" and not acts and weights.get("strategy") == "group":
        return "gptq-w4a16" if weights.get("symmetric") else "awq-w4a16"
    return f"W{w_bits}A{a_bits}"
