"""`localserve vllm load|unload|ls`: LoRA adapters on a running vLLM server."""

from __future__ import annotations

import json

import click

_HOST = click.option("--host", help="vLLM server (default: $VLLM_HOST or http://127.0.0.1:8000).")


@click.group("vllm")
def vllm_group() -> None:
    """Load, unload and list LoRA adapters on a running vLLM server."""


@vllm_group.command("load")
@click.argument("name")
@click.argument("path")
@_HOST
def load_command(name: str, path: str, host: str | None) -> None:
    """Load the adapter folder PATH (as the server sees it) under NAME; clients pass model=NAME."""
    from ..vllm import VllmClient

    client = VllmClient(host)
    client.load(name, path)
    click.echo(f"loaded {name} from {path} on {client.host}")


@vllm_group.command("unload")
@click.argument("name")
@_HOST
def unload_command(name: str, host: str | None) -> None:
    """Unload the adapter NAME."""
    from ..vllm import VllmClient

    client = VllmClient(host)
    client.unload(name)
    click.echo(f"unloaded {name} from {client.host}")


@vllm_group.command("ls")
@_HOST
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def ls_command(host: str | None, as_json: bool) -> None:
    """List the served base model(s) and adapters."""
    from ..vllm import VllmClient

    models = VllmClient(host).models()
    if as_json:
        click.echo(json.dumps([{"name": m.name, "parent": m.parent, "root": m.root} for m in models], indent=2))
        return
    for m in models:
        click.echo(f"{m.name}  adapter on {m.parent}  ({m.root})" if m.is_adapter else f"{m.name}  base")


commands = [vllm_group]
