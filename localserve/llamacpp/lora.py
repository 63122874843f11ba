"""PEFT LoRA adapter -> GGUF LoRA adapter, through llama.cpp's own convert_lora_to_gguf.py (see vendor.py).

The result is what llama.cpp's `--lora` / `lora_path` and Ollama's ADAPTER layer load:
`general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`, and `<base tensor>.lora_a/.lora_b`
pairs, with `general.architecture` taken from the base's config (spec §5).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..errors import ToolError
from ..fsutil import atomic_path
from .process import run_with_progress
from .smoke import chat, load
from .vendor import LlamaCpp, locate

# LoRA pairs are small and kept at 16 bits: Ollama never quantizes adapters (spec §6), and llama.cpp
# applies an F16 pair to a quantized base as well as to an F16 one.
ADAPTER_OUTTYPE = "f16"

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
        if done.returncode != 0:
            raise ToolError("convert_lora_to_gguf.py",
                            f"conversion of {adapter_dir} failed (exit {done.returncode}): {_last_error(done.tail)}",
                            "\n".join(done.tail.splitlines()[-15:]))
    return Path(out_path)


def check_lora_fits(base_gguf: Path, lora_gguf: Path) -> None:
    """Raise SmokeTestFailed unless `lora_gguf` is a GGUF LoRA whose pairs fit tensors of `base_gguf`
    (what llama.cpp checks at load time; spec §5), read from the headers only."""
    import gguf

    from ..errors import SmokeTestFailed

    name = f"{Path(lora_gguf).name} on {Path(base_gguf).name}"
    try:
        lora, base = gguf.GGUFReader(str(lora_gguf), "r"), gguf.GGUFReader(str(base_gguf), "r")
    except Exception as e:  # gguf raises ValueError/struct errors on files that are not GGUF
        raise SmokeTestFailed(f"{name}: not a readable GGUF ({e})", "re-run the export") from None

    def kv(reader, key):
        f = reader.fields.get(key)
        return f.contents() if f is not None and f.data else None

    if kv(lora, "general.type") != "adapter" or kv(lora, "adapter.type") != "lora":
        raise SmokeTestFailed(f"{name}: not a LoRA adapter (general.type={kv(lora, 'general.type')!r})",
                              "convert the adapter with convert_lora_to_gguf.py")
    if kv(lora, "general.architecture") != kv(base, "general.architecture"):
        raise SmokeTestFailed(f"{name}: model arch and LoRA arch mismatch ({kv(base, 'general.architecture')} vs "
                              f"{kv(lora, 'general.architecture')})", "the adapter was trained on another base")
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in base.tensors}
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in lora.tensors:
        stem, _, part = t.name.rpartition(".")
        if part in ("lora_a", "lora_b"):
            pairs.setdefault(stem, {})[part] = tuple(int(x) for x in t.shape)
    for stem, ab in pairs.items():
        w, a, b = shapes.get(stem), ab.get("lora_a"), ab.get("lora_b")
        if w is None or a is None or b is None:
            raise SmokeTestFailed(f"{name}: {stem} has no base tensor or lacks half of its LoRA pair",
                                  "the adapter was trained on another base")
        # ggml order: base ne=[in, out], lora_a ne=[in, r], lora_b ne=[r, out] (token_embd's a is transposed)
        if not stem.startswith("token_embd") and (a[0] != w[0] or b[1] != w[1] or a[1] != b[0]):
            raise SmokeTestFailed(f"{name}: {stem} is {list(w)} but its LoRA pair is {list(a)} x {list(b)}",
                                  "the adapter was trained on another base")


def answer(gguf: Path, question: str, lora: Path | None = None, max_tokens: int = 128) -> str:
    """The greedy answer of `gguf` (with `lora` applied, if given) to one user question."""
    llm = load(gguf, lora=lora)
    try:
        return "".join(text for text, _ in chat(llm, [{"role": "user", "content": question}], max_tokens)).strip()
    finally:
        llm.close()
