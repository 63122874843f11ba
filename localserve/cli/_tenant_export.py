"""`localserve export A1 A2 ... --lora` for Ollama (see localserve.tenants)."""

from __future__ import annotations

import json

import click

from ..errors import InputError

# Export options with no meaning for unmerged tenants: given, they are refused rather than ignored.
# Values are the defaults the export command passes when the option is not given.
_NOT_FOR_TENANTS = {
    "trust_remote_code": (False, "nothing is loaded with transformers: the base and adapters are converted as they are"),
    "modelfile": (None, "write PARAMETER/SYSTEM into each tenant's Modelfile.TENANT after the export"),
    "imatrix_data": (None, "export the base on its own to use an importance matrix"),
    "max_kl": (None, "the quality gate measures merged exports; pass one --quant"),
    "bundle": (None, "bundle one merged export at a time"),
    "merge": (None, "--merge and --lora are two different exports; run them separately"),
}


def run(adapters, *, quants: str | None, max_size, as_json: bool, no_smoke: bool, no_register: bool, **options) -> None:
    from ..tenants import TenantExportSpec, export_tenants

    for key, (default, hint) in _NOT_FOR_TENANTS.items():
        if options.pop(key, default) != default:
            flag = "--" + key.replace("_", "-")
            raise InputError(f"{flag} does not apply to --lora (one shared base + one GGUF LoRA per adapter)",
                             f"drop {flag}; {hint}")
    if max_size is not None:
        raise InputError("--max-size does not apply to --lora (it bounds --quant auto)", "drop --max-size")
    quant_list = [q for q in (quants or "Q4_K_M").split(",") if q.strip()]
    if len(quant_list) > 1:
        raise InputError(f"--lora quantizes the shared base to one type, not {len(quant_list)} ({quants})",
                         "pass one, e.g. --quant Q4_K_M")
    spec = TenantExportSpec(adapters=tuple(adapters), quant=quant_list[0] if quant_list else "Q4_K_M",
                            smoke=not no_smoke, register=not no_register, **options)
    result = export_tenants(spec)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
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
