"""The exports: from a fine-tune to files a server loads, each ending in one `ExportRecord`.

    gguf.py     ExportSpec        -> ExportResult         one merged model as GGUF files for Ollama
    tenants.py  TenantExportSpec  -> TenantExportResult   --lora: a shared base GGUF + one GGUF LoRA each
    vllm.py     VllmExportSpec    -> VllmExportResult     --target vllm: a Hugging Face folder + serve files
    inputs.py   what a merged export starts from (an adapter on its base, or a merge recipe)
    options.py  every option, declared once; spec.py the specs built from them

    from localserve.exports import export_spec, run_export
    result = run_export(export_spec(("adapter/",), quant="Q4_K_M"))
"""

from __future__ import annotations

from .gguf import ExportResult, export
from .spec import AnyExportSpec, ExportSpec, TenantExportSpec, VllmExportSpec, export_spec
from .tenants import TenantExportResult, export_tenants
from .vllm import VllmExportResult, export_vllm


def run_export(spec: AnyExportSpec) -> ExportResult | TenantExportResult | VllmExportResult:
    """Run the export `spec` describes."""
    if isinstance(spec, VllmExportSpec):
        return export_vllm(spec)
    if isinstance(spec, TenantExportSpec):
        return export_tenants(spec)
    return export(spec)


__all__ = ["AnyExportSpec", "ExportResult", "ExportSpec", "TenantExportResult", "TenantExportSpec",
           "VllmExportResult", "VllmExportSpec", "export", "export_spec", "export_tenants", "export_vllm",
           "run_export"]
