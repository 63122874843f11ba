"""Hugging Face folder -> 16-bit GGUF, through llama.cpp's own converter (see vendor.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from ..errors import ToolError, UnsupportedArchitecture
from ..fsutil import atomic_path
from .merged_convert import ERROR_EXIT, ERROR_PREFIX
from .process import killed, run_with_progress
from .vendor import LlamaCpp, locate


@lru_cache(maxsize=4)
def supported_architectures(tree_root: str | None = None) -> frozenset[str]:
    """HF `architectures` names the converter registers (its --print-supported-models)."""
    tree = locate()
    proc = subprocess.run([sys.executable, str(tree.convert_hf), "--print-supported-models"],
                          capture_output=True, text=True, env=tree.python_env())
    names = re.findall(r"^\s*-\s*([A-Za-z0-9_]+)\s*$", proc.stdout + proc.stderr, re.MULTILINE)
    return frozenset(names)


def check_architecture(config: dict) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise UnsupportedArchitecture("config.json names no architecture (\"architectures\" is empty)",
                                      "this does not look like a causal LM checkpoint")
    supported = supported_architectures()
    if supported and archs[0] not in supported:
        raise UnsupportedArchitecture(
            f"llama.cpp's converter does not support the architecture {archs[0]}",
            "list the supported ones with `localserve architectures`",
        )
    return archs[0]


# The converter's tqdm line: "Writing:  21%|██  | 56.6M/269M [...]"
_WRITE_LINE = re.compile(r"Writing.*?(\d+(?:\.\d+)?[kMG]?)/(\d+(?:\.\d+)?[kMG]?)")


def convert_hf_to_gguf(model_dir: Path, out_path: Path, outtype: str = "f16",
                       tree: LlamaCpp | None = None, merge_plan: Path | None = None) -> Path:
    """Run convert_hf_to_gguf.py; the GGUF appears at `out_path` complete or not at all.

    The converter's own chat-template and tokenizer handling writes `tokenizer.chat_template` and
    the tokenizer metadata from the folder, so the GGUF carries the model's exact template.
    With `merge_plan` (a MergePlan as JSON), the adapters it names are merged into the base's
    tensors as the converter streams them (see merged_convert.py).
    """
    tree = tree or locate()
    with atomic_path(out_path) as tmp:
        if merge_plan is None:
            cmd = [sys.executable, str(tree.convert_hf), str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
        else:
            cmd = [sys.executable, "-m", "localserve.llamacpp.merged_convert", str(model_dir), "--outfile", str(tmp),
                   "--outtype", outtype, "--plan", str(merge_plan)]
        done = run_with_progress(cmd, f"convert {outtype.upper()}", _WRITE_LINE, "B", env=tree.python_env(),
                                 scale=_num)
        if done.returncode == ERROR_EXIT:
            _raise_our_error(done.tail)
        if (failed := killed("convert_hf_to_gguf.py", f"the conversion of {model_dir}", done.returncode)) is not None:
            raise failed
        if done.returncode != 0:
            text = done.tail
            if "is not supported" in text or "NotImplementedError" in text and "architecture" in text:
                raise UnsupportedArchitecture(
                    f"llama.cpp's converter cannot convert {model_dir}: " + _last_error(text),
                    "list the supported architectures with `localserve architectures`")
            raise ToolError("convert_hf_to_gguf.py", f"conversion of {model_dir} failed (exit {done.returncode})",
                            "\n".join(text.splitlines()[-15:]))
    return Path(out_path)


def _raise_our_error(tail: str) -> None:
    """The one-line error merged_convert printed, raised here as the error it was there."""
    from .. import errors

    for line in reversed(tail.splitlines()):
        if ERROR_PREFIX in line:  # a progress bar may share the line
            data = json.loads(line.split(ERROR_PREFIX, 1)[1])
            kind = getattr(errors, data["type"], None)
            if isinstance(kind, type) and issubclass(kind, errors.LocalserveError) and kind.__init__ is errors.LocalserveError.__init__:
                raise kind(data["message"], data.get("hint"))
            raise errors.AdapterError(data["message"], data.get("hint"))
    raise ToolError("localserve.llamacpp.merged_convert", "the merged conversion failed", tail)


def _num(text: str) -> int:
    unit = text[-1] if text[-1] in "kMG" else ""
    return int(float(text.rstrip("kMG")) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[unit])


def _last_error(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if "rror" in line or "not supported" in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else "no output"
