"""The llama-server the tests run: $LOCALSERVE_LLAMA_SERVER when set, else None — localserve then finds or builds
its own, as it does for users (once, about 3 minutes, in the llama.cpp tree of the quantizer; nothing the tools
build compiles twice). The upstream build beside the repository (../shared/ollama/lib/ollama/llama-server) is
not used: it carries Ollama's patches, and its router mode cannot start a child server ("failed to spawn
server instance"), which `localserve serve` of several exports needs."""

from __future__ import annotations

import os
from pathlib import Path

from localserve.llamacpp.tools import SERVER_ENV


def binary() -> Path | None:
    chosen = os.environ.get(SERVER_ENV)
    return Path(chosen) if chosen else None
