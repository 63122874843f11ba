"""Everything that speaks Ollama's protocol or layout: the HTTP client (version-aware create),
the on-disk model store, bundles for air-gapped hosts, promote/rollback history, and `verify`.

    from localserve.ollama import server_available, register
    if server_available():
        result = register(Path("out/demo"))        # -> RegisterResult(name="demo:q4_k_m", ...)
"""

from __future__ import annotations

import importlib

_API = {
    "server_available": "localserve.ollama.client",
    "resolve_host": "localserve.ollama.client",
    "OllamaServer": "localserve.ollama.client",
    "ServerTooOld": "localserve.ollama.client",
    "register": "localserve.ollama.registration",
    "RegisterResult": "localserve.ollama.registration",
    "parse_name": "localserve.ollama.names",
    "ModelStore": "localserve.ollama.store",
    "default_store_root": "localserve.ollama.store",
    "make_bundle": "localserve.ollama.bundle",
    "bundle_from_store": "localserve.ollama.bundle",
    "install_bundle": "localserve.ollama.bundle",
    "verify": "localserve.ollama.verification",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'localserve.ollama' has no attribute {name!r}")
