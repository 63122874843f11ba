"""localserve: from a fine-tuned model to a quantized, checked model served by Ollama or vLLM.

The public Python API. Names are imported lazily so `import localserve` stays fast and a missing
optional extra only matters when its feature is used.

    from localserve import export, ExportSpec
    result = export(ExportSpec(adapter="examples/demo-adapter", quants=("Q4_K_M",)))
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "ExportSpec": "localserve.exports",
    "ExportResult": "localserve.exports",
    "export": "localserve.exports",
    "TenantExportSpec": "localserve.exports",
    "export_tenants": "localserve.exports",
    "VllmExportSpec": "localserve.exports",
    "export_vllm": "localserve.exports",
    "export_spec": "localserve.exports",
    "run_export": "localserve.exports",
    "ExportRecord": "localserve.lineage",
    "read_record": "localserve.lineage",
    "LocalserveError": "localserve.errors",
    "embedded_base": "localserve.models.embedded",
    "check_template": "localserve.chat.check",
    "register": "localserve.ollama.registration",
    "make_bundle": "localserve.ollama.bundle",
    "install_bundle": "localserve.ollama.bundle",
    "verify": "localserve.ollama.verification",
    "measure": "localserve.quality.measure",
    "choose_quant": "localserve.quality.table",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'localserve' has no attribute {name!r}")
