"""Measure what quantization did: every GGUF against one reference, on the same tokens.

The reference (an HF folder run in fp32 by transformers, or an F16 GGUF run by llama.cpp) is
evaluated once; its log-probabilities go to a temporary memory-mapped file, so memory stays at one
chunk per model however long the text is. Then each GGUF is evaluated chunk by chunk and compared
position by position (see `metrics.py`).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..llamacpp import evaluate
from ..progress import bar, step
from .metrics import Comparison
from .table import QualityRow, QualityTable
from .text import EvalText, load_chat_jsonl, load_text

DEFAULT_N_CTX = 512


def measure(ggufs: Sequence[Path], reference: Path, text: Path | None = None, data_jsonl: Path | None = None,
            *, n_ctx: int = DEFAULT_N_CTX, max_tokens: int | None = None) -> QualityTable:
    """Measure each GGUF against `reference` (HF model folder or F16 GGUF).

    The text is `text` (plain), else `data_jsonl` (chat records rendered through the GGUF's chat
    template), else the shipped corpus; at most `max_tokens` of it are used when given.
    """
    ggufs = [Path(g) for g in ggufs]
    if not ggufs:
        raise InputError("no GGUF files to measure", "pass one or more .gguf files")
    if text is not None and data_jsonl is not None:
        raise InputError("pass either --text or --data, not both")
    reference = Path(reference)
    ref_kind = _reference_kind(reference)
    infos = [evaluate.gguf_info(g) for g in ggufs]
    vocab = {i.n_vocab for i in infos}
    if len(vocab) > 1:
        raise InputError("the GGUFs have different vocabularies ("
                         + ", ".join(f"{i.path.name}: {i.n_vocab}" for i in infos) + ")",
                         "measure quants of one model at a time")

    source = load_chat_jsonl(data_jsonl, evaluate.chat_template(ggufs[0])) if data_jsonl is not None \
        else load_text(text)
    tokens = _tokenize(ggufs[0], source, max_tokens)
    chunks = evaluate.chunked(tokens, n_ctx)
    n_positions = sum(len(c) - 1 for c in chunks)
    targets = [np.asarray(c[1:], dtype=np.int64) for c in chunks]

    with tempfile.TemporaryDirectory(prefix="localserve-quality-") as tmp:
        ref_lp = np.lib.format.open_memmap(Path(tmp) / "reference.npy", mode="w+", dtype=np.float32,
                                           shape=(n_positions, tokens.n_vocab))
        step(f"evaluating the reference {reference} ({'HF, fp32' if ref_kind == 'hf' else 'GGUF'}) "
             f"on {len(tokens.ids)} tokens")
        t0 = time.perf_counter()
        stream = (evaluate.hf_logprobs(reference, chunks, tokens.n_vocab) if ref_kind == "hf"
                  else evaluate.gguf_logprobs(reference, chunks))
        ref_nll = []
        at = 0
        for lp, tgt in zip(_with_bar(stream, len(chunks), "reference"), targets):
            ref_lp[at:at + len(lp)] = lp
            ref_nll.append(-lp[np.arange(len(tgt)), tgt])
            at += len(lp)
        ref_ppl = float(math.exp(np.concatenate(ref_nll).astype(np.float64).mean()))
        ref_seconds = time.perf_counter() - t0

        rows = []
        for info in infos:
            step(f"evaluating {info.path.name} ({info.quant})")
            t0 = time.perf_counter()
            cmp = Comparison()
            at = 0
            for lp, tgt in zip(_with_bar(evaluate.gguf_logprobs(info.path, chunks), len(chunks), info.path.name),
                               targets):
                cmp.add(ref_lp[at:at + len(lp)], lp, tgt)
                at += len(lp)
            m = cmp.result()
            rows.append(QualityRow(
                file=info.path.name, path=str(info.path), quant=info.quant, imatrix=info.imatrix is not None,
                size=info.size, bpw=round(info.bits_per_weight, 4), ppl=m.ppl, ppl_ratio=m.ppl / ref_ppl,
                kl_mean=m.kl_mean, kl_p99=m.kl_p99, top1=m.top1, seconds=round(time.perf_counter() - t0, 2)))
        del ref_lp

    rows.sort(key=lambda r: (-r.size, r.kl_mean))
    return QualityTable(
        rows=tuple(rows),
        reference={"path": str(reference), "kind": ref_kind, "ppl": ref_ppl, "seconds": round(ref_seconds, 2)},
        text={"source": source.source, "sha256": source.sha256, "n_tokens": len(tokens.ids),
              "n_positions": n_positions, "n_ctx": n_ctx, "chunks": len(chunks)},
    )


def _reference_kind(reference: Path) -> str:
    if reference.is_dir():
        if not (reference / "config.json").is_file():
            raise InputError(f"the reference {reference} is a folder without config.json",
                             "pass an HF model folder or an F16 GGUF as --reference")
        return "hf"
    if reference.is_file():
        return "gguf"
    raise InputError(f"no such reference: {reference}", "pass an HF model folder or an F16 GGUF as --reference")


def _tokenize(gguf: Path, source: EvalText, max_tokens: int | None) -> evaluate.Tokens:
    tokens = evaluate.tokenize(gguf, source.texts, special=source.special)
    if max_tokens is not None and len(tokens.ids) > max_tokens:
        step(f"using the first {max_tokens} of {len(tokens.ids)} tokens of {source.source}")
        tokens = evaluate.Tokens(tokens.ids[:max_tokens], tokens.bos, tokens.n_vocab)
    if len(tokens.ids) < 16:
        raise InputError(f"{source.source} has only {len(tokens.ids)} tokens",
                         "measure on a text of a few hundred tokens or more")
    return tokens


def _with_bar(items: Iterable, total: int, desc: str):
    with bar(total, desc, unit="chunk") as b:
        for item in items:
            yield item
            b.update(1)
