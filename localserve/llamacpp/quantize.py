"""Quantization with llama.cpp's quantizer, to the types of the registry in quant_types.py."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..errors import ToolError, UnknownName
from ..faults import QUANTIZE
from ..fsutil import atomic_path
from .process import killed, run_with_progress
from .quant_types import canonical_quants, needs_imatrix, quant_types, registry

# The registry's names stay importable from here, where the tests and the export commands read them.
__all__ = ["canonical_quants", "needs_imatrix", "quant_types", "quantize"]

_WORKER = r"""
import json, sys, llama_cpp
from localserve.faults import fault_point
args = json.loads(sys.argv[1])
fault_point(args["fault_point"])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = args["ftype"]
params.nthread = 0
params.allow_requantize = False
rc = llama_cpp.llama_model_quantize(args["src"].encode(), args["dst"].encode(), params)
sys.exit(0 if rc == 0 else 3)
"""


def quantize(src_gguf: Path, dst_gguf: Path, qtype: str, imatrix: Path | None = None) -> Path:
    """Write `dst_gguf` as `qtype` from a 16-bit `src_gguf`; complete or absent.

    Without an importance matrix this is the `llama_model_quantize` binding (byte-identical to
    `llama-quantize`); with one, the `llama-quantize` tool built from the same source, since the
    binding cannot carry imatrix data across the C ABI. Runs in a child process so that an abort
    inside llama.cpp becomes a clean error with its stderr, not a dead interpreter.
    """
    types = registry()
    if qtype not in types:
        raise UnknownName("quant type", qtype, quant_types())
    with atomic_path(dst_gguf) as tmp:
        if imatrix is not None:
            from .tools import tool_path

            cmd = [str(tool_path("llama-quantize")), "--imatrix", str(imatrix), str(src_gguf), str(tmp), qtype]
        else:
            payload = json.dumps({"src": str(src_gguf), "dst": str(tmp), "ftype": types[qtype].ftype,
                                  "fault_point": f"{QUANTIZE}:{qtype}"})
            cmd = [sys.executable, "-c", _WORKER, payload]
        _run_with_progress(cmd, f"quantize {qtype}")
    return Path(dst_gguf)


_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def _run_with_progress(cmd: list[str], desc: str) -> None:
    """Run llama.cpp's quantizer, turning its '[ i/ n] tensor' lines into a progress bar."""
    done = run_with_progress(cmd, desc, _TENSOR_LINE, "tensor", keep=40)
    if (failed := killed("llama.cpp quantize", desc, done.returncode)) is not None:
        raise failed
    if done.returncode != 0:
        raise ToolError("llama.cpp quantize", f"`{' '.join(cmd[:1] + cmd[-3:])}` failed (exit {done.returncode})",
                        "\n".join(done.tail.splitlines()[-15:]))
