"""`localserve export --target vllm` (see localserve.vllm)."""

from __future__ import annotations

import json
import re

import click

from ..errors import InputError
from ..spec import parse_size

# Export options that belong to the Ollama/GGUF path: given with --target vllm, they are refused
# rather than silently ignored. Values are the defaults the export command passes when not given.
_OLLAMA_ONLY = {"keep_intermediate": False, "ollama_host": None, "template_file": None, "force": False,
                "modelfile": None, "ollama_template": "go", "system": None, "imatrix_data": None, "max_kl": None,
                "bundle": None, "merge": None}

# llama.cpp's names (Q4_K_M, IQ2_XS, TQ1_0, F16, auto, lists of them): told apart from vLLM formats
# so the message says which export they belong to.
_GGUF_TYPE = re.compile(r"^\s*((t|i)?q\d\w*|f16|bf16|f32|auto)\s*(,|$)", re.IGNORECASE)


def run(adapters, *, lora: bool, quants: str | None, max_size, as_json: bool, no_smoke: bool, no_register: bool,
        gpu_memory, gpus, nodes, ctx, concurrency, group_size=None, calibration=None, calibration_samples=None,
        calibration_seq_len=None, **options) -> None:
    from ..vllm import VllmExportSpec, export_vllm

    given = [k for k, default in _OLLAMA_ONLY.items() if options.get(k, default) != default]
    if quants is not None and _GGUF_TYPE.match(quants):
        from ..gpuquant import FORMATS

        usable = ", ".join(n for n, f in FORMATS.items() if not f.refused)
        raise InputError(f"--quant {quants} applies to the Ollama export, not --target vllm (GGUF types are "
                         f"llama.cpp's; vLLM takes {usable})", "pass --quant gptq-w4a16, or drop --target vllm")
    if max_size is not None:
        given.insert(0, "max_size")
    if given:
        flag = "--" + given[0].replace("_", "-").replace("ollama-host", "host")
        raise InputError(f"{flag} applies to the Ollama export, not --target vllm (vLLM serves the safetensors as is)",
                         f"drop {flag}, or export for Ollama without --target vllm")
    # --no-smoke and --no-register ask to skip steps the vLLM export does not have: nothing to refuse.
    spec = VllmExportSpec(adapters=tuple(adapters), lora=lora, base=options.get("base"), name=options.get("name"),
                          out=options.get("out"), allow_pickle=options.get("allow_pickle", False),
                          trust_remote_code=options.get("trust_remote_code", False),
                          template_family=options.get("template_family"),
                          gpu_memory=parse_size(gpu_memory) if gpu_memory else None, gpus=gpus, nodes=nodes,
                          ctx=ctx, concurrency=concurrency, quant=quants, group_size=group_size,
                          calibration=calibration,
                          **{k: v for k, v in (("calibration_samples", calibration_samples),
                                               ("calibration_seq_len", calibration_seq_len)) if v is not None})
    result = export_vllm(spec)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    q = result.quantization
    kind = 'base' if result.lora else f"merged, {q.format}" if q else 'merged'
    click.echo(f"{result.model_dir}  {result.model_bytes / 1e6:.1f} MB ({kind})")
    if q and q.group_reason:
        click.echo(f"  {q.group_reason}")
    if q and q.quality:
        click.echo(q.quality.format())
        click.echo(f"chart:   {result.out_dir / 'quality.png'}")
    for name, path in result.adapters:
        click.echo(f"  adapter {name}: {path}")
    if result.layout is not None:
        click.echo(f"layout: tensor_parallel_size {result.layout.tensor_parallel_size} x "
                   f"pipeline_parallel_size {result.layout.pipeline_parallel_size}")
        for line in result.layout.lines:
            click.echo(f"  {line}")
    if result.lora is not None:
        for line in result.lora.lines():
            click.echo(line)
    click.echo(f"config:  {result.config_file}")
    click.echo(f"serve:   {result.out_dir / 'launch.sh'}  (VLLM_PYTHON=/path/to/python ./launch.sh)")
    click.echo(f"lineage: {result.lineage_path}")
