"""`localserve export`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..exports.options import OPTIONS, ExportOption


def _click_option(opt: ExportOption) -> tuple[list[str], dict]:
    """The click option for one declared export option; unset stays None (or False for a flag), so
    `export_spec` can tell what the user typed from the spec's defaults."""
    kinds = {"int": click.IntRange(min=opt.minimum) if opt.minimum is not None else click.INT,
             "float": click.FLOAT, "path": click.Path(path_type=Path),
             "file": click.Path(path_type=Path, exists=True, dir_okay=False),
             "choice": click.Choice(list(opt.choices))}
    if opt.value == "flag":
        return [opt.cli_flag, opt.name], {"is_flag": True, "default": False, "help": opt.help}
    if opt.value == "switch":  # either spelling given is a choice; neither leaves the spec's default
        return [opt.switch_flags, opt.name], {"default": None, "help": opt.help}
    return [opt.cli_flag, opt.name], {"type": kinds.get(opt.value), "default": None, "help": opt.help}


def export_options(command):
    """Add every option of `localserve.exports.options.OPTIONS` to `command`, in declaration order."""
    for opt in reversed(list(OPTIONS.values())):
        decls, attrs = _click_option(opt)
        command = click.option(*decls, **attrs)(command)
    return command


@click.command("export")
@click.argument("adapters", nargs=-1, type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["ollama", "vllm"]), default="ollama", show_default=True,
              help="ollama: quantized GGUF + Modelfile; vllm: Hugging Face folder + vLLM serve configuration.")
@click.option("--lora", is_flag=True,
              help="Several adapters, unmerged: one shared base plus one adapter per tenant.")
@export_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_command(adapters: tuple[Path, ...], target: str, lora: bool, as_json: bool, **options) -> None:
    """Merge ADAPTER into its base, convert to GGUF, quantize, check, and register with Ollama.

    With --target vllm, write a Hugging Face folder and its vLLM serve configuration instead; with
    --lora, keep several ADAPTERS unmerged on one shared base (multi-tenant serving).
    """
    from ..exports import ExportResult, TenantExportResult, export_spec, run_export

    result = run_export(export_spec(adapters, target=target, lora=lora, **options))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    elif isinstance(result, ExportResult):
        _print_gguf(result)
    elif isinstance(result, TenantExportResult):
        _print_tenants(result)
    else:
        _print_vllm(result)


def _print_gguf(result) -> None:
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
        version = f" (version {result.version})" if result.version else ""
        click.echo(f"registered with Ollama as {result.registered.get('name')}{version}")
    elif result.register_hint:
        click.echo(result.register_hint)


def _print_tenants(result) -> None:
    click.echo(f"base:    {result.out_dir / result.base_file}  {result.base_size / 1e6:.1f} MB "
               f"({result.architecture})")
    for t in result.tenants:
        click.echo(f"tenant {t.tenant}: {result.out_dir / t.file}  {t.size / 1e6:.1f} MB  ({t.modelfile})")
        if t.smoke:
            click.echo(f"  Q: {t.smoke['question']}")
            click.echo(f"  A: {t.smoke['answer']}")
    click.echo(f"Ollama:  {result.support['message']}")
    click.echo(f"lineage: {result.lineage_path}")
    if result.registered:
        names = ", ".join(t["name"] for t in result.registered["tenants"])
        click.echo(f"registered with Ollama {result.registered['server_version']}: {names} (base stored once)")
    elif result.register_hint:
        click.echo(result.register_hint)


def _print_vllm(result) -> None:
    q = result.quantization
    kind = "base" if result.lora else f"merged, {q.format}" if q else "merged"
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
    for line in result.features:
        click.echo(f"  {line}")
    click.echo(f"config:  {result.config_file}")
    if result.deploy_files:
        engines = dict.fromkeys(p.relative_to(result.out_dir).parts[1] for p in result.deploy_files)
        click.echo(f"deploy:  {result.out_dir / 'deploy'}/  ({', '.join(engines)})")
    click.echo(f"serve:   {result.out_dir / 'launch.sh'}  (VLLM_PYTHON=/path/to/python ./launch.sh)")
    click.echo(f"lineage: {result.lineage_path}")


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
