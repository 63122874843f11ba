"""Next-token log-probabilities for one token sequence: from a GGUF via llama.cpp, or from an HF model.

The quality gate compares files position by position, so every model here sees exactly the same
token ids, cut into the same chunks: the text is tokenized once (by llama.cpp, with the GGUF's own
vocabulary) and `chunked()` cuts it into windows of at most `n_ctx` tokens, each starting with
BOS when the model expects one. For a chunk of n tokens a model yields n-1 rows: row i is the
log-probability distribution over the vocabulary for token i+1 given tokens 0..i.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError, SetupError
from .quant_types import quant_of_file_type


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF's header says about it, read without loading its weights."""

    path: Path
    size: int  # file bytes
    tensor_bytes: int
    n_params: int
    quant: str  # "Q4_K_M", "F16", ... ("unknown" when the header does not say)
    imatrix: str | None  # the imatrix file llama-quantize recorded, if one was used
    n_vocab: int

    @property
    def bits_per_weight(self) -> float:
        # Tensor data only, like llama.cpp's own "BPW" figure: the vocabulary and metadata in the
        # file header would inflate small models' numbers.
        return 8.0 * self.tensor_bytes / self.n_params if self.n_params else float("nan")


@dataclass(frozen=True)
class Tokens:
    """A tokenized evaluation text and how to frame it for the model it came from."""

    ids: tuple[int, ...]
    bos: int | None  # prepended to every chunk when the vocabulary asks for it
    n_vocab: int


def gguf_info(path: Path) -> GGUFInfo:
    import gguf

    path = Path(path)
    _require_gguf(path)
    reader = gguf.GGUFReader(path, "r")
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    tensor_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    file_type = _field_value(reader, "general.file_type")
    quant = "unknown" if file_type is None else quant_of_file_type(int(file_type)) or f"type{file_type}"
    imatrix = _field_value(reader, "quantize.imatrix.file")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens.data) if tokens is not None else 0
    return GGUFInfo(path, path.stat().st_size, tensor_bytes, n_params, quant,
                    str(imatrix) if imatrix is not None else None, n_vocab)


def chat_template(path: Path) -> tuple[str, str, str] | None:
    """(template, bos text, eos text) stored in a GGUF, or None when it carries no template."""
    import gguf

    reader = gguf.GGUFReader(Path(path), "r")
    template = _field_value(reader, "tokenizer.chat_template")
    if template is None:
        return None
    tokens = reader.fields["tokenizer.ggml.tokens"]

    def token_text(key: str) -> str:
        idx = _field_value(reader, key)
        return "" if idx is None else bytes(tokens.parts[tokens.data[int(idx)]]).decode("utf-8", "replace")

    return str(template), token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")


def tokenize(gguf_path: Path, texts: Sequence[str], special: bool = False) -> Tokens:
    """Tokenize texts with the GGUF's vocabulary and concatenate them.

    `special=True` turns special-token text (`<|im_start|>`) into its single id: right for chat
    transcripts rendered through the model's own template, wrong for arbitrary prose.
    """
    llm = _load(gguf_path, vocab_only=True)
    try:
        ids: list[int] = []
        for text in texts:
            ids.extend(llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))
        add_bos = bool(llm._model.add_bos_token())
        bos = llm.token_bos() if add_bos and llm.token_bos() >= 0 else None
        return Tokens(tuple(ids), bos, llm.n_vocab())
    finally:
        llm.close()


def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def hf_chat_template(tokenizer) -> tuple[str, str, str] | None:
    """(template, bos text, eos text) of an HF tokenizer, as `chat_template` gives for a GGUF."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        return None
    return template, tokenizer.bos_token or "", tokenizer.eos_token or ""


def hf_tokenize(tokenizer, texts: Sequence[str], n_vocab: int, special: bool = False) -> Tokens:
    """`tokenize` with an HF tokenizer (for measuring GPU-format folders without any GGUF)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"])
    add_bos = bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token_id is not None
    return Tokens(tuple(ids), tokenizer.bos_token_id if add_bos else None, n_vocab)


def chunked(tokens: Tokens, n_ctx: int) -> list[list[int]]:
    """Windows of at most n_ctx tokens (BOS included), covering the text once, in order."""
    body = n_ctx - (1 if tokens.bos is not None else 0)
    if body < 2:
        raise InputError(f"a context of {n_ctx} tokens is too small to evaluate in")
    out = []
    for start in range(0, len(tokens.ids), body):
        piece = list(tokens.ids[start:start + body])
        if tokens.bos is not None:
            piece.insert(0, tokens.bos)
        if len(piece) >= 2:
            out.append(piece)
    return out


def gguf_logprobs(path: Path, chunks: Sequence[Sequence[int]], n_threads: int | None = None) -> Iterator[np.ndarray]:
    """Per chunk, a float32 array [len(chunk)-1, n_vocab] of next-token log-probabilities."""
    n_ctx = max(len(c) for c in chunks)
    llm = _load(path, n_ctx=n_ctx, logits_all=True, n_threads=n_threads)
    try:
        for chunk in chunks:
            llm.reset()
            llm.eval(list(chunk))
            yield log_softmax(np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float32))
    finally:
        llm.close()


def hf_logprobs(model_dir: Path, chunks: Sequence[Sequence[int]], n_vocab: int) -> Iterator[np.ndarray]:
    """The same as `gguf_logprobs`, from an HF model folder run by transformers in fp32."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise SetupError(f"an HF reference needs torch and transformers ({e})",
                         "run scripts/bootstrap.sh, or pass an F16 GGUF as the reference") from None
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir} is not an HF model folder (no config.json)",
                         "pass the merged model's folder or an F16 GGUF as --reference")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        for chunk in chunks:
            ids = torch.tensor([list(chunk)], dtype=torch.long)
            logits = model(input_ids=ids).logits[0, : len(chunk) - 1].float()
            if logits.shape[-1] < n_vocab:
                raise InputError(f"the reference {model_dir} has {logits.shape[-1]} output tokens but the "
                                 f"GGUF vocabulary has {n_vocab}",
                                 "compare files of the same model")
            # HF checkpoints often pad the output layer to a multiple of 64/128: those rows are no
            # tokens, and the GGUF has none of them, so both sides are compared over n_vocab.
            logits = logits[:, :n_vocab]
            yield torch.log_softmax(logits, dim=-1).numpy().astype(np.float32, copy=False)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _load(path: Path, **kwargs):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise SetupError("llama-cpp-python is not installed", "run scripts/bootstrap.sh") from None
    path = Path(path)
    _require_gguf(path)
    kwargs.setdefault("verbose", False)
    if kwargs.get("n_threads") is None:
        kwargs["n_threads"] = os.cpu_count() or 1
    if "n_ctx" in kwargs:
        kwargs.setdefault("n_batch", kwargs["n_ctx"])
        kwargs.setdefault("n_ubatch", kwargs["n_ctx"])
    # llama.cpp writes its load log to stderr even with verbose=False for some messages.
    with _quiet_stderr():
        try:
            return Llama(model_path=str(path), **kwargs)
        except ValueError as e:
            raise InputError(f"llama.cpp could not load {path}: {e}",
                             "check that it is a complete GGUF file (re-export it)") from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        yield


def _require_gguf(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"no such GGUF file: {path}", "check the path")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InputError(f"{path} is not a GGUF file (no GGUF magic)", "pass a .gguf file")


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()
