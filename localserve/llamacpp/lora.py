"""PEFT LoRA adapter -> GGUF LoRA adapter, through llama.cpp's own convert_lora_to_gguf.py (see vendor.py).

The result is what llama.cpp's `--lora` / `lora_path` and Ollama's ADAPTER layer load:
`general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`, and `<base tensor>.lora_a/.lora_b`
pairs, with `general.architecture` taken from the base's config (docs/ollama.md#adapters).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..errors import ToolError
from ..fsutil import atomic_path
from .process import killed, run_with_progress
from .smoke import chat, check_lora_fits, load
from .vendor import LlamaCpp, locate

# LoRA pairs are small and kept at 16 bits: Ollama never quantizes adapters (docs/ollama.md#quantize), and llama.cpp
# applies an F16 pair to a quantized base as well as to an F16 one.
ADAPTER_OUTTYPE = "f16"

# check_lora_fits lives beside load() in smoke.py; the Ollama stand-in in tests/ reads it from here.
__all__ = ["ADAPTER_OUTTYPE", "answer", "check_lora_fits", "convert_lora_to_gguf"]

_WRITE_LINE = re.compile(r"Writing.*?(\d+(?:\.\d+)?[kMG]?)/(\d+(?:\.\d+)?[kMG]?)")


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, out_path: Path, outtype: str = ADAPTER_OUTTYPE,
                         tree: LlamaCpp | None = None) -> Path:
    """Run convert_lora_to_gguf.py against the local base config (never the hub); complete or absent."""
    from .convert import _last_error, _num

    tree = tree or locate()
    with atomic_path(out_path) as tmp:
        cmd = [sys.executable, str(tree.convert_lora), str(adapter_dir), "--base", str(base_dir),
               "--outfile", str(tmp), "--outtype", outtype]
        done = run_with_progress(cmd, f"convert LoRA {Path(adapter_dir).name}", _WRITE_LINE, "B",
                                 env=tree.python_env(), scale=_num)
        if (failed := killed("convert_lora_to_gguf.py", f"the conversion of {adapter_dir}", done.returncode)):
            raise failed
        if done.returncode != 0:
            raise ToolError("convert_lora_to_gguf.py",
                            f"conversion of {adapter_dir} failed (exit {done.returncode}): {_last_error(done.tail)}",
                            "\n".join(done.tail.splitlines()[-15:]))
    return Path(out_path)


def answer(gguf: Path, question: str, lora: Path | None = None, max_tokens: int = 128) -> str:
    """The greedy answer of `gguf` (with `lora` applied, if given) to one user question."""
    llm = load(gguf, lora=lora)
    try:
        return "".join(text for text, _ in chat(llm, [{"role": "user", "content": question}], max_tokens)).strip()
    finally:
        llm.close()
