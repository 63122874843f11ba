"""Text in the model's domain: the shipped corpus, a plain text file, or chat JSONL.

What the quality gate measures on, llama.cpp's importance matrices are computed over and GPU
formats are calibrated with. Chat data is rendered through the model's own chat template (the
one stored in the GGUF), so each sees the very token sequences the fine-tune was trained and will
be prompted on, special tokens included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .fsutil import sha256_file

DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "quality_corpus.txt"

# ShareGPT-style speaker names -> chat roles.
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "tool": "tool"}


@dataclass(frozen=True)
class EvalText:
    """Texts to tokenize (one per document or conversation) and where they came from."""

    texts: tuple[str, ...]
    source: str
    sha256: str
    special: bool  # tokenize special-token text as special tokens (rendered chat)


def default_corpus() -> Path:
    return DEFAULT_CORPUS


def load_text(path: Path | None) -> EvalText:
    """A plain text file, or the shipped corpus when `path` is None."""
    path = Path(path) if path is not None else DEFAULT_CORPUS
    if not path.is_file():
        raise InputError(f"no such text file: {path}", "pass an existing file to --text")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text", "convert it to UTF-8") from None
    if not text.strip():
        raise InputError(f"{path} is empty", "pass a text of a few hundred tokens or more")
    source = "default corpus (localserve/data/quality_corpus.txt)" if path == DEFAULT_CORPUS else str(path)
    return EvalText((text,), source, sha256_file(path), special=False)


def load_chat_jsonl(path: Path, template: tuple[str, str, str] | None) -> EvalText:
    """Render each JSONL record through the chat template (template, bos text, eos text).

    Accepted records: {"messages": [{"role", "content"}]}, ShareGPT {"conversations": [{"from",
    "value"}]}, {"prompt", "completion"}, or {"text"} (used as is).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such data file: {path}", "pass an existing JSONL file to --data")
    formatter = None
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where} is not valid JSON ({e.msg})", "one JSON object per line") from None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                texts.append(record["text"])
                continue
            messages = _messages(record, where)
            if formatter is None:
                if template is None:
                    raise InputError(f"{where} is a chat record but the GGUF carries no chat template",
                                     "pass the conversations as plain text with --text")
                formatter = _formatter(*template)
            try:
                texts.append(formatter(messages=messages).prompt)
            except Exception as e:  # jinja raises many types; the template's own message is what helps
                raise InputError(f"{where}: the chat template failed on this record ({e})",
                                 "check the roles and message order of this conversation") from None
    if not texts:
        raise InputError(f"{path} holds no records", "one JSON object per line")
    return EvalText(tuple(texts), str(path), sha256_file(path), special=True)


def _messages(record, where: str) -> list[dict]:
    if not isinstance(record, dict):
        raise InputError(f"{where} is not a JSON object", "one JSON object per line")
    if isinstance(record.get("messages"), list):
        msgs = record["messages"]
        if all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if isinstance(record.get("conversations"), list):
        out = []
        for m in record["conversations"]:
            role = _SHAREGPT_ROLES.get(str(m.get("from", "")).lower()) if isinstance(m, dict) else None
            if role is None or "value" not in m:
                break
            out.append({"role": role, "content": m["value"]})
        else:
            return out
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return [{"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["completion"]}]
    raise InputError(f"{where} is not a chat record",
                     'use {"messages": [{"role": ..., "content": ...}]}, ShareGPT "conversations", '
                     '{"prompt", "completion"} or {"text"}')


def _formatter(template: str, bos: str, eos: str):
    # llama-cpp-python's renderer mirrors transformers' chat-template environment (sandboxed jinja2,
    # the same filters/extensions), so the GGUF's template renders as it did in training.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=False)
