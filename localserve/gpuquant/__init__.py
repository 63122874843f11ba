"""GPU quantization formats for the vLLM export (GPTQ, FP8, int8), written by llm-compressor.

    from localserve.gpuquant import FORMATS, choose_group_size, quantized_input_widths
    choose_group_size(quantized_input_widths(Path("merged/")))   # GroupChoice(64, "group size 64: ...")
    export_vllm(VllmExportSpec(adapters=(adapter,), quant="gptq-w4a16"))

llm-compressor runs in its own virtualenv (scripts/bootstrap_gpuquant.sh, or the `gpu-quant`
extra) as a child process; see run.py.
"""

from __future__ import annotations

from .formats import FORMATS, GROUP_SIZES, GpuFormat, GroupChoice, choose_group_size, get_format, quantized_input_widths
from .run import gpuquant_python

__all__ = ["FORMATS", "GROUP_SIZES", "GpuFormat", "GroupChoice", "choose_group_size", "get_format", "gpuquant_python",
           "quantized_input_widths"]
