"""A loopback Ollama stand-in for tests (see server.py); `fixtures` holds the pytest fixtures."""

from .server import Behaviour, Standin

__all__ = ["Behaviour", "Standin"]
