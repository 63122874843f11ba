"""`localserve export`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError
from ..spec import ExportSpec, parse_size


@click.command("export")
@click.argument("adapters", nargs=-1, type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["ollama", "vllm"]), default="ollama", show_default=True,
              help="ollama: quantized GGUF + Modelfile; vllm: Hugging Face folder + vLLM serve configuration.")
@click.option("--lora", is_flag=True,
              help="Several adapters, unmerged: one shared base plus one adapter per tenant.")
@click.option("--gpu-memory", help="vLLM: memory per GPU for the layout (e.g. 80GB).")
@click.option("--gpus", type=click.IntRange(min=1), help="vLLM: GPUs per node.")
@click.option("--nodes", type=click.IntRange(min=1), help="vLLM: nodes (pipeline parallel across nodes, Ray).")
@click.option("--ctx", type=click.IntRange(min=1), help="vLLM: context length per sequence.")
@click.option("--concurrency", type=click.IntRange(min=1), help="vLLM: concurrent sequences to size the KV cache for.")
@click.option("--quant", "quants",
              help="Ollama: llama.cpp type(s), comma-separated, any case (default Q4_K_M; `localserve quants` lists "
                   "them). vLLM: gptq-w4a16, fp8-dynamic or w8a8 (llm-compressor; default: unquantized).")
@click.option("--group-size", type=int, help="vLLM gptq-w4a16: columns per scale (default: 128, 64 or 32, "
                                             "the largest dividing every layer's input width).")
@click.option("--calibration", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="vLLM --quant: the fine-tune's chat JSONL to calibrate on (default: the shipped corpus).")
@click.option("--calibration-samples", type=click.IntRange(min=1), help="vLLM --quant: calibration samples (default 64).")
@click.option("--calibration-seq-len", type=click.IntRange(min=8), help="vLLM --quant: tokens per sample (default 512).")
@click.option("--base", type=click.Path(path_type=Path), help="Base model folder (default: from adapter_config.json).")
@click.option("--name", help="Model name (default: the adapter folder's name).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: exports/NAME).")
@click.option("--keep-intermediate", is_flag=True, help="Keep the merged folder and the 16-bit GGUF.")
@click.option("--allow-pickle", is_flag=True, help="Allow .bin (pickle) weights, which can run code when loaded.")
@click.option("--trust-remote-code", is_flag=True, help="Let transformers run the model repo's own Python code.")
@click.option("--no-smoke", is_flag=True, help="Skip the llama.cpp chat check.")
@click.option("--no-register", is_flag=True, help="Do not register with a running Ollama.")
@click.option("--host", "ollama_host", help="Ollama server (default: $OLLAMA_HOST or 127.0.0.1:11434).")
@click.option("--template-family", help="Chat family to use instead of detecting it.")
@click.option("--template-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Your own Ollama Go TEMPLATE file.")
@click.option("--force", is_flag=True, help="Export even if the template parity check fails (recorded).")
@click.option("--modelfile", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A Modelfile whose PARAMETER/SYSTEM/MESSAGE/LICENSE are merged into the export.")
@click.option("--ollama-template", type=click.Choice(["go", "native"]), default="go", show_default=True,
              help="go: write the verified TEMPLATE; native: rely on the GGUF's Jinja (Ollama >= 0.30 only).")
@click.option("--system", help="SYSTEM prompt for the Modelfile.")
@click.option("--imatrix-data", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Text (or chat .jsonl) to compute an importance matrix from, kept as imatrix.gguf "
                   "(enables IQ types).")
@click.option("--max-kl", type=float,
              help="Largest acceptable mean KL divergence: --quant auto keeps the smallest quant within it; "
                   "a requested quant that misses it is an error showing the measured table.")
@click.option("--max-size", help="Largest acceptable file size (e.g. 4GB): --quant auto keeps the lowest-KL quant "
                                 "that fits (with --max-kl: the smallest meeting both); a requested quant over it "
                                 "is an error showing the measured table.")
@click.option("--quality-data", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="What --max-kl/--max-size measure on: the fine-tune's chat .jsonl (rendered through its chat "
                   "template) or plain text (default: the shipped corpus).")
@click.option("--bundle", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write an air-gapped bundle (tar) to this path; install it with `localserve install`.")
@click.option("--merge", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Export a merge of several models (a mergekit YAML; see `localserve merge`) instead of ADAPTER.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_command(adapters: tuple[Path, ...], target: str, lora: bool, quants: str | None, max_size: str | None,
                   as_json: bool, no_smoke: bool, no_register: bool, **options) -> None:
    """Merge ADAPTER into its base, convert to GGUF, quantize, check, and register with Ollama.

    With --target vllm, write a Hugging Face folder and its vLLM serve configuration instead; with
    --lora, keep several ADAPTERS unmerged on one shared base (multi-tenant serving).
    """
    vllm_options = {k: options.pop(k) for k in ("gpu_memory", "gpus", "nodes", "ctx", "concurrency", "group_size",
                                                "calibration", "calibration_samples", "calibration_seq_len")}
    common = dict(quants=quants, max_size=max_size, as_json=as_json, no_smoke=no_smoke, no_register=no_register)
    quality_data = options.pop("quality_data")
    if quality_data is not None and (target == "vllm" or lora):
        raise InputError("--quality-data applies to the quality gate of a merged GGUF export",
                         "drop --quality-data" + (", or --target vllm" if target == "vllm" else ", or --lora"))
    if target == "vllm":
        from ._vllm_export import run as run_vllm

        run_vllm(adapters, lora=lora, **common, **vllm_options, **options)
        return
    given = [k.replace("_", "-") for k, v in vllm_options.items() if v is not None]
    if given:
        raise InputError(f"--{given[0]} applies to --target vllm only", "drop it, or add --target vllm")
    common["quants"] = quants or "Q4_K_M"
    if lora:
        from ._tenant_export import run as run_tenants

        run_tenants(adapters, **common, **options)
        return
    if len(adapters) > 1:
        raise InputError(f"{len(adapters)} adapters given: export merges one adapter into its base",
                         "pass one ADAPTER, add --lora to serve several on one base, or merge them with --merge")
    _export_gguf(adapters[0] if adapters else None, **common, quality_data=quality_data, **options)


def _export_gguf(adapter: Path | None, quants: str, max_size: str | None, as_json: bool, no_smoke: bool,
                 no_register: bool, **options) -> None:
    from ..gguf_export import export

    spec = ExportSpec(adapter=adapter, quants=tuple(quants.split(",")), smoke=not no_smoke,
                      register=not no_register, max_size=parse_size(max_size) if max_size else None, **options)
    result = export(spec)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for art in result.artifacts:
        line = f"{result.out_dir / art.file}  {art.size / 1e6:.1f} MB"
        if art.smoke:
            line += f"  {art.smoke['tokens_per_second']} tokens/s"
            click.echo(line)
            click.echo(f"  Q: {art.smoke['question']}")
            click.echo(f"  A: {art.smoke['answer']}")
        else:
            click.echo(line)
    click.echo(f"Modelfile: {result.modelfile_path}")
    click.echo(f"lineage:   {result.lineage_path}")
    if result.bundle:
        click.echo(f"bundle:    {result.bundle}")
    if result.registered:
        click.echo(f"registered with Ollama as {result.registered.get('name')}")
    elif result.register_hint:
        click.echo(result.register_hint)


@click.command("quants")
def quants_command() -> None:
    """List the quant types the linked llama.cpp can write."""
    from ..llamacpp.quantize import needs_imatrix, quant_types

    for q in quant_types():
        click.echo(f"{q}{'  (needs --imatrix-data)' if needs_imatrix(q) else ''}")


@click.command("architectures")
def architectures_command() -> None:
    """List the Hugging Face architectures llama.cpp's converter supports."""
    from ..llamacpp.convert import supported_architectures

    for name in sorted(supported_architectures()):
        click.echo(name)


commands = [export_command, quants_command, architectures_command]
