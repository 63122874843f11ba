"""The text loaders under their old name; they live in localserve.textdata, below the importance
matrices (llamacpp/) and GPU calibration (gpuquant/), which read the same text."""

from __future__ import annotations

from ..textdata import DEFAULT_CORPUS, EvalText, default_corpus, load_chat_jsonl, load_text

__all__ = ["DEFAULT_CORPUS", "EvalText", "default_corpus", "load_chat_jsonl", "load_text"]
