"""A loopback Ollama stand-in for tests (see server.py); `fixtures` holds the pytest fixtures."""

import httpx

from .server import Behaviour, Standin

# one client for raw calls in tests: a generous timeout, since the machine may be busy building
HTTP = httpx.Client(timeout=180)

__all__ = ["HTTP", "Behaviour", "Standin"]
