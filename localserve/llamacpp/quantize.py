"""Quantization with llama.cpp: the registry of type names users type, and the quantizer.

The registry is read from the installed llama-cpp-python (its LLAMA_FTYPE_* constants), so it is
exactly what the linked llama.cpp can produce, no more and no less.
"""

from __future__ import annotations

import json
import re
import sys
from functools import lru_cache
from pathlib import Path

from ..errors import InputError, ToolError, UnknownName
from ..fsutil import atomic_path
from .process import run_with_progress

# llama.cpp's quantize tool refuses these without an importance matrix: at so few bits the
# result is garbage unless the important weights are kept more precisely.
NEEDS_IMATRIX_PREFIXES = ("IQ1", "IQ2", "IQ3_XXS", "Q2_K_S")


@lru_cache(maxsize=1)
def _ftypes() -> dict[str, int]:
    import llama_cpp

    types = {}
    for attr in dir(llama_cpp):
        m = re.fullmatch(r"LLAMA_FTYPE_(?:MOSTLY_|ALL_)?([A-Z0-9_]+)", attr)
        if m and m.group(1) != "GUESSED":
            types[m.group(1)] = int(getattr(llama_cpp, attr))
    return dict(sorted(types.items()))


def quant_types() -> tuple[str, ...]:
    """Every type name the linked llama.cpp can write, in canonical spelling (e.g. 'Q4_K_M')."""
    return tuple(_ftypes())


def needs_imatrix(qtype: str) -> bool:
    return qtype.startswith("IQ") or qtype.startswith(NEEDS_IMATRIX_PREFIXES)


def canonical_quants(names, have_imatrix: bool = False) -> tuple[str, ...]:
    """Case-insensitive names -> canonical, de-duplicated, in the order given.

    'auto' passes through (the quality gate resolves it).
    """
    valid = {t.upper(): t for t in quant_types()}
    out: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        if name.lower() == "auto":
            canon = "auto"
        else:
            canon = valid.get(name.upper())
            if canon is None:
                raise UnknownName("quant type", name, quant_types(),
                                  hint="pass one or more of these, comma-separated (case does not matter)")
            if needs_imatrix(canon) and not have_imatrix:
                raise InputError(f"{canon} needs an importance matrix",
                                 "pass --imatrix-data FILE (text in your model's domain), or choose a K-quant such as Q4_K_M")
        if canon not in out:
            out.append(canon)
    if not out:
        raise InputError("no quant type given", "pass --quant Q4_K_M (or several: Q4_K_M,Q8_0)")
    return tuple(out)


_WORKER = r"""
import json, sys, llama_cpp
args = json.loads(sys.argv[1])
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
    ftypes = _ftypes()
    if qtype not in ftypes:
        raise UnknownName("quant type", qtype, quant_types())
    with atomic_path(dst_gguf) as tmp:
        if imatrix is not None:
            from .tools import tool_path

            cmd = [str(tool_path("llama-quantize")), "--imatrix", str(imatrix), str(src_gguf), str(tmp), qtype]
        else:
            payload = json.dumps({"src": str(src_gguf), "dst": str(tmp), "ftype": ftypes[qtype]})
            cmd = [sys.executable, "-c", _WORKER, payload]
        _run_with_progress(cmd, f"quantize {qtype}")
    return Path(dst_gguf)


_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def _run_with_progress(cmd: list[str], desc: str) -> None:
    """Run llama.cpp's quantizer, turning its '[ i/ n] tensor' lines into a progress bar."""
    done = run_with_progress(cmd, desc, _TENSOR_LINE, "tensor", keep=40)
    if done.returncode != 0:
        raise ToolError("llama.cpp quantize", f"`{' '.join(cmd[:1] + cmd[-3:])}` failed (exit {done.returncode})",
                        "\n".join(done.tail.splitlines()[-15:]))
