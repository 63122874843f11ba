"""Importance matrices with llama.cpp's `llama-imatrix`, from text in the model's own domain.

An importance matrix records, per weight column, how strongly real activations use it; low-bit
quantizers spend their precision where it matters. The text should look like what the model will
see: the fine-tune's own data, not generic prose. A chat JSONL file is rendered through the model's
chat template first (special tokens parsed as such), exactly as the quality gate does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import InputError
from ..fsutil import atomic_path
from ..progress import step
from . import evaluate
from .tools import run_tool

MAX_CTX = 512
MIN_CTX = 32
# llama-imatrix's own default output name (tools/imatrix: `-o` defaults to imatrix.gguf), used by
# both `export --imatrix-data` and `quality --imatrix-data`: one name, the GGUF format it holds.
IMATRIX_FILE = "imatrix.gguf"


def compute_imatrix(f16_gguf: Path, text_file: Path, out: Path, *, n_ctx: int | None = None) -> Path:
    """Compute an importance matrix of `f16_gguf` over `text_file` (plain text or chat .jsonl) into `out`.

    The context is the largest of at most 512 tokens that gives llama-imatrix the two chunks it
    needs, so short domain texts still work. Written atomically (GGUF imatrix format).
    """
    from ..textdata import load_chat_jsonl, load_text

    f16_gguf, text_file, out = Path(f16_gguf), Path(text_file), Path(out)
    chat = text_file.suffix.lower() == ".jsonl"
    source = load_chat_jsonl(text_file, evaluate.chat_template(f16_gguf)) if chat else load_text(text_file)
    n_tokens = len(evaluate.tokenize(f16_gguf, source.texts, special=source.special).ids)
    if n_ctx is None:
        # llama-imatrix refuses fewer than 2 * n_ctx tokens; it scores whole chunks only.
        n_ctx = min(MAX_CTX, n_tokens // 2)
    if n_ctx < MIN_CTX or n_tokens < 2 * n_ctx:
        raise InputError(f"{text_file} has only {n_tokens} tokens; an importance matrix needs at least "
                         f"{2 * max(n_ctx, MIN_CTX)}",
                         "pass more text in the model's domain (a few thousand tokens is typical)")
    step(f"computing an importance matrix of {f16_gguf.name} over {text_file.name} "
         f"({n_tokens} tokens, {n_tokens // n_ctx} chunks of {n_ctx})")
    with tempfile.TemporaryDirectory(prefix="localserve-imatrix-") as tmp:
        if chat:
            rendered = Path(tmp) / "rendered.txt"
            rendered.write_text("".join(source.texts), encoding="utf-8")
            text_arg = ["-f", str(rendered), "--parse-special"]
        else:
            text_arg = ["-f", str(text_file)]
        with atomic_path(out) as partial:
            run_tool("llama-imatrix",
                     ["-m", f16_gguf, *text_arg, "-o", partial, "--output-format", "gguf",
                      "-c", n_ctx, "-b", n_ctx, "--no-ppl", "-t", os.cpu_count() or 1],
                     hint=f"check that {f16_gguf} loads in llama.cpp and {text_file} is readable text")
            if not partial.is_file() or partial.stat().st_size == 0:
                raise InputError(f"llama-imatrix wrote no importance matrix for {f16_gguf}",
                                 "run it with --debug to see its output")
    return out
