"""Chat templates: the family registry (backed by `modelfiles/`), detection from the model's own
template, the Go renderer (Ollama's engine) and the parity proof.

    from localserve.chat import resolve_chat
    from localserve.chat.parity import check_parity
    setup = resolve_chat(model_dir)            # family, Go TEMPLATE, stops, num_ctx, default SYSTEM
    report = check_parity(model_dir, setup)    # byte-identical to apply_chat_template, or explained
"""

from __future__ import annotations

from .families import Family, families, get_family
from .detect import detect_family, resolve_chat
from .setup import ChatSetup, stop_tokens

__all__ = ["ChatSetup", "Family", "detect_family", "families", "get_family", "resolve_chat", "stop_tokens"]
