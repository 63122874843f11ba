"""The quality gate's measurement for GPU formats: HF-side logits of each quantized folder against the
unquantized merged model, on the same tokens, into the same `QualityTable` (and chart) as GGUF quants.

The quantized folder is evaluated in the llm-compressor venv (its weights decompressed to the exact
quantized values, in fp32); the reference in this process (fp32, transformers), as the GGUF gate does.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..llamacpp import evaluate
from ..progress import step
from ..quality.measure import DEFAULT_N_CTX
from ..quality.metrics import Comparison
from ..quality.table import QualityRow, QualityTable
from ..quality.text import load_text
from .run import run_child


def measure_gpu(quantized: Sequence[tuple[str, Path]], reference: Path, text: Path | None = None, *,
                n_ctx: int = DEFAULT_N_CTX, max_tokens: int | None = None) -> QualityTable:
    """One row per (label, quantized HF folder), measured against the HF folder `reference`."""
    from transformers import AutoTokenizer

    reference = Path(reference)
    source = load_text(text)
    tokenizer = AutoTokenizer.from_pretrained(str(reference))
    ids = tokenizer(source.texts[0], add_special_tokens=False)["input_ids"][:max_tokens]
    n_vocab = int(json.loads((reference / "config.json").read_text())["vocab_size"])
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    chunks = evaluate.chunked(evaluate.Tokens(tuple(ids), bos, n_vocab), n_ctx)
    targets = [np.asarray(c[1:], dtype=np.int64) for c in chunks]
    n_positions = sum(len(t) for t in targets)
    n_params = _n_params(reference)

    with tempfile.TemporaryDirectory(prefix="localserve-quality-") as tmp:
        step(f"evaluating the reference {reference} (HF, fp32) on {len(ids)} tokens")
        t0 = time.perf_counter()
        ref_lp = np.lib.format.open_memmap(Path(tmp) / "reference.npy", mode="w+", dtype=np.float32,
                                           shape=(n_positions, n_vocab))
        at, nll = 0, []
        for lp, tgt in zip(evaluate.hf_logprobs(reference, chunks, n_vocab), targets):
            ref_lp[at:at + len(lp)] = lp
            nll.append(-lp[np.arange(len(tgt)), tgt])
            at += len(lp)
        ref_ppl = float(math.exp(np.concatenate(nll).astype(np.float64).mean()))
        ref_seconds = time.perf_counter() - t0
        rows = []
        for label, folder in quantized:
            step(f"evaluating {label} ({folder})")
            t0 = time.perf_counter()
            out = Path(tmp) / "candidate.npy"
            run_child({"task": "logprobs", "model": str(folder), "chunks": chunks, "n_vocab": n_vocab, "out": str(out)})
            cand = np.load(out, mmap_mode="r")
            cmp, at = Comparison(), 0
            for tgt in targets:
                cmp.add(ref_lp[at:at + len(tgt)], cand[at:at + len(tgt)], tgt)
                at += len(tgt)
            del cand
            m = cmp.result()
            size = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
            rows.append(QualityRow(file=Path(folder).name, path=str(folder), quant=label, imatrix=False, size=size,
                                   bpw=round(8 * size / n_params, 4), ppl=m.ppl, ppl_ratio=m.ppl / ref_ppl,
                                   kl_mean=m.kl_mean, kl_p99=m.kl_p99, top1=m.top1,
                                   seconds=round(time.perf_counter() - t0, 2)))
        del ref_lp
    rows.sort(key=lambda r: (-r.size, r.kl_mean))
    return QualityTable(rows=tuple(rows),
                        reference={"path": str(reference), "kind": "hf", "ppl": ref_ppl,
                                   "seconds": round(ref_seconds, 2)},
                        text={"source": source.source, "sha256": source.sha256, "n_tokens": len(ids),
                              "n_positions": n_positions, "n_ctx": n_ctx, "chunks": len(chunks)})


def _n_params(model_dir: Path) -> int:
    from ..models.merge import base_tensor_shapes

    return sum(math.prod(s) for s in base_tensor_shapes(model_dir).values())
