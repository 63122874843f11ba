"""Measure what quantization did: every quantized model against one reference, on the same tokens.

The models are GGUF files (run by llama.cpp) and GPU-format folders written by `export --target
vllm --quant` (compressed-tensors, run decompressed in the llm-compressor venv; see
gpuquant/quality.py), side by side in one table. The reference (an HF folder run in fp32 by
transformers, or an F16 GGUF run by llama.cpp) is evaluated once; its log-probabilities go to a
temporary memory-mapped file, so memory stays at one chunk per model however long the text is.
Then each model is evaluated chunk by chunk and compared position by position (see `metrics.py`).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..llamacpp import evaluate
from ..progress import bar, step
from ..textdata import EvalText, load_chat_jsonl, load_text
from .metrics import Comparison
from .table import QualityRow, QualityTable

DEFAULT_N_CTX = 512


@dataclass(frozen=True)
class _Candidate:
    """One model to measure, whatever runs it."""

    path: Path
    name: str  # what the table shows as its file
    quant: str
    imatrix: bool
    size: int
    n_vocab: int
    bpw: float | None  # None: size over the reference's parameter count (GPU folders hold packed weights)
    runtime: str
    logprobs: Callable[[Sequence[Sequence[int]]], Iterator[np.ndarray]]


def measure(models: Sequence[Path], reference: Path, text: Path | None = None, data_jsonl: Path | None = None,
            *, n_ctx: int = DEFAULT_N_CTX, max_tokens: int | None = None) -> QualityTable:
    """Measure each model (GGUF file or GPU-format folder) against `reference` (HF folder or F16 GGUF).

    The text is `text` (plain), else `data_jsonl` (chat records rendered through the model's chat
    template), else the shipped corpus; at most `max_tokens` of it are used when given.
    """
    models = [Path(m) for m in models]
    if not models:
        raise InputError("no models to measure", "pass .gguf files or folders written by export --target vllm --quant")
    if text is not None and data_jsonl is not None:
        raise InputError("pass either --text or --data, not both")
    reference = Path(reference)
    ref_kind = _reference_kind(reference)
    candidates = [_candidate(m) for m in models]
    vocab = {c.n_vocab for c in candidates}
    if len(vocab) > 1:
        raise InputError("the models have different vocabularies ("
                         + ", ".join(f"{c.name}: {c.n_vocab}" for c in candidates) + ")",
                         "measure quants of one model at a time")

    source, tokens = _eval_tokens(candidates, reference, ref_kind, text, data_jsonl, max_tokens)
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
        ref_params = None
        for cand in candidates:
            step(f"evaluating {cand.name} ({cand.quant})")
            t0 = time.perf_counter()
            cmp = Comparison()
            at = 0
            for lp, tgt in zip(_with_bar(cand.logprobs(chunks), len(chunks), cand.name), targets):
                cmp.add(ref_lp[at:at + len(lp)], lp, tgt)
                at += len(lp)
            m = cmp.result()
            bpw = cand.bpw
            if bpw is None:
                ref_params = ref_params or _n_params(reference, ref_kind)
                bpw = 8.0 * cand.size / ref_params
            rows.append(QualityRow(
                file=cand.name, path=str(cand.path), quant=cand.quant, imatrix=cand.imatrix,
                size=cand.size, bpw=round(bpw, 4),
                ppl=m.ppl, ppl_ratio=m.ppl / ref_ppl, kl_mean=m.kl_mean, kl_p99=m.kl_p99, top1=m.top1,
                seconds=round(time.perf_counter() - t0, 2), runtime=cand.runtime))
        del ref_lp

    rows.sort(key=lambda r: (-r.size, r.kl_mean))
    return QualityTable(
        rows=tuple(rows),
        reference={"path": str(reference), "kind": ref_kind, "ppl": ref_ppl, "seconds": round(ref_seconds, 2)},
        text={"source": source.source, "sha256": source.sha256, "n_tokens": len(tokens.ids),
              "n_positions": n_positions, "n_ctx": n_ctx, "chunks": len(chunks)},
    )


def _candidate(path: Path) -> _Candidate:
    if path.is_dir():
        from ..gpuquant.quality import folder_logprobs, quantized_folder
        from ..models.folders import display_name

        folder = quantized_folder(path)
        n_vocab = folder.n_vocab
        return _Candidate(folder.path, display_name(folder.path), folder.quant, False, folder.size, n_vocab, None, "vllm",
                          lambda chunks: folder_logprobs(folder.path, chunks, n_vocab))
    info = evaluate.gguf_info(path)
    return _Candidate(info.path, info.path.name, info.quant, info.imatrix is not None, info.size, info.n_vocab,
                      info.bits_per_weight, "llama.cpp", lambda chunks: evaluate.gguf_logprobs(info.path, chunks))


def _eval_tokens(candidates: Sequence[_Candidate], reference: Path, ref_kind: str, text: Path | None,
                 data_jsonl: Path | None, max_tokens: int | None) -> tuple[EvalText, evaluate.Tokens]:
    """The text and its tokens, by the first GGUF's vocabulary (a GGUF candidate, else a GGUF
    reference), else by the HF reference's tokenizer."""
    gguf = next((c.path for c in candidates if c.path.is_file()), reference if ref_kind == "gguf" else None)
    if gguf is not None:
        source = (load_chat_jsonl(data_jsonl, evaluate.chat_template(gguf)) if data_jsonl is not None
                  else load_text(text))
        tokens = evaluate.tokenize(gguf, source.texts, special=source.special)
    else:
        tokenizer = evaluate.hf_tokenizer(reference)
        source = (load_chat_jsonl(data_jsonl, evaluate.hf_chat_template(tokenizer)) if data_jsonl is not None
                  else load_text(text))
        tokens = evaluate.hf_tokenize(tokenizer, source.texts, candidates[0].n_vocab, special=source.special)
    if max_tokens is not None and len(tokens.ids) > max_tokens:
        step(f"using the first {max_tokens} of {len(tokens.ids)} tokens of {source.source}")
        tokens = evaluate.Tokens(tokens.ids[:max_tokens], tokens.bos, tokens.n_vocab)
    if len(tokens.ids) < 16:
        raise InputError(f"{source.source} has only {len(tokens.ids)} tokens",
                         "measure on a text of a few hundred tokens or more")
    return source, tokens


def _n_params(reference: Path, ref_kind: str) -> int:
    if ref_kind == "gguf":
        return evaluate.gguf_info(reference).n_params
    from ..gpuquant.quality import n_params_of

    return n_params_of(reference)


def _reference_kind(reference: Path) -> str:
    if reference.is_dir():
        if not (reference / "config.json").is_file():
            raise InputError(f"the reference {reference} is a folder without config.json",
                             "pass an HF model folder or an F16 GGUF as --reference")
        return "hf"
    if reference.is_file():
        return "gguf"
    raise InputError(f"no such reference: {reference}", "pass an HF model folder or an F16 GGUF as --reference")


def _with_bar(items: Iterable, total: int, desc: str):
    with bar(total, desc, unit="chunk") as b:
        for item in items:
            yield item
            b.update(1)
